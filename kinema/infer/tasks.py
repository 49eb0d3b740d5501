"""Prompting with images and videos: image-to-video, extend, loop, connect, edit, keyframes, image.

Every task here is the same three moves: load and check the inputs (before any sampling), build a
``Window`` (a condition over latent frames, ``kinema.tasks.builders``), and run it through the one
conditioned sampling loop of ``Pipeline.run``; the result joins the window's new frames with the inputs
(the input frames the window shares faded into its decoding of them, ``JOINS``).

Inputs are paths or uint8 arrays ((H, W, 3) images, (F, H, W, 3) videos). Videos read from files are
resampled to the request's fps; arrays are taken to be at that fps. A request that names neither width nor
height is made at its (first) input's size (``size_for_input``: the input's own size where the model can
make it, else its aspect ratio at the model's pixel count), so a wide video is extended wide. Inputs of
another size are resized to the request's width x height by ``resize``: "crop" (default: scale to cover,
centre-crop), "pad" (scale to fit, black bars) or "stretch". The ``Video.latents`` of a task result is the
sampled window, its given latent frames exactly as the condition holds them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace

import numpy as np
import torch

from ..common.video import (RESIZE_POLICIES, VideoDecodeError, probe_video, read_image, read_video, resize_video,
                            to_model)
from ..tasks.builders import (Window, connect_window, extend_window, image_window, keyframes_window, loop_window,
                              still_latent)
from ..tasks.condition import Condition
from ..tasks.fit import FIT_STEPS, fit_latents
from ..tasks.frames import cross_fade, frame_at, grid_count, latent_index, pad_frames, pixel_span
from ..config import ModelConfig
from .pipeline import InputError, Pipeline, Settings, Video

Media = str | os.PathLike | np.ndarray
DEFAULT_OVERLAP = 2  # latent frames carried into a continuation: 1 pins a frame, 2 also carry its motion
# How a continuation meets its input. The window's given frames decode to the model's copy of the input's
# frames, not the frames themselves (the VAE's round trip), and the new frames continue from that copy, so
# cut next to the input they jump by the round trip's error: for the bundled model about 2 typical frame
# steps at every join (1.2 between the decoded frames). "fade" (the default) fades the frames both show from
# the input's to the model's (``cross_fade``), so the join steps like the rest; "cut" keeps the input's frames.
JOINS = ("fade", "cut")
# An extension (and a connection) starts sampling from its input's motion carried on (``kinema.tasks.motion``)
# noised to this strength; 1 starts from pure noise. Bundled model, 100 cases of ``kinema eval tasks`` (bf16),
# direction kept forwards: 56% from noise, 83 / 86 / 91 / 95% at 0.6 / 0.5 / 0.4 / 0.3; backwards: 40% from
# noise, 90 / 88 / 84% at 0.5 / 0.4 / 0.3. At 0.4 on 400 cases (seeds 0, 7, 13, 21): 92% forwards, 91% backwards.
MOTION_STRENGTH = 0.4


# -- inputs ---------------------------------------------------------------------------------------------------


def _frames_of(value, name: str, image: bool) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    want = "(H, W, 3)" if image else "(F, H, W, 3) (or an (H, W, 3) image)"
    if arr.dtype != np.uint8:
        raise InputError(f"{name} must be uint8 RGB {want}, got dtype {arr.dtype}")
    if image and arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if not image and arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != (3 if image else 4) or arr.shape[-1] != 3 or min(arr.shape) < 1:
        raise InputError(f"{name} must be uint8 RGB {want}, got shape {tuple(arr.shape)}")
    return arr


def _fit(frames: np.ndarray, width: int, height: int, resize: str) -> np.ndarray:
    if resize not in RESIZE_POLICIES:
        raise InputError(f"resize policy {resize!r} is unknown; choose one of {list(RESIZE_POLICIES)}")
    if frames.shape[1:3] == (height, width):
        return frames
    return resize_video(frames, width, height, policy=resize)


INPUT_AREA_LIMIT = 2  # an input's own size is kept up to this many times the model's default pixel count


def size_for_input(width: int, height: int, cfg: ModelConfig) -> tuple[int, int]:
    """The (width, height) a request made from a ``width`` x ``height`` input takes when it names no size:
    the input's own where the model can make it (multiples of its pixel multiple, at most
    ``INPUT_AREA_LIMIT`` times its default pixel count), else the input's aspect ratio at the model's default
    pixel count, rounded to its multiples (a 1920x1080 video with the bundled model: 176x96)."""
    m, area = cfg.pixel_multiple, cfg.sampling.width * cfg.sampling.height
    if width % m == 0 and height % m == 0 and width * height <= INPUT_AREA_LIMIT * area:
        return width, height
    scale = math.sqrt(area / (width * height))
    return max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m)


def media_size(media: Media, name: str = "input") -> tuple[int, int]:
    """(width, height) of an image or video path (as displayed: rotation and EXIF orientation applied) or array,
    reading no more than its first frame; InputError if it cannot be read."""
    if isinstance(media, (str, os.PathLike)):
        try:
            info = probe_video(media)
        except VideoDecodeError as err:
            raise InputError(f"{name}: {err}") from None
        return info["width"], info["height"]
    shape = np.shape(media)
    if len(shape) not in (3, 4):
        raise InputError(f"{name} must be uint8 RGB (H, W, 3) or (F, H, W, 3), got shape {tuple(shape)}")
    return shape[-2], shape[-3]


def _input_sized(pipe: Pipeline, settings: dict, media: Media | None, name: str) -> dict:
    """``settings`` with the width and height ``size_for_input`` gives ``media``, where they name neither."""
    if media is None or settings.get("width") is not None or settings.get("height") is not None:
        return settings
    width, height = size_for_input(*media_size(media, name), pipe.cfg)
    return {**settings, "width": width, "height": height}


def load_image(image: Media, width: int, height: int, resize: str = "crop", name: str = "image") -> np.ndarray:
    """uint8 (height, width, 3) from an image path or array, resized by ``resize``; InputError if unreadable."""
    if isinstance(image, (str, os.PathLike)):
        try:
            image = read_image(image)
        except VideoDecodeError as err:
            raise InputError(f"{name}: {err}") from None
    return _fit(_frames_of(image, name, image=True)[None], width, height, resize)[0]


def load_video(video: Media, fps: float, width: int, height: int, resize: str = "crop",
               name: str = "video") -> np.ndarray:
    """uint8 (F, height, width, 3) from a video path (resampled to ``fps``) or array, resized; InputError if bad.

    A path's frames are scaled down as they are decoded to twice the target's sides (still covering it), so a
    long high-resolution input never sits in memory at full size."""
    if isinstance(video, (str, os.PathLike)):
        given_w, given_h = media_size(video, name)
        scale = min(1.0, max(2 * width / given_w, 2 * height / given_h))
        try:
            video, _ = read_video(video, fps=fps, max_pixels=math.ceil(given_w * given_h * scale * scale))
        except VideoDecodeError as err:
            raise InputError(f"{name}: {err}") from None
    return _fit(_frames_of(video, name, image=False), width, height, resize)


def check_strength(strength: float) -> float:
    """``strength`` if it is a number in (0, 1]; InputError otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InputError(f"edit strength must be in (0, 1] (0.3 keeps most of the video, 1 re-generates it), "
                         f"got {strength!r}")
    return float(strength)


