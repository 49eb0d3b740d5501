"""Training recipes as typed data: ``TrainConfig`` and its sections, loaded from YAML/TOML/JSON plus overrides.

A recipe file (.toml, .json, or .yaml when PyYAML is installed) holds any subset of the fields below
(everything has a default); command-line overrides ``--optim.lr 3e-4`` or ``--data.path=clips/`` are
applied on top. Unknown keys are an error that names the key and lists the accepted ones, at every level.
A mapping given in full (``flow.cond_probs``, ``model_config``) replaces the default, not merges into it.

Batch sizes are per rank and per micro-step: the global batch of a step is
``bucket.batch_size * world_size * optim.grad_accum`` clips of that bucket's size.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kinema.config import ConfigError
from kinema.tasks.condition import PATTERNS
from kinema.train.recipe import from_dict, parse_overrides, read_recipe, set_key


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


class TrainError(RuntimeError):
    """Training cannot go on (empty dataset, NaN losses in a row, missing checkpoint); the message says why."""


@dataclass(frozen=True)
class BucketConfig:
    """One native size: clips of ``frames`` x ``height`` x ``width`` pixels, ``batch_size`` per rank."""

    frames: int
    height: int
    width: int
    batch_size: int = 1
    weight: float = 1.0  # procedural world data: how often this size is drawn (relative)
    # World data for VAE runs: render scale x larger and train on a random crop of the bucket's size, so
    # objects keep the pixel size they have in large frames at a fraction of the cost per step.
    crop_scale: int = 1
    # Crops of small objects over large plain backgrounds mostly miss the objects: with crop_tries > 1, that
    # many windows are drawn and the one whose pixels vary most (colour variance over the clip) is kept.
    crop_tries: int = 1

    def __post_init__(self):
        _check(min(self.frames, self.height, self.width) >= 1,
               f"bucket {self.name}: frames, height and width must be >= 1")
        _check(self.batch_size >= 1, f"bucket {self.name}: batch_size must be >= 1, got {self.batch_size}")
        _check(self.weight >= 0, f"bucket {self.name}: weight must be >= 0, got {self.weight}")
        _check(1 <= self.crop_scale <= 8, f"bucket {self.name}: crop_scale must be an integer in [1, 8], got {self.crop_scale}")
        _check(1 <= self.crop_tries <= 64, f"bucket {self.name}: crop_tries must be an integer in [1, 64], got {self.crop_tries}")

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


DATA_KINDS = ("world", "clips", "latents")


@dataclass(frozen=True)
class DataConfig:
    """Where clips come from and the native sizes they are trained at."""

    kind: str = "world"  # "world" (rendered on the fly) | "clips" (folder + .txt captions) | "latents" (cache)
    path: str | None = None  # folder for "clips" / "latents"
    buckets: tuple[BucketConfig, ...] = (
        BucketConfig(17, 128, 128, 4), BucketConfig(17, 96, 160, 4), BucketConfig(1, 128, 128, 16),
    )
    num_clips: int = 10_000  # "world": clips per epoch (the world itself is endless)
    fps: float | None = 8.0  # frame rate clips are rendered / resampled at (None = the file's own, "clips")
    num_workers: int = 0  # DataLoader worker processes per rank
    # Data echoing: each loaded (and VAE-encoded) batch is trained on ``echo`` times on average. Loaded batches
    # go into a buffer of the last ``echo_buffer``; between two loads, steps take a random batch from it, with
    # fresh noise, time, conditioning and caption dropout. For a small model whose steps wait on rendering and
    # encoding (the world on a GPU); 1 = every step loads. The buffer is not checkpointed: it refills on --resume.
    echo: int = 1
    echo_buffer: int = 64
    # "world": scenes are set up for up to ``world_span`` times a clip's length and the clip is a random window
    # of one that still reads back as its caption (``kinema.train.data.world_window``); 1 = every scene fits its
    # clip, so a moving object always starts with room ahead. Above 1, clips also start mid-way through a
    # motion, which continuations (extend, long video) start from.
    world_span: float = 1.0
    # Motions whose scenes always fit their clips, from frame 0, with world_span > 1: e.g. ["falls", "bounces"],
    # whose captions say an object is dropped (a window mid-fall starts it fast and lands it early).
    world_span_except: tuple[str, ...] = ()
    # "world", VAE runs only: this share of clips change scene part-way through, two scenes joined by a hard cut
    # or (half of them) a cross-dissolve of 2-8 frames at a random frame: real footage does, and a causal
    # decoder that only ever saw one scene per clip carries the first scene's colours on for a dozen frames.
    world_scene_changes: float = 0.0

    def __post_init__(self):
        _check(self.kind in DATA_KINDS, f"data.kind must be one of {DATA_KINDS}, got {self.kind!r}")
        _check(self.kind == "world" or self.path is not None, f"data.kind={self.kind!r} needs data.path (a folder)")
        _check(len(self.buckets) >= 1, "data.buckets must list at least one bucket")
        names = [b.name for b in self.buckets]
        _check(len(set(names)) == len(names), f"data.buckets has duplicate sizes: {names}")
        _check(self.num_clips >= 1, f"data.num_clips must be >= 1, got {self.num_clips}")
        _check(self.fps is None or self.fps > 0, f"data.fps must be > 0 or null, got {self.fps}")
        _check(self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}")
        _check(self.echo >= 1, f"data.echo must be an integer >= 1 (1 = no echoing), got {self.echo}")
        _check(self.echo_buffer >= 1, f"data.echo_buffer must be an integer >= 1, got {self.echo_buffer}")
        _check(1.0 <= self.world_span <= 4.0, f"data.world_span must be in [1, 4] (1: scenes fit their clips), "
               f"got {self.world_span}")
        from kinema.data.world import MOTIONS

        _check(0.0 <= self.world_scene_changes <= 1.0,
               f"data.world_scene_changes must be a share in [0, 1], got {self.world_scene_changes}")
        unknown = [m for m in self.world_span_except if m not in MOTIONS]
        _check(not unknown, f"data.world_span_except: unknown motion(s) {unknown}; accepted: {list(MOTIONS)}")


@dataclass(frozen=True)
class FlowConfig:
    """The flow-matching objective: which times are trained, caption dropout, random frame conditioning."""

    t_kind: str = "logit_normal"  # "logit_normal" | "uniform"
    t_mean: float = 0.0
    t_std: float = 1.0
    shift: float = 1.0  # SD3 time shift of the training times (> 1: more effort at high noise)
    text_dropout: float = 0.1  # chance a caption is replaced by "" (what CFG's unconditional branch sees)
    # Chance of each conditioning pattern (kinema.tasks.condition.PATTERNS), normalised; "none" = plain T2V.
    cond_probs: dict[str, float] = field(default_factory=lambda: {
        "none": 0.7, "first": 0.1, "first_k": 0.05, "last": 0.05, "both_ends": 0.05, "keyframes": 0.05})
    loss_bins: int = 4  # loss is also logged per timestep bin [0, 1/n), ...
    # World data only: latent tokens whose pixels (a 4-frame x 8x8 block) the renderer drew objects on count
    # this many times in the loss (a weighted mean). Objects cover a few % of the tokens, so at weight 1 most of
    # the gradient teaches backgrounds. Re-weighting places does not move the loss's minimiser (the velocity
    # each token should predict is unchanged); it moves where a small model's capacity and steps go first.
    object_weight: float = 1.0

    def __post_init__(self):
        _check(self.object_weight > 0, f"flow.object_weight must be > 0, got {self.object_weight}")
        _check(self.t_kind in ("logit_normal", "uniform"), f"flow.t_kind must be 'logit_normal' or 'uniform', got {self.t_kind!r}")
        _check(self.t_std > 0 and self.shift > 0, f"flow.t_std and flow.shift must be > 0, got {self.t_std}, {self.shift}")
        _check(0 <= self.text_dropout <= 1, f"flow.text_dropout must be in [0, 1], got {self.text_dropout}")
        unknown = sorted(set(self.cond_probs) - set(PATTERNS))
        _check(not unknown, f"flow.cond_probs: unknown pattern(s) {unknown}; accepted: {list(PATTERNS)}")
        _check(all(p >= 0 for p in self.cond_probs.values()), f"flow.cond_probs must be >= 0, got {self.cond_probs}")
        _check(self.loss_bins >= 1, f"flow.loss_bins must be >= 1, got {self.loss_bins}")


@dataclass(frozen=True)
class VAELossConfig:
    """The VAE objective (``model: vae``): L1 reconstruction + KL + an edge (image-gradient) term + squared error."""

    kl_weight: float = 1e-6
    edge_weight: float = 0.1
    # Squared error weighs a few big misses (a small object left out) above the many small ones of textures,
    # which a plain L1 treats alike: on the world, objects appear in a few hundred steps instead of thousands.
    mse_weight: float = 0.0
    # Train the decoder only: the encoder, hence the latents, stay as init_from left them, so the decoder can
    # keep improving while (or after) a DiT trains on those latents.
    decoder_only: bool = False
    # World data only: pixels the renderer drew objects on count this many times in the L1 and squared-error
    # terms (weighted means). Objects cover a few % of a frame; at weight 1 a small VAE spends its capacity on
    # textured backgrounds and returns them nearly grey (measured: object-pixel L1 0.50 -> 0.40 in 150
    # fine-tuning steps at weight 10, 0.47 at weight 1).
    object_weight: float = 1.0
    # L1 between the frame-to-frame differences of the reconstruction and of the clip: the per-frame terms
    # above let each frame miss in its own way, which a viewer sees as flicker, worst where one latent frame's
    # four frames meet the next's (measured on the world before this term: round-trip steps 2.2x the clip's,
    # 1.45x larger across latent frames than within one).
    temporal_weight: float = 0.0
    # Within that term, the steps from one latent frame's last frame to the next's first (frame 4k -> 4k+1)
    # count this many times: each latent frame's four frames share its errors, the next frame's are its own.
    temporal_across_weight: float = 1.0

    def __post_init__(self):
        _check(self.kl_weight >= 0 and self.edge_weight >= 0 and self.mse_weight >= 0 and self.temporal_weight >= 0,
               f"vae_loss weights must be >= 0, got kl={self.kl_weight} edge={self.edge_weight} mse={self.mse_weight} "
               f"temporal={self.temporal_weight}")
        _check(self.temporal_across_weight > 0,
               f"vae_loss.temporal_across_weight must be > 0, got {self.temporal_across_weight}")
        _check(self.object_weight > 0, f"vae_loss.object_weight must be > 0, got {self.object_weight}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine (or constant) learning rate."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # applied to matrices only, never to biases, norms or modulation tables
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr at max_steps) | "constant"
    # Steps the cosine spans; None = max_steps. Set above max_steps to end a run part-way along a longer
    # schedule and still export it (e.g. to reproduce a run that a time limit stopped at that step).
    schedule_steps: int | None = None
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm (0 = off)
    grad_accum: int = 1  # micro-steps per optimizer step

    def __post_init__(self):
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"optim.betas must be two values in [0, 1), got {self.betas}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.schedule in ("cosine", "constant"), f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        _check(0 <= self.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.grad_clip >= 0, f"optim.grad_clip must be >= 0, got {self.grad_clip}")
        _check(self.grad_accum >= 1, f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        _check(self.schedule_steps is None or self.schedule_steps > self.warmup_steps,
               f"optim.schedule_steps must be null or more than warmup_steps ({self.warmup_steps}), got {self.schedule_steps}")


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the trained weights (what export and samples use)."""

    decay: float = 0.999  # warmed up as min(decay, (1 + step) / (10 + step))

    def __post_init__(self):
        _check(0 <= self.decay < 1, f"ema.decay must be in [0, 1), got {self.decay}")


