"""``kinema eval world``: generate one video per benchmark prompt and score it against its scene."""

from __future__ import annotations

import json
import sys
import time

from ..common.io import atomic_write_text
from ..common.precision import dtype_name
from ..config import check_interval


class EvalArgumentError(ValueError):
    """An argument combination the benchmark cannot run (the CLI prints it as one line, exit status 2)."""


ROWS = ("single_seen", "single_heldout", "unseen_phrasing", "two_objects", "physics", "overall")


def format_table(table: dict) -> str:
    """The report's table as Markdown: one row per category, one column per attribute."""
    cols = ["videos", "colour", "shape", "motion", "background", "count", "physics", "persistence", "all_correct",
            "flicker", "dynamic_degree"]
    cols = [c for c in cols if any(c in row for row in table.values())]
    lines = ["| row | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 1)]
    for name, row in table.items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("-" if v is None else (str(v) if c == "videos" else f"{100 * v:.1f}%" if c not in
                                                ("flicker", "dynamic_degree") else f"{v:.3f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _round_trip(render_fn, model: str | None):
    """``render_fn`` followed by encode + decode with the VAE of ``model`` (default: the bundled model)."""
    import numpy as np
    import torch

    from ..common.video import from_model, to_model
    from ..infer.pipeline import bundled_model_path
    from ..weights import load_vae

    vae = load_vae(model or bundled_model_path()).eval()

    @torch.inference_mode()
    def generate(prompt: str, seed: int) -> np.ndarray:
        video = to_model(render_fn(prompt, seed))
        return from_model(vae.decode(vae.encode(video)))
    return generate


def run_eval(args) -> int:
    """Run the world benchmark on a model (or on rendered ground truth); print and optionally save the report."""
    from .world import run_world_eval

    if args.n < 1:
        raise EvalArgumentError(f"--n must be >= 1, got {args.n}")
    if not 0 <= args.seed <= 2**62:  # video i is sampled with seed + i
        raise EvalArgumentError(f"--seed must be an integer in [0, 2^62], got {args.seed}")
    _check_json(args.json)
    if args.ground_truth and args.reconstruct:
        raise EvalArgumentError("--ground-truth scores the renders, --reconstruct a VAE's round trips of them: one")
    if args.ground_truth and args.model is not None:
        raise EvalArgumentError("--ground-truth scores the renders themselves: --model has no part in it")
    for flag, given in (("--steps", args.steps is not None), ("--guidance", args.guidance is not None),
                        ("--guidance-interval", args.guidance_interval is not None), ("--shift", args.shift is not None),
                        ("--no-student", args.no_student), ("--cache-threshold", args.cache_threshold is not None),
                        ("--dtype", args.dtype != "fp32")):
        if given and (args.ground_truth or args.reconstruct):
            raise EvalArgumentError(f"{flag} applies to generated videos, not to --ground-truth or --reconstruct")
    if args.suite == "tasks":
        return _run_tasks(args)
    if args.motion_strength is not None:
        raise EvalArgumentError("--motion-strength sets the extensions of the tasks suite; 'world' has none")
    if args.only is not None:
        raise EvalArgumentError("--only picks parts of the tasks suite; 'world' has none")
    width, height, frames, fps = 128, 128, 17, 8
    if args.ground_truth or args.reconstruct:
        from ..data.world import render, scene_from_prompt

        def generate(prompt: str, seed: int):
            return render(scene_from_prompt(prompt, width, height, frames, fps, seed))
        label, sampling = "ground truth (rendered)", None
        if args.reconstruct:  # the model's VAE round trip: the ceiling for any DiT trained on its latents
            generate, label = _round_trip(generate, args.model), f"{args.model or 'bundled model'} VAE reconstructions"
    else:
        from ..infer import Pipeline
        threshold = _cache_threshold(args)
        pipe = Pipeline.from_pretrained(args.model, student=not args.no_student, dtype=args.dtype)
        _check_student(pipe, args)
        steps, guidance, shift, interval = args.steps, args.guidance, args.shift, _interval(args)

        def generate(prompt: str, seed: int):
            return pipe.generate(prompt, width=width, height=height, frames=frames, fps=fps, steps=steps,
                                 guidance=guidance, guidance_interval=interval, shift=shift, seed=seed,
                                 cache_threshold=threshold).frames
        label = args.model or "bundled model"
        defaults = pipe.cfg.sampling
        sampling = {"steps": steps or defaults.steps, "guidance": defaults.guidance if guidance is None else guidance,
                    "guidance_interval": list(defaults.guidance_interval if interval is None else interval),
                    "shift": defaults.shift if shift is None else shift,
                    "student": _samples_with_student(pipe, steps), "dtype": dtype_name(pipe.dtype)}
    t = time.perf_counter()
    report = run_world_eval(generate, n_per_row=args.n, width=width, height=height, frames=frames, fps=fps,
                            seed=args.seed)
    report["model"] = label
    if sampling is not None:
        report["sampling"] = {**sampling, **_cache_report(pipe, threshold)}
    report["seconds"] = round(time.perf_counter() - t, 1)
    print(f"world benchmark: {label}, {args.n} prompts per row, {report['seconds']} s")
    print(format_table(report["table"]))
    _print_cache(report.get("sampling") or {})
    _save(report, args.json)
    return 0


def _run_tasks(args) -> int:
    """``kinema eval tasks``: image-to-video, extension and loops of a model on world clips."""
    from ..infer import Pipeline
    from .tasks import format_report, run_tasks_eval

    if args.ground_truth or args.reconstruct:
        raise EvalArgumentError("--ground-truth and --reconstruct score the world suite; 'tasks' measures a model")
    from ..infer.tasks import MOTION_STRENGTH, check_motion_strength
    from .tasks import PARTS, check_parts

    try:
        parts = PARTS if args.only is None else check_parts(args.only)
    except ValueError as err:
        raise EvalArgumentError(f"--only: {err}") from None
    if "extend" not in parts and args.motion_strength is not None:
        raise EvalArgumentError("--motion-strength sets the extensions, which --only leaves out")
    motion = MOTION_STRENGTH if args.motion_strength is None else check_motion_strength(args.motion_strength,
                                                                                        "--motion-strength")
    threshold, interval = _cache_threshold(args), _interval(args)
    t = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.model, student=not args.no_student, dtype=args.dtype)
    _check_student(pipe, args)
    report = run_tasks_eval(pipe, n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance, shift=args.shift,
                            guidance_interval=interval, motion_strength=motion, cache_threshold=threshold, parts=parts)
    report["settings"]["student"] = _samples_with_student(pipe, args.steps)
    report["settings"]["dtype"] = dtype_name(pipe.dtype)
    report["settings"].update(_cache_report(pipe, threshold))
    report["model"] = args.model or "bundled model"
    report["seconds"] = round(time.perf_counter() - t, 1)
    measured = "" if parts == PARTS else f" ({', '.join(parts)} only)"
    print(f"tasks benchmark: {report['model']}, {args.n} cases{measured}, {report['seconds']} s")
    print(format_report(report))
    _print_cache(report["settings"])
    _save(report, args.json)
    return 0


def _checked(value, flag: str, check):
    """``check(value)`` for a flag given (None when it was not: the model's default), before any model loads; its
    ValueError as an EvalArgumentError naming the flag."""
    if value is None:
        return None
    try:
        return check(value)
    except ValueError as err:
        raise EvalArgumentError(f"{flag}: {err}") from None


def _interval(args) -> tuple[float, float] | None:
    """``--guidance-interval``, checked (None: not given, the model's)."""
    return _checked(args.guidance_interval, "--guidance-interval", check_interval)


def _cache_threshold(args) -> float | None:
    """``--cache-threshold``, checked (None: not given, the sampling default)."""
    from ..infer.step_cache import check_threshold
    return _checked(args.cache_threshold, "--cache-threshold", check_threshold)


def _cache_report(pipe, threshold: float | None) -> dict:
    """The step cache's settings and what it reused over the whole benchmark (empty when it was off)."""
    if not threshold:
        return {}
    totals = pipe.cache_totals
    return {"cache_threshold": threshold, "cache_reused": totals.reused, "cache_evaluations": totals.full + totals.reused}


def _print_cache(settings: dict) -> None:
    if "cache_reused" in settings:
        print(f"step cache (threshold {settings['cache_threshold']:g}): reused {settings['cache_reused']} of "
              f"{settings['cache_evaluations']} row evaluations of the DiT")


def _samples_with_student(pipe, steps: int | None) -> bool:
    """Whether ``pipe`` samples a request for ``steps`` (None: its default) with its few-step student."""
    return pipe.uses_student(pipe.settings("a red ball", steps=steps))


def _check_student(pipe, args) -> None:
    """Refuse sampling flags the model's few-step student would not use (its guidance and shift are baked in)."""
    if not _samples_with_student(pipe, args.steps):
        return
    unused = [flag for flag, value in (("--guidance", args.guidance), ("--guidance-interval", args.guidance_interval),
                                       ("--shift", args.shift)) if value is not None]
    if unused:
        raise EvalArgumentError(f"--steps {args.steps} samples with the model's few-step student, whose guidance and "
                                f"shift are baked in: {', '.join(unused)} would not be used; drop "
                                f"{'it' if len(unused) == 1 else 'them'}, or add --no-student to measure the teacher")


def _check_json(path: str | None) -> None:
    """``--json PATH`` checked before any work: not a folder, in a folder this process can write to."""
    import tempfile
    from pathlib import Path

    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise EvalArgumentError(f"--json {path}: it is a folder; give a file name")
    where = target.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise EvalArgumentError(f"--json {path}: {where} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        raise EvalArgumentError(f"--json {path}: {where} is not writable ({e.strerror or e})") from None


def _save(report: dict, path: str | None) -> None:
    """Write ``report`` as JSON to ``path`` (atomically), when one was given."""
    if path:
        atomic_write_text(path, json.dumps(report, indent=1, default=str))
        print(f"wrote {path}", file=sys.stderr)
