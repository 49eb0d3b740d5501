"""Seams of long videos: the frame-to-frame difference where one window joins the next, against the typical step.

    python benchmarks/long_seams.py [--model PATH] [--n 8] [--seconds 6]

Long videos of world prompts (the task evaluator's one-object clips), written with ``long_video`` and read back;
per video the median step at the window joins and the median step overall (mean |f[i+1] - f[i]|, 0-255), then
the medians over videos. A join no larger than a typical step is invisible.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder; default: the bundled model")
    ap.add_argument("--n", type=int, default=8, help="videos")
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()

    from kinema.common.video import read_video
    from kinema.eval.tasks import task_cases
    from kinema.infer import Pipeline
    from kinema.infer.long import long_video
    from kinema.infer.tasks import DEFAULT_OVERLAP
    from kinema.tasks.frames import pixel_count

    pipe = Pipeline.from_pretrained(args.model)
    s = pipe.cfg.sampling
    step = s.frames - pixel_count(DEFAULT_OVERLAP, pipe.cfg.vae.temporal_factor)  # new frames per later window
    joins, typical = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (prompt, *_) in enumerate(task_cases(args.n, s.width, s.height, s.frames, s.fps)):
            result = long_video(pipe, prompt, args.seconds, Path(tmp) / f"{i}.mp4", seed=i)
            frames, _ = read_video(result.path)
            steps = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
            at = [s.frames + k * step for k in range(result.windows - 1) if s.frames + k * step < len(frames)]
            joins.append(float(np.median(steps[[j - 1 for j in at]])))
            typical.append(float(np.median(steps)))
    report = {"videos": args.n, "seconds": args.seconds, "median_join_step": float(np.median(joins)),
              "median_step": float(np.median(typical))}
    print(json.dumps(report))
    print(f"join step {report['median_join_step']:.1f} vs typical {report['median_step']:.1f} "
          f"({report['median_join_step'] / report['median_step']:.1f}x)")


if __name__ == "__main__":
    main()
