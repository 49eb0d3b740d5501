"""Video and image I/O (PyAV, Pillow): the uint8 ``(F, H, W, 3)`` RGB boundary of kinema.

Frames outside the models are uint8 RGB arrays (numpy, or torch on the way in) of shape
``(F, H, W, 3)``; an image is one frame. The models see float ``(1, 3, F, H, W)`` in [-1, 1]:
``to_model`` / ``from_model`` cross that seam.

Writing is ``kinema.common.video_write``; this module reads (any format ``write_video`` writes,
plus what FFmpeg decodes), probes, resizes and converts. ``read_video_metadata`` gives back exactly
the dict ``write_video`` stored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

if TYPE_CHECKING:  # PyAV is imported where a file is opened: training imports this module without it
    import av

# The video files a folder walk takes (`kinema data ingest`, a training clip folder); any other name can still be
# read by path: PyAV sniffs the container from its content.
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
              ".3gp", ".ogv", ".gif", ".y4m")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WRITE_FORMATS = (".mp4", ".webm", ".gif", ".png", "<folder>/")
RESIZE_POLICIES = ("crop", "pad", "stretch")
FRAME_PATTERN = "frame_{:05d}.png"
FOLDER_METADATA = "metadata.json"

# Tags the muxers add on their own; not part of what the caller stored.
_MUXER_TAGS = {"major_brand", "minor_version", "compatible_brands", "encoder", "creation_time", "duration"}


class VideoDecodeError(ValueError):
    """A file could not be read as a video or image; names the path and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot decode {self.path}: {reason}")


# ---------------------------------------------------------------------------------------------
# The model seam: uint8 (F, H, W, 3) <-> float (1, 3, F, H, W) in [-1, 1]


def _as_frames(frames: Any) -> np.ndarray:
    """Check and return frames as a uint8 numpy array (F, H, W, 3); a single (H, W, 3) image is one frame."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3) RGB (or (H, W, 3)), got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}; convert model output with from_model()")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must be non-empty, got shape {tuple(frames.shape)}")
    return frames


def to_model(video: Any, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float tensor (1, 3, F, H, W) in [-1, 1] from uint8 frames (F, H, W, 3)."""
    frames = torch.from_numpy(np.ascontiguousarray(_as_frames(video)))
    return pixels_to_model(frames.to(device=device).permute(3, 0, 1, 2)[None], dtype)  # (F, H, W, 3) -> (1, 3, F, H, W)


def channels_first(video: Any) -> torch.Tensor:
    """uint8 tensor (3, F, H, W) from uint8 frames (F, H, W, 3): what training data loaders hand over (a
    quarter of float32's bytes between processes and to the device), ``pixels_to_model`` on arrival."""
    return torch.from_numpy(np.ascontiguousarray(_as_frames(video))).permute(3, 0, 1, 2).contiguous()


def pixels_to_model(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float in [-1, 1] from uint8 pixels of any layout (as ``to_model`` computes it)."""
    return pixels.to(dtype) / 127.5 - 1.0


def from_model(x: torch.Tensor) -> np.ndarray:
    """uint8 numpy frames (F, H, W, 3) from a model tensor (1, 3, F, H, W) or (3, F, H, W) in [-1, 1]."""
    if x.ndim == 5:
        if x.shape[0] != 1:
            raise ValueError(f"from_model takes one video, got batch {x.shape[0]} in shape {tuple(x.shape)}; pass x[i:i+1]")
        x = x[0]
    if x.ndim != 4 or x.shape[0] != 3:
        raise ValueError(f"from_model expects (1, 3, F, H, W) or (3, F, H, W), got {tuple(x.shape)}")
    pixels = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()  # (3, F, H, W) -> (F, H, W, 3)


def _is_frame_folder(path: Path) -> bool:
    """Whether ``path`` holds only what ``write_video`` puts in a frame folder."""
    return all(p.name == FOLDER_METADATA or (p.name.startswith("frame_") and p.suffix == ".png") for p in path.iterdir())


# ---------------------------------------------------------------------------------------------
# Reading


def _require_exists(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "no such file or folder")


def open_video(path: str | os.PathLike) -> av.container.InputContainer:
    """An open PyAV container with a video stream; VideoDecodeError (with the reason) otherwise."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoDecodeError(path, f"not a readable video ({err})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "the container has no video stream")
    return container