def check_fit_steps(steps: int, name: str = "fit steps") -> int:
    """``steps`` if it is an integer >= 0; InputError otherwise."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InputError(f"{name} must be an integer >= 0 (0: decode the encoder's latents), got {steps!r}")
    return steps


def check_motion_strength(strength: float, name: str = "motion strength") -> float:
    """``strength`` if it is a number in (0, 1] (an extension's start, ``extend``); InputError otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InputError(f"{name} must be a number in (0, 1] (lower keeps more of the input's motion carried on, "
                         f"1 starts from pure noise), got {strength!r}")
    return float(strength)


def check_join(join: str) -> str:
    """``join`` if it is one of ``JOINS``; InputError otherwise."""
    if join not in JOINS:
        raise InputError(f"join must be one of {list(JOINS)} (fade: the input's frames the window shares fade to "
                         f"the model's; cut: kept exactly), got {join!r}")
    return join


def check_seconds(seconds: float, name: str = "seconds") -> float:
    """``seconds`` if it is a finite number > 0; InputError otherwise."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{name} must be a number of seconds > 0, got {seconds!r}")
    return float(seconds)


def keyframe_frames(times: list[float], frames: int, fps: int, tf: int) -> list[int]:
    """Pixel frames for keyframe ``times`` (seconds) in a clip of ``frames``; InputError if outside or colliding."""
    if not times:
        raise InputError("keyframes need at least one (seconds, image) pair")
    end = (frames - 1) / fps
    pixels, owner = [], {}
    for t in times:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise InputError(f"keyframe time must be a number of seconds, got {t!r}")
        p = frame_at(t, fps)
        if t < 0 or p > frames - 1:
            raise InputError(f"keyframe time {t} s lies outside the clip: {frames} frames at {fps} fps span "
                             f"0 .. {end:.3f} s")
        j = latent_index(p, tf)
        if j in owner:
            span = pixel_span(j, tf)
            raise InputError(f"keyframes at {owner[j]} s and {t} s fall in the same latent frame (pixel frames "
                             f"{span.start}..{span.stop - 1}); keep keyframes at least {tf} frames "
                             f"({tf / fps:.3f} s) apart")
        owner[j] = t
        pixels.append(p)
    return pixels


# -- running a window -----------------------------------------------------------------------------------------


def encoder(pipe: Pipeline):
    """The pipeline VAE's ``encode`` for builders: (1, 3, tf*k+1, H, W) in [-1, 1] -> float32 latents."""
    dtype = next(pipe.vae.parameters()).dtype

    @torch.inference_mode()
    def encode(video: torch.Tensor) -> torch.Tensor:
        return pipe.vae.encode(video.to(pipe.device, dtype)).float()

    return encode


