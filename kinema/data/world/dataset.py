"""Clips of the world by seed: the training stream and the ground truth for the benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from kinema.data.world.captions import caption
from kinema.data.world.render import render
from kinema.data.world.sample import sample_scene
from kinema.data.world.scene import Scene


def make_clip(
    seed: int,
    width: int,
    height: int,
    frames: int,
    fps: float,
    num_objects: int | None = None,
    held_out: str = "exclude",
    style: str = "train",
) -> tuple[np.ndarray, str, Scene]:
    """``(frames uint8 (F, H, W, 3), caption, scene)``, the same for the same arguments."""
    scene, text = sample_clip(seed, width, height, frames, fps, num_objects, held_out, style)
    return render(scene), text, scene


def sample_clip(
    seed: int,
    width: int,
    height: int,
    frames: int,
    fps: float,
    num_objects: int | None = None,
    held_out: str = "exclude",
    style: str = "train",
    motion_check: bool = True,
) -> tuple[Scene, str]:
    """``(scene, caption)`` of ``make_clip``'s clip, before rendering (rendering draws nothing from the seed).
    ``motion_check=False`` skips reading motions back as captioned (``sample_scene``), for runs that drop captions."""
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, width, height, frames, fps, num_objects, held_out, motion_check)
    return scene, caption(scene, rng, style)


@dataclass(frozen=True)
class WorldClips:
    """An endless (or ``count``-long) iterable of clips with seeds ``start, start + 1, ...``;
    training never sees the HELD_OUT combinations or the held-out phrasings."""

    width: int = 128
    height: int = 128
    frames: int = 17
    fps: float = 8.0
    start: int = 0
    count: int | None = None

    def __iter__(self) -> Iterator[tuple[np.ndarray, str, Scene]]:
        seed = self.start
        while self.count is None or seed < self.start + self.count:
            yield make_clip(seed, self.width, self.height, self.frames, self.fps)
            seed += 1

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("an endless WorldClips has no length; give count=")
        return self.count
