"""Draw scenes: first what to show (a SceneSpec), then a physical set-up that shows it.

A set-up is kept only when the simulated tracks read back cleanly (``read_motion``, ``is_clean``)
as the motions the spec names and no two objects collide, so a caption never describes a ball that
'moves left' into a wall and comes back. Speeds are drawn per second and in units of
``min(width, height)``, then lowered where a long clip would run out of room.
"""

from __future__ import annotations

import math

import numpy as np

from kinema.data.world.motion import is_clean, read_motion
from kinema.data.world.physics import floor_reach, simulate
from kinema.data.world.scene import ObjectSpec, Scene, SceneSpec, WorldObject, world_box
from kinema.data.world.vocab import (
    BACKGROUNDS, CAMERAS, CIRCUMRADIUS, COLOURS, DIRECTIONS, GRAVITY, GROWTH_RATE, HELD_OUT, MAX_GROWTH,
    MAX_PAN, MAX_SPIN_PER_FRAME, MAX_ZOOM, MIN_RADIUS, MOTIONS, MOVE_SPEED, PAN_SPEED, RESTITUTION, SHAPES,
    SIZES, SPIN_SPEED, TEXTURED_BACKGROUNDS, ZOOM_RATE,
)  # fmt: skip

HELD_OUT_MODES = ("exclude", "only", "allow")
OBJECT_COUNT_WEIGHTS = (0.5, 0.35, 0.15)  # 1, 2, 3 objects
MOVING_CAMERA_P = 0.5  # on a textured background
MAX_GROWN_RADIUS = 0.2  # u: a growing object stops short of filling the frame
SPEC_TRIES, SET_UP_TRIES, PLACE_TRIES = 20, 25, 20  # rejection sampling budgets


def as_rng(rng_or_seed: np.random.Generator | int) -> np.random.Generator:
    """A numpy Generator from a seed (or the generator itself)."""
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(int(rng_or_seed))


def is_held_out(obj: ObjectSpec | WorldObject) -> bool:
    """Whether an object's (colour, shape, motion) is one of the HELD_OUT combinations."""
    return (obj.colour, obj.shape, obj.motion) in HELD_OUT


def sample_spec(
    rng: np.random.Generator, num_objects: int | None = None, held_out: str = "exclude"
) -> SceneSpec:
    """A random fully specified request; ``held_out`` = exclude | only | allow the HELD_OUT combos."""
    if held_out not in HELD_OUT_MODES:
        raise ValueError(f"held_out must be one of {HELD_OUT_MODES}, got {held_out!r}")
    if num_objects is not None and num_objects not in (1, 2, 3):
        raise ValueError(f"num_objects must be 1, 2, 3 or None, got {num_objects!r}")
    n = num_objects or int(rng.choice([1, 2, 3], p=OBJECT_COUNT_WEIGHTS))
    while True:
        colours = rng.choice(list(COLOURS), size=n, replace=False)
        objs = []
        for colour in colours:
            shape = str(rng.choice(SHAPES))
            motions = [m for m in MOTIONS if not (shape == "circle" and m == "spins")]
            sizes = list(SIZES) if n < 3 else ["small", "medium"]  # three large ones rarely fit
            objs.append(ObjectSpec(str(colour), shape, str(rng.choice(motions)), str(rng.choice(sizes))))
        if held_out == "only":  # put one held-out triple in, keeping colours distinct
            i = int(rng.integers(n))
            free = [c for c in HELD_OUT if c[0] not in {o.colour for j, o in enumerate(objs) if j != i}]
            colour, shape, motion = free[int(rng.integers(len(free)))]
            objs[i] = ObjectSpec(colour, shape, motion, objs[i].size)
        elif held_out == "exclude" and any(is_held_out(o) for o in objs):
            continue
        break
    background = str(rng.choice(BACKGROUNDS))
    camera = "static"
    if background in TEXTURED_BACKGROUNDS and rng.random() < MOVING_CAMERA_P:
        camera = str(rng.choice(CAMERAS[1:]))
    return SceneSpec(tuple(objs), background, camera)


def scene_from_spec(
    spec: SceneSpec, width: int, height: int, frames: int, fps: float, rng: np.random.Generator | int
) -> Scene:
    """A scene that shows ``spec``; attributes the spec leaves open are drawn from ``rng``."""
    rng = as_rng(rng)
    best, best_score = None, -1.0
    for _ in range(SPEC_TRIES):  # each try draws the open attributes afresh
        scene, score = _set_up(spec, width, height, frames, fps, rng)
        if scene is not None and score > best_score:
            best, best_score = scene, score
        if best_score == 1.0:
            break
    scene = best
    if scene is None:
        raise ValueError(f"cannot fit {len(spec.objects)} objects of sizes "
                         f"{[o.size for o in spec.objects]} into a {width}x{height} frame")
    return scene