def _generic_task(pipe: Pipeline, task: str) -> None:
    """InputError, before any input is read, for a model these tasks cannot drive: a Wan 2.1 image-to-video model
    takes its image through its own channels (``kinema.infer.i2v_wan``), not as a given latent frame."""
    pipe.check_samples_alone(f"kinema.infer.tasks.{task}")


def _tf(pipe: Pipeline) -> int:
    return pipe.cfg.vae.temporal_factor


def _settings(pipe: Pipeline, prompt: str, settings: dict, task: str, **fixed) -> Settings:
    """Validated settings; ``fixed`` are set by the task, and a caller passing one of them is refused."""
    clash = sorted(k for k, v in fixed.items() if settings.get(k) is not None and (v is None or settings[k] != v))
    if clash:
        raise InputError(f"{task} sets {clash} itself (from its inputs and seconds); don't pass them")
    return pipe.settings(prompt, **{**settings, **fixed})


def _run(pipe: Pipeline, s: Settings, window: Window, progress, before: np.ndarray | None = None,
         after: np.ndarray | None = None, first_image: np.ndarray | None = None, fit_steps: int = 0,
         join: str = "cut") -> Video:
    """Sample ``window`` with settings ``s`` and join its new frames between ``before`` and ``after``, whose
    end and start (respectively) the window begins and ends with (faded by ``join``, ``JOINS``).
    ``first_image``: the image given as the window's first latent frame, which is decoded fitted to it
    (``fit_steps`` steps of ``kinema.tasks.fit``; the sampling sees the encoder's latent), unless the
    pipeline decodes in tiles (asked for to bound memory, which a fit's backward pass would not)."""
    t = time.perf_counter()
    decode_with = None
    if first_image is not None and fit_steps and pipe.vae_tiles is None:  # tiles: to save memory, so no autograd
        decode_with = _fit_first_frame(pipe, window.condition, first_image, fit_steps)
    fit_s = time.perf_counter() - t
    video = pipe.run(replace(s, frames=window.frames), condition=window.condition, init_latents=window.init,
                     progress=progress, cyclic=window.cyclic, decode_with=decode_with)
    if decode_with is not None:
        video.timings.update(fit=fit_s, total=video.timings["total"] + fit_s)
    decoded = video.frames
    if before is not None and join == "fade":  # the window's frames before its new ones decode the end of ``before``
        k = window.new.start
        before = np.concatenate([before[:len(before) - k], cross_fade(before[len(before) - k:], decoded[:k])])
    if after is not None and join == "fade":  # ... and those after them the start of ``after``
        k = min(window.frames - window.new.stop, len(after))
        after = np.concatenate([cross_fade(decoded[window.new.stop:window.new.stop + k], after[:k]), after[k:]])
    parts = [p for p in (before, decoded[window.new], after) if p is not None]
    return replace(video, frames=np.concatenate(parts) if len(parts) > 1 else parts[0])


