"""What a clip is like, in numbers: motion, sharpness, black / frozen / flash frames, shape.

Every measure is taken on frames scaled to one analysis width, so numbers compare across sizes:

    motion           mean optical-flow magnitude (DIS) between frames 1 / sample_fps apart,
                     in frame widths per second (0.1: the content moves a tenth of the frame a second)
    motion_max       the largest per-pair mean of those
    sharpness        median Laplacian variance of the grey frames (blur and upscaling lower it)
    black_fraction   frames whose mean luma and its spread are both under black_level (a night
                     scene with lights in it is dark, not black)
    static_fraction  frame-to-frame steps where almost no pixel changes (static_level): a frozen picture
    flashes          frames brighter than both neighbours by flash_delta (strobes, glitches)
    luma, contrast   mean and spatial std of luma (0-255)
    aspect           width / height as displayed

``reasons`` turns the measures and the thresholds into the list of why a clip is dropped.
"""

from __future__ import annotations

import cv2
import numpy as np

from kinema.data.config import FilterConfig, ScoreConfig


def flow_pair_starts(frames: int, step: int, max_pairs: int) -> list[int]:
    """Frame offsets k of the pairs (k, k + step) that optical flow looks at, spread over the clip."""
    starts = list(range(0, frames - step, step))
    if len(starts) > max_pairs:
        starts = [starts[round(i * (len(starts) - 1) / (max_pairs - 1))] for i in range(max_pairs)] if max_pairs > 1 \
            else [starts[len(starts) // 2]]
    return starts


class ClipMeter:
    """Fed one clip's frames in order (RGB at the analysis size); ``result()`` gives the measures."""

    def __init__(self, frames: int, fps: float, cfg: ScoreConfig):
        self.cfg, self.fps = cfg, fps
        self.step = max(1, round(fps / cfg.sample_fps))
        starts = flow_pair_starts(frames, self.step, cfg.max_flow_pairs)
        self.wanted = set(starts) | {k + self.step for k in starts}
        self.pair_starts = starts
        self.gray: dict[int, np.ndarray] = {}
        self.count = 0
        self.lumas: list[float] = []
        self.contrasts: list[float] = []
        self.static = 0
        self._prev: np.ndarray | None = None

    def add(self, rgb: np.ndarray) -> None:
        """Take the next frame (H, W, 3) uint8."""
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        self.lumas.append(float(gray.mean()))
        self.contrasts.append(float(gray.std()))
        if self._prev is not None and (cv2.absdiff(gray, self._prev) > 8).mean() < self.cfg.static_level:
            self.static += 1
        if self.count in self.wanted:
            self.gray[self.count] = gray
        self._prev = gray
        self.count += 1

    def result(self) -> dict:
        """The measures (see the module docstring); a clip with no frame raises ValueError."""
        if not self.count:
            raise ValueError("no frame of the clip decoded")
        width = next(iter(self.gray.values())).shape[1] if self.gray else 1
        per_second = self.fps / self.step / width
        motions, sharp = [], []
        # DIS (Kroeger et al. 2016), "fast" preset: ~1 ms a pair at 160x90 against ~10 ms for Farneback,
        # within a few percent of it on a known shift (tests/test_data_pipeline.py checks the speed).
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        for k in self.pair_starts:
            a, b = self.gray.get(k), self.gray.get(k + self.step)
            if a is None or b is None:
                continue
            flow = dis.calc(a, b, None)
            motions.append(float(np.linalg.norm(flow, axis=2).mean()) * per_second)
            sharp.append(float(cv2.Laplacian(a, cv2.CV_64F).var()))
        if not sharp and self.gray:  # too short for a pair: sharpness from what there is
            sharp = [float(cv2.Laplacian(g, cv2.CV_64F).var()) for g in self.gray.values()]
        luma, contrast = np.asarray(self.lumas), np.asarray(self.contrasts)
        flashes = 0
        if len(luma) >= 3:
            brighter = np.minimum(luma[1:-1] - luma[:-2], luma[1:-1] - luma[2:])
            flashes = int((brighter > self.cfg.flash_delta).sum())
        return dict(motion=float(np.mean(motions)) if motions else 0.0, motion_max=max(motions, default=0.0),
                    sharpness=float(np.median(sharp)) if sharp else 0.0,
                    black_fraction=float(((luma < self.cfg.black_level) & (contrast < self.cfg.black_level)).mean()),
                    static_fraction=self.static / max(1, self.count - 1), flashes=flashes,
                    luma=float(luma.mean()), contrast=float(contrast.mean()))


def reasons(clip: dict, cfg: FilterConfig) -> list[str]:
    """Why ``clip`` (measures + width, height, duration, aspect) is dropped; [] when it is kept."""
    out = []
    checks = [
        ("min_motion", clip["motion"] < cfg.min_motion, f"motion {clip['motion']:.4g} < {cfg.min_motion:g}"),
        ("max_motion", clip["motion"] > cfg.max_motion, f"motion {clip['motion']:.4g} > {cfg.max_motion:g}"),
        ("min_sharpness", clip["sharpness"] < cfg.min_sharpness,
         f"sharpness {clip['sharpness']:.4g} < {cfg.min_sharpness:g}"),
        ("max_black_fraction", clip["black_fraction"] > cfg.max_black_fraction,
         f"black frames {clip['black_fraction']:.0%} > {cfg.max_black_fraction:.0%}"),
        ("max_static_fraction", clip["static_fraction"] > cfg.max_static_fraction,
         f"frozen frames {clip['static_fraction']:.0%} > {cfg.max_static_fraction:.0%}"),
        ("max_flashes", clip["flashes"] > cfg.max_flashes, f"{clip['flashes']} flash frames > {cfg.max_flashes}"),
        ("min_aspect", clip["aspect"] < cfg.min_aspect, f"aspect {clip['aspect']:.3g} < {cfg.min_aspect:g}"),
        ("max_aspect", clip["aspect"] > cfg.max_aspect, f"aspect {clip['aspect']:.3g} > {cfg.max_aspect:g}"),
        ("min_width", clip["width"] < cfg.min_width, f"width {clip['width']} < {cfg.min_width}"),
        ("min_height", clip["height"] < cfg.min_height, f"height {clip['height']} < {cfg.min_height}"),
        ("min_seconds", clip["duration"] < cfg.min_seconds, f"{clip['duration']:.2f} s < {cfg.min_seconds:g} s"),
        ("max_seconds", clip["duration"] > cfg.max_seconds, f"{clip['duration']:.2f} s > {cfg.max_seconds:g} s"),
    ]  # fmt: skip
    for rule, failed, detail in checks:
        if failed:
            out.append(f"{rule}: {detail}")
    return out
