"""The data pipeline's settings as typed data: one section per stage, loadable from one TOML/JSON file.

    [split]   # scene detection and cutting scenes into clips
    max_seconds = 8.0
    [score]   # how the measures are taken
    sample_fps = 8.0
    [filter]  # thresholds: which scored clips are kept
    min_motion = 0.002
    [caption]
    mapping = "captions.csv"
    [encode]
    fps = 8
    buckets = [{ frames = 17, height = 128, width = 128 }, { frames = 17, height = 96, width = 160 }]

Every section and field is optional; unknown keys are an error that names the key and lists the
accepted ones, and every value is checked against its field's type before any stage starts (the rules of
the training recipes, ``kinema.train.recipe``: "split.threshold must be a number, got 'abc'"). Changing
a section only redoes the stages that depend on it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinema.config import ConfigError
from kinema.train.recipe import coerce  # the training recipes' type checks: one rule for every config


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class SplitConfig:
    """Scene detection (content changes between frames) and cutting scenes to clip durations."""

    # A cut needs a content change (mean abs HSV difference, 0-255) of at least `threshold`, and at least
    # `ratio` times the median change of the frames around it, so fast motion is not mistaken for a cut.
    # Chosen on 32 world videos with 96 known cuts in H.264 / VP9 / MKV / MPEG-4 at 8-30 fps: 8 / 4 found
    # 88 cuts with 2 false ones (MPEG-4 key-frame pumping), PySceneDetect's 15 / 3 found 84 with 4 false.
    threshold: float = 8.0
    ratio: float = 4.0
    window_seconds: float = 0.25  # the neighbourhood on each side
    min_scene_seconds: float = 0.3  # a cut closer than this to the previous one is ignored
    min_seconds: float = 1.0  # shorter scenes give no clip
    max_seconds: float = 10.0  # longer scenes are cut into equal clips of at most this
    analysis_width: int = 96  # frames are compared at this width

    def __post_init__(self):
        _check(self.threshold > 0 and self.ratio >= 1, f"split.threshold must be > 0 and split.ratio >= 1, "
                                                        f"got {self.threshold}, {self.ratio}")
        _check(self.window_seconds > 0 and self.min_scene_seconds >= 0,
               f"split.window_seconds must be > 0 and min_scene_seconds >= 0, got {self.window_seconds}, {self.min_scene_seconds}")
        _check(self.min_seconds > 0, f"split.min_seconds must be > 0, got {self.min_seconds}")
        # Equal pieces of a scene just over max_seconds are max/2 long: they must still reach min_seconds.
        _check(self.max_seconds >= 2 * self.min_seconds,
               f"split.max_seconds ({self.max_seconds}) must be >= 2 * split.min_seconds ({self.min_seconds})")
        _check(self.analysis_width >= 16, f"split.analysis_width must be >= 16, got {self.analysis_width}")


@dataclass(frozen=True)
class ScoreConfig:
    """How clips are measured (the measures are stored; the filter decides)."""

    analysis_width: int = 160  # frames are measured at this width (so sharpness compares across sizes)
    sample_fps: float = 8.0  # motion and sharpness look at frames this far apart
    max_flow_pairs: int = 24  # optical flow on at most this many frame pairs per clip
    black_level: float = 16.0  # a frame whose mean luma (0-255) and luma std are both below this is black
    # Two frames are the same (frozen) when fewer than this fraction of pixels changes by more than
    # 8 luma levels: compression noise stays under 8, and a small object moving a pixel is well over 1e-4.
    static_level: float = 1e-4
    flash_delta: float = 60.0  # a frame this much brighter (luma 0-255) than both neighbours is a flash

    def __post_init__(self):
        _check(self.analysis_width >= 16, f"score.analysis_width must be >= 16, got {self.analysis_width}")
        _check(self.sample_fps > 0 and self.max_flow_pairs >= 1,
               f"score.sample_fps must be > 0 and max_flow_pairs >= 1, got {self.sample_fps}, {self.max_flow_pairs}")
        _check(min(self.black_level, self.static_level, self.flash_delta) >= 0,
               "score.black_level, static_level and flash_delta must be >= 0")


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds on the stored measures; a clip is kept when it passes every one (0 / inf = off)."""

    min_motion: float = 0.0  # optical flow, frame widths per second
    max_motion: float = math.inf
    min_sharpness: float = 0.0  # Laplacian variance at score.analysis_width
    max_black_fraction: float = 0.5
    max_static_fraction: float = 0.9  # frozen frames (a still image held)
    max_flashes: int = 2
    min_aspect: float = 0.25  # width / height as displayed
    max_aspect: float = 4.0
    min_width: int = 32
    min_height: int = 32
    min_seconds: float = 0.0
    max_seconds: float = math.inf

    def __post_init__(self):
        _check(0 <= self.min_motion <= self.max_motion, f"filter: need 0 <= min_motion <= max_motion, "
                                                         f"got {self.min_motion}, {self.max_motion}")
        _check(0 < self.min_aspect <= self.max_aspect, f"filter: need 0 < min_aspect <= max_aspect, "
                                                        f"got {self.min_aspect}, {self.max_aspect}")
        _check(0 <= self.min_seconds <= self.max_seconds, f"filter: need 0 <= min_seconds <= max_seconds, "
                                                           f"got {self.min_seconds}, {self.max_seconds}")
        for name in ("max_black_fraction", "max_static_fraction"):
            _check(0 <= getattr(self, name) <= 1, f"filter.{name} must be in [0, 1], got {getattr(self, name)}")
        _check(self.max_flashes >= 0 and self.min_width >= 1 and self.min_height >= 1 and self.min_sharpness >= 0,
               "filter.max_flashes and min_sharpness must be >= 0, min_width and min_height >= 1")