def _fit_first_frame(pipe: Pipeline, condition: Condition, image: np.ndarray, steps: int) -> Condition:
    """A condition holding ``condition``'s first latent frame (the encoding of ``image``) fitted to ``image``
    through the pipeline's decoder, for decoding."""
    target = to_model(image[None]).to(pipe.device)  # (1, 3, 1, H, W): the image as a 1-frame clip
    fitted = fit_latents(pipe.decode_pixels, condition.latents[:, :, :1], target, steps)
    latents = torch.zeros_like(condition.latents)
    latents[:, :, :1] = fitted.to(latents.dtype)
    mask = torch.zeros_like(condition.mask)
    mask[:, 0] = True
    return Condition(latents, mask)


def _source(media) -> str:
    """How a task's input is named in its output's metadata: its path, or "(array)"."""
    return os.fspath(media) if isinstance(media, (str, os.PathLike)) else "(array)"


def _noted(made: Video, task: str, **info) -> Video:
    """``video`` with the task that made it in its metadata (``notes["task"]``, JSON): its inputs and settings
    beyond ``Settings`` (whose ``frames`` is the sampled window's; ``frames`` here is the file's)."""
    made.notes["task"] = json.dumps({"task": task, "frames": len(made.frames), **info})
    return made


# -- tasks ------------------------------------------------------------------------------------------------------


def image_to_video(pipe: Pipeline, prompt: str, image: Media, frame: int = 0, *, resize: str = "crop",
                   fit_steps: int = FIT_STEPS, progress=False, **settings) -> Video:
    """A clip with ``image`` at pixel ``frame`` (0 = the first frame; later frames pin a short still).

    As the first frame, the image's latent is decoded fitted to it (``fit_steps`` gradient steps through the
    decoder, ``kinema.tasks.fit``: about 2.5 dB closer to the image on the bundled model; 0 turns it off).
    """
    _generic_task(pipe, "image_to_video")
    check_fit_steps(fit_steps)
    s = pipe.settings(prompt, **_input_sized(pipe, settings, image, "image"))
    if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < s.frames:
        raise InputError(f"image frame must be an integer in [0, {s.frames - 1}] for a {s.frames}-frame clip, "
                         f"got {frame!r}")
    img = load_image(image, s.width, s.height, resize)
    window = image_window(encoder(pipe), img, frame, s.frames, _tf(pipe))
    video = _run(pipe, s, window, progress, first_image=img if frame == 0 else None, fit_steps=fit_steps)
    return _noted(video, "image_to_video", image=_source(image), image_frame=frame,
                  fit_steps=fit_steps if frame == 0 else None, resize=resize)