def _parse_comment(comment: str | None) -> dict[str, str] | None:
    if not comment:
        return None
    with contextlib.suppress(json.JSONDecodeError):
        stored = json.loads(comment)
        if isinstance(stored, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in stored.items()}
    return None


def read_video_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata dict stored by ``write_video``; for foreign files, their container tags."""
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        sidecar = path / FOLDER_METADATA
        return json.loads(sidecar.read_text(encoding="utf-8")).get("metadata", {}) if sidecar.exists() else {}
    if path.suffix.lower() in IMAGE_EXTS + (".gif",):
        try:
            with Image.open(path) as img:
                text = getattr(img, "text", None) or {}
                comment = text.get("Comment") or img.info.get("comment")
        except (OSError, ValueError) as err:
            raise VideoDecodeError(path, f"not a readable image ({err})") from None
        if isinstance(comment, bytes):
            comment = comment.decode("utf-8", errors="replace")
        return _parse_comment(comment) or dict(text)
    with open_video(path) as container:
        tags = {k.lower(): v for k, v in container.metadata.items()}
    return _parse_comment(tags.get("comment")) or {k: v for k, v in tags.items() if k not in _MUXER_TAGS}


def _upright(frame: np.ndarray, rotation: float) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, FFmpeg's convention) to one frame."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=quarter_turns)) if quarter_turns else frame


T = TypeVar("T")


def _resample(timed: Iterable[tuple[float, T]], fps: float | None, max_frames: int | None, frame_time: float) -> Iterator[T]:
    """Yield the item on screen at each output tick k / fps (every item when fps is None), at most max_frames.

    Items arrive as (presentation time, item); an item stays on screen until the next one's time,
    the last for ``frame_time`` seconds. Works as a stream, so a long clip is never held whole.
    """
    limit = math.inf if max_frames is None else max_frames
    count = 0
    if fps is None:
        for _, item in timed:
            if count >= limit:
                return
            yield item
            count += 1
        return
    eps = 1e-6  # timestamps are rationals printed as floats; a tick equal to a frame time belongs to it
    tick, start, last, last_time = 0, None, None, 0.0
    for t, item in timed:
        start = t if start is None else start
        t -= start
        while last is not None and tick / fps < t - eps:
            if count >= limit:
                return
            yield last
            tick, count = tick + 1, count + 1
        last, last_time = item, t
    while last is not None and tick / fps < last_time + frame_time - eps and count < limit:
        yield last
        tick, count = tick + 1, count + 1


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def read_video(
    path: str | os.PathLike, max_frames: int | None = None, fps: float | None = None, max_pixels: int | None = None,
    last: bool = False,
) -> tuple[np.ndarray, float]:
    """(uint8 frames (F, H, W, 3) upright, fps) from any video PyAV decodes, a frame folder or an image.

    ``fps`` resamples to that rate (nearest earlier frame per tick) and is then the returned rate;
    ``max_frames`` stops after that many output frames; ``max_pixels`` scales a video's larger frames down
    (aspect kept, even sides) as they are decoded, so a long high-resolution clip never sits in memory at
    full size; ``last`` keeps a video's last ``max_frames`` frames instead of its first (the whole video is decoded,
    holding no more than that many). An image reads as one frame at 1 fps.
    """
    path = Path(path)
    _require_exists(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 or None, got {fps}")
    if path.is_dir():
        return _read_folder(path, max_frames, fps)
    if path.suffix.lower() in IMAGE_EXTS:
        return read_image(path)[None], float(fps or 1.0)
    return _read_av(path, max_frames, fps, max_pixels, last)


def _rgb(frame, max_pixels: int | None) -> np.ndarray:
    """A decoded frame as uint8 RGB, area-averaged down to at most ``max_pixels`` if it is larger."""
    w, h = frame.width, frame.height
    if max_pixels is None or w * h <= max_pixels:
        return frame.to_ndarray(format="rgb24")
    scale = math.sqrt(max_pixels / (w * h))
    size = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
    return frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_ndarray()


def _read_av(path: Path, max_frames: int | None, fps: float | None,
             max_pixels: int | None = None, last: bool = False) -> tuple[np.ndarray, float]:
    import collections

    import av

    tail = last and max_frames is not None
    frames = collections.deque(maxlen=max_frames) if tail else []
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = _stream_fps(stream)
        listed = stream.frames  # 0 when the container does not say
        decoded = 0
        rotation = 0

        def timed() -> Iterator[tuple[float, av.VideoFrame]]:
            nonlocal decoded, rotation
            for frame in container.decode(stream):
                if decoded == 0:
                    rotation = frame.rotation
                t = frame.time if frame.time is not None else decoded / (src_fps or 1.0)
                decoded += 1
                yield t, frame

        try:
            converted: tuple[Any, np.ndarray] | None = None
            for frame in _resample(timed(), fps, None if tail else max_frames, 1.0 / (src_fps or 1.0)):
                if converted is None or converted[0] is not frame:  # upsampling repeats a frame: convert once
                    converted = (frame, _upright(_rgb(frame, max_pixels), rotation))
                frames.append(converted[1])
        except (av.FFmpegError, EOFError, OSError) as err:
            raise VideoDecodeError(path, f"decoding failed after {decoded} frame(s) ({err})") from None
        finished = tail or max_frames is None or len(frames) < max_frames
        # Edit lists may hide a leading frame or two of what the index lists; truncation loses far more.
        if finished and listed > 0 and decoded < listed - 2:
            raise VideoDecodeError(path, f"truncated: the container lists {listed} frames but only {decoded} decode")
    if not frames:
        raise VideoDecodeError(path, "no frames could be decoded")
    return np.stack(frames), float(fps or src_fps)


def _folder_frames(path: Path) -> list[Path]:
    files = sorted(path.glob("frame_*.png")) or sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise VideoDecodeError(path, f"the folder holds no frames ({FRAME_PATTERN.format(0)}, ... or other images)")
    return files


def _folder_fps(path: Path) -> float:
    sidecar = path / FOLDER_METADATA
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        return float(json.loads(sidecar.read_text(encoding="utf-8"))["fps"])
    return 1.0  # a folder without our sidecar carries no rate


def _read_folder(path: Path, max_frames: int | None, fps: float | None) -> tuple[np.ndarray, float]:
    files = _folder_frames(path)
    src_fps = _folder_fps(path)
    chosen = list(_resample(((i / src_fps, f) for i, f in enumerate(files)), fps, max_frames, 1.0 / src_fps))
    cache: dict[Path, np.ndarray] = {}  # upsampling repeats a frame: read it once
    frames = []
    for file in chosen:
        if file not in cache:
            cache[file] = read_image(file)
        frames.append(cache[file])
    if len({f.shape for f in frames}) > 1:
        raise VideoDecodeError(path, f"frames differ in size: {sorted({f.shape for f in frames})}")
    return np.stack(frames), float(fps or src_fps)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 RGB (H, W, 3) from an image file: EXIF orientation applied, alpha composited over black."""
    path = Path(path)
    _require_exists(path)
    try:
        with Image.open(path) as img:
            img.load()
            return image_rgb(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise VideoDecodeError(path, f"not a readable image ({err})") from None


def image_rgb(img: Image.Image) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a loaded Pillow image: EXIF orientation applied, alpha composited over black, and
    16-bit or float greyscale scaled to 0..255 (Pillow's own conversion clips it: a 16-bit PNG came out white)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = np.asarray(img, dtype=np.float64)
        top = grey.max(initial=0.0)
        full = 65535.0 if img.mode.startswith("I;16") or top > 255 else 1.0 if img.mode == "F" and top <= 1 else 255.0
        img = Image.fromarray(np.clip(np.round(grey / full * 255), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _count_packets(path: Path) -> int:
    """Frames by demuxing (no decoding), for containers whose index does not list a count."""
    import av

    with open_video(path) as container:
        try:
            return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
        except (av.FFmpegError, EOFError, OSError) as err:
            raise VideoDecodeError(path, f"demuxing failed ({err})") from None


def probe_video(path: str | os.PathLike) -> dict[str, Any]:
    """dict(frames, fps, width, height, duration, codec, rotation); width/height are as displayed (upright)."""
    import av

    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        files = _folder_frames(path)
        height, width, _ = read_image(files[0]).shape
        fps = _folder_fps(path)
        return dict(frames=len(files), fps=fps, width=width, height=height, duration=len(files) / fps,
                    codec="png", rotation=0)
    if path.suffix.lower() in IMAGE_EXTS:
        height, width, _ = read_image(path).shape
        return dict(frames=1, fps=1.0, width=width, height=height, duration=1.0,
                    codec=path.suffix.lower().lstrip("."), rotation=0)
    with open_video(path) as container:
        stream = container.streams.video[0]
        fps = _stream_fps(stream)
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, EOFError, OSError) as err:
            raise VideoDecodeError(path, f"decoding failed ({err})") from None
        if first is None:
            raise VideoDecodeError(path, "no frames could be decoded")
        frames = stream.frames or _count_packets(path)
        rotation = first.rotation
        width, height = (first.height, first.width) if round(rotation / 90) % 2 else (first.width, first.height)
        if stream.duration is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frames / fps if fps else 0.0
        return dict(frames=frames, fps=fps, width=width, height=height, duration=duration,
                    codec=stream.codec_context.name, rotation=rotation)


# ---------------------------------------------------------------------------------------------
# Resizing


def resize_video(frames: Any, width: int, height: int, policy: str = "crop") -> Any:
    """Frames (F, height, width, 3) uint8, same array type as given, resized by ``policy``.

    "crop" scales to cover the target and centre-crops, "pad" scales to fit and pads with black,
    "stretch" scales each axis on its own. Antialiased bicubic (torch), in chunks of frames.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if not (isinstance(width, int) and isinstance(height, int) and width >= 1 and height >= 1):
        raise ValueError(f"resize width and height must be positive ints, got {width}x{height}")
    is_numpy = not isinstance(frames, torch.Tensor)
    video = torch.from_numpy(_as_frames(frames)) if is_numpy else frames
    if not is_numpy:
        _as_frames(video[:1])  # shape/dtype check only; keep the tensor on its device
    n, h, w, _ = video.shape
    if policy == "stretch":
        scaled_w, scaled_h = width, height
    elif policy == "crop":
        scale = max(width / w, height / h)
        scaled_w, scaled_h = max(width, round(w * scale)), max(height, round(h * scale))
    else:
        scale = min(width / w, height / h)
        scaled_w, scaled_h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    out = torch.zeros((n, height, width, 3), dtype=torch.uint8, device=video.device)
    top, left = abs(scaled_h - height) // 2, abs(scaled_w - width) // 2
    for i in range(0, n, 16):  # bounded memory for long clips
        x = video[i : i + 16].permute(0, 3, 1, 2).float()  # (f, H, W, 3) -> (f, 3, H, W)
        if (scaled_h, scaled_w) != (h, w):
            x = F.interpolate(x, size=(scaled_h, scaled_w), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        if policy == "pad":
            out[i : i + 16, top : top + scaled_h, left : left + scaled_w] = x
        else:
            out[i : i + 16] = x[:, top : top + height, left : left + width]
    return out.numpy() if is_numpy else out