DEFAULT_PROMPT = ("Describe this {duration:.0f}-second video in detail: the main subjects and how they move, "
                  "the setting, the lighting and the camera motion. A short caption for reference: {caption}")


@dataclass(frozen=True)
class CaptionConfig:
    """Where captions come from: a mapping file, sidecars next to the source, or a captioner function."""

    mapping: str | None = None  # CSV or Parquet: a `caption` column and a `clip_id`, `path` or `name` column
    captioner: str | None = None  # "package.module:function", called as function(frames, prompt) -> str
    prompt_template: str = DEFAULT_PROMPT  # what the captioner is asked; fields below
    caption_template: str = "{caption}"  # the stored caption, e.g. "sks style, {caption}"
    frames: int = 8  # frames handed to the captioner, evenly over the clip
    max_size: int = 448  # their longer side (pixels)

    def __post_init__(self):
        _check(self.captioner is None or ":" in self.captioner,
               f"caption.captioner must be 'package.module:function', got {self.captioner!r}")
        _check(self.frames >= 1 and self.max_size >= 16,
               f"caption.frames must be >= 1 and max_size >= 16, got {self.frames}, {self.max_size}")


@dataclass(frozen=True)
class Bucket:
    """One training size: clips of ``frames`` x ``height`` x ``width`` pixels."""

    frames: int
    height: int
    width: int

    def __post_init__(self):
        _check(min(self.frames, self.height, self.width) >= 1, f"bucket {self.name}: sizes must be >= 1")

    @property
    def name(self) -> str:
        """"FRAMESxHEIGHTxWIDTH"."""
        return f"{self.frames}x{self.height}x{self.width}"

    @classmethod
    def parse(cls, text: str) -> Bucket:
        """A bucket from "FRAMESxHEIGHTxWIDTH", e.g. "17x96x160"."""
        parts = text.lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"a bucket is FRAMESxHEIGHTxWIDTH, e.g. 17x96x160, got {text!r}")
        return cls(*(int(p) for p in parts))


