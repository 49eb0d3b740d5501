"""What the procedural world is made of: palette, shapes, sizes, motions, backgrounds, cameras.

Every length is in units of ``u = min(width, height)`` and every rate is per second, so one scene
description means the same thing at 64x64, 192x112 or 832x480 and at any frame rate.
"""

from __future__ import annotations

import math

# Object colours: saturated hues spread round the colour wheel (hue in degrees in the comment),
# all with chroma (max - min) >= 160 so they stand apart from every background (chroma <= 52)
# even after a small VAE washes them out. No white/black/grey objects: those are backgrounds.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 40),  # 357
    "orange": (250, 120, 20),  # 26
    "yellow": (245, 230, 20),  # 56
    "green": (30, 190, 60),  # 131
    "cyan": (20, 205, 220),  # 184
    "blue": (35, 80, 240),  # 227
    "purple": (150, 60, 225),  # 273
    "pink": (250, 85, 190),  # 322
}

SHAPES = ("circle", "square", "triangle", "star")

# Star: inner radius / outer radius. 0.45 keeps the points fat enough to survive 64 px and a VAE.
STAR_INNER = 0.45


def _unit_polygon(shape: str) -> list[tuple[float, float]]:
    """Vertices of the shape with equal-area radius 1 (area pi), apex up, y pointing down."""
    if shape == "square":
        h = math.sqrt(math.pi) / 2
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        r = math.sqrt(4 * math.pi / (3 * math.sqrt(3)))
        return [(r * math.sin(a), -r * math.cos(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
    if shape == "star":
        r = math.sqrt(math.pi / (5 * STAR_INNER * math.sin(math.pi / 5)))
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * STAR_INNER
            a = i * math.pi / 5
            pts.append((rad * math.sin(a), -rad * math.cos(a)))
        return pts
    raise ValueError(f"no polygon for shape {shape!r}; polygons exist for square, triangle, star")


POLYGONS: dict[str, list[tuple[float, float]]] = {s: _unit_polygon(s) for s in SHAPES if s != "circle"}
# Circumradius per unit equal-area radius: the collision and wall radius.
CIRCUMRADIUS: dict[str, float] = {"circle": 1.0} | {
    s: max(math.hypot(x, y) for x, y in p) for s, p in POLYGONS.items()
}
# Rotational symmetry order (0 = any angle): a spin is only visible modulo 2*pi/order.
SYMMETRY: dict[str, int] = {"circle": 0, "square": 4, "triangle": 3, "star": 5}

# Equal-area radius in units of min(width, height); neighbours differ by ~1.4x (2x in area).
SIZES: dict[str, float] = {"small": 0.075, "medium": 0.105, "large": 0.145}

MOTIONS = (
    "still", "moves_left", "moves_right", "moves_up", "moves_down",
    "falls", "bounces", "spins", "grows", "shrinks",
)  # fmt: skip
GRAVITY_MOTIONS = ("falls", "bounces")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "moves_left": (-1.0, 0.0), "moves_right": (1.0, 0.0), "moves_up": (0.0, -1.0), "moves_down": (0.0, 1.0),
}  # fmt: skip

BACKGROUNDS = ("black", "white", "grey", "sky", "night", "checkered")
# Only these show camera motion: a plain colour looks the same wherever the camera points.
TEXTURED_BACKGROUNDS = ("sky", "night", "checkered")
CAMERAS = ("static", "pan_left", "pan_right", "zoom_in", "zoom_out")

# (colour, shape, motion) triples that training never renders: the compositional-generalisation split.
# Every colour, shape and motion still appears in training, only these pairings do not.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "star", "bounces"),
    ("blue", "triangle", "falls"),
    ("green", "circle", "moves_left"),
    ("yellow", "square", "spins"),
    ("purple", "circle", "bounces"),
    ("orange", "triangle", "moves_up"),
    ("cyan", "star", "grows"),
    ("pink", "square", "moves_right"),
    ("green", "star", "shrinks"),
    ("blue", "circle", "moves_down"),
)

# --- physics and motion speeds (u = min(width, height); per second) ---
GRAVITY = 1.6  # u/s^2: a drop of 0.6 u lands in ~0.9 s, a visible arc in a 2 s clip
RESTITUTION = (0.75, 0.85)  # bounces; falls land with restitution 0
MOVE_SPEED = (0.25, 0.40)  # u/s for moves_*, lowered when the clip is too long for the room
SPIN_SPEED = (1.8, 2.8)  # rad/s (100-160 deg/s)
MAX_SPIN_PER_FRAME = math.radians(25)  # a star repeats every 72 deg: keep steps well under half that
GROWTH_RATE = (0.30, 0.45)  # d ln(radius)/dt for grows/shrinks
MAX_GROWTH = math.log(2.4)  # total ln(radius) change over a clip
MIN_RADIUS = 0.035  # u: shrinking objects stop being drawable below this
PAN_SPEED = 0.15  # u/s
MAX_PAN = 0.35  # total pan over a clip, as a fraction of the width
ZOOM_RATE = 0.2  # d ln(scale)/dt
MAX_ZOOM = math.log(1.5)  # total ln(scale) over a clip
