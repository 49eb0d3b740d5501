"""Streaming decode for the pipeline: frames one at a time, scaled by FFmpeg, upright, with their times.

``kinema.common.video.read_video`` returns a whole clip at full size; the pipeline walks hours of
footage, so here frames are scaled by swscale while still in YUV (far cheaper than converting full
frames to RGB first), rotated upright by the file's display matrix, and yielded one by one with their
time in seconds from the stream's first frame. A time range seeks first, so a clip in the middle of
a long file does not decode everything before it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from kinema.common.io import atomic_path
from kinema.common.video import VideoDecodeError, open_video  # noqa: F401  (open_video: re-exported for ingest)


@dataclass
class Frame:
    """One decoded frame and when it is shown."""

    index: int  # in decode order from where decoding started (from 0 when not seeking)
    time: float  # seconds from the stream's first frame
    pixels: np.ndarray  # (H, W, 3) uint8 RGB or (H, W) uint8 gray, upright


def fit_width(width: int, height: int, target: int) -> tuple[int, int]:
    """(target, height scaled to keep the aspect), both even and >= 2."""
    return max(2, target // 2 * 2), max(2, round(height * target / width / 2) * 2)


def upright(pixels: np.ndarray, rotation: int) -> np.ndarray:
    """A frame turned by its display rotation (degrees counter-clockwise, FFmpeg's convention)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, k=turns)) if turns else pixels


def iter_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,
    gray: bool = False,
    start: float = 0.0,
    end: float = math.inf,
    stream_start: float | None = None,
    fps: float | None = None,
) -> Iterator[Frame]:
    """Frames of ``path`` with time in [start, end), scaled to ``size`` = (width, height) as displayed.

    Times count from the stream's first frame; pass ``stream_start`` (its presentation time, from
    ingest) to seek straight to ``start`` instead of decoding from the beginning.
    """
    pix_fmt = "gray" if gray else "rgb24"
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or (fps or 25.0)
        eps = 0.25 / rate  # a frame belongs to the range its presentation time falls in
        first = stream_start
        if stream_start is not None and start > 1.0 and stream.time_base:
            target = int((stream_start + start - 1.0) / stream.time_base)  # 1 s early: land before the key frame
            container.seek(target, stream=stream, backward=True, any_frame=False)
        index = 0
        scaler = VideoReformatter()  # keeps its swscale context: a new one per frame costs 15x the scaling
        try:
            for frame in container.decode(stream):
                t_abs = frame.time if frame.time is not None else index / rate
                if first is None:
                    first = t_abs
                t = t_abs - first
                index += 1
                if t < start - eps:
                    continue
                if t >= end - eps:
                    return
                if size is None:
                    pixels = frame.to_ndarray(format=pix_fmt)
                else:
                    turned = round(frame.rotation / 90) % 2
                    w, h = (size[1], size[0]) if turned else size
                    pixels = scaler.reformat(frame, width=w, height=h, format=pix_fmt, interpolation="AREA").to_ndarray()
                yield Frame(index - 1, t, upright(pixels, frame.rotation))
        except (av.FFmpegError, EOFError, OSError) as err:
            raise VideoDecodeError(path, f"decoding failed after {index} frame(s) ({err})") from None


def resample(frames: Iterator[Frame], start: float, fps: float, count: int) -> list[np.ndarray]:
    """``count`` frames at ticks ``start + k / fps``: the frame on screen at each tick (nearest earlier)."""
    out: list[np.ndarray] = []
    last: Frame | None = None
    for frame in frames:
        while len(out) < count and last is not None and start + len(out) / fps < frame.time - 1e-6:
            out.append(last.pixels)
        if len(out) == count:
            break
        last = frame
    while last is not None and len(out) < count:  # the last frame holds until the window ends
        out.append(last.pixels)
    return out


class ClipWriter:
    """Writes frames one at a time to an H.264 .mp4 that appears (atomically) when closed."""

    def __init__(self, path: Path, fps: float, crf: int = 18):
        self._atomic = atomic_path(path)
        tmp = self._atomic.__enter__()
        self._container = av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                                  options={"crf": str(crf), "preset": "fast"})
        self._stream.pix_fmt = "yuv420p"
        self._open = False

    def write(self, pixels: np.ndarray) -> None:
        """Append one uint8 RGB frame (H, W, 3)."""
        if not self._open:  # x264 in yuv420p needs even sizes: crop a trailing odd row/column
            h, w = pixels.shape[0] // 2 * 2, pixels.shape[1] // 2 * 2
            self._stream.width, self._stream.height, self._open = w, h, True
        pixels = np.ascontiguousarray(pixels[: self._stream.height, : self._stream.width])
        self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))

    def close(self, ok: bool = True) -> None:
        """Finish the file (``ok``) or throw it away."""
        try:
            if ok:
                self._container.mux(self._stream.encode())
            self._container.close()
        finally:
            if ok:
                self._atomic.__exit__(None, None, None)
            else:
                err = RuntimeError("clip export abandoned")
                self._atomic.__exit__(type(err), err, None)
