"""Score videos against the scenes their prompts asked for, and aggregate into the benchmark table.

Per video: every asked attribute (per object colour, shape, motion, size; background; camera;
object count) is compared with what ``detect`` reads, plus persistence (each asked object is in
every frame and nothing else appears) and, for falls/bounces, physics (``physics_ok``). A video is
all-correct when every check it was given passes. Rows of the table are prompt categories.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from kinema.data.world.captions import caption, parse_caption
from kinema.data.world.motion import physics_ok, read_motion
from kinema.data.world.sample import is_realisable, sample_spec
from kinema.data.world.scene import ObjectSpec, SceneSpec, camera_anchor
from kinema.data.world.vocab import GRAVITY_MOTIONS, TEXTURED_BACKGROUNDS
from kinema.eval.temporal import dynamic_degree, temporal_flicker
from kinema.eval.world.vision import Detection, ObjectTrack, detect, size_class

CATEGORIES = ("single_seen", "single_heldout", "unseen_phrasing", "two_objects", "physics")
OBJECT_ATTRIBUTES = ("colour", "shape", "motion", "size")
ATTRIBUTES = OBJECT_ATTRIBUTES + ("count", "background", "camera", "persistence", "physics")
REFERENCE_CANVAS = (128, 128, 17, 8.0)  # width, height, frames, fps: world-small's default


def evaluate_video(video: np.ndarray, spec: SceneSpec, fps: float) -> dict:
    """``judge_video``'s verdicts plus the model-free temporal metrics (flicker, dynamic)."""
    result = judge_video(video, spec, fps)
    result["flicker"] = temporal_flicker(video)
    result["dynamic"] = dynamic_degree(video)[0]
    return result


def judge_video(video: np.ndarray, spec: SceneSpec, fps: float) -> dict:
    """Per-attribute verdicts for one uint8 (F, H, W, 3) video against what was asked."""
    det = detect(video, fps)
    f, h, w, _ = video.shape
    unit = float(min(h, w))
    checks: dict[str, list[bool]] = {a: [] for a in ATTRIBUTES}
    objects = []
    if f < 3:  # one or two frames show no motion: judge appearance only
        spec = SceneSpec(tuple(dataclasses.replace(o, motion=None) for o in spec.objects), spec.background, spec.camera)
    for asked, track in zip(spec.objects, _match(spec.objects, det.tracks)):
        result = _object_result(asked, track, det, fps, unit, h, w)
        for attr in OBJECT_ATTRIBUTES + ("physics",):
            if attr in result and result[attr]["correct"] is not None:
                checks[attr].append(result[attr]["correct"])
        checks["persistence"].append(result["persistent"])
        objects.append(result)

    clean = not (det.stray > 0).any() and all(not (t.extra_blobs > 0).any() for t in det.tracks.values())
    checks["persistence"].append(clean)
    checks["count"].append(len(det.tracks) == len(spec.objects))
    background = {"asked": spec.background, "detected": det.background, "correct": None}
    if spec.background is not None:
        background["correct"] = det.background == spec.background
        checks["background"].append(background["correct"])
    camera = {"asked": spec.camera, "detected": det.camera, "correct": None}
    seen_background = spec.background or det.background
    if spec.camera is not None and (spec.camera == "static" or seen_background in TEXTURED_BACKGROUNDS):
        camera["correct"] = det.camera == spec.camera  # a plain background cannot show a camera move
        checks["camera"].append(camera["correct"])

    verdicts = {a: all(v) for a, v in checks.items() if v}
    return {
        "objects": objects,
        "count": {"asked": len(spec.objects), "detected": len(det.tracks), "correct": verdicts["count"]},
        "background": background,
        "camera": camera,
        "persistence": verdicts["persistence"],
        "physics": verdicts.get("physics"),
        "attributes": verdicts,
        "all_correct": all(verdicts.values()),
    }


def evaluate_videos(
    videos: Sequence[np.ndarray], specs: Sequence[SceneSpec], fps: float = 8.0,
    categories: Sequence[str] | None = None,
) -> dict:
    """The benchmark report for videos and the specs they were asked for (see ``aggregate``)."""
    if len(videos) != len(specs):
        raise ValueError(f"got {len(videos)} videos for {len(specs)} specs")
    categories = list(categories) if categories is not None else ["all"] * len(videos)
    results = []
    for video, spec, category in zip(videos, specs, categories):
        result = evaluate_video(np.asarray(video), spec, fps)
        result["category"] = category
        results.append(result)
    return aggregate(results)


def aggregate(results: Sequence[dict]) -> dict:
    """Per category and overall: accuracy of each attribute (over the videos it was checked on),
    of all-correct, mean temporal flicker and dynamic degree; plus the per-video results."""
    rows: dict[str, list[dict]] = {}
    for r in results:
        rows.setdefault(r.get("category", "all"), []).append(r)
    if len(rows) > 1:
        rows["overall"] = list(results)
    table = {}
    for name, rs in rows.items():
        row = {"videos": len(rs)}
        for attr in ATTRIBUTES:
            seen = [r["attributes"][attr] for r in rs if attr in r["attributes"]]
            row[attr] = float(np.mean(seen)) if seen else None
        row["all_correct"] = float(np.mean([r["all_correct"] for r in rs]))
        row["flicker"] = float(np.mean([r["flicker"] for r in rs]))
        row["dynamic_degree"] = float(np.mean([r["dynamic"] for r in rs]))
        table[name] = row
    return {"table": table, "videos": list(results)}


