"""Model-free temporal metrics of a video: flicker and dynamic degree (after VBench).

* temporal flicker: ``(255 - mean |frame_t+1 - frame_t|) / 255`` (1 = no change between frames).
* dynamic degree: dense optical flow between consecutive frames; a pair moves when the mean of
  its top 5% flow magnitudes exceeds ``6 px * min(H, W) / 256`` (VBench's RAFT threshold scaled
  to the frame), and a video is dynamic when at least ``round(4 * F / 16)`` pairs move.

The flow is a pyramidal dense Lucas-Kanade in numpy (no OpenCV), run at <= 64 px.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

FLOW_SIDE = 64  # px: flow is computed at about this size and scaled back
FLOW_THRESHOLD = 6.0 / 256.0  # x min(H, W), per frame pair
TOP_FRACTION = 0.05


def temporal_flicker(video: np.ndarray) -> float:
    """``(255 - mean absolute difference of consecutive frames) / 255`` for uint8 (F, H, W, 3)."""
    if len(video) < 2:
        return 1.0
    v = video.astype(np.int16)
    return float((255.0 - np.abs(np.diff(v, axis=0)).mean()) / 255.0)


def dynamic_degree(video: np.ndarray) -> tuple[bool, float]:
    """Whether the video moves (VBench rule) and the median top-5% flow magnitude, in px/frame."""
    f, h, w, _ = video.shape
    if f < 2:
        return False, 0.0
    lum = video.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])  # (F, H, W)
    k = max(1, round(min(h, w) / FLOW_SIDE))
    if k > 1:
        lum = lum[:, : h // k * k, : w // k * k].reshape(f, h // k, k, w // k, k).mean((2, 4))
    flow = optical_flow(lum[:-1], lum[1:]) * k  # (P, h, w, 2) in full-size px
    mag = np.linalg.norm(flow, axis=-1).reshape(f - 1, -1)
    top = max(1, int(TOP_FRACTION * mag.shape[1]))
    score = np.partition(mag, mag.shape[1] - top, axis=1)[:, -top:].mean(1)  # (P,)
    moving = int((score > FLOW_THRESHOLD * min(h, w)).sum())
    return moving >= max(1, round(4 * f / 16)), float(np.median(score))


def optical_flow(prev: np.ndarray, nxt: np.ndarray, levels: int = 3, window: int = 5,
                 iterations: int = 2) -> np.ndarray:
    """Dense flow (P, H, W, 2) as (dx, dy) px from ``prev`` to ``nxt``, both (P, H, W) grey."""
    p, h, w = prev.shape
    pyramid = [(prev.astype(np.float32), nxt.astype(np.float32))]
    for _ in range(levels - 1):
        a, b = pyramid[-1]
        if min(a.shape[1:]) < 16:
            break
        pyramid.append((_half(a), _half(b)))
    flow = np.zeros(pyramid[-1][0].shape + (2,), dtype=np.float32)
    for a, b in reversed(pyramid):
        if flow.shape[1:3] != a.shape[1:]:
            flow = _upsample_flow(flow, a.shape[1:])
        a = ndimage.gaussian_filter(a, sigma=(0, 0.8, 0.8))
        b = ndimage.gaussian_filter(b, sigma=(0, 0.8, 0.8))
        for _ in range(iterations):
            flow += _lk_update(a, b, flow, window)
    return flow


def _half(x: np.ndarray) -> np.ndarray:
    p, h, w = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(p, h // 2, 2, w // 2, 2).mean((2, 4))


def _upsample_flow(flow: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Double a coarse flow field (pixel repeat) onto ``shape``, scaling the vectors by 2."""
    up = np.repeat(np.repeat(flow, 2, axis=1), 2, axis=2) * 2.0
    out = np.zeros(flow.shape[:1] + tuple(shape) + (2,), dtype=np.float32)
    hh, ww = min(shape[0], up.shape[1]), min(shape[1], up.shape[2])
    out[:, :hh, :ww] = up[:, :hh, :ww]
    return out


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (P, H, W) at per-pixel positions x, y (P, H, W), clamped to the border."""
    p, h, w = img.shape
    x, y = np.clip(x, 0, w - 1.001), np.clip(y, 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = x - x0, y - y0
    flat = img.reshape(p, -1)
    base = (np.arange(p) * h * w)[:, None, None]
    i00 = base + y0 * w + x0
    v00, v01 = flat.ravel()[i00], flat.ravel()[i00 + 1]
    v10, v11 = flat.ravel()[i00 + w], flat.ravel()[i00 + w + 1]
    return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy


def _lk_update(a: np.ndarray, b: np.ndarray, flow: np.ndarray, window: float) -> np.ndarray:
    """One Lucas-Kanade step: solve the windowed 2x2 system for the residual flow everywhere."""
    p, h, w = a.shape
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = _bilinear(b, xx + flow[..., 0], yy + flow[..., 1])
    gy, gx = np.gradient(0.5 * (a + warped), axis=(1, 2))
    it = warped - a

    def smooth(x):
        return ndimage.uniform_filter(x, size=(1, window, window))

    sxx, sxy, syy = smooth(gx * gx), smooth(gx * gy), smooth(gy * gy)
    sxt, syt = smooth(gx * it), smooth(gy * it)
    reg = 5.0 + 0.01 * (sxx + syy)  # noise-level damping (0-255 units): flat, noisy regions stay at zero flow
    det = (sxx + reg) * (syy + reg) - sxy * sxy
    du = -((syy + reg) * sxt - sxy * syt) / det
    dv = -((sxx + reg) * syt - sxy * sxt) / det
    return np.stack([np.clip(du, -2, 2), np.clip(dv, -2, 2)], axis=-1).astype(np.float32)
