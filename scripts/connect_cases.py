"""Connections measured on the procedural world: one second from the end of clip A to the start of clip B.

same (default): A and B are the first and last 17 frames of one world scene of 42 frames, one object moving
left, right, up or down on a still camera (the four in turn), whose 8 frames between them (the truth) keep
that direction. Reported: the share of transitions (with A's last frame and B's first) in which the world
evaluator's detector reads the object going that way, the share in which it follows one object in every frame,
and the PSNR of the transition against the truth.

different: A and B are two unrelated world scenes (B's caption is the prompt); reported: the largest frame step
through the transition (mean |difference|, 0-255) and its ratio to the median step, medians over the cases.

    python scripts/connect_cases.py --n 60 [--motion-strength 0.4] [--dtype bf16] [--scenes different]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from kinema.common.malloc import keep_freed_memory
from kinema.data.world import render
from kinema.data.world.captions import caption
from kinema.data.world.sample import sample_spec, scene_from_spec
from kinema.data.world.scene import SceneSpec
from kinema.eval.tasks import MOVES, direction, psnr
from kinema.eval.world.vision import detect
from kinema.infer import Pipeline, tasks

SIZE, CLIP, GAP, FPS = 128, 17, 8, 8


def same_scene_cases(n: int, rng: np.random.Generator):
    """(prompt, A, truth, B, direction) from one scene each, redrawn unless all three read back its direction."""
    cases = []
    while len(cases) < n:
        spec = sample_spec(rng, 1, "exclude")
        move = MOVES[len(cases) % len(MOVES)]
        spec = SceneSpec((dataclasses.replace(spec.objects[0], motion=move),), spec.background, "static")
        video = render(scene_from_spec(spec, SIZE, SIZE, 2 * CLIP + GAP, FPS, rng))
        a, truth, b = video[:CLIP], video[CLIP:CLIP + GAP], video[CLIP + GAP:]
        if all(direction(v, FPS) == move for v in (a, video[CLIP - 1:CLIP + GAP + 1], b)):
            cases.append((caption(spec, rng), a, truth, b, move))
    return cases


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement, print it and return it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--motion-strength", type=float, default=tasks.MOTION_STRENGTH)
    p.add_argument("--dtype", default="bf16", choices=("fp32", "bf16", "auto"))
    p.add_argument("--model", help="model folder; default: the bundled model")
    p.add_argument("--scenes", default="same", choices=("same", "different"))
    args = p.parse_args(argv)
    if args.n < 1 or not 0 < args.motion_strength <= 1:
        p.error(f"--n must be >= 1 and --motion-strength in (0, 1], got {args.n} and {args.motion_strength}")
    keep_freed_memory()
    pipe = Pipeline.from_pretrained(args.model, dtype=args.dtype)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    if args.scenes == "same":
        kept, one, close = [], [], []
        for i, (prompt, a, truth, b, move) in enumerate(same_scene_cases(args.n, rng)):
            transition, _ = tasks.connect(pipe, prompt, a, b, GAP / FPS, seed=i, motion_strength=args.motion_strength,
                                          width=SIZE, height=SIZE)
            through = np.concatenate([a[-1:], transition.frames, b[:1]])
            kept.append(direction(through, FPS) == move)
            tracks = detect(through, FPS).tracks
            one.append(len(tracks) == 1 and bool(next(iter(tracks.values())).present.all()))
            close.append(psnr(transition.frames, truth))
        result = {"direction_kept": float(np.mean(kept)), "one_object": float(np.mean(one)),
                  "psnr_db": float(np.mean(close))}
        print(f"same scenes, motion strength {args.motion_strength:g}, {args.n} cases: direction kept "
              f"{100 * result['direction_kept']:.0f}%, one object throughout {100 * result['one_object']:.0f}%, "
              f"{result['psnr_db']:.2f} dB from the truth ({time.perf_counter() - t0:.0f} s)")
        return result
    ratios, largest = [], []
    for i in range(args.n):
        spec_a, spec_b = sample_spec(rng, 1, "exclude"), sample_spec(rng, 1, "exclude")
        a = render(scene_from_spec(spec_a, SIZE, SIZE, CLIP, FPS, rng))
        b = render(scene_from_spec(spec_b, SIZE, SIZE, CLIP, FPS, rng))
        transition, _ = tasks.connect(pipe, caption(spec_b, rng), a, b, GAP / FPS, seed=i, width=SIZE, height=SIZE,
                                      motion_strength=args.motion_strength)
        through = np.concatenate([a[-1:], transition.frames, b[:1]]).astype(np.float32)
        steps = np.abs(np.diff(through, axis=0)).mean(axis=(1, 2, 3))
        ratios.append(steps.max() / max(float(np.median(steps)), 1e-6))
        largest.append(steps.max())
    result = {"largest_step": float(np.median(largest)), "largest_over_median": float(np.median(ratios))}
    print(f"different scenes, motion strength {args.motion_strength:g}, {args.n} cases: largest step "
          f"{result['largest_step']:.1f}, {result['largest_over_median']:.2f}x the median step "
          f"({time.perf_counter() - t0:.0f} s)")
    return result


if __name__ == "__main__":
    main()
