"""Draw training loss curves (metrics.jsonl of kinema runs) into one PNG, with Pillow only.

    python scripts/plot_loss.py runs/world-small-vae runs/world-small-dit -o docs/world-small-loss.png

One panel per run: the logged loss (light) and its moving average (dark) against the step, log-scaled loss
axis. A run that was resumed logs some steps twice; the last record of a step wins.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kinema.common.io import atomic_path

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 300, 64, 16, 28, 40


def read_losses(run: Path, key: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` in ``run/metrics.jsonl``, one value per step (the last one logged)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"plot_loss: {path} does not exist (is {run} a kinema run folder?)")
    by_step: dict[int, float] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a stopped run
        if key in rec and math.isfinite(rec[key]):
            by_step[int(rec["step"])] = float(rec[key])
    if not by_step:
        raise SystemExit(f"plot_loss: {path} logs no finite {key!r}")
    steps = np.array(sorted(by_step))
    return steps, np.array([by_step[s] for s in steps])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def panel(title: str, steps: np.ndarray, values: np.ndarray) -> Image.Image:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    lo, hi = math.log10(values.min()), math.log10(values.max())
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    s_max = max(int(steps[-1]), 1)

    def xy(s, v):
        return x0 + (x1 - x0) * s / s_max, y1 - (y1 - y0) * (math.log10(v) - lo) / (hi - lo)

    d.rectangle([x0, y0, x1, y1], outline="black")
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= math.log10(v) <= hi:
                _, y = xy(0, v)
                d.line([x0, y, x1, y], fill=(225, 225, 225))
                d.text((4, y - 6), f"{v:g}", fill="black")
    for k in range(5):
        s = s_max * k / 4
        x, _ = xy(s, 10 ** lo)
        d.text((x - 12, y1 + 6), f"{int(s)}", fill="black")
    d.text((x1 - 30, y1 + 22), "step", fill="black")
    d.text((x0, 8), title, fill="black")
    d.line([xy(s, v) for s, v in zip(steps, values)], fill=(170, 200, 235), width=1)
    d.line([xy(s, v) for s, v in zip(steps, smooth(values, max(5, len(values) // 40)))], fill=(20, 60, 160), width=2)
    return img


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (out_dir of kinema train)")
    ap.add_argument("-o", "--out", required=True, help="PNG to write")
    ap.add_argument("--key", default="loss", help="metric to plot (default: loss)")
    args = ap.parse_args(argv)
    panels = []
    for run in map(Path, args.runs):
        steps, values = read_losses(run, args.key)
        panels.append(panel(f"{run.name}: {args.key} (log scale), {len(steps)} logged steps", steps, values))
    sheet = Image.new("RGB", (W, H * len(panels)), "white")
    for i, p in enumerate(panels):
        sheet.paste(p, (0, H * i))
    out = Path(args.out)
    with atomic_path(out) as tmp:
        sheet.save(tmp)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
