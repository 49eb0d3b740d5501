"""Write a trained model folder into the package as the bundled model, stored in fp16.

    python scripts/bundle_model.py runs/world-small-dit/model [--out kinema/assets/world-small] [--vae FOLDER] [--student FOLDER]

Copies the config (kinema.json, and student.json when the folder has a distilled student) and every
safetensors file with floating tensors cast to fp16 (the loader casts back to the run's dtype: outputs
match the fp32 folder to fp16 rounding), refuses a result over the issue's 60 MB budget, then loads the
bundled folder and generates a one-step clip to prove it works. Run it once, for the weights you commit:
every committed version of the weights stays in the repository's history.

``--vae FOLDER`` ships that folder's VAE instead of the model's own: a decoder fine-tuned after the DiT was
trained (``vae_loss.decoder_only``). It is accepted only when its encoder and latent statistics are exactly
the model's, since the DiT learned to produce that encoder's latents.

``--student FOLDER`` ships that folder's few-step student (student.safetensors + student.json, as a
``[distill]`` run exports them) beside the model's DiT, in place of any student the model folder has: a
student distilled from an earlier teacher keeps serving ``--steps 4`` after the DiT trained further. It is
accepted only when its tensors have the names and shapes of the model's DiT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

BUDGET_MB = 60.0
ROOT = Path(__file__).resolve().parent.parent


DECODER = ("decoder.", "post_quant_conv.")  # the VAE parameters a decoder-only fine-tune changes


def check_same_encoder(model: Path, vae: Path) -> None:
    """Refuse ``vae`` unless its config and every non-decoder tensor equal ``model``'s VAE (fp16-rounded alike)."""
    if not (vae / "kinema.json").is_file() or not (vae / "vae.safetensors").is_file():
        raise SystemExit(f"bundle: --vae {vae} is not a kinema VAE folder (needs kinema.json and vae.safetensors)")
    mine, theirs = (json.loads((p / "kinema.json").read_text())["vae"] for p in (model, vae))
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise SystemExit(f"bundle: --vae {vae} has a different VAE config than {model} ({diff}); only a decoder "
                         f"fine-tuned from the model's own VAE (vae_loss.decoder_only) keeps the DiT's latents")
    a, b = load_file(str(model / "vae.safetensors")), load_file(str(vae / "vae.safetensors"))
    changed = sorted(k for k in set(a) | set(b) if not k.startswith(DECODER)
                     and (k not in a or k not in b or not torch.equal(a[k].half(), b[k].half())))
    if changed:
        raise SystemExit(f"bundle: --vae {vae} has a different encoder than {model} ({len(changed)} tensors, e.g. "
                         f"{changed[:3]}); only a decoder fine-tuned from the model's own VAE keeps the DiT's latents")


def check_student_fits(model: Path, student: Path) -> None:
    """Refuse ``student`` unless it is a distilled student whose tensors match ``model``'s DiT in names and shapes."""
    if not (student / "student.safetensors").is_file() or not (student / "student.json").is_file():
        raise SystemExit(f"bundle: --student {student} has no student (needs student.safetensors and student.json, "
                         f"as a [distill] run exports them)")
    def shapes(path: Path) -> dict[str, list[int]]:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_slice(k).get_shape() for k in f.keys()}

    mine, theirs = shapes(model / "transformer.safetensors"), shapes(student / "student.safetensors")
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise SystemExit(f"bundle: --student {student} does not fit the DiT of {model} ({len(diff)} tensors differ in "
                         f"name or shape, e.g. {diff[:3]}); a student must have its teacher's architecture")


def bundle(src: Path, out: Path, budget_mb: float = BUDGET_MB, vae: Path | None = None,
           student: Path | None = None) -> dict[str, float]:
    """Copy ``src`` (with ``vae``'s VAE and ``student``'s student, if given) to ``out`` with fp16 weights;
    {file: MB}. The old ``out`` is replaced only when all is written."""
    if not (src / "kinema.json").is_file():
        raise SystemExit(f"bundle: {src} is not a kinema model folder (no kinema.json)")
    weights = sorted(src.glob("*.safetensors"))
    if not any(w.name == "transformer.safetensors" for w in weights) or not any(w.name == "vae.safetensors" for w in weights):
        raise SystemExit(f"bundle: {src} needs both transformer.safetensors and vae.safetensors, has {[w.name for w in weights]}")
    if vae is not None:
        check_same_encoder(src, vae)
        weights = [vae / w.name if w.name == "vae.safetensors" else w for w in weights]
    configs = [src / name for name in ("kinema.json", "student.json") if (src / name).is_file()]
    if student is not None:
        check_student_fits(src, student)
        weights = [w for w in weights if w.name != "student.safetensors"] + [student / "student.safetensors"]
        configs = [c for c in configs if c.name != "student.json"] + [student / "student.json"]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    sizes = {}
    try:
        for w in weights:
            tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(w)).items()}
            save_file(tensors, str(stage / w.name), metadata={"format": "kinema", "dtype": "fp16"})
            sizes[w.name] = (stage / w.name).stat().st_size / 1e6
        for config in configs:
            shutil.copy2(config, stage / config.name)
        total = sum(sizes.values())
        if total > budget_mb:
            raise SystemExit(f"bundle: {total:.1f} MB of weights is over the {budget_mb:.0f} MB budget: {sizes}")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return sizes


def smoke_test(path: Path) -> None:
    """Load the bundled folder and generate a tiny one-step clip (fails loudly if anything is missing)."""
    from kinema.infer import Pipeline

    pipe = Pipeline.from_pretrained(path)
    cfg = json.loads((path / "kinema.json").read_text())["sampling"]
    video = pipe.generate("a red ball bounces on the floor", steps=1, frames=5, width=cfg["width"], height=cfg["height"])
    if video.frames.shape[0] != 5:
        raise SystemExit(f"bundle: the smoke test made {video.frames.shape[0]} frames, expected 5")
    if (path / "student.json").is_file():  # the student samples whenever a request asks for its steps
        if pipe.student is None:
            raise SystemExit(f"bundle: {path} has a student.json but its student did not load")
        steps = pipe.student[1].steps
        video = pipe.generate("a red ball bounces on the floor", steps=steps, frames=5, width=cfg["width"],
                              height=cfg["height"])
        if video.frames.shape[0] != 5 or "student" not in video.metadata():
            raise SystemExit(f"bundle: the student's smoke test ({steps} steps) did not sample with the student")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="trained kinema model folder (DiT + VAE, optionally a student)")
    ap.add_argument("--out", type=Path, default=ROOT / "kinema" / "assets" / "world-small")
    ap.add_argument("--budget-mb", type=float, default=BUDGET_MB)
    ap.add_argument("--vae", type=Path,
                    help="ship this folder's VAE instead: a decoder-only fine-tune of the model's own")
    ap.add_argument("--student", type=Path,
                    help="ship this folder's few-step student (a [distill] run's export) beside the model's DiT")
    args = ap.parse_args(argv)
    sizes = bundle(args.model, args.out, args.budget_mb, args.vae, args.student)
    with torch.inference_mode():
        smoke_test(args.out)
    source = (f"{args.model}" + (f" with the VAE of {args.vae}" if args.vae else "")
              + (f" and the student of {args.student}" if args.student else ""))
    print(f"bundled {source} -> {args.out}: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items())
          + f"; total {sum(sizes.values()):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
