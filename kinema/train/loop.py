"""The training loop: ``train(config, overrides, resume)`` for one process or any number under torchrun.

Read top-down: the entry point; the trainer's set-up (models, data, LoRA, parallelism, AdamW, EMA);
``run`` (resume, steps, logs, checkpoints, previews, export); one step (micro-batches -> per-sample
losses -> backward -> clip -> AdamW -> EMA, NaN steps skipped); then batches and checkpoint state.
Rank checks live in helpers (``print0``, ``write=d.is_main``), never in the loop's logic.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from tqdm.auto import tqdm

from kinema.common.io import atomic_write_text
from kinema.common.video import pixels_to_model
from kinema.train.buckets import BucketSampler, SamplerState, bucket_grids
from kinema.train.build import build_models, model_config
from kinema.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from kinema.train.config import OptimConfig, TrainConfig, TrainError, load_config
from kinema.train.data import Item, build_dataset
from kinema.train.ema import EMA
from kinema.train.logging import BadSampleLog, MetricsLogger, print0
from kinema.train.lora import add_lora
from kinema.train.objective import (draw, flow_matching_losses, latent_object_weight, sample_seed, timestep_bins,
                                    vae_losses)
from kinema.train.parallel import (Dist, all_reduce_sum, autocast, barrier, clip_grad_norm, gradient_sync,
                                   init_distributed, parallelize, shutdown)
from kinema.train.throughput import dit_tokens, dit_train_flops, measure_matmul_peak


@dataclass
class TrainResult:
    """Where a run ended: its last step, checkpoint, exported model (if it reached max_steps) and metrics file."""

    step: int
    out_dir: Path
    checkpoint: Path | None
    exported: Path | None
    metrics: Path


def train(config: str | Path | dict | TrainConfig | None = None, overrides: list[str] | tuple[str, ...] = (),
          resume: bool = False) -> TrainResult:
    """Run a training recipe (file, dict or TrainConfig) with ``--key value`` overrides; ``resume`` continues OUT."""
    cfg = load_config(config, overrides)
    bucket_grids(cfg.data.buckets, model_config(cfg))  # sizes the model cannot take fail here, before any set-up
    latest = latest_checkpoint(Path(cfg.out_dir) / "checkpoints")
    if latest is not None and not resume:  # refuse before any set-up cost
        raise TrainError(f"{cfg.out_dir} already holds checkpoints (latest: {latest.name}); pass --resume to continue "
                         "that run, or set out_dir to a new folder")
    d = init_distributed(cfg.device, cfg.parallel)
    try:
        return Trainer(cfg, d).run(resume)
    finally:
        shutdown(d)


def lr_factor(cfg: OptimConfig, max_steps: int, i: int) -> float:
    """LR multiplier for the (i+1)-th optimizer step: linear warmup, then cosine to ``min_lr_ratio`` (or flat)."""
    if i < cfg.warmup_steps:
        return (i + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (i - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


@dataclass
class Batch:
    """One micro-batch on the device; ``weights`` is 0 where a bad sample was replaced by a stand-in."""

    weights: torch.Tensor  # (B,)
    tokens: int  # latent tokens (DiT) or pixels (VAE) of the real samples
    flops: float = 0.0
    video: torch.Tensor | None = None  # (B, 3, F, H, W)  VAE runs
    object_mask: torch.Tensor | None = None  # (B, 1, F, H, W) bool  VAE runs with vae_loss.object_weight
    latents: torch.Tensor | None = None  # (B, C, F, H, W)  DiT runs, then:
    noise: torch.Tensor | None = None
    t: torch.Tensor | None = None  # (B,)
    frame_mask: torch.Tensor | None = None  # (B, F) bool
    text_tokens: torch.Tensor | None = None  # (B, L, D)
    text_mask: torch.Tensor | None = None  # (B, L) bool
    token_weight: torch.Tensor | None = None  # (B, 1, F, H, W)  DiT runs with flow.object_weight


@dataclass
class Source:
    """A loaded micro-batch on the device, before the step's random draws (what data echoing keeps)."""

    items: list[Item]  # pixels / latents dropped: captions or text tokens, indices, grids
    weights: torch.Tensor  # (B,) 0 where a bad sample was replaced by a stand-in
    good: int  # real samples; the rest of ``items`` are stand-ins for bad ones
    video: torch.Tensor | None = None  # VAE runs
    object_mask: torch.Tensor | None = None
    latents: torch.Tensor | None = None  # DiT runs
    token_weight: torch.Tensor | None = None
    text: tuple[torch.Tensor, torch.Tensor] | None = None  # DiT runs on pixels: the captions, encoded once


