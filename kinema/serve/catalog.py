"""The models a server runs, the sizes and durations each accepts, and request -> Settings validation.

OpenAI's API names a duration in whole seconds ("4") and a size as "WIDTHxHEIGHT"; a kinema model
generates 4k+1 frames at its fps, at multiples of its pixel multiple. Each model offers a short list
(from its config, or the operator's ``--sizes`` / ``--seconds``) and every request must pick from it,
so clients learn from ``GET /v1/models`` exactly what will be accepted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError, ModelConfig, check_interval
from ..infer.pipeline import InputError, Settings, bundled_model_path, make_settings

# Clients written for OpenAI's Videos API name Sora models; they get the server's default model.
SORA_ALIASES = ("sora-2", "sora-2-pro")
TASK_NAMES = ("image_to_video", "extend", "edit")  # beyond text-to-video and remix, if kinema.infer.tasks has them


def _interval(raw: str) -> list[float]:
    """A ``guidance_interval`` field, text "LO,HI", as [lo, hi]."""
    try:
        return list(check_interval(raw))
    except ValueError as e:
        raise InputError(str(e), param="guidance_interval") from None


EXTRA_FIELDS = {"seed": int, "steps": int, "guidance": float, "negative_prompt": str, "sampler": str, "shift": float,
                "guidance_interval": _interval}


class TaskUnavailable(Exception):
    """This install has no function for the task (``kinema.infer.tasks`` lacks it)."""


def available_tasks() -> list[str]:
    """The tasks this install can run: text_to_video and remix always, others if kinema.infer.tasks has them."""
    try:
        from ..infer import tasks
    except ImportError:
        return ["text_to_video", "remix"]
    return ["text_to_video", "remix"] + [t for t in TASK_NAMES if callable(getattr(tasks, t, None))]


def task_function(name: str):
    """``kinema.infer.tasks.<name>``; TaskUnavailable if this install has none."""
    try:
        from ..infer import tasks
    except ImportError:
        tasks = None
    fn = getattr(tasks, name, None)
    if not callable(fn):
        raise TaskUnavailable(f"{name.replace('_', '-')} is not supported by this server yet")
    return fn


def frames_for_seconds(seconds: float, fps: int, factor: int) -> int:
    """The valid frame count (factor*k + 1) closest to ``seconds`` of video at ``fps``."""
    return factor * max(0, round((seconds * fps - 1) / factor)) + 1


@dataclass(frozen=True)
class ModelSpec:
    """One servable model: its folder, config, and the sizes and durations requests may ask for."""

    name: str
    path: str
    cfg: ModelConfig
    sizes: tuple[str, ...]
    seconds: tuple[str, ...]

    @property
    def default_size(self) -> str:
        return self.sizes[0]

    @property
    def default_seconds(self) -> str:
        return self.seconds[0]

    @property
    def largest_request(self) -> tuple[int, int, int]:
        """(width, height, frames) of the request that needs the most memory: largest size, longest duration."""
        sizes = [tuple(int(v) for v in size.split("x")) for size in self.sizes]
        width, height = max(sizes, key=lambda wh: wh[0] * wh[1])
        seconds = max(float(s) for s in self.seconds)
        return width, height, frames_for_seconds(seconds, self.cfg.sampling.fps, self.cfg.vae.temporal_factor)

    def describe(self, tasks: list[str]) -> dict:
        """The ``GET /v1/models`` entry: OpenAI's model fields plus what this model accepts."""
        s = self.cfg.sampling
        return {"id": self.name, "object": "model", "created": 0, "owned_by": "kinema",
                "sizes": list(self.sizes), "seconds": list(self.seconds), "default_size": self.default_size,
                "default_seconds": self.default_seconds, "fps": s.fps, "tasks": tasks,
                "defaults": {"steps": s.steps, "guidance": s.guidance, "guidance_interval": list(s.guidance_interval),
                             "shift": s.shift, "sampler": s.sampler,
                             "negative_prompt": s.negative_prompt}}

    def size_like(self, width: int, height: int) -> str:
        """The offered size whose aspect ratio is nearest a ``width`` x ``height`` input's (the first offered, the
        default, among equally near ones): what an uploaded image or video is made at when a request names no size."""
        def distance(size: str) -> float:
            w, h = (int(v) for v in size.split("x"))
            return abs(math.log((w / h) / (width / height)))
        return min(self.sizes, key=distance)

    def settings(self, prompt: str, size: str | None, seconds: str | None, extras: dict,
                 max_steps: int) -> tuple[Settings, str, str]:
        """(validated Settings, size, seconds) for a request; InputError names the bad value and what is accepted."""
        size = self.default_size if size in (None, "") else size.strip()
        if size not in self.sizes:
            raise InputError(f"size {size!r} is not offered by model {self.name!r}; accepted: {', '.join(self.sizes)}",
                             param="size")
        seconds = self.default_seconds if seconds in (None, "") else str(seconds).strip()
        if seconds not in self.seconds:
            raise InputError(f"seconds {seconds!r} is not offered by model {self.name!r}; accepted: "
                             f"{', '.join(self.seconds)}", param="seconds")
        width, height = (int(v) for v in size.split("x"))
        fps = self.cfg.sampling.fps
        frames = frames_for_seconds(float(seconds), fps, self.cfg.vae.temporal_factor)
        steps = extras.get("steps")
        if steps is not None and not 1 <= steps <= max_steps:
            raise InputError(f"steps must be in [1, {max_steps}] on this server, got {steps}", param="steps")
        return make_settings(self.cfg, prompt, width=width, height=height, frames=frames, fps=fps, **extras), size, seconds


