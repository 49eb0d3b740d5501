"""Where a training run's micro-batches come from: ``Feed``.

Read top-down: the dataset and its bucket sampler, walked epoch after epoch from a saved position; a
micro-batch's source (a new batch from the loader or, with data echoing, a recent one again); loading it on
the device (bad samples recorded and stood in for, pixels and captions encoded once); then the step's own
random draws on it (noise, time, conditioning, caption dropout), so an echoed batch is a new problem each
time. The loop (``kinema.train.loop``) only asks for ``source`` and ``with_draws``.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kinema.common.video import pixels_to_model
from kinema.config import ModelConfig
from kinema.train.buckets import BucketSampler, SamplerState, bucket_grids
from kinema.train.config import TrainConfig
from kinema.train.data import Item, build_dataset
from kinema.train.logging import BadSampleLog
from kinema.train.objective import draw, latent_object_weight, sample_seed
from kinema.train.parallel import Dist, autocast
from kinema.train.throughput import dit_tokens, dit_train_flops


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


def _leave_signals_to_the_trainer(worker_id: int) -> None:
    """A loader worker ignores Ctrl-C and SIGTERM (sent to the whole process group): the trainer checkpoints
    first, then shuts its workers down (a worker dying first would fail the batch it was loading)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Feed:
    """A run's data: the dataset, its bucket sampler and position (``state``, checkpointed), data echoing,
    bad samples, the text encoder and the empty prompt. ``vae`` encodes pixels for a DiT run (None for a VAE
    run, or a DiT run on pre-encoded latents)."""

    def __init__(self, cfg: TrainConfig, d: Dist, model_cfg: ModelConfig, vae: torch.nn.Module | None, out: Path,
                 num_params: int):
        self.cfg, self.d, self.model_cfg, self.vae, self.num_params = cfg, d, model_cfg, vae, num_params
        object_weight = cfg.vae_loss.object_weight if cfg.model == "vae" else cfg.flow.object_weight
        self.dataset = build_dataset(cfg.data, model_cfg, cfg.seed, captioned=cfg.model == "dit",
                                     object_masks=object_weight != 1)
        self.bad = BadSampleLog(out, d.rank, d.world_size)
        self.buckets = bucket_grids(cfg.data.buckets, model_cfg)
        self.sampler = BucketSampler(self.dataset.keys, {g: b.batch_size for g, b in self.buckets.items()},
                                     cfg.seed, d.rank, d.world_size)
        self.state = SamplerState()  # the data position after the last loaded batch
        self.echo_buffer: collections.deque[Source] = collections.deque(maxlen=cfg.data.echo_buffer)
        self.micro_count = 0  # micro-batches since this process started (data echoing's load rhythm)
        self.loader_wait_s = 0.0  # seconds waiting on the data loader since the last optimizer step
        self.encode_s = 0.0  # seconds putting loaded batches on the device (VAE, text encoder) since then
        self.distill_flops: float | None = None  # distilling: the step's FLOPs per training FLOPs; no time drawn
        self.noise_generator = torch.Generator(device=d.device)  # reseeded per sample by draw()
        self._text_encoder = self._null_text = self._null_encoded = None

    def batches(self, state: SamplerState):
        """Endless (data position after the batch, this rank's items), from ``state`` on, epoch after epoch."""
        epoch, position = state.epoch, state.position
        while True:
            remaining = self.sampler.rank_batches(epoch)[position:]
            loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=remaining, collate_fn=list,
                                                 num_workers=self.cfg.data.num_workers,
                                                 worker_init_fn=_leave_signals_to_the_trainer)
            for i, items in enumerate(loader):
                yield SamplerState(epoch, position + i + 1), items
            epoch, position = epoch + 1, 0

    def source(self, step: int, micro: int, batches) -> tuple[Source, bool]:
        """The micro-batch's loaded data and whether it was just loaded: a new batch from ``batches`` or (data
        echoing, ``data.echo`` > 1) between loads a random one of the last ``data.echo_buffer`` loaded."""
        echo = self.cfg.data.echo
        replay = echo > 1 and self.echo_buffer and self.micro_count % echo != 0
        self.micro_count += 1
        if replay:
            pick = torch.Generator().manual_seed(sample_seed(self.cfg.seed, step * self.cfg.optim.grad_accum + micro,
                                                             self.d.rank))
            return self.echo_buffer[int(torch.randint(len(self.echo_buffer), (1,), generator=pick))], False
        started = time.perf_counter()
        self.state, items = next(batches)
        loaded = time.perf_counter()
        self.loader_wait_s += loaded - started  # the workers' share: rendering, decoding, collation
        source = self.load(items, step)
        if self.d.device.type == "cuda":  # the device's share of encoding
            torch.cuda.synchronize(self.d.device)
        self.encode_s += time.perf_counter() - loaded
        if echo > 1:
            self.echo_buffer.append(source)
        return source, True

    def load(self, items: list[Item], step: int) -> Source:
        """A loaded micro-batch on the device: bad samples recorded and stood in for (weight 0), pixels encoded."""
        d = self.d
        for it in items:
            if it.error is not None:
                self.bad.record(step, it.source, it.error)
        good = [it for it in items if it.error is None]
        stand_in = good[0] if good else self.placeholder(items[0])
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
                latents = self.vae.encode(video).float()
            items = [dataclasses.replace(it, video=None, object_mask=None) for it in items]  # kept: captions
            tokens, mask = self.text_encoder.encode([it.caption or "" for it in items])  # once, however
            text = tokens.to(d.device), mask.to(d.device)  # often data echoing replays the batch
        else:
            latents = torch.stack([it.latents for it in items]).to(d.device)
            items = [dataclasses.replace(it, latents=None) for it in items]  # kept: text tokens
        return Source(items, weights, len(good), latents=latents, text=text,
                      token_weight=None if masks is None else latent_object_weight(
                          masks, self.cfg.flow.object_weight, mc.vae.temporal_factor, mc.vae.spatial_factor))

    def with_draws(self, source: Source, step: int) -> Batch:
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
        distilling = self.distill_flops is not None  # the teacher's forwards and the student's K passes; no time t
        return Batch(source.weights, tokens=source.good * per_sample,
                     flops=flops * self.distill_flops if distilling else flops, latents=source.latents,
                     noise=torch.stack([dr.noise for dr in draws]),  # drawn on the device
                     t=None if distilling else torch.tensor([dr.t for dr in draws], device=d.device),
                     frame_mask=torch.stack([dr.frame_mask for dr in draws]).to(d.device),
                     text_tokens=text_tokens.to(d.device), text_mask=text_mask.to(d.device),
                     token_weight=source.token_weight)

    def placeholder(self, item: Item) -> Item:
        """A zero sample of ``item``'s grid, so a rank whose whole batch was bad still joins the collectives."""
        bucket = self.buckets[item.key]
        if self.dataset.pixels:
            return Item(item.index, item.key, "placeholder",
                        video=torch.zeros(3, bucket.frames, bucket.height, bucket.width, dtype=torch.uint8),
                        caption="")
        tokens, mask = self.null_text
        return Item(item.index, item.key, "placeholder", latents=torch.zeros(self.model_cfg.vae.z_dim, *item.key),
                    text_tokens=tokens, text_mask=mask)

    # -- text ---------------------------------------------------------------------------------------

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

    def prompt_text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (L, D), mask (L,)) of one prompt; "" is the null text (the latent cache's, when it has one)."""
        if prompt == "":
            return self.null_text
        tokens, mask = self.text_encoder.null(1, prompt)
        return tokens[0].cpu(), mask[0].cpu()


def _pad_text(texts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (tokens (L_i, D), mask (L_i,)) pairs, zero-padding to the longest: (B, L, D), (B, L)."""
    length = max(t.shape[0] for t, _ in texts)
    tokens = torch.zeros(len(texts), length, texts[0][0].shape[1])
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for i, (t, m) in enumerate(texts):
        tokens[i, :t.shape[0]] = t
        mask[i, :m.shape[0]] = m
    return tokens, mask