def build_eval_prompts(n_per_row: int = 100, seed: int = 0) -> list[tuple[str, str, SceneSpec]]:
    """``(category, prompt, asked spec)`` for each benchmark row, ``n_per_row`` prompts per row."""
    rng = np.random.default_rng(seed)
    out = []
    for category in CATEGORIES:
        for _ in range(n_per_row):
            spec = _row_spec(category, rng)
            style = "heldout_phrasing" if category == "unseen_phrasing" else "train"
            prompt = caption(spec, rng, style)
            out.append((category, prompt, parse_caption(prompt)))
    return out


def run_world_eval(
    generate_fn: Callable[[str, int], np.ndarray],
    n_per_row: int = 100,
    width: int = 128,
    height: int = 128,
    frames: int = 17,
    fps: float = 8.0,
    seed: int = 0,
) -> dict:
    """Generate a video per benchmark prompt with ``generate_fn(prompt, seed)`` and score them all."""
    prompts = build_eval_prompts(n_per_row, seed)
    results = []
    for i, (category, prompt, spec) in enumerate(prompts):
        video = np.asarray(generate_fn(prompt, seed + i))
        if video.shape[1:3] != (height, width):
            raise ValueError(f"generate_fn returned {video.shape} for a {width}x{height} request")
        result = evaluate_video(video, spec, fps)
        result.update(category=category, prompt=prompt)
        results.append(result)
    report = aggregate(results)
    report["settings"] = {"n_per_row": n_per_row, "width": width, "height": height, "frames": frames,
                          "fps": fps, "seed": seed}
    return report


# --- helpers ---


def _row_spec(category: str, rng: np.random.Generator) -> SceneSpec:
    """A request for the row that the world can show cleanly at the benchmark's default canvas, so
    a perfect model can score 100% (two large objects that both grow, say, cannot fit)."""
    while True:
        if category == "single_heldout":
            spec = sample_spec(rng, 1, "only")
        elif category == "two_objects":
            spec = sample_spec(rng, 2, "exclude")
        else:
            spec = sample_spec(rng, 1, "exclude")
            if category == "physics" and spec.objects[0].motion not in GRAVITY_MOTIONS:
                continue
        if len(spec.objects) == 1 or is_realisable(spec, *REFERENCE_CANVAS, rng):
            return spec


def _match(asked: Sequence[ObjectSpec], tracks: dict[str, ObjectTrack]) -> list[ObjectTrack | None]:
    """A track per asked object: its colour's track when there is one, otherwise the unclaimed track
    that agrees on most other attributes (so a recoloured object still gets its shape judged)."""
    out: list[ObjectTrack | None] = [tracks.get(o.colour) if o.colour else None for o in asked]
    free = [t for c, t in tracks.items() if c not in {o.colour for o in asked}]
    missing = [i for i, t in enumerate(out) if t is None]
    if missing and free:
        best, best_score = None, -1
        for perm in itertools.permutations(free, min(len(free), len(missing))):
            score = sum(perm[j].shape == asked[i].shape for j, i in enumerate(missing[: len(perm)]))
            if score > best_score:
                best, best_score = perm, score
        for j, i in enumerate(missing[: len(best)]):
            out[i] = best[j]
    return out


def _object_result(asked: ObjectSpec, track: ObjectTrack | None, det: Detection, fps, unit, h, w) -> dict:
    def verdict(asked_value, detected):
        correct = None if asked_value is None else asked_value == detected
        return {"asked": asked_value, "detected": detected, "correct": correct}

    if track is None:
        out = {a: verdict(getattr(asked, a), None) for a in OBJECT_ATTRIBUTES}
        if asked.motion in GRAVITY_MOTIONS:
            out["physics"] = {"correct": False, "accel": None}
        return out | {"persistent": False}

    centres, radius, reach, angle = _world_track(track, det, h, w)
    reading = read_motion(centres, radius, angle, reach, fps, unit, float(h))
    first = int(np.argmax(track.present))
    size = size_class(track.area[first] / det.scale[first] ** 2, unit)
    out = {
        "colour": verdict(asked.colour, track.colour),
        "shape": verdict(asked.shape, track.shape),
        "motion": verdict(asked.motion, reading.label),
        "size": verdict(asked.size, size),
        "persistent": bool(track.present.all()),
    }
    if asked.motion in GRAVITY_MOTIONS:
        out["physics"] = {"correct": physics_ok(reading, asked.motion), "accel": reading.accel,
                          "bounced": reading.bounced, "floor_contact": reading.floor_contact}
    return out


def _world_track(track: ObjectTrack, det: Detection, h: int, w: int):
    """Screen track -> world track (camera removed), gaps filled by interpolation."""
    ax, ay = camera_anchor(w, h)
    s = det.scale
    present = track.present
    frames = np.arange(len(present))

    def fill(x):
        return np.interp(frames, frames[present], x[present])

    x = ax + (fill(track.centres[:, 0]) - ax) / s + det.pan
    y = ay + (fill(track.centres[:, 1]) - ay) / s
    radius = np.sqrt(fill(track.area) / np.pi) / s
    reach = fill(track.reach) / s
    return np.stack([x, y], axis=1), radius, reach, track.angle
