"""Sampling steps against speed and fidelity: how far fewer steps move a video from a many-step sample.

    python benchmarks/steps.py [--model PATH] [--steps 20 14 12 10 8] [--reference 50] [--n 8] [--shift S] [--json F]

For --n prompts of the world benchmark (``build_eval_prompts``, one per row in turn, fixed seed) it samples
each prompt with --reference steps (the converged ODE solution, up to the model's own error) and with each
step count in --steps, same seed, sampler and guidance (and shift, unless --shift discretises the same ODE
differently for the step counts), and reports per step count: sampling wall
(text encoding and VAE decode excluded: they do not depend on the count), the PSNR of the decoded frames
against the reference's and the latents' relative error. A step count whose PSNR is close to the
default's is as faithful to the model as the default; whether the videos still show what was asked is
``kinema eval world --steps N``'s job. The end-to-end wall and real-time factor at a count:
``python benchmarks/generate.py --steps N``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from kinema.eval.tasks import psnr
from kinema.eval.world.evaluate import build_eval_prompts
from kinema.infer import Pipeline
from kinema.infer.pipeline import bundled_model_path


def prompts(n: int, seed: int) -> list[str]:
    """``n`` world-benchmark prompts, taking the rows in turn (single, held-out, phrasing, two objects, physics)."""
    by_row: dict[str, list[str]] = {}
    for category, prompt, _ in build_eval_prompts(n_per_row=n, seed=seed):
        by_row.setdefault(category, []).append(prompt)
    rows = list(by_row.values())
    return [rows[i % len(rows)][i // len(rows)] for i in range(n)]


@torch.inference_mode()
def sample(pipe: Pipeline, prompt: str, steps: int, seed: int, sampler: str | None,
           shift: float | None = None) -> tuple[torch.Tensor, float]:
    """(latents, sampling seconds) for one prompt at ``steps``; the prompt is encoded before the clock starts."""
    s = pipe.settings(prompt, steps=steps, seed=seed, sampler=sampler, shift=shift)
    pipe.encode_prompts([s.prompt, s.negative_prompt])
    t = time.perf_counter()
    latents = pipe.sample(s)
    return latents, time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the bundled model)")
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 14, 12, 10, 8])
    ap.add_argument("--reference", type=int, default=50, help="steps of the reference sample")
    ap.add_argument("--sampler", help="sampler for every count (default: the model's)")
    ap.add_argument("--shift", type=float, help="time shift of the step counts' schedules (default: the model's; "
                    "the reference keeps the model's): the same ODE, discretised differently")
    ap.add_argument("--n", type=int, default=8, help="prompts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [s for s in args.steps + [args.reference] if s < 1]
    if bad or args.n < 1:
        ap.error(f"--steps, --reference and --n must be >= 1, got steps {args.steps}, reference {args.reference}, n {args.n}")
    folder = Path(args.model) if args.model else bundled_model_path()
    pipe = Pipeline.from_pretrained(folder, student=False)  # the teacher at every step count (4: not the student)
    default = pipe.settings("x")
    sample(pipe, "warm-up", 2, 0, args.sampler)  # allocator and oneDNN kernels, not counted

    rows = {steps: {"sample_s": [], "psnr_db": [], "latent_rel_err": []} for steps in args.steps}
    texts = prompts(args.n, args.seed)
    for i, prompt in enumerate(texts):
        ref, _ = sample(pipe, prompt, args.reference, args.seed + i, args.sampler)
        ref_frames = pipe.decode(ref)
        for steps in args.steps:
            latents, wall = sample(pipe, prompt, steps, args.seed + i, args.sampler, args.shift)
            db = psnr(pipe.decode(latents), ref_frames)
            row = rows[steps]
            row["sample_s"].append(wall)
            row["psnr_db"].append(100.0 if math.isinf(db) else db)
            row["latent_rel_err"].append(float((latents - ref).norm() / ref.norm()))
        print(f"  {i + 1}/{len(texts)} {prompt!r}", file=sys.stderr)

    result = {
        "model": str(folder), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "request": {"width": default.width, "height": default.height, "frames": default.frames,
                    "guidance": default.guidance, "shift": args.shift or default.shift,
                    "sampler": args.sampler or default.sampler, "default_steps": default.steps},
        "reference_steps": args.reference, "prompts": texts,
        "rows": [{"steps": steps, "sample_s": statistics.median(r["sample_s"]),
                  "psnr_db_mean": statistics.mean(r["psnr_db"]), "psnr_db_min": min(r["psnr_db"]),
                  "latent_rel_err_mean": statistics.mean(r["latent_rel_err"])} for steps, r in rows.items()],
    }
    req = result["request"]
    print(f"\n{folder.name}: {req['frames']}x{req['height']}x{req['width']}, {req['sampler']}, guidance "
          f"{req['guidance']}, shift {req['shift']}; {len(texts)} world prompts against {args.reference} steps, "
          f"{result['threads']} threads")
    print(f"  {'steps':>5} {'sample s':>9} {'PSNR dB':>8} {'min dB':>7} {'latent err':>10}")
    for r in result["rows"]:
        mark = "  (default)" if r["steps"] == req["default_steps"] else ""
        print(f"  {r['steps']:5d} {r['sample_s']:9.2f} {r['psnr_db_mean']:8.1f} {r['psnr_db_min']:7.1f} "
              f"{r['latent_rel_err_mean']:10.4f}{mark}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