@dataclass(frozen=True)
class EncodeConfig:
    """The latent cache: which sizes clips are encoded at, and how."""

    buckets: tuple[Bucket, ...] = (Bucket(17, 128, 128), Bucket(17, 96, 160), Bucket(17, 160, 96))
    fps: float | None = None  # clips are resampled to this frame rate; None: the encoding model's (sampling.fps)
    batch_size: int = 4  # clips per VAE call
    shard_size: int = 256  # samples per safetensors file

    def __post_init__(self):
        _check(len(self.buckets) >= 1, "encode.buckets must list at least one bucket")
        names = [b.name for b in self.buckets]
        _check(len(set(names)) == len(names), f"encode.buckets has duplicate sizes: {names}")
        _check(self.fps is None or self.fps > 0, f"encode.fps must be > 0, got {self.fps}")
        _check(self.batch_size >= 1 and self.shard_size >= 1,
               f"encode.batch_size and shard_size must be >= 1, got {self.batch_size}, {self.shard_size}")


@dataclass(frozen=True)
class PipelineConfig:
    """Every stage's settings."""

    split: SplitConfig = field(default_factory=SplitConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)


def as_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain JSON data (what fingerprints and the cache's info are made of)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _build(cls: type, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the data config'} must be a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    _check(not unknown, f"{where or 'data config'}: unknown key(s) {unknown}; accepted: {sorted(names)}")
    required = [f.name for f in names.values()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    _check(not missing, f"{where}: missing key(s) {missing}; required: {required}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        sub = _SECTIONS.get(key) if cls is PipelineConfig else None
        if sub is not None:
            value = _build(sub, value, key)
        elif cls is EncodeConfig and key == "buckets":
            value = _buckets(value, path)
        else:
            value = _value(hints[key], value, path, infinite=cls is FilterConfig)
        kwargs[key] = value
    return cls(**kwargs)


def _value(tp: Any, value: Any, key: str, infinite: bool = False) -> Any:
    """``value`` checked (and int -> float converted) against the field's annotation ``tp``, the way training
    recipes are (``kinema.train.recipe``); filter thresholds may also be infinite (off)."""
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and math.isinf(number):
            _check(infinite, f"{key} must be a finite number, got {value!r}")
            return number
    return coerce(tp, value, key)


_BUCKET_FORM = '"FRAMESxHEIGHTxWIDTH" (e.g. "17x96x160") or { frames = F, height = H, width = W }'


def _buckets(value: Any, key: str) -> tuple[Bucket, ...]:
    """``encode.buckets``: a list whose entries are "FxHxW" strings or {frames, height, width} tables."""
    _check(isinstance(value, (list, tuple)), f"{key} must be a list of buckets, each {_BUCKET_FORM}; got {value!r}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            try:
                out.append(Bucket.parse(item))
            except ConfigError as err:
                raise ConfigError(f"{key}[{i}]: {err}") from None
        elif isinstance(item, dict):
            out.append(_build(Bucket, item, f"{key}[{i}]"))
        else:
            raise ConfigError(f"{key}[{i}] must be a bucket, {_BUCKET_FORM}; got {item!r}")
    return tuple(out)


_SECTIONS = {"split": SplitConfig, "score": ScoreConfig, "filter": FilterConfig, "caption": CaptionConfig,
             "encode": EncodeConfig}


def load_data_config(source: str | Path | dict | None = None) -> PipelineConfig:
    """The ``PipelineConfig`` of a .toml/.json file or a dict (None: all defaults)."""
    if source is None:
        return PipelineConfig()
    if isinstance(source, dict):
        return _build(PipelineConfig, source, "")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"data config {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"data config {str(path)!r}: unknown extension {path.suffix!r}; accepted: .toml .json")
    except ConfigError:
        raise
    except Exception as err:  # parser errors name the line; keep them, drop the traceback
        raise ConfigError(f"data config {str(path)!r} could not be parsed: {err}") from None
    return _build(PipelineConfig, data, "")
