"""The training loop: ``train(config, overrides, resume)`` for one process or any number under torchrun.

Read top-down: the entry point; the trainer's set-up (models, data, LoRA, parallelism, AdamW, EMA);
``run`` (resume, steps, logs, checkpoints, previews, export); one step (micro-batches -> per-sample
losses -> backward -> clip -> AdamW -> EMA, NaN steps skipped); then metrics and checkpoint state. Where
the micro-batches come from (loader, data echoing, encoding, the step's draws) is ``kinema.train.feed``.
Rank checks live in helpers (``print0``, ``write=d.is_main``), never in the loop's logic.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from tqdm.auto import tqdm

from kinema.common.io import atomic_write_text
from kinema.common.video import pixels_to_model
from kinema.train.buckets import SamplerState, bucket_grids, check_sample_size
from kinema.train.build import build_models, model_config
from kinema.train.checkpoint import check_resumable, latest_checkpoint, load_checkpoint, read_meta, save_checkpoint
from kinema.train.config import OptimConfig, TrainConfig, TrainError, load_config
from kinema.train.ema import EMA
from kinema.train.feed import Batch, Feed
from kinema.train.logging import MetricsLogger, print0
from kinema.train.lora import add_lora
from kinema.train.objective import flow_matching_losses, sample_seed, timestep_bins, vae_losses
from kinema.train.stopping import StopSignals
from kinema.train.parallel import (Dist, all_reduce_sum, autocast, barrier, clip_grad_norm, gradient_sync,
                                   init_distributed, parallelize, shutdown)
from kinema.train.throughput import measure_matmul_peak


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
    model_cfg = model_config(cfg)
    if cfg.model == "dit" and model_cfg.dit.in_channels != model_cfg.vae.z_dim:
        raise TrainError(f"{cfg.init_source or cfg.preset}: its DiT takes {model_cfg.dit.in_channels} input channels, "
                         f"not the VAE's {model_cfg.vae.z_dim} latent channels (a Wan 2.1 image-to-video model, whose "
                         f"image enters as extra channels): kinema train trains text-to-video DiTs; fine-tune a "
                         f"text-to-video model instead (its own conditioning also does image-to-video)")
    bucket_grids(cfg.data.buckets, model_cfg)  # sizes the model cannot take fail here, before any set-up
    if cfg.model == "dit" and cfg.sample.every:  # so do previews' (a VAE run previews a reconstruction of a clip)
        check_sample_size(cfg.sample, model_cfg)
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


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only.

    On a CPU or CUDA device it is PyTorch's fused AdamW: one vectorised kernel over all the parameters, where
    PyTorch's CPU default updates them one tensor at a time (a dim-384 / 8-layer DiT's 231 tensors: 35 ->
    11 ms a step on 2 cores, 2-3% of a training step; on CUDA it also replaces the default multi-tensor path).
    The same update to fp32 rounding."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    fused = bool(trainable) and all(p.device.type in FUSED_ADAMW_DEVICES for p in trainable)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             fused=fused or None)


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

        self.feed = Feed(cfg, d, self.model_cfg, self.models.vae, self.out, self.num_params)
        if cfg.model == "dit" and cfg.data.kind == "latents":
            self._check_cache(self.feed.dataset)

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

        self.step = 0
        self.nan_streak = self.nan_total = self.unloaded_streak = 0
        self.distiller = None  # few-step distillation: the frozen teacher and the student's schedule
        if cfg.distill is not None:
            from kinema.train.distill import Distiller

            self.distiller = Distiller(cfg, self.model_cfg, d.device, self.feed.prompt_text)
            self.feed.distill_flops = self.distiller.flops_factor

    # -- the run ------------------------------------------------------------------------------------

    def run(self, resume: bool) -> TrainResult:
        cfg, d = self.cfg, self.d
        latest = latest_checkpoint(self.ckpt_root) if resume else None
        if latest is not None:
            self._load(latest)
            print0(f"resumed from {latest} at step {self.step}")
        resumed_at = self.step
        if latest is not None:
            self._note_nothing_to_train()
        else:
            if resume:
                print0(f"--resume: no checkpoint in {self.ckpt_root} yet, starting from step 0")
            for source, reason in self.feed.dataset.skipped:  # recorded once, when the run starts
                self.feed.bad.record(0, source, reason, echo=False)
            skipped = self.feed.dataset.skipped
            if skipped:  # data the run will not see: said plainly, with the commonest reasons
                reasons = collections.Counter(reason for _, reason in skipped).most_common(3)
                print0(f"note: {len(skipped)} of {len(skipped) + len(self.feed.dataset)} samples fit no bucket and "
                       f"are left out ({'; '.join(f'{why}: {n}' for why, n in reasons)}"
                       f"{'; ...' if len(reasons) < len(set(r for _, r in skipped)) else ''}); all of them: "
                       f"{self.out / 'bad_samples.jsonl'}")
            missing = getattr(self.feed.dataset, "uncaptioned", [])
            if missing and cfg.model == "dit":
                print0(f"note: {len(missing)} of {len(self.feed.dataset)} clips have no caption (a .txt of the same "
                       f"name, e.g. {missing[0].with_suffix('.txt').name}, missing or empty): they train as the empty "
                       f"prompt")
        if d.is_main:
            atomic_write_text(self.out / "train_config.json", json.dumps(cfg.to_dict(), indent=1))

        peak = measure_matmul_peak(d.device, torch.bfloat16 if d.precision == "bf16" else torch.float32)
        self._describe(peak)
        logger = MetricsLogger(self.out, cfg.log.tensorboard, cfg.log.wandb_project, cfg.to_dict(), self.step, d.is_main)
        end = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
        deadline = None if cfg.stop_after_minutes is None else time.monotonic() + 60.0 * cfg.stop_after_minutes
        batches = self.feed.batches(self.feed.state)
        bar = tqdm(total=end, initial=self.step, disable=not (d.is_main and cfg.log.progress), desc="train",
                   dynamic_ncols=True)
        checkpoint, window = latest, Window()
        stop = StopSignals()
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
                stopped = self._agree(stop.received is not None)  # Ctrl-C / SIGTERM on any rank: all stop here
                if self.step % cfg.checkpoint.every == 0 or self.step == end or out_of_time or stopped:
                    checkpoint = self._save()
                if out_of_time or stopped:
                    why = f"stop_after_minutes={cfg.stop_after_minutes}" if out_of_time else stop.name
                    print0(f"{why}: stopped at step {self.step} (checkpointed; continue with --resume)")
                    break
                if cfg.sample.every and self.step % cfg.sample.every == 0:
                    self._previews()
        finally:
            stop.restore()
            batches.close()
            bar.close()
            logger.close()
        if stop.received is not None and self.step < end:  # the command exits as interrupted, its work saved
            raise KeyboardInterrupt if stop.received == signal.SIGINT else SystemExit(128 + stop.received)
        exported = None
        if self.step >= cfg.max_steps and checkpoint is not None and self.nan_total >= self.step:
            raise TrainError(f"not exported: every one of the run's {self.step} steps was skipped (non-finite loss, "
                             f"or no sample loaded: {self.out / 'bad_samples.jsonl'}), so its weights are the ones "
                             f"it started from")
        if self.step >= cfg.max_steps and checkpoint is not None:
            exported = self._export(checkpoint, again=self.step > resumed_at)
        return TrainResult(self.step, self.out, checkpoint, exported, logger.path)

    def _check_cache(self, cache) -> None:
        """A latent cache against this run's model: encoded by its VAE (else TrainError), at its frame rate (else
        a note: the motion would play at another speed)."""
        cfg, fps = self.cfg, self.model_cfg.sampling.fps
        if cfg.vae_from or cfg.init_source:
            cache.check_vae(self.model_cfg.vae, cfg.vae_from or cfg.init_source)
        encoded = cache.encoded_fps
        if encoded and abs(encoded - fps) > 1e-6:
            print0(f"note: {cfg.data.path} holds clips resampled to {encoded:g} fps; the model plays video at {fps} "
                   f"fps, so its videos will move at {fps / encoded:.2g}x their clips' speed (re-encode with `kinema "
                   f"data encode --fps {fps}` unless that is meant)")

    def _note_nothing_to_train(self) -> None:
        """After a resume: say so when the checkpoint is already at (or past) where this run would stop."""
        cfg, step = self.cfg, self.step
        if step >= cfg.max_steps:
            target = self.out / ("lora.safetensors" if cfg.lora.rank else "model")
            where = f"past max_steps {cfg.max_steps}" if step > cfg.max_steps else f"at max_steps {cfg.max_steps}"
            print0(f"--resume: the run is already at step {step}, {where}: nothing to train; its export is the "
                   f"step-{step} weights, in {target} (to train further, set max_steps above {step})")
        elif cfg.stop_after is not None and step >= cfg.stop_after:
            where = "past" if step > cfg.stop_after else "at"
            print0(f"--resume: the run is already at step {step}, {where} stop_after {cfg.stop_after}: nothing to "
                   f"train (set stop_after above {step}, or drop it, to continue to max_steps {cfg.max_steps})")

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
               f"{len(self.feed.dataset)} samples ({cfg.data.kind}), {len(self.feed.sampler)} steps/epoch, "
               f"{len(self.feed.dataset.skipped)} skipped{self._echo_note()} | matmul peak {peak / 1e9:.1f} GFLOP/s per rank | "
               f"out: {self.out}")
        if self.distiller is not None:
            dc, info = cfg.distill, self.distiller.info
            print0(f"distilling {cfg.teacher} into a {dc.steps}-step student: {dc.substeps} {dc.sampler} teacher "
                   f"sub-steps per step, guidance {info.guidance} baked in, shift {info.shift}, {dc.states} states"
                   + (f"; each batch's segments trained ~{dc.reuse}x" if dc.reuse > 1 else "")
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
            source, fresh = self.feed.source(step, micro, batches)
            batch = self.feed.with_draws(source, step)
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
        values["loader_wait_s"], self.feed.loader_wait_s = self.feed.loader_wait_s, 0.0  # the loader's part of data_s
        values["encode_s"], self.feed.encode_s = self.feed.encode_s, 0.0  # encoding's part; the rest: the step's draws
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        values["grad_norm"] = clip_grad_norm(self.params, cfg.optim.grad_clip)
        loss = values["loss_sum"] / values["weight"] if values["weight"] > 0 else float("nan")
        if math.isfinite(loss) and math.isfinite(values["grad_norm"]):
            self.optimizer.step()
            self.ema.update(step)
            self.nan_streak = 0
        else:
            self._skip(step, loss, values["grad_norm"], unloaded=values["weight"] == 0)
            values["skipped"] = 1.0
        if values.get("skipped"):  # a skipped step still counts: the schedule moves on without an update
            with warnings.catch_warnings():  # (only here: entering it resets which warnings were already shown)
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
                self.scheduler.step()
        else:
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

    def _skip(self, step: int, loss: float, grad_norm: float, unloaded: bool = False) -> None:
        """Drop a step whose loss or gradient is not finite, or none of whose samples loaded (``unloaded``);
        stop after ``max_nan_steps`` in a row."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        self.nan_streak += 1
        self.nan_total += 1
        self.unloaded_streak = self.unloaded_streak + 1 if unloaded else 0
        bad = self.out / "bad_samples.jsonl"
        what = f"no sample of its batch could be loaded (see {bad})" if unloaded else \
            f"loss {loss} / grad norm {grad_norm} is not finite"
        print0(f"step {step}: {what}; step skipped ({self.nan_streak} in a row, stopping at {cfg.max_nan_steps})")
        if self.nan_streak < cfg.max_nan_steps:
            return
        if self.unloaded_streak == self.nan_streak:
            raise TrainError(f"training stopped at step {step}: in {self.nan_streak} steps in a row no sample could "
                             f"be loaded; the reasons are in {bad}")
        raise TrainError(f"training stopped at step {step}: {self.nan_streak} steps in a row had a non-finite loss "
                         f"or gradient (max_nan_steps={cfg.max_nan_steps}). Lower optim.lr (now {cfg.optim.lr}), "
                         f"keep optim.grad_clip > 0, or check the data; "
                         + (f"the last good checkpoint is in {self.ckpt_root}" if latest_checkpoint(self.ckpt_root)
                            else "no checkpoint was written yet"))

    def _losses(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.cfg.model == "vae":
            g = torch.Generator(device=self.d.device).manual_seed(sample_seed(self.cfg.seed, step, self.d.rank))
            return vae_losses(self.train_model, batch.video, g, self.cfg.vae_loss, batch.object_mask,
                              self.model_cfg.vae.temporal_factor)
        if self.distiller is not None:
            return self.distiller.losses(self.train_model, batch.latents, batch.noise, batch.frame_mask,
                                         batch.text_tokens, batch.text_mask, batch.weights)
        mask = batch.text_mask if self.model_cfg.text.use_mask else None
        return flow_matching_losses(self.train_model, batch.latents, batch.noise, batch.t, batch.frame_mask,
                                    batch.text_tokens, mask, batch.token_weight), {}

    # -- metrics ------------------------------------------------------------------------------------

    def _metrics(self, window: Window, peak: float) -> dict[str, float]:
        s, cfg = window.sums, self.cfg
        out = {"loss": s["loss_sum"] / s["weight"] if s["weight"] > 0 else float("nan"),
               "lr": s["lr"] / window.steps, "grad_norm": s["grad_norm"] / window.steps,
               ("tokens_per_s" if cfg.model == "dit" else "pixels_per_s"): s["tokens"] / window.seconds,
               "samples_per_s": s["samples"] / window.seconds,
               "step_time_s": window.seconds / window.steps, "data_time_s": s["data_s"] / window.steps,
               "loader_wait_s": s["loader_wait_s"] / window.steps, "encode_s": s["encode_s"] / window.steps,
               "epoch": self.feed.state.epoch,
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
        meta = {"step": self.step, "data": self.feed.state.to_dict(), "world_size": self.d.world_size,
                "scheduler": self.scheduler.state_dict(), "nan_total": self.nan_total, "bad_samples": self.feed.bad.count,
                "config": self.cfg.to_dict(), "model_config": self.model_cfg.to_dict()}
        return save_checkpoint(self.ckpt_root, self.step, self._state_tensors(), meta, self.d.rank,
                               self.cfg.checkpoint.keep_last)

    def _load(self, path: Path) -> None:
        saved = read_meta(path)
        changed = check_resumable(path, saved, self.cfg)  # TrainError for another model; the settings that changed
        if changed:
            print0(f"--resume: {', '.join(changed)}; the learning-rate schedule continues from step {saved['step']} "
                   f"with these")
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]  # this config's
        tensors = self._state_tensors()
        meta = load_checkpoint(path, tensors, self.d.rank)
        set_model_state_dict(self.net, tensors["model"], options=self.state_options)
        set_optimizer_state_dict(self.net, self.optimizer, tensors["optim"], options=self.state_options)
        self.ema.load_state_dict(tensors["ema"])
        self.scheduler.load_state_dict(meta["scheduler"])
        # The moments and the step count come from the checkpoint; the hyperparameters and the schedule (its base
        # LR, its length) from this run's config, so `--resume --optim.lr X --max_steps N` does what it says.
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group, hyper in zip(self.optimizer.param_groups, fresh):
            group.update(hyper, lr=hyper["initial_lr"] * factor)
        self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.step, self.nan_total = meta["step"], meta.get("nan_total", 0)
        if meta["world_size"] == self.d.world_size:
            self.feed.state = SamplerState(**meta["data"])
        else:  # the global batch changed shape, so the position within the epoch means nothing now
            self.feed.state = SamplerState(meta["data"]["epoch"] + 1, 0)
            print0(f"checkpoint was written by {meta['world_size']} rank(s), this run has {self.d.world_size}: "
                   f"data continues at the start of epoch {self.feed.state.epoch}")

    def _previews(self) -> None:
        from kinema.train.preview import render_previews, render_reconstruction

        out_dir, d = self.out / "samples", self.d
        with self.ema.swapped(), autocast(d):
            if self.cfg.model == "vae":
                item = self.feed.dataset[0]
                if item.error is None:
                    render_reconstruction(self.net, pixels_to_model(item.video), self.model_cfg.sampling.fps, out_dir,
                                          self.step, d.is_main)
            elif self.distiller is not None:  # the student as generation runs it: K Euler steps, no guidance
                info = self.distiller.info
                render_previews(self.net, self.models.vae, self.feed.text_encoder,
                                self.model_cfg.replace(sampling=self.model_cfg.sampling.replace(shift=info.shift)),
                                dataclasses.replace(self.cfg.sample, steps=info.steps, guidance=1.0),
                                d.device, out_dir, self.step, d.is_main)
            else:
                render_previews(self.net, self.models.vae, self.feed.text_encoder, self.model_cfg, self.cfg.sample,
                                d.device, out_dir, self.step, d.is_main)
        barrier()

    def _export(self, checkpoint: Path, again: bool = True) -> Path | None:
        """The run's export of ``checkpoint``; ``again=False`` (nothing trained since the resume) keeps an export
        already there instead of writing it again."""
        from kinema.train.exporter import export

        target = self.out / ("lora.safetensors" if self.cfg.lora.rank else "model")
        if not again and target.exists():
            return target
        if self.d.is_main:
            export(checkpoint, target)
            print0(f"exported the EMA weights to {target}")
        barrier()
        return target

