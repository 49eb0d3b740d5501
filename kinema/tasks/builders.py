"""From pixel inputs to a ``Condition``: every task is a window of latent frames, some of them given.

Each builder returns a ``Window``: how many pixel frames to sample, the condition (which latent frames
are given, and their clean values) and which of the window's decoded pixel frames are new. The caller
samples the window with the one conditioned sampling loop and joins ``frames[window.new]`` with its
inputs; no task has a loop of its own.

The VAE is causal, and a window is decoded as a clip of its own, so where a given frame sits matters:

* At the start of a window (image-to-video, extend forwards, the start of connect, the next window of a
  long video) the given frames are encoded as a clip of their own (``start_latents``): the first of
  them becomes the clip's proper first frame (latent frame 0 encodes one pixel frame), exactly as the
  window will be decoded.
* Anywhere later (extend backwards, the end of connect, keyframes after frame 0, in a loop) a
  latent frame stands for ``tf`` pixel frames that follow other frames. Those frames are encoded as
  latent frames 1.. of a clip whose proper start is their own first frame repeated once
  (``middle_latents``); that start's latent is dropped. The encoder thus sees a still history in place
  of the (not yet generated) frames before, an approximation confined to its short causal reach.
* An image pinned at a pixel frame p >= 1 lands in latent frame ceil(p / tf), which covers ``tf``
  pixel frames; it is encoded as the image held still over those frames (``still_latent``). So a
  keyframe is a short hold, not a single frame, and it sits up to ``tf - 1`` frames from p.

Encoding goes through an ``encode`` function (the VAE's, passed in), so this layer imports no model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..common.video import to_model
from .condition import Condition
from .frames import cross_fade, latent_count, latent_index, pixel_count
from .motion import carry_motion

Encode = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, tf*k+1, H, W) in [-1, 1] -> (1, C, k+1, h, w)


@dataclass
class Window:
    """A clip to sample: ``frames`` pixel frames (tf*k + 1), its condition, and which of its pixel frames are new;
    ``cyclic``: its latent frames are one period of a loop (decoded as tf frames each); ``init``: latents
    (1, C, k+1, h, w) of a first guess of the whole window, to start sampling from partly noised (SDEdit)."""

    frames: int
    condition: Condition | None
    new: slice
    cyclic: bool = False
    init: torch.Tensor | None = None


# -- encoding given frames ---------------------------------------------------------------------------------


def start_latents(encode: Encode, frames: np.ndarray, tf: int) -> torch.Tensor:
    """Latents (1, C, k+1, h, w) of uint8 frames (tf*k+1, H, W, 3) encoded as a clip of their own."""
    latent_count(len(frames), tf)
    return encode(to_model(frames))


def middle_latents(encode: Encode, frames: np.ndarray, tf: int) -> torch.Tensor:
    """Latents (1, C, m, h, w) of uint8 frames (tf*m, H, W, 3) as latent frames 1..m of a clip started by frames[0]."""
    if len(frames) < tf or len(frames) % tf:
        raise ValueError(f"middle latents need a multiple of {tf} frames (>= {tf}), got {len(frames)}")
    clip = np.concatenate([frames[:1], frames])  # (1 + tf*m, H, W, 3): a proper first frame, then the frames
    return encode(to_model(clip))[:, :, 1:]


def still_latent(encode: Encode, image: np.ndarray, tf: int) -> torch.Tensor:
    """The latent (1, C, 1, h, w) of uint8 ``image`` (H, W, 3) held still for ``tf`` frames (a latent frame >= 1)."""
    return middle_latents(encode, np.repeat(image[None], tf, axis=0), tf)


def image_latent(encode: Encode, image: np.ndarray, latent_frame: int, tf: int) -> torch.Tensor:
    """The latent (1, C, 1, h, w) of ``image`` pinned at ``latent_frame``: a first frame at 0, else a still."""
    return start_latents(encode, image[None], tf) if latent_frame == 0 else still_latent(encode, image, tf)


def place(pieces: list[tuple[int, torch.Tensor]], latent_frames: int) -> Condition:
    """A Condition over ``latent_frames`` frames holding each (first latent frame, latents (1, C, n, h, w)) piece."""
    if not pieces:
        raise ValueError("a condition needs at least one given piece")
    ref = pieces[0][1]
    b, c, _, h, w = ref.shape
    latents = ref.new_zeros(b, c, latent_frames, h, w)
    mask = torch.zeros(b, latent_frames, dtype=torch.bool, device=ref.device)
    for start, piece in pieces:
        n = piece.shape[2]
        if start < 0 or start + n > latent_frames:
            raise ValueError(f"latent frames {start}..{start + n - 1} lie outside a window of {latent_frames}")
        if bool(mask[:, start:start + n].any()):
            raise ValueError(f"latent frames {start}..{start + n - 1} are given twice")
        latents[:, :, start:start + n] = piece.to(latents)
        mask[:, start:start + n] = True
    return Condition(latents=latents, mask=mask)


# -- the spans of an input video that condition a window ---------------------------------------------------


def forward_span(video: np.ndarray, overlap: int, tf: int) -> np.ndarray:
    """The last tf*(n-1)+1 frames of ``video``, n = ``overlap`` latent frames or as many as the video holds."""
    n = min(overlap, (len(video) - 1) // tf + 1)  # the most latent frames whose pixel_count fits the video
    return video[len(video) - pixel_count(n, tf):]


def backward_span(video: np.ndarray, overlap: int, tf: int) -> np.ndarray:
    """The first tf*n frames of ``video``, n = ``overlap`` latent frames or as many as it holds (a video shorter
    than ``tf`` frames is padded by holding its last frame)."""
    n = max(1, min(overlap, len(video) // tf))
    span = video[:tf * n]
    if len(span) < tf * n:
        span = np.concatenate([span, np.repeat(span[-1:], tf * n - len(span), axis=0)])
    return span


def _check_overlap(overlap: int) -> None:
    if not isinstance(overlap, int) or overlap < 1:
        raise ValueError(f"overlap must be a positive number of latent frames, got {overlap!r}")


# -- tasks --------------------------------------------------------------------------------------------------


def keyframes_window(encode: Encode, pinned: list[tuple[int, np.ndarray]], frames: int, tf: int) -> Window:
    """A window of ``frames`` with each (pixel frame, image (H, W, 3)) pinned at the latent frame holding it."""
    latent_frames = latent_count(frames, tf)
    pieces = []
    for pixel, image in pinned:
        if not 0 <= pixel < frames:
            raise ValueError(f"pixel frame {pixel} lies outside a clip of {frames} frames")
        j = latent_index(pixel, tf)
        pieces.append((j, image_latent(encode, image, j, tf)))
    return Window(frames=frames, condition=place(pieces, latent_frames), new=slice(0, frames))


def image_window(encode: Encode, image: np.ndarray, frame: int, frames: int, tf: int) -> Window:
    """Image-to-video: ``image`` pinned at pixel ``frame`` of a ``frames``-frame window."""
    return keyframes_window(encode, [(frame, image)], frames, tf)


def extend_window(encode: Encode, video: np.ndarray, new_frames: int, overlap: int, tf: int,
                  direction: str = "forward", carry: bool = False) -> Window:
    """A window continuing ``video`` by ``new_frames`` (forward: a multiple of tf; backward: tf*k+1).

    forward: the window starts with the video's last ``overlap`` latent frames (a clip of their own).
    backward: the window ends with the video's first ``overlap`` latent frames (middle latents).
    ``carry``: ``Window.init`` holds the window with its new frames drawn by carrying the video's motion
    on past its end (backward: before its start), ``kinema.tasks.motion``, encoded as one clip.
    """
    _check_overlap(overlap)
    if direction == "forward":
        if new_frames < tf or new_frames % tf:
            raise ValueError(f"a forward extension adds a multiple of {tf} frames, got {new_frames}")
        span = forward_span(video, overlap, tf)
        given = start_latents(encode, span, tf)
        frames = len(span) + new_frames
        init = (start_latents(encode, np.concatenate([span, carry_motion(video, new_frames)]), tf)
                if carry else None)
        return Window(frames=frames, condition=place([(0, given)], latent_count(frames, tf)),
                      new=slice(len(span), frames), init=init)
    if direction == "backward":
        latent_count(new_frames, tf)  # tf*k + 1: with the tf*n given frames the window is tf*(k+n) + 1
        span = backward_span(video, overlap, tf)
        given = middle_latents(encode, span, tf)
        frames = new_frames + len(span)
        latent_frames = latent_count(frames, tf)
        init = (start_latents(encode, np.concatenate([carry_motion(video[::-1], new_frames)[::-1], span]), tf)
                if carry else None)
        return Window(frames=frames, condition=place([(latent_frames - given.shape[2], given)], latent_frames),
                      new=slice(0, new_frames), init=init)
    raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")


def connect_window(encode: Encode, video_a: np.ndarray, video_b: np.ndarray, new_frames: int, overlap: int,
                   tf: int, carry: bool = False) -> Window:
    """A transition of ``new_frames`` (a multiple of tf): the end of A starts the window, the start of B ends it.

    ``carry``: ``Window.init`` holds the window with its new frames cross-faded from A's motion carried on
    past its end into B's carried back before its start (``kinema.tasks.motion``), encoded as one clip.
    """
    _check_overlap(overlap)
    if new_frames < tf or new_frames % tf:
        raise ValueError(f"a transition has a multiple of {tf} frames, got {new_frames}")
    head, tail = forward_span(video_a, overlap, tf), backward_span(video_b, overlap, tf)
    given_a, given_b = start_latents(encode, head, tf), middle_latents(encode, tail, tf)
    frames = len(head) + new_frames + len(tail)
    latent_frames = latent_count(frames, tf)
    condition = place([(0, given_a), (latent_frames - given_b.shape[2], given_b)], latent_frames)
    init = None
    if carry:
        middle = cross_fade(carry_motion(video_a, new_frames), carry_motion(video_b[::-1], new_frames)[::-1])
        init = start_latents(encode, np.concatenate([head, middle, tail]), tf)
    return Window(frames=frames, condition=condition, new=slice(len(head), len(head) + new_frames), init=init)


def loop_window(period: int, tf: int, image: torch.Tensor | None = None) -> Window:
    """A loop of ``period`` pixel frames (a multiple of tf, at least two latent frames): ``period // tf`` latent
    frames sampled and decoded as a cycle (``Window.cyclic``: ``cyclic_velocity``, ``Pipeline.decode``), so
    its last frame leads into its first. ``image`` (1, C, 1, h, w), a still latent (``still_latent``: a
    latent frame of a cycle follows other frames), is given as its latent frame 0: the loop starts on it.
    """
    if period < 2 * tf or period % tf:
        raise ValueError(f"a loop's period is a multiple of {tf} frames and at least {2 * tf}, got {period}")
    latent_frames = period // tf
    condition = None if image is None else place([(0, image)], latent_frames)
    return Window(frames=pixel_count(latent_frames, tf), condition=condition, new=slice(0, period), cyclic=True)
