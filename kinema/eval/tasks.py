"""``kinema eval tasks``: image-to-video, extension and loops measured on the procedural world.

Every case is a rendered clip of one object moving left, right, up or down (the four directions in turn),
whose direction the world evaluator's detector reads back from the render itself (cases it cannot read,
say an object that reaches a wall, are redrawn). The scene is set up for the clip and the extensions before
and after it, and the world's own lead-in and continuation must move the same way too: a scene set up for the clip alone ends
with its object near the wall it travels towards (it crosses most of the frame), and the world bounces it
off that wall, so its true continuation reverses (9 in 10 such clips) and "keep the direction" would be
the wrong answer. Per case:

* image-to-video: the clip's first frame is the image; PSNR of the generated first frame against it,
  next to the PSNR of the VAE's own round trip of that image (what the encoder's latent, which the
  sampling holds, decodes to; the task decodes that latent fitted to the image, ``kinema.tasks.fit``),
  and whether the object then moves the way the prompt says (detector direction of the whole clip; next
  to the same for a text-to-video clip of the prompt);
* extension: the clip is extended forwards by one second (sampled from its motion carried on, noised to the
  motion strength: ``tasks.extend``); the new frames must move the object the way the clip did, as the world
  does (detector direction of the new frames, starting at the clip's last frame); and the join must step
  like the motion around it (``_join_step``). Backwards too: the new second before the clip must move the
  object the way the clip goes on to (up to the clip's first frame), as the world's own lead-in does;
* loop: a loop of the clip's prompt, and one starting on the clip's first frame; its seam (mean
  |last - first|) must be no larger than the median frame-to-frame difference inside it
  (``tasks.loop_seam``). Also reported: the median step between latent frames inside the loop (frames
  4k-1 -> 4k), which the VAE can make larger than steps within one, since the wrap is always such a step;
  and the rule's reference: the share of those inner steps that pass it themselves. A loop whose wrap is
  as smooth as its own inside passes at about that rate, not at 100% (a median step is larger than about
  half the steps by definition, and the VAE makes the steps between latent frames larger or smaller than
  the rest).

``parts`` (``--only``) measures some of the three; each case samples with its own seed either way. 40 cases
are few for a rate near a target (a measured 85% is anything from 71 to 93%, 95% interval): ``seed`` draws
other cases to measure more.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from kinema.data.world import render
from kinema.data.world.captions import caption
from kinema.data.world.sample import sample_spec, scene_from_spec
from kinema.data.world.scene import SceneSpec
from kinema.data.world.vocab import DIRECTIONS
from kinema.eval.world.vision import detect
from kinema.tasks.builders import forward_span

MOVES = tuple(DIRECTIONS)  # moves_left, moves_right, moves_up, moves_down
PARTS = ("image", "extend", "loop")  # what a run measures: image-to-video, extension both ways, the loops
MIN_TRAVEL = 0.03  # of min(height, width): less than this reads as no motion


def direction(video: np.ndarray, fps: float) -> str | None:
    """The direction the one detected object travels in (a ``MOVES`` label), or None: no single object
    in enough frames, or it travels less than ``MIN_TRAVEL``."""
    tracks = detect(video, fps).tracks
    if len(tracks) != 1:
        return None
    track = next(iter(tracks.values()))
    seen = np.flatnonzero(track.present)
    if len(seen) < max(2, len(video) // 2):
        return None
    dx, dy = track.centres[seen[-1]] - track.centres[seen[0]]
    if math.hypot(dx, dy) < MIN_TRAVEL * min(video.shape[1:3]):
        return None
    if abs(dx) >= abs(dy):
        return "moves_right" if dx > 0 else "moves_left"
    return "moves_down" if dy > 0 else "moves_up"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images or videos."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def task_cases(n: int, width: int, height: int, frames: int, fps: float, seed: int = 0, after: int = 0,
               before: int = 0):
    """``n`` (prompt, clip, direction, continuation, lead-in) cases: one object moving in each direction in
    turn, on a static camera.

    Each scene is set up for ``before + frames + after`` frames: the clip is ``frames`` of them after the
    first ``before``, the continuation the ``after + 1`` from the clip's last frame on, the lead-in the
    ``before + 1`` up to its first; all three move the object the same way.
    """
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        spec = sample_spec(rng, 1, "exclude")
        move = MOVES[len(cases) % len(MOVES)]
        spec = SceneSpec((dataclasses.replace(spec.objects[0], motion=move),), spec.background, "static")
        video = render(scene_from_spec(spec, width, height, before + frames + after, fps, rng))
        clip = video[before:before + frames]
        continuation, lead_in = video[before + frames - 1:], video[:before + 1]
        if (direction(clip, fps) == move and (not after or direction(continuation, fps) == move)
                and (not before or direction(lead_in, fps) == move)):
            cases.append((caption(spec, rng), clip, move, continuation, lead_in))
    return cases


def check_parts(parts) -> tuple[str, ...]:
    """``parts`` (names of ``PARTS``, or a comma-separated string of them) in ``PARTS``' order; ValueError
    naming what is accepted otherwise."""
    names = [p.strip() for p in parts.split(",")] if isinstance(parts, str) else list(parts)
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        raise ValueError(f"tasks to measure must be some of {', '.join(PARTS)}, got {parts!r}")
    return tuple(p for p in PARTS if p in names)


def run_tasks_eval(pipe, n: int = 20, seed: int = 0, steps: int | None = None, extend_seconds: float = 1.0,
                   guidance: float | None = None, shift: float | None = None,
                   guidance_interval: tuple[float, float] | None = None, motion_strength: float | None = None,
                   cache_threshold: float | None = None, parts=PARTS) -> dict:
    """Score image-to-video, extension and loops of ``pipe`` on ``n`` world cases; a JSON-able report.
    ``motion_strength``: the extensions' (``tasks.extend``; None: its default); ``cache_threshold``: the step
    cache's for every sampling but the loops' (sampled as a cycle, which the cache does not serve);
    ``parts``: which of ``PARTS`` to measure (the report holds those; each case's seed is the same whatever
    else is measured, so a part alone scores as it does in a full run)."""
    from kinema.common.video import from_model, to_model
    from kinema.infer import tasks
    from kinema.tasks.fit import FIT_STEPS
    from kinema.tasks.frames import grid_count

    motion_strength = tasks.MOTION_STRENGTH if motion_strength is None else motion_strength
    parts = check_parts(parts)

    s = pipe.cfg.sampling  # the model's default size, length, fps and steps
    tf = pipe.cfg.vae.temporal_factor
    after = grid_count(extend_seconds * s.fps, tf, offset=0, minimum=tf)  # the frames ``tasks.extend`` adds
    before = grid_count(extend_seconds * s.fps, tf, offset=1, minimum=1)  # ... and backwards
    cases = task_cases(n, s.width, s.height, s.frames, s.fps, seed, after, before)
    i2v, i2v_moves, t2v_moves, ceiling, extended, backwards, joins, loops, image_loops = ([] for _ in range(9))
    asked = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("shift", shift),
                               ("guidance_interval", guidance_interval), ("cache_threshold", cache_threshold))
             if v is not None}
    for i, (prompt, clip, move, _, _) in enumerate(cases):
        settings = {"seed": seed + i, **asked}
        image = clip[0]
        if "image" in parts:
            out = tasks.image_to_video(pipe, prompt, image, **settings).frames
            i2v.append(psnr(out[0], image))
            i2v_moves.append(direction(out, s.fps) == move)
            t2v_moves.append(direction(pipe.generate(prompt, **settings).frames, s.fps) == move)  # the prompt alone
            with torch.inference_mode():
                round_trip = from_model(pipe.vae.decode(pipe.vae.encode(to_model(image[None], pipe.device,
                                                                                 pipe.dtype))).float())
            ceiling.append(psnr(round_trip[0], image))
        if "extend" in parts:
            joined = tasks.extend(pipe, prompt, clip, extend_seconds, motion_strength=motion_strength,
                                  **settings).frames
            extended.append(direction(joined[len(clip) - 1:], s.fps) == move)
            joins.append(_join_step(joined, len(clip), len(forward_span(clip, tasks.DEFAULT_OVERLAP, tf))))
            earlier = tasks.extend(pipe, prompt, clip, extend_seconds, "backward", motion_strength=motion_strength,
                                   **settings).frames
            backwards.append(direction(earlier[:len(earlier) - len(clip) + 1], s.fps) == move)
        if "loop" in parts:
            loops.append(_loop_steps(tasks.loop(pipe, prompt, **settings).frames, tf))
            image_loops.append(_loop_steps(tasks.loop(pipe, prompt, image, **settings).frames, tf))
    report = {
        "cases": n,
        "parts": list(parts),
        "settings": {"width": s.width, "height": s.height, "frames": s.frames, "fps": s.fps, "steps": steps or s.steps,
                     "fit_steps": FIT_STEPS,
                     "guidance": s.guidance if guidance is None else guidance,
                     "guidance_interval": list(s.guidance_interval if guidance_interval is None else guidance_interval),
                     "shift": s.shift if shift is None else shift, "extend_seconds": extend_seconds,
                     "extend_motion_strength": motion_strength,
                     "seed": seed},
    }
    if "image" in parts:
        report["image_to_video"] = {"psnr_db": float(np.mean(i2v)), "psnr_db_min": float(np.min(i2v)),
                                    "vae_round_trip_psnr_db": float(np.mean(ceiling)),
                                    "direction_as_asked": float(np.mean(i2v_moves)),
                                    "text_to_video_direction_as_asked": float(np.mean(t2v_moves))}
    if "extend" in parts:
        report["extend"] = {"direction_kept": float(np.mean(extended)), "median_join_step": float(np.median(joins)),
                            "backward_direction_kept": float(np.mean(backwards))}
    if "loop" in parts:
        seams, image_seams = np.asarray(loops), np.asarray(image_loops)
        report["loop"] = {"seam_within_typical": float(np.mean(seams[:, 0] <= seams[:, 1])),
                          "inner_within_typical": float(np.mean(seams[:, 3])),
                          "median_seam": float(np.median(seams[:, 0])),
                          "median_typical_step": float(np.median(seams[:, 1])),
                          "median_latent_boundary_step": float(np.median(seams[:, 2])),
                          "seam_within_boundary": float(np.mean(seams[:, 0] <= seams[:, 2]))}
        report["image_loop"] = {"seam_within_typical": float(np.mean(image_seams[:, 0] <= image_seams[:, 1])),
                                "median_seam": float(np.median(image_seams[:, 0])),
                                "median_typical_step": float(np.median(image_seams[:, 1])),
                                "inner_within_typical": float(np.mean(image_seams[:, 3]))}
    return report


def _join_step(joined: np.ndarray, before: int, shared: int) -> float:
    """The largest frame step from the input's last frame left as it is to the first new frame (``shared``
    input frames faded between them, ``tasks.extend``), over the median step among the new frames: 1 for a
    join that steps like the motion around it (the world's own continuation: 1.0)."""
    steps = np.abs(np.diff(joined.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # steps[j]: frame j -> j + 1
    return float(steps[before - shared - 1:before].max() / max(np.median(steps[before:]), 1e-6))


def _loop_steps(frames: np.ndarray, tf: int) -> tuple[float, float, float, float]:
    """(seam, median step, median step between latent frames, share of those steps <= the median step) of a
    loop's frames: the last is what the seam rule gives a wrap no worse than the loop's inside."""
    from kinema.infer import tasks

    seam, typical = tasks.loop_seam(frames)
    inner = np.asarray([tasks.loop_seam(frames[j - 1:j + 1])[0] for j in range(tf, len(frames), tf)])
    return seam, typical, float(np.median(inner)), float(np.mean(inner <= typical))


def format_report(report: dict) -> str:
    """The report as a Markdown table: one row per measurement (of the parts it holds)."""
    rows = []
    if "image_to_video" in report:
        i2v = report["image_to_video"]
        rows += [
            ("image-to-video: first frame PSNR vs the image",
             f"{i2v['psnr_db']:.1f} dB (min {i2v['psnr_db_min']:.1f}; the VAE's round trip, unfitted: "
             f"{i2v['vae_round_trip_psnr_db']:.1f})"),
            ("image-to-video: the object moves the way the prompt says",
             f"{100 * i2v['direction_as_asked']:.0f}% (the prompt alone, text-to-video: "
             f"{100 * i2v['text_to_video_direction_as_asked']:.0f}%)"),
        ]
    if "extend" in report:
        ext = report["extend"]
        rows += [
            ("extend forwards: motion direction kept", f"{100 * ext['direction_kept']:.0f}% (motion strength "
                                                       f"{report['settings'].get('extend_motion_strength', 1.0):g})"),
            ("extend backwards: the new frames lead into the clip's motion",
             f"{100 * ext['backward_direction_kept']:.0f}%"),
            ("extend forwards: largest step at the join over the new frames' median step",
             f"{ext['median_join_step']:.2f} (median; 1 steps like the motion)"),
        ]
    if "loop" in report:
        loop, image_loop = report["loop"], report["image_loop"]
        rows += [
            ("loop: seam <= typical frame step", f"{100 * loop['seam_within_typical']:.0f}% (median seam "
                                                 f"{loop['median_seam']:.1f} vs step {loop['median_typical_step']:.1f}; "
                                                 f"the loops' inner steps between latent frames pass "
                                                 f"{100 * loop['inner_within_typical']:.0f}%)"),
            ("loop: seam <= the loop's typical step between latent frames",
             f"{100 * loop['seam_within_boundary']:.0f}% (median {loop['median_latent_boundary_step']:.1f})"),
            ("loop from the clip's first frame: seam <= typical frame step",
             f"{100 * image_loop['seam_within_typical']:.0f}% (median seam {image_loop['median_seam']:.1f} vs step "
             f"{image_loop['median_typical_step']:.1f}; inner steps between latent frames pass "
             f"{100 * image_loop['inner_within_typical']:.0f}%)"),
        ]
    return "\n".join(["| measure | result |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows])
