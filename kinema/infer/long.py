"""Long video: any length (a minute and more), window by window, in memory that does not grow with length.

The first window is text-to-video. Every later window is a forward extension of the one before: the
previous window's last ``overlap`` latent frames are given, as they are, as the new window's first latent
frames, and the rest is generated. So the whole video is one sequence of latent frames, and it is decoded
as one clip: the VAE's streaming decoder carries its state from window to window, and each window adds
only its new frames (decoded window by window, a seam appeared at every join, where each window's causal
decoder started afresh: 3x the typical frame step on world prompts, against 1.6x now). What stays alive
between windows is the overlap's latents and the decoder's state; peak memory is one window's sampling
and decoding, whatever the total length.

Prompts are one prompt, or timed prompts ``[(start_seconds, prompt), ...]`` (the first at 0 s); each window
takes the prompt active at the middle of its new frames. Window ``w`` samples with seed ``seed + w``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..common.io import atomic_path
from ..common.precision import dtype_name
from ..common.video import from_model
from ..tasks.builders import place
from ..tasks.frames import frame_at, latent_count, pixel_count
from .pipeline import InputError, Pipeline
from .tasks import DEFAULT_OVERLAP, check_seconds

STREAM_FORMATS = (".mp4", ".webm")

# -- streaming writer -----------------------------------------------------------------------------------------


class VideoWriter:
    """Append uint8 frames (n, H, W, 3) to an .mp4 (H.264) or .webm (VP9) as they come.

    The file is written under a temporary name beside ``path`` and renamed into place by ``close``; an
    error inside ``with VideoWriter(...)`` (or ``abort``) removes it, so no half-written video is left.
    Encoding settings match ``kinema.common.video_write.write_video`` (crf, yuv420p, BT.709 tags, faststart).
    """

    def __init__(self, path: str | os.PathLike, fps: float, metadata: dict[str, str] | None = None, crf: int = 18):
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in STREAM_FORMATS:
            raise ValueError(f"cannot stream to {self.path}: extension {ext!r}; accepted: {', '.join(STREAM_FORMATS)}")
        self.fps, self.crf, self.frames_written = fps, crf, 0
        self._metadata = metadata
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._container = self._stream = None

    def _open(self, height: int, width: int) -> None:
        ext = self.path.suffix.lower()
        if ext == ".mp4":
            fmt, codec = "mp4", "libx264"
            options, container_options = {"crf": str(self.crf), "preset": "medium"}, {"movflags": "+faststart"}
        else:
            fmt, codec = "webm", "libvpx-vp9"
            options = {"crf": str(self.crf), "b:v": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
            container_options = {}
        if codec not in av.codecs_available:
            raise RuntimeError(f"cannot write {ext}: this PyAV build's FFmpeg has no {codec} encoder; use .mp4")
        self._container = av.open(str(self._tmp), mode="w", format=fmt, options=container_options)
        if self._metadata:
            self._container.metadata["comment"] = json.dumps(self._metadata, ensure_ascii=False)
        stream = self._container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001), options=options)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1  # BT.709, limited range
        self._stream = stream

    def write(self, frames: np.ndarray) -> None:
        """Encode and append uint8 frames (n, H, W, 3); every call must have the first call's size."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        if self._container is None:
            self._open(frames.shape[1], frames.shape[2])
            self._size = frames.shape[1:3]
        if frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed from {self._size} to {frames.shape[1:3]}")
        # yuv420p needs even sizes: repeat the last row/column like write_video does.
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            self._container.mux(self._stream.encode(rgb.reformat(format="yuv420p", dst_colorspace="itu709",
                                                                  dst_color_range=1)))
        self.frames_written += len(frames)

    def close(self) -> Path:
        """Flush the encoder and rename the file into place; returns the final path."""
        if self._container is None:
            self.abort()
            raise ValueError(f"no frames were written to {self.path}")
        self._container.mux(self._stream.encode())
        self._container.close()
        self._container = None
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        if self._container is not None:
            try:
                self._container.close()
            except (av.FFmpegError, OSError):
                pass
            self._container = None
        err = RuntimeError("aborted")
        try:
            self._atomic.__exit__(RuntimeError, err, None)
        except RuntimeError:
            pass

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# -- timed prompts --------------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """'12.5' or 'M:SS(.s)' -> seconds."""
    if ":" in text:
        minutes, _, secs = text.partition(":")
        whole, part = int(minutes), float(secs)
        if whole < 0 or not 0 <= part < 60:
            raise ValueError(f"not M:SS: {text!r}")
        return whole * 60 + part
    return float(text)


