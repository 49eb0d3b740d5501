"""Writing videos and images (PyAV, Pillow): ``write_video`` picks the format from the output path.

Every format is written to a temporary name that is renamed into place, so an interrupted run never
leaves a broken file behind:

    .mp4   H.264 (libx264, yuv420p, BT.709 tagged, +faststart so browsers stream it)
    .webm  VP9 (libvpx-vp9, constant quality)
    .gif   Pillow, looped forever
    .png   one frame, as an image
    dir/   a path ending in "/" or without extension: frame_00000.png ... plus metadata.json

Metadata (prompt, seed, model, settings) is stored as one JSON object in the format's standard
comment field (mp4/webm ``comment`` tag, GIF comment, PNG ``Comment`` text chunk), so players and
ffprobe show it and ``kinema.common.video.read_video_metadata`` gives back exactly the dict written.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, PngImagePlugin

from kinema.common.io import atomic_path, beside
from kinema.common.video import FOLDER_METADATA, FRAME_PATTERN, WRITE_FORMATS, _as_frames, _is_frame_folder


def _output_kind(path: Path, raw: str) -> str:
    if raw.endswith(("/", os.sep)) or path.suffix == "":
        return "<folder>/"
    ext = path.suffix.lower()
    if ext not in WRITE_FORMATS:
        raise ValueError(f"cannot write {raw!r}: unknown extension {ext!r}; accepted: {', '.join(WRITE_FORMATS)} "
                         "(a path ending in '/' or without extension is a folder of PNG frames)")
    return ext


def _metadata_json(metadata: dict[str, Any] | None) -> str | None:
    """One JSON object of str -> str; non-str values are JSON-encoded so they survive as text."""
    if not metadata:
        return None
    out = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata keys must be non-empty str, got {key!r}")
        out[key] = value if isinstance(value, str) else json.dumps(value)
    return json.dumps(out, ensure_ascii=False)


def write_video(
    path: str | os.PathLike,
    frames: Any,
    fps: float,
    metadata: dict[str, str] | None = None,
    crf: int = 18,
) -> Path:
    """Write uint8 frames (F, H, W, 3) atomically in the format the path names; returns the final path.

    ``crf`` is the constant-quality factor for mp4 (x264, 0-51) and webm (VP9, 0-63); lower is better.
    H.264 in yuv420p needs even sizes: an odd width or height is padded by repeating the last column
    or row, so the mp4 is up to one pixel larger than the frames. Non-str metadata values are stored
    as their JSON text.
    """
    raw = os.fspath(path)
    path = Path(raw)
    kind = _output_kind(path, raw)
    frames = _as_frames(frames)
    if isinstance(fps, bool) or not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    fps = float(fps)
    comment = _metadata_json(metadata)
    if kind == "<folder>/":
        _write_folder(path, frames, fps, comment)
    elif kind == ".png":
        if frames.shape[0] != 1:
            raise ValueError(f"a .png holds one frame, got {frames.shape[0]}; write a folder ('{path.with_suffix('')}/') "
                             "or a video instead")
        with atomic_path(path) as tmp:
            info = PngImagePlugin.PngInfo()
            if comment:
                info.add_itxt("Comment", comment)
            Image.fromarray(frames[0]).save(tmp, format="PNG", pnginfo=info)
    elif kind == ".gif":
        with atomic_path(path) as tmp:
            _write_gif(tmp, frames, fps, comment)
    else:
        with atomic_path(path) as tmp:
            _write_av(tmp, kind, frames, fps, comment, crf)
    return path


def _write_av(tmp: Path, ext: str, frames: np.ndarray, fps: float, comment: str | None, crf: int) -> None:
    if ext == ".mp4":
        fmt, codec = "mp4", "libx264"
        options = {"crf": str(crf), "preset": "medium"}
        container_options = {"movflags": "+faststart"}
        # yuv420p subsamples chroma 2x2; x264 refuses odd sizes.
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    else:
        fmt, codec = "webm", "libvpx-vp9"
        # b:v 0 makes crf a pure constant-quality target; cpu-used 4 is libvpx's usual speed/quality trade.
        options = {"crf": str(crf), "b:v": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        container_options = {}
    if codec not in av.codecs_available:
        raise RuntimeError(f"cannot write {ext}: this PyAV build's FFmpeg has no {codec} encoder; use .mp4 or .gif")
    _, height, width, _ = frames.shape
    with av.open(str(tmp), mode="w", format=fmt, options=container_options) as container:
        if comment:
            container.metadata["comment"] = comment
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Convert and tag BT.709 explicitly: untagged files are shown with guessed (often wrong) colours.
        ctx = stream.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 1, 1, 1, 1  # BT.709, limited range
        for frame in frames:
            rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
            yuv = rgb.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range=1)
            container.mux(stream.encode(yuv))
        container.mux(stream.encode())


def _write_gif(tmp: Path, frames: np.ndarray, fps: float, comment: str | None) -> None:
    # GIF delays are whole centiseconds: spread the rounding so the clip's total length stays right
    # (8 fps = 12, 13, 12, 13 ... cs). Pillow merges identical consecutive frames into one longer frame.
    ends = [round((i + 1) * 100 / fps) for i in range(len(frames))]
    delays_ms = [10 * max(1, end - start) for start, end in zip([0] + ends[:-1], ends)]
    images = [Image.fromarray(frame) for frame in frames]
    extra = {"comment": comment.encode("utf-8")} if comment else {}
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=delays_ms, loop=0, **extra)


@contextlib.contextmanager
def _atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"cannot write a frame folder at {path}: a file is in the way")
    if path.is_dir() and not _is_frame_folder(path):
        # Never delete a folder of someone else's files because its name was given as an output.
        raise FileExistsError(f"cannot replace {path}: it holds files other than {FRAME_PATTERN.format(0)}... "
                              f"and {FOLDER_METADATA}; pick an empty or new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    with beside(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():  # os.replace cannot replace a non-empty folder: move the old one aside first
            old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_folder(path: Path, frames: np.ndarray, fps: float, comment: str | None) -> None:
    with _atomic_dir(path) as tmp:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / FRAME_PATTERN.format(i), format="PNG", compress_level=1)
        sidecar = {"fps": float(fps), "metadata": json.loads(comment) if comment else {}}
        (tmp / FOLDER_METADATA).write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
