"""scripts/plot_loss.py and scripts/vae_objects.py (the training diagnostics), scripts/world_small.sh,
scripts/gpu_round.sh, scripts/minilm_pack.py, scripts/carry_student.py, scripts/connect_cases.py and
scripts/vae_scene_changes.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script


@pytest.fixture(scope="module")
def plot():
    return load_script("plot_loss")


def test_plot_loss_reads_resumed_runs_and_draws_one_panel_per_run(plot, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 41)]
    lines += [json.dumps({"step": 40, "loss": 0.5}), json.dumps({"step": 41, "loss": float("nan")}), '{"step": 42, "lo']
    (run / "metrics.jsonl").write_text("\n".join(lines))
    steps, values = plot.read_losses(run)
    assert steps.tolist() == list(range(1, 41))  # resumed step 40 logged twice: the last one wins; NaN and a cut line skipped
    assert values[-1] == 0.5 and np.isclose(values[0], 1.0)
    out = plot.main([str(run), str(run), "-o", str(tmp_path / "curves.png")])
    img = Image.open(out)
    assert img.size == (plot.W, 2 * plot.H)
    assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 3  # axes, labels and curves, not a blank sheet
    with pytest.raises(SystemExit, match="does not exist"):
        plot.main([str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")])


def test_vae_objects_scores_a_vae_per_frame(tiny_model_dir, tmp_path):
    script = load_script("vae_objects")
    [result] = script.main([str(tiny_model_dir), "--clips", "2", "--size", "32", "--frames", "5",
                            "--json", str(tmp_path / "r.json")])
    per_frame = result["object_l1_per_frame"]
    assert len(per_frame) == 5 and all(0 <= v <= 2 for v in per_frame if v == v)
    assert json.loads((tmp_path / "r.json").read_text())[0]["psnr_db"] == pytest.approx(result["psnr_db"])
    with pytest.raises(SystemExit):
        script.main([str(tiny_model_dir), "--frames", "6"])
    assert result["step_ratio"] > 0 and result["step_error"] >= 0 and result["across_within"] > 0


def test_vae_objects_temporal_measures_are_exact_for_a_lossless_vae(monkeypatch):
    """A VAE that returns its input: steps 1x the clip's, no step error, the clip's own across / within ratio."""
    script = load_script("vae_objects")

    class Lossless:
        def float(self):
            return self

        def eval(self):
            return self

        def encode(self, video):
            return video

        def decode(self, z):
            return z

    monkeypatch.setattr("kinema.weights.load_vae", lambda model: Lossless())
    r = script.measure("lossless", script.clips(3, 32, 9))
    assert r["psnr_db"] > 60 and r["step_ratio"] == pytest.approx(1.0) and r["step_error"] == 0
    assert r["across_within"] == pytest.approx(r["clip_across_within"])


# -- scripts/world_small.sh: the bundled model's training, stage by stage ------------------------------

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "world_small.sh"


def _stages() -> list[list[str]]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    return [shlex.split(line)[1:] for line in text.splitlines() if line.startswith("stage ")]


def test_world_small_stages_are_valid_recipes_that_chain_in_order(tmp_path):
    from kinema.train import load_config

    stages = _stages()
    assert len(stages) >= 6
    done: set[str] = set()
    for name, config, *overrides in stages:
        args = [a.replace("$R", str(tmp_path)) for a in overrides]
        cfg = load_config(ROOT / config, args + ["--out_dir", str(tmp_path / name)])
        for source in (cfg.init_from, cfg.vae_from if cfg.model == "dit" else None):
            if source is not None:  # reads a model an earlier stage exported
                assert Path(source).parent.name in done and Path(source).name == "model", (name, source)
        assert cfg.max_steps < 20000, name  # every stage ends at the step count the shipped weights had
        done.add(name)


def test_world_small_skips_finished_stages_and_resumes_a_stopped_one(tmp_path):
    bin_dir, runs = tmp_path / "bin", tmp_path / "runs"
    bin_dir.mkdir()
    log = tmp_path / "calls.txt"
    # stand-ins for `kinema train` (export a model folder) and `python` (the bundler), logging their arguments
    fake = f'#!/bin/sh\necho "$0 $*" >> {log}\n'
    (bin_dir / "kinema").write_text(fake + 'while [ $# -gt 0 ]; do [ "$1" = --out_dir ] && mkdir -p "$2/model" '
                                           '&& touch "$2/model/kinema.json"; shift; done\n')
    (bin_dir / "python").write_text(fake)
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    names = [s[0] for s in _stages()]
    (runs / names[0] / "model").mkdir(parents=True)
    (runs / names[0] / "model" / "kinema.json").write_text("{}")  # finished
    (runs / names[1] / "checkpoints").mkdir(parents=True)  # stopped part-way
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RUNS": str(runs)}
    out = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    calls = log.read_text().splitlines()
    trains = [c for c in calls if "/kinema " in c]
    assert f"{runs / names[0]}: done, skipped" in out.stdout
    assert len(trains) == len(names) - 1
    assert trains[0].endswith(f"--out_dir {runs / names[1]} --resume")
    assert not any("--resume" in c for c in trains[1:])
    carry = (f"scripts/carry_student.py --student {runs}/world-small-distill3/model --old {runs}/world-small-dit-echo3/model"
             f" --new {runs}/world-small-dit-span-physics/model --out {runs}/world-small-student-carried")
    bundle = f"scripts/bundle_model.py {runs}/world-small-dit-span-physics/model --student {runs}/world-small-student-carried"
    assert calls[-2].endswith(carry) and calls[-1].endswith(bundle)


def test_gpu_round_trains_from_the_shipped_weights_and_hands_back_models(tmp_path):
    """scripts/gpu_round.sh on the CPU with tiny batches: a dit round (the span recipe the shipped DiT was last
    trained on) that runs out of time still hands back its checkpoint's weights (marked), a distill round makes a student of that DiT, both hand back what a device call
    returns (fp16 weights under 16 MiB a file) and they bundle into a model that generates; a student round starts
    from the shipped student with the shipped DiT as its teacher; a bad round is refused."""
    env = {**os.environ, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    tiny = ["--data.num_workers", "0", "--data.buckets", '[{"frames": 5, "height": 32, "width": 32, "batch_size": 2}]',
            "--optim.warmup_steps", "1", "--log.every", "1"]
    root = Path(__file__).parent.parent
    run = lambda *args: subprocess.run(["bash", str(root / "scripts" / "gpu_round.sh"), *args], env=env,  # noqa: E731
                                       capture_output=True, text=True)
    dit = run("dit", "0.001", "--max_steps", "50", "--data.echo", "1", *tiny)
    assert dit.returncode == 0, dit.stderr[-2000:]
    assert "stopped at step 1" in dit.stdout
    back = tmp_path / "out" / "dit"
    assert sorted(f.name for f in back.iterdir()) == ["STOPPED_EARLY", "kinema.json", "metrics.jsonl",
                                                      "transformer.safetensors", "vae.safetensors"]
    assert "before max_steps" in (back / "STOPPED_EARLY").read_text()
    trained = json.loads((tmp_path / "work" / "dit" / "train_config.json").read_text())  # the shipped DiT's recipe
    assert trained["data"]["world_span"] == 2.0 and trained["data"]["world_span_except"] == ["falls", "bounces"]
    assert trained["init_from"] == "kinema/assets/world-small"
    student = run("distill", "5", "--max_steps", "2", *tiny)
    assert student.returncode == 0, student.stderr[-2000:]
    assert f"distilling {tmp_path / 'work' / 'dit' / 'model'} into a 4-step student" in student.stdout
    out = tmp_path / "out" / "distill"
    assert sorted(f.name for f in out.iterdir()) == ["kinema.json", "metrics.jsonl", "student.json",
                                                     "student.safetensors"]
    assert all(f.stat().st_size < 16 * 2**20 for f in [*back.iterdir(), *out.iterdir()])
    bundled = subprocess.run([sys.executable, str(root / "scripts" / "bundle_model.py"), str(back),
                              "--student", str(out), "--out", str(tmp_path / "bundle")], capture_output=True, text=True)
    assert bundled.returncode == 0, bundled.stderr[-2000:]
    from kinema.infer import Pipeline
    pipe = Pipeline.from_pretrained(tmp_path / "bundle")
    assert pipe.student is not None
    assert pipe.generate("a red ball", steps=4, frames=5, width=64, height=64).frames.shape == (5, 64, 64, 3)
    again = run("student", "5", "--max_steps", "1", *tiny)  # the shipped student further, its teacher frozen
    assert again.returncode == 0, again.stderr[-2000:]
    assert "continuing the student of kinema/assets/world-small" in again.stdout
    shipped = json.loads((root / "kinema" / "assets" / "world-small" / "student.json").read_text())
    info = json.loads((tmp_path / "out" / "student" / "student.json").read_text())
    assert info["teacher"] == "kinema/assets/world-small" and info["train_steps"] == shipped["train_steps"] + 1
    bad = run("vae", "1")
    assert bad.returncode == 2 and "the round must be dit, distill or student, got 'vae'" in bad.stderr


def test_minilm_pack_keeps_the_world_captions_word_pieces_and_refuses_others(tmp_path, monkeypatch):
    """scripts/minilm_pack.py: packed small enough to travel, unpacked into a folder the encoder loads through
    KINEMA_MINILM_DIR, encoding world captions as the full model does, refusing words it does not hold."""
    from kinema.data.world import caption
    from kinema.data.world.sample import sample_spec
    from kinema.text.minilm import MiniLMEncoder, default_model_dir

    tool = load_script("minilm_pack")
    tool.main(["pack", str(tmp_path / "packed"), "--samples", "300"])
    assert sum(f.stat().st_size for f in (tmp_path / "packed").iterdir()) < 24 * 2**20
    tool.main(["unpack", str(tmp_path / "packed"), str(tmp_path / "minilm")])
    full = MiniLMEncoder(model_dir=default_model_dir())
    monkeypatch.setenv("KINEMA_MINILM_DIR", str(tmp_path / "minilm"))
    assert default_model_dir() == tmp_path / "minilm"
    cut = MiniLMEncoder()
    rng = np.random.default_rng(123)  # captions the pack did not sample
    prompts = [caption(sample_spec(rng, held_out="allow"), rng, style) for style in ("train", "heldout_phrasing")
               for _ in range(20)]
    (a, mask), (b, _) = full.encode(prompts), cut.encode(prompts)
    assert ((a - b)[mask].norm() / a[mask].norm()) < 5e-3
    with pytest.raises(ValueError, match=r"only the word pieces of the world's captions.*'cat'"):
        cut.encode(["a red ball bounces", "a cat"])


def test_carry_student_adds_the_teachers_fine_tune_to_the_student(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from kinema.weights import load_dit
    from kinema.weights.student import StudentInfo, read_student, save_student

    carry = load_script("carry_student")
    dit = load_file(str(tiny_model_dir / "transformer.safetensors"))
    new = tmp_path / "new"  # the fine-tuned teacher: every weight moved by 0.1
    shutil.copytree(tiny_model_dir, new)
    save_file({k: v + 0.1 if v.is_floating_point() else v for k, v in dit.items()}, str(new / "transformer.safetensors"))
    distilled = tmp_path / "distilled"  # the student: the old teacher moved by 0.25
    shutil.copytree(tiny_model_dir, distilled)
    student = load_dit(distilled)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.25)
    save_student(distilled, student, StudentInfo(steps=2, times=(1.0, 0.5, 0.0), guidance=3.0, teacher="t0"))

    out = tmp_path / "carried"
    assert carry.main(["--student", str(distilled), "--old", str(tiny_model_dir), "--new", str(new),
                       "--out", str(out)]) == 0
    carried = load_file(str(out / "student.safetensors"))
    for k, v in dit.items():
        if v.is_floating_point():
            torch.testing.assert_close(carried[k], v.float() + 0.35, rtol=0, atol=1e-6)
    shutil.copy2(new / "kinema.json", out / "kinema.json")  # as a model folder, the student loads with its info
    info = read_student(out)
    assert (info.steps, info.times, info.guidance, info.teacher) == (2, (1.0, 0.5, 0.0), 3.0, str(new))
    assert info.carried_from == f"student {distilled} (distilled from t0) + teacher {new} - teacher {tiny_model_dir}"

    first = sorted(dit)[0]
    save_file({k: v for k, v in dit.items() if k != first}, str(new / "transformer.safetensors"))
    with pytest.raises(SystemExit, match=r"same tensors; 1 differ.*" + first.replace(".", r"\.")):
        carry.carry(distilled, tiny_model_dir, new)
    with pytest.raises(SystemExit, match=r"missing --old"):
        carry.carry(distilled, tmp_path / "nowhere", new)


def test_connect_cases_measures_transitions_between_world_clips(tiny_model_dir):
    script = load_script("connect_cases")
    rng = np.random.default_rng(0)
    [(prompt, a, truth, b, move)] = script.same_scene_cases(1, rng)
    assert (len(a), len(truth), len(b)) == (script.CLIP, script.GAP, script.CLIP) and prompt
    from kinema.eval.tasks import direction
    assert direction(np.concatenate([a[-1:], truth, b[:1]]), script.FPS) == move  # the truth keeps it
    same = script.main(["--model", str(tiny_model_dir), "--n", "1", "--dtype", "fp32"])
    assert set(same) == {"direction_kept", "one_object", "psnr_db"} and 0 <= same["direction_kept"] <= 1
    different = script.main(["--model", str(tiny_model_dir), "--n", "1", "--dtype", "fp32", "--scenes", "different",
                             "--motion-strength", "1"])
    assert different["largest_step"] > 0 and different["largest_over_median"] >= 1
    with pytest.raises(SystemExit):
        script.main(["--motion-strength", "0"])


def test_vae_scene_changes_measures_round_trips_across_a_cut_and_a_dissolve(tiny_model_dir, tmp_path):
    script = load_script("vae_scene_changes")
    first, second = (np.full((script.SCENE + 1, 16, 16, 3), v, np.uint8) for v in (0, 90))
    cut, fade = script.joined(first, second, False), script.joined(first, second, True)
    assert len(cut) == len(fade) == 2 * script.SCENE + 1 and (cut[:script.SCENE + 1] == 0).all() and (cut[-1] == 90).all()
    ramp = fade[script.SCENE + 1 - script.DISSOLVE:script.SCENE + 1, 0, 0, 0]
    assert (np.diff(ramp.astype(int)) > 0).all() and 0 < ramp[0] and ramp[-1] < 90  # a fade, neither end reached
    [result] = script.main([str(tiny_model_dir), "--n", "1", "--size", "32", "--json", str(tmp_path / "r.json")])
    assert set(result) == {"model", "cases", "first_scene_db", "after_cut_db", "after_cut_first4_db",
                           "second_alone_db", "dissolve_db"}
    assert all(np.isfinite(v) for k, v in result.items() if k.endswith("_db"))
    assert json.loads((tmp_path / "r.json").read_text()) == [result]
    with pytest.raises(SystemExit):
        script.main([str(tiny_model_dir), "--size", "20"])