def read_prompts_file(path: str | os.PathLike) -> list[tuple[float, str]]:
    """Timed prompts from a text file of ``SECONDS PROMPT`` lines (SECONDS as 12.5 or 1:30; # comments)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark (Windows editors) dropped
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read prompts file {path}: {err}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        start, prompt = (line.split(None, 1) + [""])[:2]  # SECONDS, then a space or a tab
        try:
            seconds = _seconds(start)
        except ValueError:
            raise InputError(f"{path}:{number}: expected 'SECONDS PROMPT' (e.g. '12.5 the ball rolls left'), "
                             f"got {line!r}") from None
        prompts.append((seconds, prompt.strip()))
    return prompts


def check_timed_prompts(prompts: str | list[tuple[float, str]], seconds: float) -> list[tuple[float, str]]:
    """Timed prompts [(start, prompt), ...] starting at 0 s, increasing, inside the video; InputError otherwise."""
    if isinstance(prompts, str):
        prompts = [(0.0, prompts)]
    if not prompts:
        raise InputError("no prompts given; pass a prompt or a list of (start_seconds, prompt)")
    out, last = [], -math.inf
    for item in prompts:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise InputError(f"a timed prompt is (start_seconds, prompt), got {item!r}")
        start, prompt = item
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not math.isfinite(start):
            raise InputError(f"prompt start must be a number of seconds, got {start!r}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"the prompt at {start} s is empty")
        if start <= last:
            raise InputError(f"prompt starts must increase: {start} s comes after {last} s")
        if not out and start != 0:
            raise InputError(f"the first prompt must start at 0 s, got {start} s")
        if start >= seconds:
            raise InputError(f"the prompt at {start} s starts after the video ends ({seconds} s)")
        out.append((float(start), prompt))
        last = start
    return out


def prompt_at(prompts: list[tuple[float, str]], seconds: float) -> str:
    """The prompt active at ``seconds`` (the last one starting at or before it)."""
    return [p for start, p in prompts if start <= seconds][-1]


def window_prompts(prompts: list[tuple[float, str]], total: int, window: int, span: int, fps: float) -> list[str]:
    """The prompt of each window: the one active at the middle of the frames it adds (the first window: the first
    prompt, which starts the video)."""
    plan, written = [], 0
    while written < total:
        keep = min(window - (span if plan else 0), total - written)
        plan.append(prompts[0][1] if not plan else prompt_at(prompts, (written + keep / 2) / fps))
        written += keep
    return plan


# -- the long run ---------------------------------------------------------------------------------------------


@dataclass
class LongVideo:
    """A long clip written to ``path``: its frame count, rate, windows and the prompts used per window."""

    path: Path
    frames: int
    fps: float
    windows: int
    window_prompts: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


def window_count(total: int, window: int, overlap: int, tf: int) -> int:
    """Windows of ``window`` frames that make ``total`` frames, each later one re-creating ``overlap`` latent frames."""
    step = window - pixel_count(overlap, tf)
    return 1 + math.ceil(max(0, total - window) / step)


def long_video(pipe: Pipeline, prompts: str | list[tuple[float, str]], seconds: float, output: str | os.PathLike, *,
               overlap: int = DEFAULT_OVERLAP, progress: bool | Callable[[int, int], None] = False,
               **settings) -> LongVideo:
    """Write ``seconds`` of video to ``output`` (.mp4/.webm), window by window (``frames`` = the window length)."""
    check_seconds(seconds)
    prompts = check_timed_prompts(prompts, seconds)
    s = pipe.settings(prompts[0][1], **settings)
    tf = pipe.cfg.vae.temporal_factor
    latent_frames = latent_count(s.frames, tf)
    if latent_frames < 2:
        raise InputError(f"a {s.frames}-frame window is one latent frame, none to carry into the next: a long "
                         f"video's windows need {overlap * tf + 1} frames or more for overlap {overlap}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 1 <= overlap < latent_frames:
        raise InputError(f"overlap must be in [1, {latent_frames - 1}] latent frames for a {s.frames}-frame window, "
                         f"got {overlap!r}")
    if Path(output).suffix.lower() not in STREAM_FORMATS:
        raise InputError(f"a long video streams to {' or '.join(STREAM_FORMATS)}, got {output}")
    if Path(output).is_dir():
        raise InputError(f"cannot write {output}: it is a folder")
    total = max(1, frame_at(seconds, s.fps))
    span = pixel_count(overlap, tf)  # pixel frames each later window re-creates
    windows = window_count(total, s.frames, overlap, tf)
    plan = window_prompts(prompts, total, s.frames, span, s.fps)
    unused = [f"{start:g} s {prompt!r}" for start, prompt in prompts if prompt not in plan]
    if unused:
        warnings.warn(f"{len(unused)} timed prompt(s) fall inside a window another prompt holds and are not used: "
                      f"{'; '.join(unused)} (windows start every {(s.frames - span) / s.fps:g} s: space prompts that "
                      f"far apart, or make windows shorter with --frames)", stacklevel=2)
    tick, bar = _window_progress(progress, windows)
    vae_dtype = next(pipe.vae.parameters()).dtype
    metadata = {"prompt": prompts[0][1], "seed": str(s.seed), "model": pipe.name, "software": "kinema",
                "dtype": dtype_name(pipe.dtype),
                "settings": json.dumps({**asdict(replace(s, prompt="")), "seconds": seconds, "overlap": overlap,
                                        "windows": windows, "prompts": prompts, "window_prompts": plan})}
    used, timings = [], {"sample": 0.0, "decode": 0.0}
    given = None  # the overlap's latents (1, C, overlap, h, w): what one window hands to the next
    stream: dict = {}  # the decoder's state: the video is decoded as one clip
    written = 0
    try:
        with VideoWriter(output, s.fps, metadata=metadata) as writer:
            for w in range(windows):
                skip = 0 if w == 0 else span
                keep = min(s.frames - skip, total - written)
                ws = replace(s, prompt=plan[w], seed=s.seed + w)
                used.append(ws.prompt)
                t0 = time.perf_counter()
                latents = pipe.sample(ws, condition=None if given is None else place([(0, given)], latent_frames))
                t1 = time.perf_counter()
                new = latents if given is None else latents[:, :, overlap:]
                _decode_into(pipe, new.to(vae_dtype), writer, keep, stream)
                written += keep
                given = latents[:, :, latent_frames - overlap:]
                timings["sample"] += t1 - t0
                timings["decode"] += time.perf_counter() - t1
                del latents, new
                tick(w + 1, windows)
    finally:
        if bar is not None:
            bar.close()
    timings["total"] = sum(timings.values())
    return LongVideo(path=Path(output), frames=written, fps=float(s.fps), windows=windows, window_prompts=used,
                     timings=timings)


@torch.inference_mode()
def _decode_into(pipe: Pipeline, latents: torch.Tensor, writer: VideoWriter, keep: int, stream: dict) -> None:
    """Decode ``latents`` chunk by chunk, continuing ``stream``, and write their first ``keep`` frames."""
    written = 0
    for chunk in pipe.vae.decode_chunks(latents, stream=stream):
        frames = from_model(chunk)[:keep - written]  # (1, 3, f, H, W) -> (f, H, W, 3) uint8
        writer.write(frames)
        written += len(frames)
        if written >= keep:
            return


def _window_progress(progress, windows: int):
    if callable(progress):
        return progress, None
    if not progress:
        return (lambda done, n: None), None
    from tqdm.auto import tqdm
    bar = tqdm(total=windows, desc="windows", unit="window")
    return (lambda done, n: bar.update(1)), bar
