"""Read a motion label off an object's track: the one definition shared by the scene sampler
(which keeps only scenes whose exact tracks read as their caption says) and the evaluator (which
reads tracks detected in generated videos).

A track is the object's centre, equal-area radius, orientation and lowest point per frame, in
world pixels (camera motion already removed). Thresholds are in ``u = min(width, height)`` and
seconds, with room for the blur and jitter of a small VAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kinema.data.world.vocab import GRAVITY

STILL_EXCURSION = 0.06  # u: an object that never gets this far from its start did not travel
GROWTH_MIN = 0.15  # |ln(r_end / r_start)| for grows / shrinks
SPIN_MIN = np.radians(30)  # total rotation for spins
BOUNCE_DOWN, BOUNCE_UP = 0.08, 0.04  # u: descent before and ascent after the lowest point
FALL_ACCEL = 0.4  # x GRAVITY: below this a descent is a steady moves_down
FLOOR_MARGIN = 0.05  # u, plus one frame's travel: how close the lowest point of a bounce must come to the floor
PHYSICS_ACCEL = (0.5, 1.6)  # x GRAVITY: the acceleration band a fall or a bounce must show


@dataclass(frozen=True)
class MotionReading:
    """What a track shows: the label and the measurements behind it (u and seconds)."""

    label: str  # a MOTIONS name, or "erratic" for a track no smooth motion explains
    excursion: float  # furthest distance from the start
    displacement: tuple[float, float]  # end - start
    growth: float  # ln(r_end / r_start)
    rotation: float  # total rad (nan when orientation is unknown)
    accel: float  # downward acceleration of the first descent, u/s^2 (nan if none)
    bounced: bool  # a descent reversed into an ascent
    floor_contact: bool  # the lowest point touched the floor
    energy_ok: bool  # no rebound rose above the drop height
    straightness: float  # |end - start| / path length (1 = a straight one-way path)
    sideways: float  # furthest horizontal distance from the start


def read_motion(
    centres: np.ndarray,  # (F, 2) px
    radius: np.ndarray,  # (F,) px
    angle: np.ndarray | None,  # (F,) rad, or None when the shape has no visible orientation
    reach: np.ndarray,  # (F,) px from centre to the lowest point
    fps: float,
    unit: float,
    floor: float,  # world y of the floor, px
) -> MotionReading:
    """The motion label a track shows, with its measurements."""
    f = len(centres)
    p = np.asarray(centres, dtype=np.float64) / unit
    r = np.maximum(np.asarray(radius, dtype=np.float64), 1e-6) / unit
    t = np.arange(f) / fps
    if f < 3:
        return MotionReading("still", 0.0, (0.0, 0.0), 0.0, float("nan"), float("nan"), False, False, True, 1.0, 0.0)

    log_r = np.log(r)
    edge = max(1, f // 8)
    growth = float(log_r[-edge:].mean() - log_r[:edge].mean())
    excursion = float(np.linalg.norm(p - p[0], axis=1).max())
    displacement = (float(p[-1, 0] - p[0, 0]), float(p[-1, 1] - p[0, 1]))
    path = float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum())
    straightness = float(np.hypot(*displacement) / path) if path > 0 else 1.0
    sideways = float(np.abs(p[:, 0] - p[0, 0]).max())
    rotation, spin_consistency = _rotation(angle)
    y = p[:, 1]
    accel = _descent_accel(y, t)
    bounced, contact_idx = _bounce(y)
    bottom = y + np.asarray(reach, dtype=np.float64) / unit
    low = contact_idx if bounced else int(bottom.argmax())
    travel = np.abs(np.diff(y))[max(low - 1, 0) : low + 1].max()  # the floor may be hit between frames
    floor_contact = bool(bottom[low] >= floor / unit - FLOOR_MARGIN - travel)
    energy_ok = (not bounced) or bool(y[contact_idx:].min() >= y[0] - 0.03)

    def reading(label: str) -> MotionReading:
        return MotionReading(label, excursion, displacement, growth, rotation, accel, bounced, floor_contact,
                             energy_ok, straightness, sideways)

    if abs(growth) >= GROWTH_MIN and abs(_corr(t, log_r)) >= 0.8:
        return reading("grows" if growth > 0 else "shrinks")
    if excursion < STILL_EXCURSION:
        spins = abs(rotation) >= SPIN_MIN and spin_consistency >= 0.8
        return reading("spins" if spins else "still")
    if _erratic(p, fps):
        return reading("erratic")
    if bounced:
        return reading("bounces")
    dx, dy = displacement
    if abs(dx) >= abs(dy):
        return reading("moves_right" if dx > 0 else "moves_left")
    if dy < 0:
        return reading("moves_up")
    return reading("falls" if accel >= FALL_ACCEL * GRAVITY else "moves_down")


def physics_ok(reading: MotionReading, motion: str, gravity: float = GRAVITY) -> bool:
    """Whether a falls/bounces track obeys the world's physics: accelerates down at about g,
    and (bounces) reverses at the floor without gaining height."""
    lo, hi = PHYSICS_ACCEL
    accel_ok = lo * gravity <= reading.accel <= hi * gravity
    if motion == "falls":
        return reading.label == "falls" and accel_ok
    if motion == "bounces":
        return reading.label == "bounces" and accel_ok and reading.floor_contact and reading.energy_ok
    raise ValueError(f"physics is defined for falls and bounces, got motion {motion!r}")


def is_clean(reading: MotionReading, motion: str) -> bool:
    """Whether a track shows ``motion`` clearly and nothing else: with a margin on every threshold,
    one-way straight paths for moves_*, no travel for still/spins/grows/shrinks, physics and no
    sideways drift for falls/bounces. The sampler keeps only clean set-ups (so a collision never
    makes a caption wrong, and blur never tips a reading over a threshold); the evaluator only
    asks for the label."""
    if reading.label != motion:
        return False
    if motion.startswith("moves_"):
        return reading.straightness >= 0.9 and reading.excursion >= 2 * STILL_EXCURSION
    if motion in ("falls", "bounces"):
        return reading.sideways < 0.5 * STILL_EXCURSION and physics_ok(reading, motion)
    if motion in ("grows", "shrinks") and abs(reading.growth) < 1.5 * GROWTH_MIN:
        return False
    if motion == "spins" and abs(reading.rotation) < 1.5 * SPIN_MIN:
        return False
    return reading.excursion < 0.5 * STILL_EXCURSION


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def _rotation(angle: np.ndarray | None) -> tuple[float, float]:
    """Total rotation (rad) and how consistently it turns one way (1 = every step the same way)."""
    if angle is None or not np.all(np.isfinite(angle)):
        return float("nan"), 0.0
    steps = np.angle(np.exp(1j * np.diff(np.asarray(angle, dtype=np.float64))))
    total = float(steps.sum())
    return total, float(abs(total) / max(np.abs(steps).sum(), 1e-9))


def _erratic(p: np.ndarray, fps: float) -> bool:
    """A track whose typical second difference is large against its steps (e.g. shuffled frames);
    smooth motion has second differences ~0 (steady) or g/fps^2 (gravity), bounces only at contacts."""
    steps = np.linalg.norm(np.diff(p, axis=0), axis=1)
    jitter = np.linalg.norm(np.diff(p, n=2, axis=0), axis=1)
    return bool(np.median(jitter) > 0.5 * np.median(steps) + 2.0 * GRAVITY / fps**2 + 0.01)


def _bounce(y: np.ndarray) -> tuple[bool, int]:
    """Whether the track comes down at least BOUNCE_DOWN and goes back up BOUNCE_UP; and the index
    of the first such lowest point."""
    for k in range(1, len(y) - 1):
        down = y[k] - y[: k + 1].min()
        up = y[k] - y[k:].min()
        if down >= BOUNCE_DOWN and up >= BOUNCE_UP and y[k] >= y[k - 1] and y[k] >= y[k + 1]:
            return True, k
    return False, len(y) - 1


def _descent_accel(y: np.ndarray, t: np.ndarray) -> float:
    """Acceleration (u/s^2, down > 0) of a parabola through the frames of the first descent: it
    ends where a step falls well below half the previous one (a landing or a bounce) and the
    last frame is left out, as it may already be past the contact."""
    k = 0
    while k + 1 < len(y):
        step = y[k + 1] - y[k]
        if step <= 0.5 * (y[k] - y[k - 1] if k else 0.0) - 0.002:  # 0.002 u: centroid jitter
            break
        k += 1
    n = k if k >= 3 else k + 1
    if n < 3 or y[k] - y[0] < 0.02:
        return float("nan")
    a2 = np.polyfit(t[:n], y[:n], 2)[0]
    return float(2 * a2)
