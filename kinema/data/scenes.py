"""Scene detection, as math on a series: where does one shot end and the next begin?

Each frame gets a *content change*: the mean absolute difference from the previous frame in HSV
(hue counted around the circle and weighted by saturation, since the hue of a grey pixel is noise),
on a 0-255 scale. A hard cut is a frame whose change is both large (``threshold``) and large next
to the frames around it (``ratio`` times their median), the adaptive test of PySceneDetect's
AdaptiveDetector, so a fast pan that changes every frame a lot is not cut into pieces. A single
bright frame (a flash, a glitch) changes a lot twice but the frames on either side of it match:
that is not a cut. Gradual transitions (fades, dissolves) are not detected.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from kinema.data.config import SplitConfig


def to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 HSV, every channel 0-255, from uint8 RGB."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)


def content_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean abs difference (0-255) of two HSV frames; hue goes round the circle and counts by saturation."""
    dh = np.abs(a[..., 0] - b[..., 0])
    dh = np.minimum(dh, 256.0 - dh) * 2.0 * np.minimum(a[..., 1], b[..., 1]) / 255.0
    ds = np.abs(a[..., 1] - b[..., 1])
    dv = np.abs(a[..., 2] - b[..., 2])
    return float((dh.mean() + ds.mean() + dv.mean()) / 3.0)


class ChangeSeries:
    """Fed frames in order; keeps per frame the change from the one before and from the one before that."""

    def __init__(self):
        self.changes: list[float] = []  # changes[i]: frame i vs i - 1 (0 for the first)
        self.skips: list[float] = []  # skips[i]: frame i vs i - 2 (0 for the first two)
        self._prev: np.ndarray | None = None
        self._prev2: np.ndarray | None = None

    def add(self, rgb: np.ndarray) -> None:
        """Take the next frame (H, W, 3) uint8 RGB."""
        hsv = to_hsv(rgb)
        self.changes.append(content_change(hsv, self._prev) if self._prev is not None else 0.0)
        self.skips.append(content_change(hsv, self._prev2) if self._prev2 is not None else 0.0)
        self._prev2, self._prev = self._prev, hsv


def detect_cuts(changes: list[float], skips: list[float], fps: float, cfg: SplitConfig) -> list[int]:
    """Frame indices where a new shot starts (never 0), in order."""
    n = len(changes)
    half = max(1, round(cfg.window_seconds * fps))
    min_gap = max(1, round(cfg.min_scene_seconds * fps))
    cuts: list[int] = []
    suppressed: set[int] = set()
    for i in range(1, n):
        change = changes[i]
        if change < cfg.threshold or i in suppressed:
            continue
        if i + 1 < n and skips[i + 1] < cfg.threshold:  # frame i is a flash: i - 1 and i + 1 are one shot
            suppressed.add(i + 1)
            continue
        around = changes[max(1, i - half):i] + changes[i + 1:i + 1 + half]
        if around and change < cfg.ratio * float(np.median(around)):
            continue
        if i - (cuts[-1] if cuts else 0) < min_gap:
            continue
        cuts.append(i)
    return cuts


def scene_bounds(cuts: list[int], frames: int) -> list[tuple[int, int]]:
    """Shots as frame ranges [start, end) from the cut frames."""
    edges = [0] + cuts + [frames]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def plan_clips(start: int, end: int, times: list[float], fps: float, cfg: SplitConfig) -> list[tuple[int, int]]:
    """One shot [start, end) as clips: none when shorter than min_seconds, else equal pieces <= max_seconds."""
    duration = frame_time(end, times, fps) - times[start]
    if duration < cfg.min_seconds - 1e-6:
        return []
    pieces = max(1, math.ceil(duration / cfg.max_seconds - 1e-9))
    edges = [start + round(j * (end - start) / pieces) for j in range(pieces + 1)]
    return list(zip(edges[:-1], edges[1:]))


def frame_time(index: int, times: list[float], fps: float) -> float:
    """When frame ``index`` starts (the end of the last frame for index == len(times))."""
    return times[index] if index < len(times) else times[-1] + 1.0 / fps