def is_realisable(spec: SceneSpec, width: int, height: int, frames: int, fps: float,
                  rng: np.random.Generator | int) -> bool:
    """Whether some set-up shows ``spec`` cleanly at true sizes on this canvas (a few tries)."""
    scene, score = _set_up(spec, width, height, frames, fps, as_rng(rng))
    return scene is not None and score == 1.0


def sample_scene(
    rng_or_seed: np.random.Generator | int,
    width: int,
    height: int,
    frames: int,
    fps: float,
    num_objects: int | None = None,
    held_out: str = "exclude",
    motion_check: bool = True,
) -> Scene:
    """A random scene of the given canvas and timing, deterministic for a seed. With ``motion_check`` off, the
    first physical set-up that fits is kept even if its simulated motion would not read back as its label
    (fine where the caption is not used, e.g. a VAE's crops; 2-3x fewer simulations per clip)."""
    rng = as_rng(rng_or_seed)
    best, best_score = None, -1.0
    for _ in range(SPEC_TRIES):
        spec = sample_spec(rng, num_objects, held_out)
        scene, score = _set_up(spec, width, height, frames, fps, rng, motion_check)
        if scene is not None and score == 1.0:
            return scene
        if scene is not None and score > best_score:
            best, best_score = scene, score
    if best is None:
        raise ValueError(f"no scene with {num_objects} objects fits a {width}x{height} frame")
    return best


# --- helpers ---


