"""Draw a scene: backgrounds as functions of world coordinates seen through the camera, then
objects as signed-distance shapes with analytic one-pixel anti-aliasing (coverage =
clip(0.5 - distance_px, 0, 1)), so edges are clean at any size without supersampling.
"""

from __future__ import annotations

import math

import numpy as np

from kinema.data.world.physics import simulate
from kinema.data.world.scene import Scene, camera_anchor, camera_at, to_screen
from kinema.data.world.vocab import CIRCUMRADIUS, COLOURS, POLYGONS, SYMMETRY

# Background colours (0-255). All low chroma (max - min <= 52) so objects stand out by colour alone.
PLAIN = {"black": (8, 8, 8), "white": (245, 245, 245), "grey": (128, 128, 128)}
SKY_TOP, SKY_HORIZON = (178, 203, 230), (218, 230, 245)
GRASS_NEAR, GRASS_FAR = (98, 116, 82), (122, 140, 102)
CLOUD = (249, 249, 251)
NIGHT_TOP, NIGHT_BOTTOM = (8, 14, 44), (22, 30, 72)
STAR = (255, 250, 225)
WALL_TOP, WALL_BOTTOM = (150, 146, 140), (132, 128, 123)
TILE_LIGHT, TILE_DARK = (210, 208, 200), (75, 75, 80)

HORIZON = 0.72  # sky: horizon height as a fraction of the frame height (world)
LAWN_STRIPE = 0.2  # u: period of the light/dark mowing stripes (shows a pan on the ground)
LAWN_SHADE = 10  # 0-255 amplitude of the stripes
FLOOR_LINE = 0.62  # checkered: where the floor starts
TILE = 0.11  # checker tile, u
CLOUDS = 9  # spread over 2.2 frame widths, so ~4 are in view
STAR_CELL = 0.08  # one star at most per cell of this size, u
STAR_SIGMA = 0.7  # screen px: stars stay points at any zoom


def render(scene: Scene, with_mask: bool = False, window: slice = slice(None)) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The scene's frames (only those in ``window``) as uint8, shape (F, H, W, 3); with ``with_mask``, also
    where objects changed the background (F, H, W) bool, anti-aliased edges included."""
    tracks = simulate(scene)  # the whole scene: a window's motion depends on what came before it
    times = tracks.times[window]
    pan, scale = camera_at(scene.camera, scene.camera_rate, times)  # (F,), (F,)
    canvas = render_background(scene, pan, scale)  # (F, H, W, 3) float32 in [0, 1]
    mask = np.zeros(canvas.shape[:3], dtype=bool) if with_mask else None
    for i, obj in enumerate(scene.objects):
        screen, _ = to_screen(scene, tracks.centres[window, i], times)  # (F, 2) px
        _draw(canvas, obj.shape, COLOURS[obj.colour], screen[:, 0], screen[:, 1], tracks.radius[window, i] * scale,
              tracks.angle[window, i], mask)
    frames = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return frames if mask is None else (frames, mask)


def render_background(scene: Scene, pan: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The background alone for each frame's camera, float32 (F, H, W, 3) in [0, 1]."""
    f = len(pan)
    moving = bool(np.any(pan != 0) or np.any(scale != 1))
    if not moving:  # draw once, copy to every frame
        return np.repeat(_background(scene, pan[:1], scale[:1]), f, axis=0)
    return _background(scene, pan, scale)


def _background(scene: Scene, pan: np.ndarray, scale: np.ndarray) -> np.ndarray:
    w, h, u = scene.width, scene.height, scene.unit
    ax, ay = camera_anchor(w, h)
    s = scale[:, None, None]  # (F, 1, 1)
    xs = ax + (np.arange(w) + 0.5 - ax)[None, None, :] / s + pan[:, None, None]  # (F, 1, W) world x
    ys = ay + (np.arange(h) + 0.5 - ay)[None, :, None] / s  # (F, H, 1) world y
    name = scene.background
    if name in PLAIN:
        return np.broadcast_to(_rgb(PLAIN[name]), (len(pan), h, w, 3)).copy()
    if name == "sky":
        sky = _lerp(SKY_TOP, SKY_HORIZON, np.clip(ys / (HORIZON * h), 0, 1))
        grass = _lerp(GRASS_FAR, GRASS_NEAR, np.clip((ys - HORIZON * h) / ((1 - HORIZON) * h), 0, 1))
        stripes = np.sin(xs * (2 * np.pi / (LAWN_STRIPE * u)) + scene.seed % 7)  # (F, 1, W) mowed lawn
        grass = grass + (np.float32(LAWN_SHADE / 255.0) * stripes)[..., None]
        ground = _edge((ys - HORIZON * h) * s)[..., None]  # (F, H, 1, 1)
        img = sky + (grass - sky) * ground  # (F, H, 1, 3)
        img = np.broadcast_to(img, (len(pan), h, w, 3)).copy()
        _clouds(img, scene, pan, scale)
        return img
    if name == "night":
        img = _lerp(NIGHT_TOP, NIGHT_BOTTOM, np.clip(ys / h, 0, 1))  # (F, H, 1, 3)
        glow = _stars(xs, ys, s, u, scene.seed)  # (F, H, W)
        return img + (_rgb(STAR) - img) * glow[..., None]
    if name == "checkered":
        wall = _lerp(WALL_TOP, WALL_BOTTOM, np.clip(ys / (FLOOR_LINE * h), 0, 1))  # (F, H, 1, 3)
        tile = TILE * u
        phase = _hash(np.array([scene.seed]), np.array([7]), 0, 2)[0] * 2.0
        footprint = 1.0 / (s * tile)  # screen pixel width in tile units
        cx = _square_wave(xs / tile + phase, footprint)  # (F, 1, W)
        cy = _square_wave(ys / tile, footprint)  # (F, H, 1)
        light = cx * cy + (1 - cx) * (1 - cy)  # (F, H, W): box-filtered checker
        floor = _rgb(TILE_DARK) + (_rgb(TILE_LIGHT) - _rgb(TILE_DARK)) * light[..., None]
        on_floor = _edge((ys - FLOOR_LINE * h) * s)[..., None]  # (F, H, 1, 1)
        return wall + (floor - wall) * on_floor
    raise ValueError(f"unknown background {name!r}")