DEFAULT_LORA_TARGETS = ("*.attn1.to_q", "*.attn1.to_k", "*.attn1.to_v", "*.attn1.to_out.0",
                        "*.attn2.to_q", "*.attn2.to_k", "*.attn2.to_v", "*.attn2.to_out.0",
                        "*.ffn.net.0.proj", "*.ffn.net.2")


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on the DiT's linear layers; rank 0 trains every weight instead."""

    rank: int = 0
    alpha: float | None = None  # scale = alpha / rank; None = rank (scale 1)
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS  # fnmatch patterns over module names

    def __post_init__(self):
        _check(self.rank >= 0, f"lora.rank must be >= 0, got {self.rank}")
        _check(self.alpha is None or self.alpha > 0, f"lora.alpha must be > 0 or null, got {self.alpha}")
        _check(self.rank == 0 or len(self.targets) > 0, "lora.targets must name at least one module pattern")


PARALLEL_MODES = ("auto", "fsdp", "ddp", "none")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is spread over ranks; applied from outside the model (kinema.train.parallel)."""

    mode: str = "auto"  # auto = fsdp when world size > 1, none otherwise
    activation_checkpointing: bool = False
    precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU

    def __post_init__(self):
        _check(self.mode in PARALLEL_MODES, f"parallel.mode must be one of {PARALLEL_MODES}, got {self.mode!r}")
        _check(self.precision in PRECISIONS, f"parallel.precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1000  # steps between checkpoints (the last step always gets one)
    keep_last: int = 3

    def __post_init__(self):
        _check(self.every >= 1 and self.keep_last >= 1,
               f"checkpoint.every and checkpoint.keep_last must be >= 1, got {self.every}, {self.keep_last}")


@dataclass(frozen=True)
class LogConfig:
    every: int = 10  # steps per metrics line (metrics.jsonl is always written on rank 0)
    tensorboard: bool = True  # used when the tensorboard package is installed
    wandb_project: str | None = None  # used when set and wandb is installed
    progress: bool = True  # tqdm bar with ETA on rank 0

    def __post_init__(self):
        _check(self.every >= 1, f"log.every must be >= 1, got {self.every}")


@dataclass(frozen=True)
class SampleConfig:
    """Preview videos rendered with the EMA weights every ``every`` steps (0 = never)."""

    every: int = 1000
    prompts: tuple[str, ...] = ("a red ball bounces on a wooden floor", "a blue cube slides to the left")
    steps: int = 10
    guidance: float = 3.0
    # None = the model's sampling defaults; set, they must fit the model's patch grid as data.buckets do
    # (frames 4k+1, height and width multiples of 16 for the presets): checked when training starts.
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0

    def __post_init__(self):
        _check(self.every >= 0 and self.steps >= 1, f"sample.every must be >= 0 and sample.steps >= 1, got {self.every}, {self.steps}")
        for name in ("frames", "height", "width"):  # the model's patch grid is checked when training starts
            value = getattr(self, name)
            _check(value is None or value >= 1, f"sample.{name} must be >= 1 or null (the model's default), got {value}")


DISTILL_STATES = ("teacher", "noised")
DISTILL_SAMPLERS = ("euler", "heun")


@dataclass(frozen=True)
class DistillConfig:
    """Few-step distillation (``kinema.train.distill``): the trained DiT becomes a K-step student of a frozen teacher.

    A run with a ``[distill]`` section trains a student, initialised from ``init_from`` (else the teacher),
    to reproduce in ``steps`` Euler steps, without guidance, what the teacher's guided sampler reaches in
    ``steps * substeps``; the export is the teacher's model folder with the student beside it.
    """

    teacher: str | None = None  # model folder of the frozen teacher; None = init_from
    steps: int = 4  # K: the student's sampling steps
    substeps: int = 4  # M: teacher sub-steps per student step
    sampler: str = "heun"  # how the teacher solves each segment: "euler" | "heun" (2 forwards per sub-step)
    guidance: float | None = None  # CFG scale baked into the student; None = the teacher's sampling default
    negative_prompt: str | None = None  # the teacher's unconditional text; None = the teacher's sampling default
    shift: float | None = None  # time shift of the student's schedule; None = the teacher's sampling default
    states: str = "teacher"  # where segments start: "teacher" (its own trajectory from noise) | "noised" (real latents)
    # Start from init_from's few-step student (its student.safetensors), not its DiT: distil an exported
    # student further (its schedule and guidance must be this run's; its train_steps carry on).
    continue_student: bool = False
    # The teacher's segments of a batch train the student up to this many times: the teacher computes a fresh
    # batch every `reuse` calls, and each call between trains on one of the last `reuse` computed batches of its
    # shape, drawn at random (echoing, as data.echo does for a DiT: the teacher's 2 x steps x substeps forwards
    # are most of a step); a shape with none kept yet is computed. Not checkpointed: a resumed run starts fresh.
    reuse: int = 1

    def __post_init__(self):
        _check(isinstance(self.reuse, int) and 1 <= self.reuse <= 64,
               f"distill.reuse must be an integer in [1, 64], got {self.reuse!r}")
        _check(1 <= self.steps <= 64, f"distill.steps must be an integer in [1, 64], got {self.steps}")
        _check(1 <= self.substeps <= 256, f"distill.substeps must be an integer in [1, 256], got {self.substeps}")
        _check(self.sampler in DISTILL_SAMPLERS,
               f"distill.sampler must be one of {DISTILL_SAMPLERS} (one-step methods), got {self.sampler!r}")
        _check(self.guidance is None or 0 <= self.guidance <= 50,
               f"distill.guidance must be in [0, 50] or null, got {self.guidance}")
        _check(self.shift is None or 0 < self.shift <= 100, f"distill.shift must be in (0, 100] or null, got {self.shift}")
        _check(self.states in DISTILL_STATES, f"distill.states must be one of {DISTILL_STATES}, got {self.states!r}")
        _check(self.teacher is None or self.teacher.strip() != "", "distill.teacher must be a model folder or null, got ''")


MODELS = ("dit", "vae")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: str = "dit"  # which network learns: "dit" (flow matching) | "vae" (reconstruction)
    preset: str = "world-small"  # kinema.config preset the model is built from (when not init_from)
    model_config: dict[str, Any] = field(default_factory=dict)  # overrides of the preset, e.g. {dit: {num_layers: 4}}
    init_from: str | None = None  # kinema model folder or Wan diffusers folder: fine-tune its weights
    vae_from: str | None = None  # model folder whose VAE encodes clips (default: init_from's, else the preset's)
    out_dir: str = "runs/default"
    seed: int = 0
    max_steps: int = 1000  # optimizer steps; the LR schedule spans them
    stop_after: int | None = None  # end this process after this step (checkpointed); resume later
    stop_after_minutes: float | None = None  # ... or after this much wall time (a job's time limit); resume later
    device: str = "auto"  # auto = cuda when available
    max_nan_steps: int = 5  # non-finite losses in a row before training stops

    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    vae_loss: VAELossConfig = field(default_factory=VAELossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig | None = None  # set: distil the DiT into a few-step student of a frozen teacher

    def __post_init__(self):
        _check(self.model in MODELS, f"model must be one of {MODELS}, got {self.model!r}")
        _check(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")
        _check(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _check(self.stop_after is None or self.stop_after >= 1, f"stop_after must be >= 1 or null, got {self.stop_after}")
        _check(self.stop_after_minutes is None or self.stop_after_minutes > 0,
               f"stop_after_minutes must be > 0 or null, got {self.stop_after_minutes}")
        _check(self.max_nan_steps >= 1, f"max_nan_steps must be >= 1, got {self.max_nan_steps}")
        _check(not (self.model == "vae" and self.lora.rank), "lora applies to model: dit, not model: vae")
        _check(not (self.model == "vae" and self.data.kind == "latents"),
               "model: vae trains on pixels; data.kind 'latents' holds none (use 'world' or 'clips')")
        _check(self.model == "vae" or all(b.crop_scale == 1 for b in self.data.buckets),
               "data.buckets: crop_scale > 1 (crops, whose captions no longer hold) is for model: vae only")
        _check(self.vae_loss.object_weight == 1 or (self.model == "vae" and self.data.kind == "world"),
               f"vae_loss.object_weight={self.vae_loss.object_weight} needs model: vae and data.kind 'world' (only the "
               f"renderer knows where objects are); got model: {self.model!r}, data.kind {self.data.kind!r}")
        weighs_objects = self.model == "dit" and self.data.kind == "world" and self.distill is None
        _check(self.flow.object_weight == 1 or weighs_objects,
               f"flow.object_weight={self.flow.object_weight} needs model: dit, data.kind 'world' (only the renderer "
               f"knows where objects are) and no distill; got model: {self.model!r}, data.kind {self.data.kind!r}"
               + (", distill set" if self.distill is not None else ""))
        _check(self.data.world_scene_changes == 0 or (self.model == "vae" and self.data.kind == "world"),
               f"data.world_scene_changes={self.data.world_scene_changes} joins two scenes under one caption: it needs "
               f"model: vae and data.kind 'world'; got model: {self.model!r}, data.kind {self.data.kind!r}")
        _check(not (self.vae_loss.decoder_only and not (self.model == "vae" and self.init_from)),
               "vae_loss.decoder_only fine-tunes the decoder of a trained VAE: it needs model: vae and init_from")
        _check(not (self.init_from and self.model_config),
               "model_config overrides a preset; a model loaded with init_from keeps its own config")
        if self.distill is not None:
            _check(self.model == "dit", f"distill applies to model: dit, got model: {self.model!r}")
            _check(self.teacher is not None, "distill needs a teacher: set distill.teacher or init_from to a model folder")
            _check(not self.lora.rank, f"distill trains every weight of the student; lora.rank must be 0, got {self.lora.rank}")
            _check(not self.model_config, "distill: the student has its teacher's config; drop model_config")
            _check(not self.distill.continue_student or self.init_from,
                   "distill.continue_student starts from init_from's student: set init_from to a model folder with one")

    @property
    def init_source(self) -> str | None:
        """The model folder the trained network starts from: ``init_from``, else (distillation) the teacher."""
        return self.init_from or (self.distill.teacher if self.distill is not None else None)

    @property
    def teacher(self) -> str | None:
        """The frozen teacher of a distillation run: ``distill.teacher``, else ``init_from``; None otherwise."""
        if self.distill is None:
            return None
        return self.distill.teacher or self.init_from

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data (what checkpoints store)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ---------------------------------------------------------------------------------------------
# Loading: file -> dict -> overrides -> typed dataclasses (checked at every level)


def load_config(source: str | Path | dict | TrainConfig | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The ``TrainConfig`` from a recipe file (.yaml/.yml/.toml/.json), a dict or a config, plus overrides."""
    if isinstance(source, TrainConfig):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source))
    elif source is None:
        data = {}
    else:
        data = read_recipe(Path(source))
    for key, value in parse_overrides(overrides, TrainConfig):
        set_key(data, key, value)
    return from_dict(TrainConfig, data, "")