def keyframes(pipe: Pipeline, prompt: str, images_at: list[tuple[float, Media]], *, resize: str = "crop",
              fit_steps: int = FIT_STEPS, progress=False, **settings) -> Video:
    """A clip with each (seconds, image) pinned at the latent frame holding that time (a keyframe at 0 s is
    decoded fitted to its image, as in ``image_to_video``)."""
    _generic_task(pipe, "keyframes")
    check_fit_steps(fit_steps)
    first_image = images_at[0][1] if images_at else None
    s = pipe.settings(prompt, **_input_sized(pipe, settings, first_image, "the first keyframe"))
    tf = _tf(pipe)
    pixels = keyframe_frames([t for t, _ in images_at], s.frames, s.fps, tf)
    images = [load_image(img, s.width, s.height, resize, name=f"keyframe at {t} s") for t, img in images_at]
    window = keyframes_window(encoder(pipe), list(zip(pixels, images)), s.frames, tf)
    first = next((img for p, img in zip(pixels, images) if p == 0), None)
    video = _run(pipe, s, window, progress, first_image=first, fit_steps=fit_steps)
    return _noted(video, "keyframes", keyframes=[[t, _source(img)] for t, img in images_at],
                  fit_steps=fit_steps if first is not None else None, resize=resize)


def extend(pipe: Pipeline, prompt: str, video: Media, seconds: float, direction: str = "forward", *,
           overlap: int = DEFAULT_OVERLAP, resize: str = "crop", join: str = "fade",
           motion_strength: float = MOTION_STRENGTH, progress=False, **settings) -> Video:
    """``video`` continued by about ``seconds`` forwards (after it) or backwards (before it), joined with it.

    Forwards, the window starts with the video's last ``overlap`` latent frames encoded as a clip of their
    own; backwards, it ends with the video's first ``overlap`` latent frames encoded as the middle of a clip
    (see ``kinema.tasks.builders``), so the model always generates forwards in time. New frames come in
    steps of tf (forwards) or tf*k + 1 (backwards) frames, the nearest to ``seconds``. ``join``: "fade"
    (the frames the window shares with the video fade from the video's to the model's, ``JOINS``) or "cut"
    (the video's frames kept exactly). ``motion_strength``: the new frames start as the video's motion
    carried on at constant velocity (``kinema.tasks.motion``) noised to this strength, so the model refines
    a continuation instead of inventing one; lower keeps more of the carried motion, 1 starts from pure noise.
    """
    _generic_task(pipe, "extend")
    check_seconds(seconds)
    check_join(join)
    check_motion_strength(motion_strength)
    if direction not in ("forward", "backward"):
        raise InputError(f"direction must be 'forward' or 'backward', got {direction!r}")
    _check_overlap(overlap)
    s = _settings(pipe, prompt, _input_sized(pipe, settings, video, "video"), "extend", frames=None)
    tf = _tf(pipe)
    frames = load_video(video, s.fps, s.width, s.height, resize)
    forward = direction == "forward"
    new = new_frame_count(seconds, s.fps, tf, direction)
    window = extend_window(encoder(pipe), frames, new, overlap, tf, direction, carry=motion_strength < 1)
    s = replace(s, strength=motion_strength)
    out = _run(pipe, s, window, progress, before=frames if forward else None, after=None if forward else frames,
               join=join)
    return _noted(out, "extend", video=_source(video), seconds=seconds, direction=direction, new_frames=new,
                  overlap=overlap, join=join, motion_strength=motion_strength, resize=resize)


def new_frame_count(seconds: float, fps: float, tf: int, direction: str = "forward") -> int:
    """The frames an extension (or a connection: "forward") adds for about ``seconds``: steps of ``tf`` frames
    forwards, ``tf*k + 1`` backwards, the count nearest ``seconds`` and at least one step."""
    forward = direction == "forward"
    return grid_count(seconds * fps, tf, offset=0 if forward else 1, minimum=tf if forward else 1)


