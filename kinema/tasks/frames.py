"""Pixel <-> latent frame bookkeeping for a causal VAE with temporal factor ``tf`` (4 for Wan).

A clip of ``tf*k + 1`` pixel frames has ``k + 1`` latent frames. Latent frame 0 encodes pixel frame 0
on its own (so an image is a one-frame video); latent frame ``j >= 1`` encodes the ``tf`` pixel frames
``tf*(j-1)+1 .. tf*j``. Conditioning works per latent frame, so its time resolution is one latent frame
(``tf`` pixel frames) everywhere but the very first frame.

Policy for lengths that are not ``tf*k + 1``: a clip is padded by holding its last frame up to the next
valid length, and the padding is cut from what comes back (``pad_frames`` / ``valid_length``). Nothing is
ever trimmed from an input, so every input frame survives a round trip.
"""

from __future__ import annotations

import numpy as np
import torch


def _check_tf(tf: int) -> None:
    if not isinstance(tf, int) or tf < 1:
        raise ValueError(f"temporal factor must be a positive int, got {tf!r}")


def is_valid_length(pixel_frames: int, tf: int) -> bool:
    """True when ``pixel_frames`` is ``tf*k + 1`` for some k >= 0."""
    return pixel_frames >= 1 and (pixel_frames - 1) % tf == 0


def latent_count(pixel_frames: int, tf: int) -> int:
    """Latent frames of a clip of ``pixel_frames`` (which must be ``tf*k + 1``)."""
    _check_tf(tf)
    if not is_valid_length(pixel_frames, tf):
        raise ValueError(f"a clip must have {tf}k+1 frames (1, {tf + 1}, {2 * tf + 1}, ...), got {pixel_frames}")
    return (pixel_frames - 1) // tf + 1


def pixel_count(latent_frames: int, tf: int) -> int:
    """Pixel frames decoded from ``latent_frames`` latent frames: ``tf*(n-1) + 1``."""
    _check_tf(tf)
    if latent_frames < 1:
        raise ValueError(f"latent frame count must be >= 1, got {latent_frames}")
    return tf * (latent_frames - 1) + 1


def latent_index(pixel_frame: int, tf: int) -> int:
    """The latent frame that encodes pixel frame ``pixel_frame``: 0 -> 0, p >= 1 -> ceil(p / tf)."""
    _check_tf(tf)
    if pixel_frame < 0:
        raise ValueError(f"pixel frame must be >= 0, got {pixel_frame}")
    return (pixel_frame + tf - 1) // tf


def pixel_span(latent_frame: int, tf: int) -> range:
    """The pixel frames latent frame ``latent_frame`` encodes: range(0, 1) for 0, else tf*(j-1)+1 .. tf*j."""
    _check_tf(tf)
    if latent_frame < 0:
        raise ValueError(f"latent frame must be >= 0, got {latent_frame}")
    if latent_frame == 0:
        return range(0, 1)
    return range(tf * (latent_frame - 1) + 1, tf * latent_frame + 1)


def valid_length(pixel_frames: int, tf: int) -> int:
    """The smallest ``tf*k + 1`` >= ``pixel_frames`` (the padding policy's target length)."""
    _check_tf(tf)
    if pixel_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {pixel_frames}")
    return pixel_count(latent_index(pixel_frames - 1, tf) + 1, tf)


def pad_frames(frames: np.ndarray, tf: int) -> np.ndarray:
    """uint8 frames (F', H, W, 3) padded to the next valid length F' by holding the last frame."""
    n = len(frames)
    extra = valid_length(n, tf) - n
    if not extra:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], extra, axis=0)])


def grid_count(target: float, tf: int, offset: int, minimum: int) -> int:
    """The count ``tf*k + offset`` (k >= 0) nearest to ``target``, and at least ``minimum``."""
    _check_tf(tf)
    k = max(0, round((target - offset) / tf))
    n = tf * k + offset
    while n < minimum:
        n += tf
    return n


def frame_at(seconds: float, fps: float) -> int:
    """The pixel frame shown at ``seconds`` (nearest frame)."""
    return int(round(seconds * fps))


def frame_mask(latent_frames: int, indices) -> torch.Tensor:
    """A (latent_frames,) bool mask, True at ``indices`` (each in range)."""
    mask = torch.zeros(latent_frames, dtype=torch.bool)
    for j in indices:
        if not 0 <= j < latent_frames:
            raise ValueError(f"latent frame {j} is outside a window of {latent_frames} latent frames")
        mask[j] = True
    return mask


def masked_pixel_frames(mask: torch.Tensor, tf: int) -> list[int]:
    """The pixel frames covered by the True latent frames of a (F,) mask, in order."""
    return [p for j in torch.nonzero(mask.reshape(-1)).flatten().tolist() for p in pixel_span(j, tf)]


def cross_fade(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """uint8 frames going from ``start``'s to ``end``'s (both (k, H, W, 3)): frame j is (j+1)/(k+1) of ``end``."""
    k = len(start)
    w = (np.arange(1, k + 1, dtype=np.float32) / (k + 1))[:, None, None, None]
    return np.rint((1 - w) * start.astype(np.float32) + w * end.astype(np.float32)).astype(np.uint8)