@dataclass
class Window:
    """Sums over the steps since the last metrics line (already summed over ranks)."""

    steps: int = 0
    seconds: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, seconds: float, values: dict[str, float]) -> None:
        self.steps += 1
        self.seconds += seconds
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v


class Trainer:
    """One run: set up once, then ``run``."""

    def __init__(self, cfg: TrainConfig, d: Dist):
        self.cfg, self.d = cfg, d
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        torch.manual_seed(cfg.seed)  # fresh weights are identical on every rank
        needs_vae = cfg.model == "dit" and (cfg.data.kind != "latents" or cfg.sample.every > 0)
        self.models = build_models(cfg, d.device, needs_vae)
        if self.models.random_vae:
            print0("note: no vae_from / init_from, so clips are encoded (and samples decoded) by a randomly "
                   "initialised VAE; train one with `model: vae` and pass its exported folder as vae_from")
        self.model_cfg = self.models.model_cfg
        self.net = self.models.network
        self.num_params = sum(p.numel() for p in self.net.parameters())

        object_weight = cfg.vae_loss.object_weight if cfg.model == "vae" else cfg.flow.object_weight
        self.dataset = build_dataset(cfg.data, self.model_cfg, cfg.seed, captioned=cfg.model == "dit",
                                     object_masks=object_weight != 1)
        self.bad = BadSampleLog(self.out, d.rank, d.world_size)
        self.buckets = bucket_grids(cfg.data.buckets, self.model_cfg)
        self.sampler = BucketSampler(self.dataset.keys, {g: b.batch_size for g, b in self.buckets.items()},
                                     cfg.seed, d.rank, d.world_size)

        if cfg.lora.rank:
            self.net.requires_grad_(False)
            add_lora(self.net, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets,
                     generator=torch.Generator().manual_seed(cfg.seed))
            self.net.to(d.device)
        # LoRA checkpoints hold the adapters only; the frozen base comes back from init_from
        self.state_options = StateDictOptions(ignore_frozen_params=bool(cfg.lora.rank), strict=not cfg.lora.rank)
        self.train_model = parallelize(self.net, self.models.blocks, d, cfg.parallel.activation_checkpointing,
                                       forward_methods=("encode", "decode") if cfg.model == "vae" else ())
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = adamw(self.net, cfg.optim)
        horizon = cfg.optim.schedule_steps or cfg.max_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(lr_factor, cfg.optim, horizon))
        self.ema = EMA(self.net, cfg.ema.decay)

        self.step, self.data_state = 0, SamplerState()
        self.echo_buffer: collections.deque[Source] = collections.deque(maxlen=cfg.data.echo_buffer)
        self.micro_count = 0  # micro-batches since this process started (data echoing's load rhythm)
        self.loader_wait_s = 0.0  # seconds waiting on the data loader since the last optimizer step
        self.encode_s = 0.0  # seconds putting loaded batches on the device (VAE, text encoder) since then
        self.nan_streak = self.nan_total = 0
        self._text_encoder = self._null_text = self._null_encoded = None
        self.noise_generator = torch.Generator(device=d.device)  # reseeded per sample by draw()
        self.distiller = None  # few-step distillation: the frozen teacher and the student's schedule
        if cfg.distill is not None:
            from kinema.train.distill import Distiller

            self.distiller = Distiller(cfg, self.model_cfg, d.device, self._prompt_text)

    # -- the run ------------------------------------------------------------------------------------

    def run(self, resume: bool) -> TrainResult:
        cfg, d = self.cfg, self.d
        latest = latest_checkpoint(self.ckpt_root) if resume else None
        if latest is not None:
            self._load(latest)
            print0(f"resumed from {latest} at step {self.step}")
        else:
            if resume:
                print0(f"--resume: no checkpoint in {self.ckpt_root} yet, starting from step 0")
            for source, reason in self.dataset.skipped:  # recorded once, when the run starts
                self.bad.record(0, source, reason, echo=False)
        if d.is_main:
            atomic_write_text(self.out / "train_config.json", json.dumps(cfg.to_dict(), indent=1))

        peak = measure_matmul_peak(d.device, torch.bfloat16 if d.precision == "bf16" else torch.float32)
        self._describe(peak)
        logger = MetricsLogger(self.out, cfg.log.tensorboard, cfg.log.wandb_project, cfg.to_dict(), self.step, d.is_main)
        end = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
        deadline = None if cfg.stop_after_minutes is None else time.monotonic() + 60.0 * cfg.stop_after_minutes
        batches = self._batches(self.data_state)
        bar = tqdm(total=end, initial=self.step, disable=not (d.is_main and cfg.log.progress), desc="train",
                   dynamic_ncols=True)
        checkpoint, window = latest, Window()
        try:
            while self.step < end:
                started = time.perf_counter()
                values = self._train_step(self.step + 1, batches)
                self.step += 1
                window.add(time.perf_counter() - started, values)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss_sum'] / max(values['weight'], 1e-12):.4f}")
                if self.step % cfg.log.every == 0 or self.step == end:
                    logger.log(self.step, self._metrics(window, peak))
                    window = Window()
                out_of_time = deadline is not None and self._agree(time.monotonic() >= deadline)
                if self.step % cfg.checkpoint.every == 0 or self.step == end or out_of_time:
                    checkpoint = self._save()
                if out_of_time:
                    print0(f"stop_after_minutes={cfg.stop_after_minutes}: stopped at step {self.step} "
                           f"(checkpointed; continue with --resume)")
                    break
                if cfg.sample.every and self.step % cfg.sample.every == 0:
                    self._previews()
        finally:
            batches.close()
            bar.close()
            logger.close()
        exported = None
        if self.step >= cfg.max_steps and checkpoint is not None:
            exported = self._export(checkpoint)
        return TrainResult(self.step, self.out, checkpoint, exported, logger.path)

    def _agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (clocks differ: all ranks must stop at the same step)."""
        if self.d.world_size == 1:
            return flag
        return bool(all_reduce_sum(torch.tensor([float(flag)], device=self.d.device)).item() > 0)

    def _describe(self, peak: float) -> None:
        cfg, d = self.cfg, self.d
        trainable = sum(p.numel() for p in self.params)  # DTensor.numel() is the global size
        print0(f"kinema train: {cfg.model} of {self.model_cfg.name} ({self.num_params / 1e6:.2f}M params, "
               f"{trainable / 1e6:.3g}M trained{', LoRA rank ' + str(cfg.lora.rank) if cfg.lora.rank else ''}) | "
               f"{d.world_size} rank(s), {d.mode}, {d.precision} on {d.device.type} | "
               f"{len(self.dataset)} samples ({cfg.data.kind}), {len(self.sampler)} steps/epoch, "
               f"{len(self.dataset.skipped)} skipped{self._echo_note()} | matmul peak {peak / 1e9:.1f} GFLOP/s per rank | "
               f"out: {self.out}")
        if self.distiller is not None:
            dc, info = cfg.distill, self.distiller.info
            print0(f"distilling {cfg.teacher} into a {dc.steps}-step student: {dc.substeps} {dc.sampler} teacher "
                   f"sub-steps per step, guidance {info.guidance} baked in, shift {info.shift}, {dc.states} states"
                   + (f"; continuing the student of {cfg.init_from}" if dc.continue_student else ""))

    def _echo_note(self) -> str:
        data = self.cfg.data
        return f", each batch echoed ~{data.echo}x (buffer {data.echo_buffer})" if data.echo > 1 else ""

    # -- one step -----------------------------------------------------------------------------------

    def _train_step(self, step: int, batches) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns its metrics, summed over ranks."""
        cfg, d = self.cfg, self.d
        accum, bins = cfg.optim.grad_accum, cfg.flow.loss_bins
        self.optimizer.zero_grad(set_to_none=True)
        # [weighted loss, weight, tokens, samples, flops, bad samples, loss per t-bin..., weight per t-bin...]
        local = torch.zeros(6 + 2 * bins, dtype=torch.float64)
        parts_sum: dict[str, torch.Tensor] = {}
        data_s = 0.0
        for micro in range(accum):
            started = time.perf_counter()
            source, fresh = self._source(step, micro, batches)
            batch = self._with_draws(source, step)
            if fresh and d.device.type == "cuda":  # count the device's share of loading (VAE, text encoder)
                torch.cuda.synchronize(d.device)
            data_s += time.perf_counter() - started
            items = source.items
            with gradient_sync(self.train_model, micro == accum - 1):
                with autocast(d):
                    losses, parts = self._losses(batch, step)  # (B,) per sample
                weighted = losses * batch.weights
                (weighted.sum() / (len(items) * accum)).backward()
            weighted, w = weighted.detach().double().cpu(), batch.weights.double().cpu()
            local[:6] += torch.tensor([weighted.sum(), w.sum(), batch.tokens, w.sum(), batch.flops,
                                       len(items) - source.good if fresh else 0], dtype=torch.float64)
            if batch.t is not None:
                which = timestep_bins(batch.t.cpu(), bins)
                local[6:6 + bins].index_add_(0, which, weighted)
                local[6 + bins:].index_add_(0, which, w)
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + (v.double().cpu() * w).sum()
        values = self._reduce(local, parts_sum)
        values["data_s"] = data_s  # this rank's
        values["loader_wait_s"], self.loader_wait_s = self.loader_wait_s, 0.0  # the loader's part of data_s
        values["encode_s"], self.encode_s = self.encode_s, 0.0  # encoding's part; the rest: the step's draws
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["grad_norm"] = clip_grad_norm(self.params, cfg.optim.grad_clip)
        loss = values["loss_sum"] / values["weight"] if values["weight"] > 0 else float("nan")
        if math.isfinite(loss) and math.isfinite(values["grad_norm"]):
            self.optimizer.step()
            self.ema.update(step)
            self.nan_streak = 0
        else:
            self._skip(step, loss, values["grad_norm"])
            values["skipped"] = 1.0
        self.scheduler.step()
        return values

    def _reduce(self, local: torch.Tensor, parts_sum: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sum the step's counters over ranks and name them."""
        bins = self.cfg.flow.loss_bins
        totals = all_reduce_sum(torch.cat([local, torch.stack(list(parts_sum.values())) if parts_sum else local[:0]])
                                .to(self.d.device)).cpu().tolist()
        values = dict(zip(["loss_sum", "weight", "tokens", "samples", "flops", "bad"], totals[:6]))
        for i in range(bins):
            values[f"bin_loss_{i}"], values[f"bin_weight_{i}"] = totals[6 + i], totals[6 + bins + i]
        values.update({f"part_{k}": v for k, v in zip(parts_sum, totals[6 + 2 * bins:])})
        return values

    def _skip(self, step: int, loss: float, grad_norm: float) -> None:
        """Drop a step whose loss or gradient is not finite; stop after ``max_nan_steps`` in a row."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        self.nan_streak += 1
        self.nan_total += 1
        print0(f"step {step}: loss {loss} / grad norm {grad_norm} is not finite; step skipped "
               f"({self.nan_streak} in a row, stopping at {cfg.max_nan_steps})")
        if self.nan_streak >= cfg.max_nan_steps:
            raise TrainError(f"training stopped at step {step}: {self.nan_streak} steps in a row had a non-finite loss "
                             f"or gradient (max_nan_steps={cfg.max_nan_steps}). Lower optim.lr (now {cfg.optim.lr}), "
                             f"keep optim.grad_clip > 0, or check the data; the last good checkpoint is in "
                             f"{self.ckpt_root}")

    def _losses(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cfg.model == "vae":
            g = torch.Generator(device=self.d.device).manual_seed(sample_seed(self.cfg.seed, step, self.d.rank))
            return vae_losses(self.train_model, batch.video, g, self.cfg.vae_loss, batch.object_mask,
                              self.model_cfg.vae.temporal_factor)
        if self.distiller is not None:
            return self.distiller.losses(self.train_model, batch.latents, batch.noise, batch.frame_mask,
                                         batch.text_tokens, batch.text_mask)
        mask = batch.text_mask if self.model_cfg.text.use_mask else None
        return flow_matching_losses(self.train_model, batch.latents, batch.noise, batch.t, batch.frame_mask,
                                    batch.text_tokens, mask, batch.token_weight), {}

    # -- batches ------------------------------------------------------------------------------------

    def _batches(self, state: SamplerState):
        """Endless (data position after the batch, this rank's items), from ``state`` on, epoch after epoch."""
        epoch, position = state.epoch, state.position
        while True:
            remaining = self.sampler.rank_batches(epoch)[position:]
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=remaining, collate_fn=list,
                                                 num_workers=self.cfg.data.num_workers)
            for i, items in enumerate(loader):
                yield SamplerState(epoch, position + i + 1), items
            epoch, position = epoch + 1, 0

    def _source(self, step: int, micro: int, batches) -> tuple[Source, bool]:
        """The micro-batch's loaded data and whether it was just loaded: a new batch from the loader, or (data
        echoing, ``data.echo`` > 1) between loads a random one of the last ``data.echo_buffer`` loaded."""
        echo = self.cfg.data.echo
        replay = echo > 1 and self.echo_buffer and self.micro_count % echo != 0
        self.micro_count += 1
        if replay:
            pick = torch.Generator().manual_seed(sample_seed(self.cfg.seed, step * self.cfg.optim.grad_accum + micro,
                                                             self.d.rank))
            return self.echo_buffer[int(torch.randint(len(self.echo_buffer), (1,), generator=pick))], False
        started = time.perf_counter()
        self.data_state, items = next(batches)
        loaded = time.perf_counter()
        self.loader_wait_s += loaded - started  # the workers' share: rendering, decoding, collation
        source = self._load_batch(items, step)
        if self.d.device.type == "cuda":  # the device's share of encoding
            torch.cuda.synchronize(self.d.device)
        self.encode_s += time.perf_counter() - loaded
        if echo > 1:
            self.echo_buffer.append(source)
        return source, True

    def _load_batch(self, items: list[Item], step: int) -> Source:
        """A loaded micro-batch on the device: bad samples recorded and stood in for (weight 0), pixels encoded."""
        d = self.d
        for it in items:
            if it.error is not None:
                self.bad.record(step, it.source, it.error)
        good = [it for it in items if it.error is None]
        stand_in = good[0] if good else self._placeholder(items[0])
        weights = torch.tensor([float(it.error is None) for it in items], device=d.device)
        items = [it if it.error is None else stand_in for it in items]
        masks = None
        if any(it.object_mask is not None for it in items):  # a stand-in without one weighs nothing anyway
            masks = torch.stack([it.object_mask if it.object_mask is not None else
                                 torch.zeros(1, *it.video.shape[1:], dtype=torch.bool) for it in items]).to(d.device)
        if self.cfg.model == "vae":
            video = pixels_to_model(torch.stack([it.video for it in items]).to(d.device))
            items = [dataclasses.replace(it, video=None, object_mask=None) for it in items]  # on the device now
            return Source(items, weights, len(good), video=video, object_mask=masks)
        mc = self.model_cfg
        text = None
        if self.dataset.pixels:
            video = pixels_to_model(torch.stack([it.video for it in items]).to(d.device))
            with torch.no_grad(), autocast(d):
                latents = self.models.vae.encode(video).float()
            items = [dataclasses.replace(it, video=None, object_mask=None) for it in items]  # kept: captions
            tokens, mask = self.text_encoder.encode([it.caption or "" for it in items])  # once, however
            text = tokens.to(d.device), mask.to(d.device)  # often data echoing replays the batch
        else:
            latents = torch.stack([it.latents for it in items]).to(d.device)
            items = [dataclasses.replace(it, latents=None) for it in items]  # kept: text tokens
        return Source(items, weights, len(good), latents=latents, text=text,
                      token_weight=None if masks is None else latent_object_weight(
                          masks, self.cfg.flow.object_weight, mc.vae.temporal_factor, mc.vae.spatial_factor))

    def _with_draws(self, source: Source, step: int) -> Batch:
        """The step's tensors for a loaded micro-batch: noise, time, conditioning and caption dropout drawn
        for this step (so an echoed batch is a new problem each time); dropped captions as the empty prompt."""
        d, mc, items = self.d, self.model_cfg, source.items
        if self.cfg.model == "vae":
            return Batch(source.weights, tokens=source.good * source.video[0].numel() // 3, video=source.video,
                         object_mask=source.object_mask)
        draws = [draw(self.cfg.flow, self.cfg.seed, step, it.index, (mc.vae.z_dim, *it.key), self.noise_generator)
                 for it in items]
        if source.text is not None:  # dropped captions become the empty prompt's encoding
            drop = torch.tensor([dr.drop_text for dr in draws], device=d.device)
            null_tokens, null_mask = self.null_encoded
            text_tokens = torch.where(drop[:, None, None], null_tokens, source.text[0])
            text_mask = torch.where(drop[:, None], null_mask, source.text[1])
        else:
            text_tokens, text_mask = _pad_text([self.null_text if dr.drop_text else (it.text_tokens, it.text_mask)
                                                for it, dr in zip(items, draws)])
        per_sample = dit_tokens(mc.dit, items[0].key)
        flops = source.good * dit_train_flops(mc.dit, self.num_params, per_sample, text_tokens.shape[1])
        if self.distiller is not None:  # the teacher's forwards and the student's K passes; no training time t
            flops *= self.distiller.flops_factor
        return Batch(source.weights, tokens=source.good * per_sample, flops=flops, latents=source.latents,
                     noise=torch.stack([dr.noise for dr in draws]),  # drawn on the device
                     t=None if self.distiller is not None else torch.tensor([dr.t for dr in draws], device=d.device),
                     frame_mask=torch.stack([dr.frame_mask for dr in draws]).to(d.device),
                     text_tokens=text_tokens.to(d.device), text_mask=text_mask.to(d.device),
                     token_weight=source.token_weight)

    def _placeholder(self, item: Item) -> Item:
        """A zero sample of ``item``'s grid, so a rank whose whole batch was bad still joins the collectives."""
        bucket = self.buckets[item.key]
        if self.dataset.pixels:
            return Item(item.index, item.key, "placeholder",
                        video=torch.zeros(3, bucket.frames, bucket.height, bucket.width, dtype=torch.uint8),
                        caption="")
        tokens, mask = self.null_text
        return Item(item.index, item.key, "placeholder", latents=torch.zeros(self.model_cfg.vae.z_dim, *item.key),
                    text_tokens=tokens, text_mask=mask)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from kinema.text import build_text_encoder

            self._text_encoder = build_text_encoder(self.model_cfg.text, device=self.d.device)
        return self._text_encoder

    @property
    def null_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (L, D), mask (L,)) of the empty prompt: from the latent cache, else the text encoder."""
        if self._null_text is None:
            stored = self.dataset.null_text() if hasattr(self.dataset, "null_text") else None
            if stored is None:
                tokens, mask = self.text_encoder.null(1)
                stored = tokens[0].cpu(), mask[0].cpu()
            self._null_text = stored
        return self._null_text

    @property
    def null_encoded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``null_text`` as a batch of one on the device (kept: swapped in for dropped captions every step)."""
        if self._null_encoded is None:
            self._null_encoded = tuple(x[None].to(self.d.device) for x in self.null_text)
        return self._null_encoded

    def _prompt_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (L, D), mask (L,)) of one prompt; "" is the null text (the latent cache's, when it has one)."""
        if prompt == "":
            return self.null_text
        tokens, mask = self.text_encoder.null(1, prompt)
        return tokens[0].cpu(), mask[0].cpu()

    # -- metrics ------------------------------------------------------------------------------------

    def _metrics(self, window: Window, peak: float) -> dict[str, float]:
        s, cfg = window.sums, self.cfg
        out = {"loss": s["loss_sum"] / s["weight"] if s["weight"] > 0 else float("nan"),
               "lr": s["lr"] / window.steps, "grad_norm": s["grad_norm"] / window.steps,
               ("tokens_per_s" if cfg.model == "dit" else "pixels_per_s"): s["tokens"] / window.seconds,
               "samples_per_s": s["samples"] / window.seconds,
               "step_time_s": window.seconds / window.steps, "data_time_s": s["data_s"] / window.steps,
               "loader_wait_s": s["loader_wait_s"] / window.steps, "encode_s": s["encode_s"] / window.steps,
               "epoch": self.data_state.epoch,
               "bad_samples": s["bad"], "skipped_steps": s.get("skipped", 0.0)}
        if cfg.model == "dit":
            out["mfu"] = s["flops"] / window.seconds / (peak * self.d.world_size)
            edges = [i / cfg.flow.loss_bins for i in range(cfg.flow.loss_bins + 1)]
            for i in range(cfg.flow.loss_bins):
                if s[f"bin_weight_{i}"] > 0:
                    out[f"loss_t/{edges[i]:.2f}-{edges[i + 1]:.2f}"] = s[f"bin_loss_{i}"] / s[f"bin_weight_{i}"]
        for k in s:
            if k.startswith("part_") and s["weight"] > 0:
                out[k[5:]] = s[k] / s["weight"]
        return out

    # -- checkpoints, previews, export ----------------------------------------------------------------

    def _state_tensors(self) -> dict:
        return {"model": get_model_state_dict(self.net, options=self.state_options),
                "optim": get_optimizer_state_dict(self.net, self.optimizer, options=self.state_options),
                "ema": self.ema.state_dict()}

    def _save(self) -> Path:
        meta = {"step": self.step, "data": self.data_state.to_dict(), "world_size": self.d.world_size,
                "scheduler": self.scheduler.state_dict(), "nan_total": self.nan_total, "bad_samples": self.bad.count,
                "config": self.cfg.to_dict(), "model_config": self.model_cfg.to_dict()}
        return save_checkpoint(self.ckpt_root, self.step, self._state_tensors(), meta, self.d.rank,
                               self.cfg.checkpoint.keep_last)

    def _load(self, path: Path) -> None:
        tensors = self._state_tensors()
        meta = load_checkpoint(path, tensors, self.d.rank)
        set_model_state_dict(self.net, tensors["model"], options=self.state_options)
        set_optimizer_state_dict(self.net, self.optimizer, tensors["optim"], options=self.state_options)
        self.ema.load_state_dict(tensors["ema"])
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step, self.nan_total = meta["step"], meta.get("nan_total", 0)
        if meta["world_size"] == self.d.world_size:
            self.data_state = SamplerState(**meta["data"])
        else:  # the global batch changed shape, so the position within the epoch means nothing now
            self.data_state = SamplerState(meta["data"]["epoch"] + 1, 0)
            print0(f"checkpoint was written by {meta['world_size']} rank(s), this run has {self.d.world_size}: "
                   f"data continues at the start of epoch {self.data_state.epoch}")

    def _previews(self) -> None:
        from kinema.train.preview import render_previews, render_reconstruction

        out_dir, d = self.out / "samples", self.d
        with self.ema.swapped(), autocast(d):
            if self.cfg.model == "vae":
                item = self.dataset[0]
                if item.error is None:
                    render_reconstruction(self.net, pixels_to_model(item.video), self.model_cfg.sampling.fps, out_dir,
                                          self.step, d.is_main)
            elif self.distiller is not None:  # the student as generation runs it: K Euler steps, no guidance
                info = self.distiller.info
                render_previews(self.net, self.models.vae, self.text_encoder,
                                self.model_cfg.replace(sampling=self.model_cfg.sampling.replace(shift=info.shift)),
                                dataclasses.replace(self.cfg.sample, steps=info.steps, guidance=1.0),
                                d.device, out_dir, self.step, d.is_main)
            else:
                render_previews(self.net, self.models.vae, self.text_encoder, self.model_cfg, self.cfg.sample,
                                d.device, out_dir, self.step, d.is_main)
        barrier()

    def _export(self, checkpoint: Path) -> Path | None:
        from kinema.train.exporter import export

        target = self.out / ("lora.safetensors" if self.cfg.lora.rank else "model")
        if self.d.is_main:
            export(checkpoint, target)
            print0(f"exported the EMA weights to {target}")
        barrier()
        return target


def _pad_text(texts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (tokens (L_i, D), mask (L_i,)) pairs, zero-padding to the longest: (B, L, D), (B, L)."""
    length = max(t.shape[0] for t, _ in texts)
    tokens = torch.zeros(len(texts), length, texts[0][0].shape[1])
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for i, (t, m) in enumerate(texts):
        tokens[i, :t.shape[0]] = t
        mask[i, :m.shape[0]] = m
    return tokens, mask