def connect(pipe: Pipeline, prompt: str, video_a: Media, video_b: Media, seconds: float, *,
            overlap: int = DEFAULT_OVERLAP, resize: str = "crop", join: str = "fade",
            motion_strength: float = MOTION_STRENGTH, progress=False, **settings) -> tuple[Video, Video]:
    """(transition, joined): about ``seconds`` from the end of A to the start of B, and A + transition + B
    (``join`` as in ``extend``: A's last and B's first frames faded to the model's, or kept exactly).
    ``motion_strength``: the transition starts as A's motion carried on cross-faded into B's carried back
    (``kinema.tasks.builders.connect_window``) noised to this strength; 1 starts from pure noise."""
    _generic_task(pipe, "connect")
    check_seconds(seconds)
    check_join(join)
    check_motion_strength(motion_strength)
    _check_overlap(overlap)
    s = _settings(pipe, prompt, _input_sized(pipe, settings, video_a, "video A"), "connect", frames=None)
    tf = _tf(pipe)
    a = load_video(video_a, s.fps, s.width, s.height, resize, name="video A")
    b = load_video(video_b, s.fps, s.width, s.height, resize, name="video B")
    new = new_frame_count(seconds, s.fps, tf)
    window = connect_window(encoder(pipe), a, b, new, overlap, tf, carry=motion_strength < 1)
    joined = _run(pipe, replace(s, strength=motion_strength), window, progress, before=a, after=b, join=join)
    task = dict(video_a=_source(video_a), video_b=_source(video_b), seconds=seconds, new_frames=new, overlap=overlap,
                join=join, motion_strength=motion_strength, resize=resize)
    transition = replace(joined, frames=joined.frames[len(a):len(a) + new], notes=dict(joined.notes))
    return _noted(transition, "connect", part="transition", **task), _noted(joined, "connect", part="joined", **task)


def loop(pipe: Pipeline, prompt: str, image: Media | None = None, *, resize: str = "crop", progress=False,
         **settings) -> Video:
    """A clip of ``frames - 1`` frames whose last frame leads into its first (starting on ``image``, if given).

    The loop's latent frames are sampled and decoded as a cycle (``loop_window``): no frame of it is a start
    or an end while it is made. An image is held for the loop's first latent frame (``tf`` frames).
    """
    _generic_task(pipe, "loop")
    s = pipe.settings(prompt, **_input_sized(pipe, settings, image, "image"))
    tf = _tf(pipe)
    if s.frames < 2 * tf + 1:
        raise InputError(f"a loop needs at least {2 * tf + 1} frames (two latent frames), got {s.frames}")
    still = None
    if image is not None:
        still = still_latent(encoder(pipe), load_image(image, s.width, s.height, resize), tf)
    video = _run(pipe, s, loop_window(s.frames - 1, tf, still), progress)
    return _noted(video, "loop", image=None if image is None else _source(image), resize=resize)


def edit(pipe: Pipeline, prompt: str, video: Media, strength: float, *, resize: str = "crop", progress=False,
         **settings) -> Video:
    """``video`` re-generated from ``prompt`` (SDEdit): noised to t = ``strength`` in (0, 1], then sampled to 0.

    A length that is not tf*k+1 is padded by holding the last frame; the result has the input's length.
    """
    _generic_task(pipe, "edit")
    check_strength(strength)
    s = _settings(pipe, prompt, _input_sized(pipe, settings, video, "video"), "edit", frames=None)
    frames = load_video(video, s.fps, s.width, s.height, resize)
    padded = pad_frames(frames, _tf(pipe))
    s = replace(s, frames=len(padded), strength=strength)
    init = encoder(pipe)(to_model(padded))
    out = pipe.run(s, init_latents=init, progress=progress)
    return _noted(replace(out, frames=out.frames[:len(frames)]), "edit", video=_source(video), strength=strength,
                  resize=resize)


def image(pipe: Pipeline, prompt: str, *, progress=False, **settings) -> Video:
    """A single image (a one-frame video); ``Video.save("x.png")`` writes it as a PNG."""
    _generic_task(pipe, "image")
    return pipe.run(_settings(pipe, prompt, settings, "image generation", frames=1), progress=progress)


# -- measuring ---------------------------------------------------------------------------------------------------


def loop_seam(frames: np.ndarray) -> tuple[float, float]:
    """(seam, typical): mean |last - first| pixel difference, and the median of mean |f[i+1] - f[i]| in the clip."""
    if len(frames) < 2:
        raise ValueError(f"a loop needs at least 2 frames, got {len(frames)}")
    x = frames.astype(np.float32)
    steps = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))
    return float(np.abs(x[-1] - x[0]).mean()), float(np.median(steps))


def _check_overlap(overlap: int) -> None:
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 1:
        raise InputError(f"overlap must be a positive number of latent frames, got {overlap!r}")
