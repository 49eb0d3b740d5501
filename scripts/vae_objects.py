"""How well a VAE reconstructs the world's objects, frame by frame: the diagnostic behind its training.

    python scripts/vae_objects.py MODEL [MODEL ...] [--clips 12] [--size 128] [--frames 17] [--json out.json]

For each model folder, round-trips ``--clips`` world clips (seeds 2001, 2002, ...; the benchmark's size)
through encode and decode and prints the mean absolute error on the [-1, 1] scale over the pixels the
renderer drew objects on, per frame, then the whole-clip PSNR (8-bit). Frame 0 is encoded alone; every later
latent frame carries four frames, so a VAE that fails at temporal compression shows it in frames 1+.
Then the round trip's motion against the clip's: its mean frame-to-frame step over the clip's (1 = no added
flicker), the mean error of its steps (|recon step - clip step|, 8-bit levels), and its steps across latent
frames (frame 4k -> 4k+1) over its steps within one (what makes a loop's wrap or a window's join stand out).
``kinema eval world --reconstruct`` is the benchmark's verdict on the same round trip; this says where
the pixels go wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

FIRST_SEED = 2001


def clips(n: int, size: int, frames: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 frames (F, H, W, 3), object mask (F, H, W) bool) of ``n`` world clips."""
    from kinema.train.data import render_world

    return [render_world(seed, size, size, frames, 8.0, with_mask=True)[::2]
            for seed in range(FIRST_SEED, FIRST_SEED + n)]


def measure(model: str | Path, data: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Object-pixel L1 per frame (mean over clips showing objects in that frame) and whole-clip PSNR."""
    from kinema.common.video import from_model, to_model
    from kinema.eval.tasks import psnr
    from kinema.weights import load_vae

    vae = load_vae(model).float().eval()
    frames = data[0][0].shape[0]
    sums, counts, psnrs = np.zeros(frames), np.zeros(frames), []
    clip_steps, recon_steps, step_errors = [], [], []
    with torch.inference_mode():
        for clip, mask in data:
            video = to_model(clip)
            recon = vae.decode(vae.encode(video))
            err = (recon - video).abs().mean(1)[0]  # (F, H, W)
            for f in range(frames):
                if mask[f].any():
                    sums[f] += err[f][torch.from_numpy(mask[f])].mean().item()
                    counts[f] += 1
            psnrs.append(psnr(from_model(recon), clip))
            if frames > 1:  # mean absolute steps per frame pair, in 8-bit levels
                steps_v, steps_r = video.diff(dim=2), recon.diff(dim=2)
                clip_steps.append(steps_v.abs().mean((0, 1, 3, 4)).numpy() * 127.5)
                recon_steps.append(steps_r.abs().mean((0, 1, 3, 4)).numpy() * 127.5)
                step_errors.append((steps_r - steps_v).abs().mean().item() * 127.5)
    per_frame = [float(s / c) if c else float("nan") for s, c in zip(sums, counts)]
    out = {"model": str(model), "object_l1_per_frame": per_frame, "object_l1_frame0": per_frame[0],
           "object_l1_later": float(np.nanmean(per_frame[1:])) if frames > 1 else float("nan"),
           "psnr_db": float(np.mean(psnrs))}
    if frames > 1:
        clip_mean, recon_mean = np.mean(clip_steps, 0), np.mean(recon_steps, 0)  # per step position
        across = [i for i in range(frames - 1) if i % 4 == 0]  # frame 4k -> 4k+1: from one latent frame to the next
        within = [i for i in range(frames - 1) if i % 4]
        out.update(step_ratio=float(recon_mean.mean() / clip_mean.mean()), step_error=float(np.mean(step_errors)),
                   across_within=float(recon_mean[across].mean() / recon_mean[within].mean()) if within else float("nan"),
                   clip_across_within=float(clip_mean[across].mean() / clip_mean[within].mean()) if within else float("nan"))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="kinema model folders (a VAE folder or a whole model)")
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--size", type=int, default=128, help="square frame size, a multiple of 16")
    ap.add_argument("--frames", type=int, default=17, help="4k+1 frames")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.clips < 1 or args.size % 16 or args.size < 16 or (args.frames - 1) % 4:
        ap.error(f"--clips must be >= 1, --size a multiple of 16 and --frames 4k+1; got {args.clips}, {args.size}, "
                 f"{args.frames}")
    data = clips(args.clips, args.size, args.frames)
    results = []
    for model in args.models:
        r = measure(model, data)
        results.append(r)
        print(f"{model}: object L1 frame 0 {r['object_l1_frame0']:.3f}, frames 1+ {r['object_l1_later']:.3f}, "
              f"PSNR {r['psnr_db']:.1f} dB | per frame " + " ".join(f"{v:.2f}" for v in r["object_l1_per_frame"]))
        if "step_ratio" in r:
            print(f"  steps: {r['step_ratio']:.2f}x the clip's, off by {r['step_error']:.2f} levels; across / within "
                  f"latent frames {r['across_within']:.2f} (the clip's own: {r['clip_across_within']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