def _rgb(c) -> np.ndarray:
    return np.asarray(c, dtype=np.float32) / 255.0


def _lerp(a, b, t: np.ndarray) -> np.ndarray:
    a, b = _rgb(a), _rgb(b)
    return (a + (b - a) * t[..., None]).astype(np.float32)


def _edge(d_px: np.ndarray) -> np.ndarray:
    """Coverage of a straight edge at signed distance d (screen px): 0 -> 1 over one pixel."""
    return np.clip(d_px + 0.5, 0.0, 1.0)


def _square_wave(x: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Box-filtered 0/1 square wave of period 2 (1 on [0, 1)), filter ``width`` in the same units."""

    def integral(v):
        return np.floor(v / 2) + np.minimum(np.mod(v, 2), 1.0)

    return ((integral(x + width / 2) - integral(x - width / 2)) / width).astype(np.float32)


def _hash(i: np.ndarray, j: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer cell (i, j): a 32-bit integer mix."""
    v = (i.astype(np.int64) * 73856093) ^ (j.astype(np.int64) * 19349663) ^ (seed * 83492791 + salt * 2654435761)
    v = v.astype(np.uint64) & np.uint64(0xFFFFFFFF)
    for mult in (0x7FEB352D, 0x846CA68B):
        v ^= v >> np.uint64(16)
        v = (v * np.uint64(mult)) & np.uint64(0xFFFFFFFF)
    v ^= v >> np.uint64(16)
    return v.astype(np.float64) / 4294967296.0


def _stars(xs: np.ndarray, ys: np.ndarray, s: np.ndarray, u: float, seed: int) -> np.ndarray:
    """Star glow in [0, 1] per pixel: at most one star per world cell, kept off the cell edges."""
    cell = STAR_CELL * u
    i = np.floor(xs / cell).astype(np.int64)  # (F, 1, W)
    j = np.floor(ys / cell).astype(np.int64)  # (F, H, 1)
    i0, j0 = int(i.min()), int(j.min())
    ci, cj = np.meshgrid(np.arange(i0, i.max() + 1), np.arange(j0, j.max() + 1))  # (J, I) cells in view
    bright = np.where(_hash(ci, cj, seed, 1) < 0.55, 0.5 + 0.5 * _hash(ci, cj, seed, 4), 0.0).astype(np.float32)
    star_x = ((ci + 0.3 + 0.4 * _hash(ci, cj, seed, 2)) * cell).astype(np.float32)
    star_y = ((cj + 0.3 + 0.4 * _hash(ci, cj, seed, 3)) * cell).astype(np.float32)
    cell_of = (j - j0, i - i0)  # (F, H, W) index pair into the cell tables
    dx = xs.astype(np.float32) - star_x[cell_of]
    dy = ys.astype(np.float32) - star_y[cell_of]
    d2 = (dx * dx + dy * dy) * (s * s).astype(np.float32)  # screen px^2
    return bright[cell_of] * np.exp(d2 * np.float32(-0.5 / STAR_SIGMA**2))


def _clouds(img: np.ndarray, scene: Scene, pan: np.ndarray, scale: np.ndarray) -> None:
    """Soft white clouds (unions of discs) in the sky, drawn in place into each frame's box."""
    w, h, u = scene.width, scene.height, scene.unit
    rng = np.random.default_rng(scene.seed)
    ax, ay = camera_anchor(w, h)
    puffs = []  # (x, y, r) in world px
    for _ in range(CLOUDS):
        cx, cy = rng.uniform(-0.6 * w, 1.6 * w), rng.uniform(0.1, 0.4) * HORIZON * h
        for _ in range(3):
            puffs.append((cx + rng.uniform(-0.12, 0.12) * u, cy + rng.uniform(-0.03, 0.03) * u, rng.uniform(0.05, 0.09) * u))
    cloud = _rgb(CLOUD)
    soft = 0.03 * u  # world px of feathered edge
    for k in range(len(pan)):
        for x, y, r in puffs:
            sx, sy, sr = ax + scale[k] * (x - pan[k] - ax), ay + scale[k] * (y - ay), scale[k] * (r + soft)
            x0, x1 = max(int(sx - sr), 0), min(int(sx + sr) + 2, w)
            y0, y1 = max(int(sy - sr), 0), min(int(sy + sr) + 2, h)
            if x0 >= x1 or y0 >= y1:
                continue
            gx = np.arange(x0, x1) + 0.5
            gy = (np.arange(y0, y1) + 0.5)[:, None]
            d = np.sqrt((gx - sx) ** 2 + (gy - sy) ** 2) / scale[k]  # world px
            alpha = (0.85 * np.clip((r + soft - d) / soft, 0, 1))[..., None]
            patch = img[k, y0:y1, x0:x1]
            patch += (cloud - patch) * alpha


def _draw(canvas: np.ndarray, shape: str, colour, cx, cy, radius, angle, mask: np.ndarray | None = None) -> None:
    """Blend one anti-aliased shape into every frame of ``canvas`` (F, H, W, 3) in place.

    cx, cy, radius (equal-area, px) and angle are per frame, shape (F,); the shape is evaluated on one
    square patch per frame around its centre, all frames at once. ``mask`` (F, H, W) bool, if given, is set
    where the blend changes a channel by more than half a level (per patch: no full-frame pass).
    """
    f, h, w, _ = canvas.shape
    reach = CIRCUMRADIUS[shape] * radius + 1.5  # (F,)
    size = int(math.ceil(2 * reach.max())) + 1
    x0 = np.floor(cx - size / 2).astype(int)  # (F,) patch corners, may hang off the canvas
    y0 = np.floor(cy - size / 2).astype(int)
    offs = np.arange(size, dtype=np.float32) + 0.5
    r = np.maximum(radius, 1e-6).astype(np.float32)[:, None, None]
    gx = (x0[:, None] + offs[None, :] - cx[:, None]).astype(np.float32)[:, None, :] / r  # (F, 1, S) unit coords
    gy = (y0[:, None] + offs[None, :] - cy[:, None]).astype(np.float32)[:, :, None] / r  # (F, S, 1)
    if shape == "circle":
        sdf = np.sqrt(gx * gx + gy * gy) - 1.0
    else:
        sdf = _symmetric_sdf(gx, gy, shape, angle.astype(np.float32)[:, None, None])
    alpha = np.minimum(np.maximum(0.5 - sdf * r, 0.0), 1.0)[..., None]  # (F, S, S, 1)
    rgb = _rgb(colour)
    for k in range(f):
        ya, yb, xa, xb = max(y0[k], 0), min(y0[k] + size, h), max(x0[k], 0), min(x0[k] + size, w)
        if ya >= yb or xa >= xb or radius[k] <= 0:
            continue
        a = alpha[k, ya - y0[k] : yb - y0[k], xa - x0[k] : xb - x0[k]]
        patch = canvas[k, ya:yb, xa:xb]
        change = (rgb - patch) * a
        patch += change
        if mask is not None:
            mask[k, ya:yb, xa:xb] |= np.abs(change).max(axis=-1) > 0.5 / 255.0


def _symmetric_sdf(gx: np.ndarray, gy: np.ndarray, shape: str, angle) -> np.ndarray:
    """Signed distance (negative inside) to a regular polygon or star by folding the plane into one
    mirror sector of its symmetry, where the boundary is a single segment A-B: A the outer vertex
    on the sector's axis, B the edge midpoint (polygon) or inner vertex (star) on its other side."""
    n = SYMMETRY[shape]
    sector = np.float32(math.pi / n)
    vertices = POLYGONS[shape]
    vx, vy = vertices[0]
    outer = math.hypot(vx, vy)
    offset = math.atan2(vx, -vy)  # the first vertex's angle from "up", clockwise (square: 45 deg)
    inner = math.hypot(*vertices[1]) if shape == "star" else outer * math.cos(math.pi / n)
    rho = np.sqrt(gx * gx + gy * gy)
    phi = np.arctan2(gx, -gy) - (angle + np.float32(offset))  # angle from the rotated first vertex
    phi = np.abs(np.mod(phi + sector, 2 * sector) - sector)  # fold into [0, pi/n]
    qx, qy = rho * np.sin(phi), rho * np.cos(phi)  # sector frame: A on the +y axis
    ax_, ay_ = 0.0, outer
    bx, by = inner * math.sin(math.pi / n), inner * math.cos(math.pi / n)
    ex, ey = bx - ax_, by - ay_
    wx, wy = qx - ax_, qy - ay_
    t = np.minimum(np.maximum((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0), 1.0)
    dist = np.sqrt((wx - ex * t) ** 2 + (wy - ey * t) ** 2)
    outside = (ex * wy - ey * wx) > 0  # the centre lies on the other side of A->B
    return np.where(outside, dist, -dist)