def parse_extras(fields: dict[str, str]) -> dict:
    """kinema's extra form fields (seed, steps, guidance, negative_prompt, sampler, shift, guidance_interval), typed."""
    out = {}
    for name, kind in EXTRA_FIELDS.items():
        raw = fields.get(name)
        if raw is None or raw == "":
            continue
        if kind not in (int, float):
            out[name] = kind(raw)
            continue
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise InputError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}",
                             param=name) from None
        if kind is float and not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {raw!r}", param=name)
        out[name] = value
    return out


def _default_sizes(cfg: ModelConfig) -> tuple[str, ...]:
    """The model's default size first, then its portrait/landscape twin (same pixel count, multiples kept)."""
    w, h, m = cfg.sampling.width, cfg.sampling.height, cfg.pixel_multiple
    sizes = [(w, h)]
    if w != h:
        sizes.append((h, w))
    else:
        area = w * h
        wide = (max(m, round(math.sqrt(area * 16 / 9) / m) * m), max(m, round(math.sqrt(area * 9 / 16) / m) * m))
        sizes += [wide, wide[::-1]]
    return tuple(dict.fromkeys(f"{a}x{b}" for a, b in sizes))


def _default_seconds(cfg: ModelConfig) -> tuple[str, ...]:
    """The model's default length in whole seconds, then twice that."""
    base = max(1, round(cfg.sampling.frames / cfg.sampling.fps))
    return (str(base), str(2 * base))


def _check_size(text: str, cfg: ModelConfig) -> str:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    mult = cfg.pixel_multiple
    if not m or int(m.group(1)) % mult or int(m.group(2)) % mult or 0 in (int(m.group(1)), int(m.group(2))):
        raise ConfigError(f"size {text!r} must be WIDTHxHEIGHT in positive multiples of {mult} for model {cfg.name!r}")
    return f"{int(m.group(1))}x{int(m.group(2))}"


def _check_seconds(text: str) -> str:
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise ConfigError(f"seconds {text!r} must be a whole number >= 1")
    return str(int(text))


def load_catalog(paths: tuple[str, ...], sizes: tuple[str, ...] = (), seconds: tuple[str, ...] = ()) -> dict[str, ModelSpec]:
    """Model name -> spec for each folder (none = the bundled model); reads configs only, no weights."""
    from ..weights import read_config
    folders = [Path(p) for p in paths] or [bundled_model_path()]
    catalog: dict[str, ModelSpec] = {}
    for folder in folders:
        cfg = read_config(folder)
        name = cfg.name if cfg.name not in ("custom", "") else folder.name
        if name in catalog:  # two folders of one preset: tell them apart by folder name
            name = folder.name
        if name in catalog or name in SORA_ALIASES:
            raise ConfigError(f"two models are both named {name!r} ({catalog[name].path if name in catalog else name} "
                              f"and {folder}); rename a folder")
        catalog[name] = ModelSpec(
            name=name, path=str(folder.resolve()), cfg=cfg,
            sizes=tuple(_check_size(s, cfg) for s in sizes) or _default_sizes(cfg),
            seconds=tuple(_check_seconds(s) for s in seconds) or _default_seconds(cfg))
    return catalog


def resolve_model(catalog: dict[str, ModelSpec], name: str | None) -> ModelSpec:
    """The spec for a requested model name (None or a Sora name = the first model); InputError lists the rest."""
    if name in (None, "") or name in SORA_ALIASES or (name or "").startswith(tuple(a + "-" for a in SORA_ALIASES)):
        return next(iter(catalog.values()))
    if name not in catalog:
        raise InputError(f"model {name!r} is not served here; accepted: {', '.join(catalog)}", param="model")
    return catalog[name]
