"""Write a trained model folder into the package as the bundled model, stored in fp16.

    python scripts/bundle_model.py runs/world-small-dit/model [--out kinema/assets/world-small]

Copies the config (kinema.json, and student.json when the folder has a distilled student) and every
safetensors file with floating tensors cast to fp16 (the loader casts back to the run's dtype: outputs
match the fp32 folder to fp16 rounding), refuses a result over the issue's 60 MB budget, then loads the
bundled folder and generates a one-step clip to prove it works. Run it once, for the weights you commit:
every committed version of the weights stays in the repository's history.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BUDGET_MB = 60.0
ROOT = Path(__file__).resolve().parent.parent


def bundle(src: Path, out: Path, budget_mb: float = BUDGET_MB) -> dict[str, float]:
    """Copy ``src`` to ``out`` with fp16 weights; {file: MB}. The old ``out`` is replaced only when all is written."""
    if not (src / "kinema.json").is_file():
        raise SystemExit(f"bundle: {src} is not a kinema model folder (no kinema.json)")
    weights = sorted(src.glob("*.safetensors"))
    if not any(w.name == "transformer.safetensors" for w in weights) or not any(w.name == "vae.safetensors" for w in weights):
        raise SystemExit(f"bundle: {src} needs both transformer.safetensors and vae.safetensors, has {[w.name for w in weights]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    sizes = {}
    try:
        for w in weights:
            tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in load_file(str(w)).items()}
            save_file(tensors, str(stage / w.name), metadata={"format": "kinema", "dtype": "fp16"})
            sizes[w.name] = (stage / w.name).stat().st_size / 1e6
        for name in ("kinema.json", "student.json"):
            if (src / name).is_file():
                shutil.copy2(src / name, stage / name)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="trained kinema model folder (DiT + VAE, optionally a student)")
    ap.add_argument("--out", type=Path, default=ROOT / "kinema" / "assets" / "world-small")
    ap.add_argument("--budget-mb", type=float, default=BUDGET_MB)
    args = ap.parse_args(argv)
    sizes = bundle(args.model, args.out, args.budget_mb)
    with torch.inference_mode():
        smoke_test(args.out)
    print(f"bundled {args.model} -> {args.out}: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items())
          + f"; total {sum(sizes.values()):.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
