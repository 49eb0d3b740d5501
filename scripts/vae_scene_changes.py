"""How well a VAE's round trip follows a change of scene: a hard cut, and a cross-dissolve.

    python scripts/vae_scene_changes.py MODEL [MODEL ...] [--n 20] [--size 128] [--json out.json]

Each case joins two unrelated world scenes into one clip of 2 x 16 + 1 frames: the first scene's 17 frames,
then the second's 16 (a cut), or the same with the last 8 frames of the first scene cross-dissolving into the
second (a dissolve). A causal decoder's frames depend on the frames before them; one that only ever saw one
scene per clip carries the first scene on into the second. Reported per model (8-bit PSNR, means over the
cases): the first scene's frames, the 16 after the cut (and the first 4 of them), the same 16 when the second
scene is round-tripped on its own (what the VAE does with no change of scene: the bound), and the dissolve's
frames from its start on. ``data.world_scene_changes`` in a VAE training config teaches both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

FIRST_SEED = 3001
SCENE, DISSOLVE = 16, 8  # frames of the second scene after the cut (4 latent frames); frames of a dissolve


def cases(n: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(first, second) uint8 clips of ``SCENE + 1`` frames each of ``n`` pairs of unrelated world scenes."""
    from kinema.train.data import render_world

    return [(render_world(seed, size, size, SCENE + 1, 8.0, motion_check=False)[0],
             render_world(seed + 50_000, size, size, SCENE + 1, 8.0, motion_check=False)[0])
            for seed in range(FIRST_SEED, FIRST_SEED + n)]


def joined(first: np.ndarray, second: np.ndarray, dissolve: bool) -> np.ndarray:
    """``first`` then ``second[1:]``; with ``dissolve``, ``first``'s last ``DISSOLVE`` frames fade into
    ``second``'s first ones (the fade's frame k of ``DISSOLVE`` is (k + 1) / (DISSOLVE + 1) the second)."""
    clip = np.concatenate([first, second[1:]]).astype(np.float32)
    if dissolve:
        start = len(first) - DISSOLVE
        w = (np.arange(1, DISSOLVE + 1, dtype=np.float32) / (DISSOLVE + 1))[:, None, None, None]
        clip[start:len(first)] = first[start:] * (1 - w) + second[:DISSOLVE] * w
    return np.round(clip).astype(np.uint8)


def measure(model: str | Path, data: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """The PSNRs of the module docstring for one VAE."""
    from kinema.common.video import from_model, to_model
    from kinema.eval.tasks import psnr
    from kinema.weights import load_vae

    vae = load_vae(model).float().eval()

    def round_trip(clip: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return from_model(vae.decode(vae.encode(to_model(clip))).float())

    rows = {"first_scene_db": [], "after_cut_db": [], "after_cut_first4_db": [], "second_alone_db": [],
            "dissolve_db": []}
    cut = SCENE + 1  # the clip's first frame of the second scene
    for first, second in data:
        clip = joined(first, second, False)
        recon = round_trip(clip)
        rows["first_scene_db"].append(psnr(recon[:cut], clip[:cut]))
        rows["after_cut_db"].append(psnr(recon[cut:], clip[cut:]))
        rows["after_cut_first4_db"].append(psnr(recon[cut:cut + 4], clip[cut:cut + 4]))
        rows["second_alone_db"].append(psnr(round_trip(second)[1:], second[1:]))
        fade = joined(first, second, True)
        rows["dissolve_db"].append(psnr(round_trip(fade)[cut - DISSOLVE:], fade[cut - DISSOLVE:]))
    return {k: float(np.mean(v)) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="kinema model folders (or VAE folders)")
    p.add_argument("--n", type=int, default=20, help="pairs of scenes")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.n < 1 or args.size < 16 or args.size % 16:
        p.error(f"--n must be >= 1 and --size a multiple of 16 (>= 16), got {args.n} and {args.size}")
    data = cases(args.n, args.size)
    results = []
    for model in args.models:
        r = {"model": str(model), "cases": args.n, **measure(model, data)}
        results.append(r)
        print(f"{model}: first scene {r['first_scene_db']:.1f} dB; after a cut {r['after_cut_db']:.1f} dB (its first 4 "
              f"frames {r['after_cut_first4_db']:.1f}; the second scene alone {r['second_alone_db']:.1f}); a dissolve "
              f"and after {r['dissolve_db']:.1f} dB", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
