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
from ..infer.i2v_wan import is_wan_i2v
from ..infer.pipeline import InputError, Settings, bundled_model_path, make_settings

# Clients written for OpenAI's Videos API name Sora models; they get the server's default model.
SORA_ALIASES = ("sora-2", "sora-2-pro")
TASK_NAMES = ("image_to_video", "extend", "edit")  # beyond text-to-video and remix, if kinema.infer.tasks has them
# What each task is, as a client asks for it (error messages name what a model accepts in these words).
TASK_REQUESTS = {"text_to_video": "text-to-video (POST /v1/videos without input_reference)",
                 "remix": "remixing videos (/v1/videos/{id}/remix)",
                 "image_to_video": "image-to-video (POST /v1/videos with an input_reference image)",
                 "extend": "extending videos (/v1/videos/extensions)",
                 "edit": "editing videos (/v1/videos/edits)"}


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


def job_task(kind: str, params: dict) -> str:
    """The task a job of ``kind`` ("create", "remix", "extend", "edit") with ``params`` runs."""
    if kind == "create":
        return "image_to_video" if params.get("input") == "image" else "text_to_video"
    return kind


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

    @property
    def wan_i2v(self) -> bool:
        """A Wan 2.1 image-to-video model: it reads its image through its own DiT channels and CLIP tokens."""
        return is_wan_i2v(self.cfg)

    @property
    def tasks(self) -> list[str]:
        """The tasks this model runs on this install: a Wan 2.1 image-to-video model makes video from an image
        only (``kinema.infer.i2v_wan``); other models every task this install has (``available_tasks``)."""
        return ["image_to_video"] if self.wan_i2v else available_tasks()

    def refusal(self, task: str) -> str:
        """Why this model does not run ``task``, naming what it accepts."""
        what = TASK_REQUESTS.get(task, task.replace("_", "-"))
        accepted = "; ".join(TASK_REQUESTS.get(t, t) for t in self.tasks)
        if self.wan_i2v:
            return (f"model {self.name!r} is a Wan 2.1 image-to-video model: it makes video from an image, so "
                    f"{what} is not available with it; it accepts: {accepted}")
        return f"model {self.name!r} does not offer {what}; it accepts: {accepted}"

    def describe(self, tasks: list[str] | None = None) -> dict:
        """The ``GET /v1/models`` entry: OpenAI's model fields plus what this model accepts (``tasks``: this
        model's own, ``ModelSpec.tasks``, unless given)."""
        tasks = self.tasks if tasks is None else tasks
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


def check_model_files(spec: ModelSpec) -> None:
    """What can be checked of a model's files without loading it, at ``kinema serve``'s start (reading kilobytes):
    every ``.safetensors`` file in its folder is whole (its header reads, and the file is as long as the header
    says: a cut-off download is the usual broken folder), and a Wan 2.1 image-to-video folder has its CLIP image
    encoder. WeightsError naming the file; the rest (weights that do not fit the config, a text encoder that does
    not match) shows when a worker loads the model, which then stops without restarting."""
    import json
    import struct

    from ..weights import WeightsError
    root = Path(spec.path)
    for path in sorted(root.rglob("*.safetensors")):
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
                header = json.loads(f.read(n)) if 2 <= n <= min(size - 8, 100 * 2**20) else None
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"] \
                if isinstance(header, dict) else None
        except FileNotFoundError:
            raise WeightsError(f"model {spec.name!r}: {path} is a broken link or went missing") from None
        except (OSError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as e:
            raise WeightsError(f"model {spec.name!r}: cannot read {path} ({type(e).__name__}: {e})") from None
        if ends is None:
            raise WeightsError(f"model {spec.name!r}: {path} is not a safetensors file (its header does not read); "
                               f"download it again")
        need = 8 + n + max(ends, default=0)
        if size < need:
            raise WeightsError(f"model {spec.name!r}: {path} is truncated ({size} of the {need} bytes its header "
                               f"lists); download it again")
    if spec.wan_i2v:
        missing = [str(p) for p in (root / "image_encoder" / "config.json", root / "image_processor") if not p.exists()]
        if missing:
            raise WeightsError(f"model {spec.name!r} is a Wan 2.1 image-to-video model but {root} has no CLIP image "
                               f"encoder (missing {', '.join(missing)}); a Wan I2V folder holds image_encoder/ and "
                               f"image_processor/")


def resolve_model(catalog: dict[str, ModelSpec], name: str | None) -> ModelSpec:
    """The spec for a requested model name (None or a Sora name = the first model); InputError lists the rest."""
    if name in (None, "") or name in SORA_ALIASES or (name or "").startswith(tuple(a + "-" for a in SORA_ALIASES)):
        return next(iter(catalog.values()))
    if name not in catalog:
        raise InputError(f"model {name!r} is not served here; accepted: {', '.join(catalog)}", param="model")
    return catalog[name]