def _set_up(spec: SceneSpec, width, height, frames, fps, rng, motion_check: bool = True) -> tuple[Scene | None, float]:
    """The best of SET_UP_TRIES physical set-ups for ``spec`` and the fraction of its objects whose
    simulated motion reads cleanly as asked (1.0 = all, at their true sizes); (None, 0) if nothing fits.
    Without ``motion_check``: the first set-up that fits, scored 1.0 unread."""
    spec = _fill(spec, rng)
    unit = float(min(width, height))
    duration = max((frames - 1) / fps, 1e-6)
    rate = _camera_rate(spec.camera, width, unit, duration)
    seed = int(rng.integers(2**31 - 1))
    box = world_box(Scene(width, height, frames, fps, spec.background, (_placeholder(),), spec.camera, rate, seed))
    min_view_scale = min(1.0, math.exp(rate * duration)) if spec.camera == "zoom_out" else 1.0
    best, best_score, misses = None, -1.0, 0
    for _ in range(SET_UP_TRIES):
        shrink = 0.85 ** (misses // 3)  # objects that keep not fitting are drawn smaller
        objects = _place_all(spec.objects, box, unit, duration, fps, rng, shrink, min_view_scale)
        if objects is None:
            misses += 1
            continue
        scene = Scene(width, height, frames, fps, spec.background, tuple(objects), spec.camera, rate, seed)
        if not motion_check:
            return scene, 1.0
        score = _agreement(scene) / len(objects) * (1.0 if shrink == 1.0 else 0.99)  # shrunk: not its size class
        if score == 1.0:
            return scene, score
        if score > best_score:
            best, best_score = scene, score
    return best, max(best_score, 0.0)


def _placeholder() -> WorldObject:
    return WorldObject("circle", "red", "small", 1.0, "still", 0.0, 0.0)


def _fill(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Draw whatever the spec leaves open; colours stay distinct so objects can be told apart."""
    used = {o.colour for o in spec.objects if o.colour}
    if len(used) < sum(1 for o in spec.objects if o.colour):
        raise ValueError(f"objects in one scene need distinct colours, got {[o.colour for o in spec.objects]}")
    objs = []
    for o in spec.objects:
        colour = o.colour or str(rng.choice([c for c in COLOURS if c not in used]))
        used.add(colour)
        shape = o.shape or str(rng.choice(SHAPES if o.motion != "spins" else SHAPES[1:]))
        motions = [m for m in MOTIONS if not (shape == "circle" and m == "spins")]
        motion = o.motion or str(rng.choice(motions))
        objs.append(ObjectSpec(colour, shape, motion, o.size or str(rng.choice(list(SIZES)))))
    camera = spec.camera or "static"
    backgrounds = BACKGROUNDS if camera == "static" else TEXTURED_BACKGROUNDS  # a camera move must show
    return SceneSpec(tuple(objs), spec.background or str(rng.choice(backgrounds)), camera)


def _camera_rate(camera: str, width: int, unit: float, duration: float) -> float:
    if camera in ("pan_left", "pan_right"):
        speed = min(PAN_SPEED * unit, MAX_PAN * width / duration)
        return speed if camera == "pan_right" else -speed
    if camera in ("zoom_in", "zoom_out"):
        rate = min(ZOOM_RATE, MAX_ZOOM / duration)
        return rate if camera == "zoom_in" else -rate
    return 0.0


def _place_all(specs, box, unit, duration, fps, rng, shrink, min_view_scale) -> list[WorldObject] | None:
    """Every object placed clear of the ones before it, or None if one never fits."""
    placed: list[tuple[float, float, float]] = []  # (x, y, largest circumradius)
    objects = []
    for spec in specs:
        for _ in range(PLACE_TRIES):
            obj, reach = _place(spec, box, unit, duration, fps, rng, shrink, min_view_scale)
            if all(math.hypot(obj.x - x, obj.y - y) > reach + r + 0.03 * unit for x, y, r in placed):
                break
        else:
            return None
        placed.append((obj.x, obj.y, reach))
        objects.append(obj)
    return objects


def _place(spec: ObjectSpec, box, unit, duration, fps, rng, shrink, min_view_scale) -> tuple[WorldObject, float]:
    """One object set up to show its motion inside ``box``; returns it and its largest reach."""
    x0, y0, x1, y1 = box
    radius = SIZES[spec.size] * unit * shrink * rng.uniform(0.93, 1.07)
    circ = CIRCUMRADIUS[spec.shape]
    angle = 0.0 if spec.shape == "circle" else rng.uniform(0, 2 * math.pi)
    kw: dict = {}
    reach = circ * radius

    if spec.motion == "grows":
        biggest = min(0.4 * min(x1 - x0, y1 - y0), MAX_GROWN_RADIUS * unit * circ) * shrink
        limit = math.log(max(biggest / reach, 1.0 + 1e-6))
        kw["growth"] = min(rng.uniform(*GROWTH_RATE), MAX_GROWTH / duration, limit / duration)
        reach *= math.exp(kw["growth"] * duration)
    elif spec.motion == "shrinks":  # never below MIN_RADIUS on screen, a zoom out included
        limit = math.log(max(radius * min_view_scale / (MIN_RADIUS * unit), 1.0 + 1e-6))
        kw["growth"] = -min(rng.uniform(*GROWTH_RATE), MAX_GROWTH / duration, limit / duration)
    elif spec.motion == "spins":
        speed = min(rng.uniform(*SPIN_SPEED), MAX_SPIN_PER_FRAME * fps)
        kw["spin"] = speed if rng.random() < 0.5 else -speed

    lo_x, hi_x, lo_y, hi_y = x0 + reach, max(x1 - reach, x0 + reach), y0 + reach, max(y1 - reach, y0 + reach)
    x, y = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)

    if spec.motion in DIRECTIONS:
        dx, dy = DIRECTIONS[spec.motion]
        lo, hi = (lo_x, hi_x) if dx else (lo_y, hi_y)
        travel = min(rng.uniform(*MOVE_SPEED) * unit * duration, 0.85 * (hi - lo))
        start = rng.uniform(lo, hi - travel) if (dx + dy) > 0 else rng.uniform(lo + travel, hi)
        x, y = (start, y) if dx else (x, start)
        kw["vx"], kw["vy"] = dx * travel / duration, dy * travel / duration
    elif spec.motion == "falls":
        y = rng.uniform(lo_y, lo_y + 0.35 * (hi_y - lo_y))
        kw.update(gravity=True, restitution=0.0)
    elif spec.motion == "bounces":
        # first floor contact by 55% of the clip, so the rebound is on screen
        g = GRAVITY * unit
        drop = min(0.5 * g * (0.55 * duration) ** 2, hi_y - lo_y) * rng.uniform(0.6, 1.0)
        y = hi_y - drop
        kw.update(gravity=True, restitution=rng.uniform(*RESTITUTION))
    obj = WorldObject(spec.shape, spec.colour, spec.size, radius, spec.motion, x, y, angle=angle, **kw)
    return obj, reach


def window_reads_back(scene: Scene, start: int, frames: int) -> bool:
    """Whether frames ``start .. start + frames - 1`` of ``scene`` show every object's motion cleanly on their
    own: a window of a longer scene still matches its caption (a fall that has landed by then does not, nor,
    later than frame 0, an object that grows or shrinks: its caption names its size at frame 0)."""
    if start and any(o.growth for o in scene.objects):
        return False
    return _agreement(scene, slice(start, start + frames)) == len(scene.objects)


def _agreement(scene: Scene, window: slice = slice(None)) -> int:
    """How many objects' simulated tracks (in ``window`` of the frames) show their motion label cleanly (none
    when objects collide: a knock changes a motion in ways no caption says)."""
    if len(range(scene.frames)[window]) < 3:
        return len(scene.objects)
    tracks = simulate(scene)
    if tracks.collisions:
        return 0
    unit = scene.unit
    good = 0
    for i, o in enumerate(scene.objects):
        turns = tracks.angle[window, i]
        angle = None if o.shape == "circle" else turns
        radius = tracks.radius[window, i]
        reach = radius * np.array([floor_reach(o.shape, a) for a in turns])
        reading = read_motion(tracks.centres[window, i], radius, angle, reach, scene.fps, unit, scene.height)
        good += is_clean(reading, o.motion)
    return good
