"""What a job reads and writes on disk: uploaded references in, video + thumbnail + spritesheet out.

Every file lives at ``data_dir/videos/<video id>/<fixed name>``: ids are checked against ``VIDEO_ID``
before they are joined to a path, and names come from the fixed ``VARIANTS`` / ``INPUT_*`` constants,
so nothing a client sends ever becomes part of a path. Writes are atomic (temporary name + rename).
"""

from __future__ import annotations

import io
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..common.io import atomic_path
from ..common.video import VideoDecodeError, image_rgb, probe_video, read_video
from ..common.video_write import write_video

VIDEO_ID = re.compile(r"video_[0-9a-f]{32}")
VARIANTS = {  # variant -> (file name, media type)
    "video": ("video.mp4", "video/mp4"),
    "thumbnail": ("thumbnail.jpg", "image/jpeg"),
    "spritesheet": ("spritesheet.jpg", "image/jpeg"),
}
INPUT_IMAGE, INPUT_VIDEO = "input.png", "input.mp4"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 4096 * 4096
SPRITE_TILES, SPRITE_TILE_WIDTH = 16, 256


class UploadError(ValueError):
    """An uploaded file is not an accepted image or video; the message says what is accepted."""


def job_dir(data_dir: Path, video_id: str) -> Path:
    """The folder of one job's files; refuses anything that is not a well-formed video id."""
    if not VIDEO_ID.fullmatch(video_id):
        raise ValueError(f"not a video id: {video_id!r}")
    return data_dir / "videos" / video_id


def remove_job_files(data_dir: Path, video_id: str) -> None:
    """Delete a job's folder, if it has one."""
    shutil.rmtree(job_dir(data_dir, video_id), ignore_errors=True)


# -- uploads -----------------------------------------------------------------------------------------------

def decode_image(data: bytes) -> np.ndarray:
    """uint8 RGB (H, W, 3) from uploaded bytes; UploadError unless it is a PNG, JPEG or WebP image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in IMAGE_FORMATS:
                raise UploadError(f"input image is {img.format}; accepted: {', '.join(IMAGE_FORMATS)}")
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise UploadError(f"input image is {img.width}x{img.height}; at most {MAX_IMAGE_PIXELS} pixels accepted")
            img.load()
            return image_rgb(img)
    except UploadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise UploadError(f"input is not a readable image; accepted: {', '.join(IMAGE_FORMATS)}") from None


def decode_video(data: bytes, scratch: Path, max_frames: int, max_pixels: int = MAX_IMAGE_PIXELS, last: bool = False
                 ) -> tuple[np.ndarray, float]:
    """uint8 frames (F, H, W, 3) and fps from uploaded bytes (at most ``max_frames``, each scaled down to at most
    ``max_pixels`` as it is decoded: a few kB of H.264 can hold minutes of 4K; ``last``: its last ``max_frames``
    frames, which an extension continues); UploadError if unreadable."""
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "upload.mp4"  # PyAV sniffs the container from its content, not this name
        path.write_bytes(data)
        try:
            info = probe_video(path)
            if info["width"] * info["height"] > MAX_IMAGE_PIXELS:  # before decoding a whole clip of it
                raise UploadError(f"input video is {info['width']}x{info['height']}; at most {MAX_IMAGE_PIXELS} "
                                  f"pixels accepted")
            frames, fps = read_video(path, max_frames=max_frames, max_pixels=max_pixels, last=last)
        except (VideoDecodeError, OSError, ValueError, RuntimeError, KeyError, IndexError) as err:
            if isinstance(err, UploadError):
                raise
            raise UploadError("input is not a readable video; accepted: MP4 (H.264), WebM, MOV, GIF") from None
    return frames, fps if fps > 0 else 8.0


def save_image(path: Path, image: np.ndarray) -> None:
    """Write an RGB image as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def load_image(path: Path) -> np.ndarray:
    """uint8 RGB (H, W, 3) from a PNG this module wrote."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


# -- results -----------------------------------------------------------------------------------------------

def write_results(folder: Path, frames: np.ndarray, fps: float, metadata: dict[str, str]) -> None:
    """Write video.mp4 (H.264), thumbnail.jpg (middle frame) and spritesheet.jpg (a grid of frames)."""
    write_video(folder / VARIANTS["video"][0], frames, fps, metadata=metadata)
    with atomic_path(folder / VARIANTS["thumbnail"][0]) as tmp:
        Image.fromarray(frames[len(frames) // 2]).save(tmp, format="JPEG", quality=90)
    with atomic_path(folder / VARIANTS["spritesheet"][0]) as tmp:
        spritesheet(frames).save(tmp, format="JPEG", quality=85)


def spritesheet(frames: np.ndarray) -> Image.Image:
    """Up to 16 evenly spaced frames (F, H, W, 3) tiled row by row in a near-square grid."""
    n_frames, h, w, _ = frames.shape
    picks = np.unique(np.linspace(0, n_frames - 1, min(SPRITE_TILES, n_frames)).round().astype(int))
    scale = min(1.0, SPRITE_TILE_WIDTH / w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    cols = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / cols)
    sheet = Image.new("RGB", (cols * tw, rows * th))
    for k, i in enumerate(picks):
        tile = Image.fromarray(frames[i])
        if scale < 1:
            tile = tile.resize((tw, th), Image.Resampling.BICUBIC)
        sheet.paste(tile, ((k % cols) * tw, (k // cols) * th))
    return sheet
