"""Videos with known shots, for tests and benchmarks: procedural-world scenes joined by hard cuts.

The truth comes with them (where each cut is, what each shot shows), so scene detection can be
checked to the frame, in any container and codec PyAV writes, including phone-style rotated files.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from kinema.common.io import atomic_path
from kinema.data.world import make_clip

# suffix -> (container format, codec)
CODECS = {".mp4": ("mp4", "libx264"), ".mkv": ("matroska", "libx264"), ".webm": ("webm", "libvpx-vp9"),
          ".avi": ("avi", "mpeg4")}


def world_shots(seeds: list[int], lengths: list[int], width: int, height: int, fps: float,
                distinct: bool = False) -> tuple[np.ndarray, list[int], list[str]]:
    """(frames (F, H, W, 3) uint8, the frames where shots 2.. start, one caption per shot).

    With ``distinct``, a shot on the same background as the one before it is redrawn from the next
    seeds (+1000, +2000, ...) until it is not: a cut between two shots of one plain backdrop that differ
    only in a few small objects is a hard case of its own (benchmarks/data.py keeps those).
    """
    if len(seeds) != len(lengths):
        raise ValueError(f"one length per seed: got {len(seeds)} seeds, {len(lengths)} lengths")
    shots, captions, background = [], [], None
    for seed, length in zip(seeds, lengths):
        frames, caption, scene = make_clip(seed, width, height, length, fps)
        while distinct and scene.background == background:
            seed += 1000
            frames, caption, scene = make_clip(seed, width, height, length, fps)
        shots.append(frames)
        captions.append(caption)
        background = scene.background
    cuts = np.cumsum(lengths)[:-1].tolist()
    return np.concatenate(shots), cuts, captions


def write_test_video(path: str | Path, frames: np.ndarray, fps: float, rotation: int = 0, crf: int = 20) -> Path:
    """Write upright frames (F, H, W, 3); with ``rotation`` the file stores them turned, plus a display
    matrix that turns them back (as phones do), so readers that honour it see ``frames``."""
    path = Path(path)
    if path.suffix.lower() not in CODECS:
        raise ValueError(f"write_test_video: unknown suffix {path.suffix!r}; accepted: {sorted(CODECS)}")
    fmt, codec = CODECS[path.suffix.lower()]
    coded = np.ascontiguousarray(np.rot90(frames, k=-(rotation // 90), axes=(1, 2))) if rotation else frames
    _, height, width, _ = coded.shape
    options = {"crf": str(crf)} if codec != "mpeg4" else {"qscale": "3"}
    if codec == "libvpx-vp9":
        options.update({"b:v": "0", "cpu-used": "8", "deadline": "realtime"})
    with atomic_path(path) as tmp:
        # faststart puts the index first, as phones and web downloads have it: a cut-off copy still opens.
        container_options = {"movflags": "+faststart"} if fmt == "mp4" else {}
        with av.open(str(tmp), mode="w", format=fmt, options=container_options) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if rotation:
                stream.set_display_rotation(rotation)
            for frame in coded:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    return path


def truncate(src: str | Path, dst: str | Path, keep: float = 0.6) -> Path:
    """A copy of ``src`` cut after ``keep`` of its bytes (a download that stopped)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)
