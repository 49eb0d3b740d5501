"""Physics of the world: integrate every object's state and sample it at the frame times.

Objects move in world pixels inside ``world_box(scene)``: walls reflect elastically, the floor
reflects gravity objects with their restitution (0 = they land and stay) when their lowest point
touches it, and objects collide as discs of their circumradius with an elastic impulse (mass ~
area). Integration uses fixed substeps of at most 1/60 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kinema.data.world.scene import Scene, world_box
from kinema.data.world.vocab import CIRCUMRADIUS, POLYGONS

SUBSTEP_HZ = 60.0
REST_SPEED = 0.05  # u/s: a bounce slower than this settles on the floor


@dataclass(frozen=True)
class Tracks:
    """Object states at each frame time, in world pixels."""

    centres: np.ndarray  # (F, N, 2)
    radius: np.ndarray  # (F, N) equal-area radius
    angle: np.ndarray  # (F, N) rad
    times: np.ndarray  # (F,) s
    collisions: int = 0  # object-object impacts during the clip


def simulate(scene: Scene) -> Tracks:
    """The scene's object tracks sampled at its frame times."""
    times = scene.times()
    objs = scene.objects
    n = len(objs)
    radius = np.array([[o.radius * math.exp(o.growth * t) for o in objs] for t in times]).reshape(len(times), n)
    angle = np.array([[o.angle + o.spin * t for o in objs] for t in times]).reshape(len(times), n)
    centres = np.zeros((len(times), n, 2))

    x0, y0, x1, y1 = world_box(scene)
    g = scene.gravity * scene.unit
    rest = REST_SPEED * scene.unit
    pos = [[o.x, o.y] for o in objs]
    vel = [[o.vx, o.vy] for o in objs]
    landed = [False] * n
    mass = [o.radius**2 for o in objs]
    circ = [CIRCUMRADIUS[o.shape] for o in objs]
    down = [floor_reach(o.shape, o.angle) for o in objs]
    substeps = max(1, math.ceil(SUBSTEP_HZ / scene.fps))
    dt = 1.0 / (scene.fps * substeps)

    centres[0] = pos
    t = 0.0
    impacts = 0
    for k in range(1, len(times)):
        for _ in range(substeps):
            t += dt
            size = [objs[i].radius * math.exp(objs[i].growth * t) for i in range(n)]
            reach = [circ[i] * size[i] for i in range(n)]
            for i, o in enumerate(objs):
                p, v, r = pos[i], vel[i], reach[i]
                falling = o.gravity and not landed[i]
                p[0] += v[0] * dt
                p[1] += v[1] * dt + (0.5 * g * dt * dt if falling else 0.0)
                if falling:
                    v[1] += g * dt
                # side and top walls: elastic
                if p[0] < x0 + r:
                    p[0], v[0] = 2 * (x0 + r) - p[0], abs(v[0])
                if p[0] > x1 - r:
                    p[0], v[0] = 2 * (x1 - r) - p[0], -abs(v[0])
                if p[1] < y0 + r:
                    p[1], v[1] = 2 * (y0 + r) - p[1], abs(v[1])
                floor = y1 - r  # the circumradius first: the exact lowest point only near the floor
                if p[1] > floor or landed[i]:
                    floor = y1 - size[i] * (floor_reach(o.shape, o.angle + o.spin * t) if o.spin else down[i])
                if landed[i]:
                    p[1] = floor  # stays on the floor even while growing
                elif p[1] > floor:
                    e = o.restitution if o.gravity else 1.0
                    p[1], v[1] = floor - e * (p[1] - floor), -e * abs(v[1])
                    if o.gravity and abs(v[1]) < rest:
                        p[1], v[1], landed[i] = floor, 0.0, True
                # keep inside even when a growing object outgrows its spot
                p[0] = min(max(p[0], x0 + r), x1 - r) if x1 - x0 > 2 * r else (x0 + x1) / 2
                p[1] = min(max(p[1], y0 + r), floor) if floor - y0 > r else (y0 + floor) / 2
            for i in range(n):
                for j in range(i + 1, n):
                    impacts += _collide(pos[i], vel[i], mass[i], reach[i], pos[j], vel[j], mass[j], reach[j], landed, i, j)
        centres[k] = pos
    return Tracks(centres=centres, radius=radius, angle=angle, times=times, collisions=impacts)


def floor_reach(shape: str, angle: float) -> float:
    """How far below its centre a unit (equal-area radius 1) shape reaches at this orientation."""
    if shape == "circle":
        return 1.0
    return max(-math.hypot(x, y) * math.cos(math.atan2(x, -y) + angle) for x, y in POLYGONS[shape])


def _collide(pi, vi, mi, ri, pj, vj, mj, rj, landed, i, j) -> bool:
    """Elastic collision of two discs, in place: impulse along the normal, then separate them.
    Returns whether they touched."""
    dx, dy = pi[0] - pj[0], pi[1] - pj[1]
    dist = math.hypot(dx, dy)
    if dist >= ri + rj or dist == 0.0:
        return False
    nx, ny = dx / dist, dy / dist
    approach = (vi[0] - vj[0]) * nx + (vi[1] - vj[1]) * ny
    if approach < 0:
        impulse = -2.0 * approach / (1.0 / mi + 1.0 / mj)
        vi[0] += impulse / mi * nx
        vi[1] += impulse / mi * ny
        vj[0] -= impulse / mj * nx
        vj[1] -= impulse / mj * ny
        landed[i] = landed[j] = False
    overlap = ri + rj - dist
    wi, wj = mj / (mi + mj), mi / (mi + mj)
    pi[0] += overlap * wi * nx
    pi[1] += overlap * wi * ny
    pj[0] -= overlap * wj * nx
    pj[1] -= overlap * wj * ny
    return True
