"""Scenes: what a clip of the world contains, as data (JSON round trip), and its camera.

Coordinates are pixels of the first frame, y pointing down; ``unit = min(width, height)``. The
camera maps world to screen: ``x_screen = ax + scale(t) * (x_world - pan(t) - ax)`` (same for y
without the pan), anchored at the bottom centre ``(ax, ay) = (width / 2, height)`` so the floor
stays on the bottom edge while zooming.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from kinema.data.world.vocab import (
    BACKGROUNDS, CAMERAS, COLOURS, GRAVITY, MOTIONS, SHAPES, SIZES,
)  # fmt: skip


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_name(kind: str, value: Any, accepted: tuple[str, ...] | dict, optional: bool = False) -> None:
    if optional and value is None:
        return
    _check(value in accepted, f"unknown {kind} {value!r}; accepted: {sorted(accepted)}")


@dataclass(frozen=True)
class WorldObject:
    """One object: what it is and its state at t = 0 (positions/speeds in world px, px/s)."""

    shape: str
    colour: str
    size: str  # size class the radius was drawn from
    radius: float  # equal-area radius (px) at t = 0
    motion: str  # the label the caption uses; the physics below is what makes it true
    x: float
    y: float
    vx: float = 0.0
    vy: float = 0.0
    angle: float = 0.0  # rad at t = 0
    spin: float = 0.0  # rad/s
    growth: float = 0.0  # d ln(radius)/dt
    gravity: bool = False
    restitution: float = 1.0  # floor bounce for gravity objects (0 = lands)

    def __post_init__(self):
        _check_name("shape", self.shape, SHAPES)
        _check_name("colour", self.colour, COLOURS)
        _check_name("size", self.size, SIZES)
        _check_name("motion", self.motion, MOTIONS)
        _check(self.radius > 0, f"WorldObject.radius must be > 0, got {self.radius}")
        _check(0.0 <= self.restitution <= 1.0, f"WorldObject.restitution must be in [0, 1], got {self.restitution}")


@dataclass(frozen=True)
class Scene:
    """A whole clip: canvas, time, background, camera and 1-3 objects; ``render(scene)`` draws it."""

    width: int
    height: int
    frames: int
    fps: float
    background: str
    objects: tuple[WorldObject, ...]
    camera: str = "static"
    camera_rate: float = 0.0  # pan: px/s (signed, left < 0); zoom: d ln(scale)/dt (out < 0)
    seed: int = 0  # background texture (stars, clouds, checker phase)
    gravity: float = GRAVITY  # u/s^2

    def __post_init__(self):
        _check(self.width >= 8 and self.height >= 8, f"Scene size must be >= 8x8, got {self.width}x{self.height}")
        _check(self.frames >= 1, f"Scene.frames must be >= 1, got {self.frames}")
        _check(self.fps > 0, f"Scene.fps must be > 0, got {self.fps}")
        _check_name("background", self.background, BACKGROUNDS)
        _check_name("camera", self.camera, CAMERAS)
        _check(1 <= len(self.objects) <= 3, f"a scene holds 1 to 3 objects, got {len(self.objects)}")
        sign = {"pan_left": -1, "zoom_out": -1, "pan_right": 1, "zoom_in": 1}.get(self.camera, 0)
        _check(
            (sign == 0 and self.camera_rate == 0) or sign * self.camera_rate > 0,
            f"camera_rate {self.camera_rate} does not match camera {self.camera!r} "
            "(static: 0; pan_right/zoom_in: > 0; pan_left/zoom_out: < 0)",
        )

    @property
    def unit(self) -> float:
        return float(min(self.width, self.height))

    @property
    def duration(self) -> float:
        return (self.frames - 1) / self.fps

    def times(self):
        """Frame times in seconds, shape (F,)."""
        return np.arange(self.frames, dtype=np.float64) / self.fps

    def spec(self) -> SceneSpec:
        """The fully specified request this scene answers."""
        objs = tuple(ObjectSpec(o.colour, o.shape, o.motion, o.size) for o in self.objects)
        return SceneSpec(objs, self.background, self.camera)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objects"] = [dataclasses.asdict(o) for o in self.objects]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Build from ``to_dict`` output; unknown keys are an error naming the accepted ones."""
        _check_keys(cls, d)
        objects = []
        for o in d.get("objects", ()):
            _check_keys(WorldObject, o)
            objects.append(WorldObject(**o))
        return cls(**{**d, "objects": tuple(objects)})


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt asks of one object; None = not asked (any value is right)."""

    colour: str | None = None
    shape: str | None = None
    motion: str | None = None
    size: str | None = None

    def __post_init__(self):
        _check_name("colour", self.colour, COLOURS, optional=True)
        _check_name("shape", self.shape, SHAPES, optional=True)
        _check_name("motion", self.motion, MOTIONS, optional=True)
        _check_name("size", self.size, SIZES, optional=True)


@dataclass(frozen=True)
class SceneSpec:
    """What a prompt asks of a whole clip: the objects in prompt order, background, camera."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None
    camera: str | None = None

    def __post_init__(self):
        _check(1 <= len(self.objects) <= 3, f"a scene holds 1 to 3 objects, got {len(self.objects)}")
        _check_name("background", self.background, BACKGROUNDS, optional=True)
        _check_name("camera", self.camera, CAMERAS, optional=True)

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [dataclasses.asdict(o) for o in self.objects],
                "background": self.background, "camera": self.camera}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneSpec:
        """Build from ``to_dict`` output."""
        _check_keys(cls, d)
        return cls(tuple(ObjectSpec(**o) for o in d["objects"]), d.get("background"), d.get("camera"))


def _check_keys(cls, d: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    _check(not unknown, f"{cls.__name__}: unknown key(s) {unknown}; accepted: {sorted(names)}")


# --- camera ---


def camera_anchor(width: int, height: int) -> tuple[float, float]:
    """The fixed point of a zoom: bottom centre, so the floor stays on the bottom edge."""
    return width / 2.0, float(height)


def camera_at(camera: str, rate: float, t):
    """``(pan_px, scale)`` at time(s) ``t`` for a camera kind and its signed rate."""
    t = np.asarray(t, dtype=np.float64)
    if camera in ("pan_left", "pan_right"):
        return rate * t, np.ones_like(t)
    if camera in ("zoom_in", "zoom_out"):
        return np.zeros_like(t), np.exp(rate * t)
    return np.zeros_like(t), np.ones_like(t)


def world_box(scene: Scene) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``: the world region seen in every frame; objects bounce off its edges."""
    w, h = float(scene.width), float(scene.height)
    pan, scale = camera_at(scene.camera, scene.camera_rate, scene.duration)
    pan, scale = float(pan), float(scale)
    if scene.camera.startswith("pan"):
        return max(0.0, pan), 0.0, min(w, w + pan), h
    s = max(1.0, scale)  # zoom in: the last frame sees least; zoom out: the first
    ax, _ = camera_anchor(scene.width, scene.height)
    return ax - ax / s, h - h / s, ax + (w - ax) / s, h


def to_screen(scene: Scene, xy, t):
    """World points (..., 2) at times ``t`` (broadcastable to ...) -> screen points, and the scale."""
    pan, scale = camera_at(scene.camera, scene.camera_rate, t)
    ax, ay = camera_anchor(scene.width, scene.height)
    xy = np.asarray(xy, dtype=np.float64)
    x = ax + scale * (xy[..., 0] - pan - ax)
    y = ay + scale * (xy[..., 1] - ay)
    return np.stack([x, y], axis=-1), scale
