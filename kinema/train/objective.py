"""The two training objectives, per sample: flow matching for the DiT, reconstruction for the VAE.

Each sample's randomness (training time, caption dropout, conditioning mask, noise) is drawn from its
own generator seeded by (run seed, step, sample index). A sample is then treated identically whichever
rank holds it and whatever else shares its batch, which is what makes 1 process and N processes with
the same global batch follow the same loss curve, and a resumed run repeat the original exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from kinema.flow import draw_t, flow_loss, interpolate, velocity_target
from kinema.tasks.condition import Condition, sample_mask
from kinema.train.config import FlowConfig, VAELossConfig


@dataclass
class Draw:
    """One sample's randomness for one step."""

    t: float  # flow time in (0, 1)
    drop_text: bool  # caption replaced by "" (classifier-free guidance)
    frame_mask: torch.Tensor  # (F,) bool: latent frames given clean as conditioning
    noise: torch.Tensor  # (C, F, H, W)


def sample_seed(seed: int, step: int, index: int) -> int:
    """The seed of sample ``index``'s randomness at ``step``."""
    return int(np.random.SeedSequence([seed, step, index]).generate_state(1)[0])


def draw(cfg: FlowConfig, seed: int, step: int, index: int, latent_shape: tuple[int, int, int, int],
         noise_generator: torch.Generator | None = None) -> Draw:
    """Training time, caption dropout, conditioning mask and noise of one sample at one step.

    This runs for every sample of every step on the host, ahead of the device, so it is kept cheap: the
    scalars come from Python's generator (one-element torch or NumPy calls cost tens of microseconds
    each; all of these together cost about ten), and the noise is drawn where it is used, by
    ``noise_generator`` (reseeded here; a CPU one if None): on a GPU, one kernel instead of a CPU draw
    and a copy.
    """
    rng = random.Random(f"{seed}:{step}:{index}")  # str seeds are hashed (SHA-512): the same in every process
    t = draw_t(rng, kind=cfg.t_kind, mean=cfg.t_mean, std=cfg.t_std, shift=cfg.shift)
    drop = rng.random() < cfg.text_dropout
    mask = sample_mask(latent_shape[1], cfg.cond_probs, rng)
    g = torch.Generator() if noise_generator is None else noise_generator
    g.manual_seed(rng.getrandbits(63))
    noise = torch.randn(latent_shape, generator=g, device=g.device)
    return Draw(t, drop, mask, noise)


def latent_object_weight(object_mask: torch.Tensor, weight: float, temporal: int = 4, spatial: int = 8) -> torch.Tensor:
    """Per-token loss weights (B, 1, F', H', W') from pixel object masks (B, 1, F, H, W): ``weight`` where any
    pixel a latent token encodes shows an object, 1 elsewhere. The causal VAE encodes frame 0 alone and then
    groups of ``temporal`` frames, each ``spatial`` x ``spatial`` pixels per token."""
    m = object_mask.float()
    b, _, f, h, w = m.shape
    if (f - 1) % temporal or h % spatial or w % spatial:
        raise ValueError(f"object mask {tuple(m.shape)} does not fit a {temporal}k+1 x {spatial}-multiple clip")
    rest = m[:, :, 1:].reshape(b, 1, (f - 1) // temporal, temporal, h, w).amax(3)
    m = torch.cat([m[:, :, :1], rest], dim=2)
    m = torch.nn.functional.max_pool3d(m, (1, spatial, spatial))
    return 1.0 + (weight - 1.0) * m


def flow_matching_losses(dit, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, frame_mask: torch.Tensor,
                         text_tokens: torch.Tensor, text_mask: torch.Tensor | None,
                         token_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample flow-matching loss (B,) float32; conditioned frames are clean at t = 0 and not scored.

    ``latents``/``noise`` (B, C, F, H, W), ``t`` (B,) in (0, 1), ``frame_mask`` (B, F) bool; ``token_weight``
    (B, 1, F, H, W), if given, makes each sample's loss a mean weighted per latent token.
    """
    cond = Condition(latents, frame_mask)
    t_frames = cond.frame_timesteps(t)  # (B, F): t for generated frames, 0 for given ones
    x_t = interpolate(latents, noise, t_frames[:, None, :, None, None])
    pred = dit(x_t, t_frames * 1000.0, text_tokens, text_mask)
    target = velocity_target(latents, noise)
    scored = (~cond.mask)[:, None, :, None, None]  # (B, 1, F, 1, 1)
    if token_weight is not None:
        scored = scored * token_weight
    return flow_loss(pred, target, scored, per_sample=True)


def _edges(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical pixel differences of (B, 3, F, H, W)."""
    return video[..., :, 1:] - video[..., :, :-1], video[..., 1:, :] - video[..., :-1, :]


def vae_losses(vae, video: torch.Tensor, generator: torch.Generator | None, cfg: VAELossConfig,
               object_mask: torch.Tensor | None = None, temporal_factor: int = 4) -> tuple[torch.Tensor, dict]:
    """Per-sample VAE loss (B,): L1 + kl_weight * KL + edge_weight * L1 of image gradients + mse_weight * MSE
    + temporal_weight * L1 of frame-to-frame differences; and the parts. With ``object_mask`` (B, 1, F, H, W),
    L1 and MSE are means over pixels weighted ``cfg.object_weight`` where the mask is set and 1 elsewhere;
    in the temporal term, steps across latent frames (frame ``temporal_factor * k`` -> the next) weigh
    ``cfg.temporal_across_weight``, the others 1."""
    recon, mean, logvar = vae(video, generator)
    recon, mean, logvar, video = recon.float(), mean.float(), logvar.float(), video.float()
    dims = tuple(range(1, video.ndim))
    err = recon - video
    if object_mask is None or cfg.object_weight == 1:
        l1, mse = err.abs().mean(dims), err.square().mean(dims)
    else:
        weight = 1.0 + (cfg.object_weight - 1.0) * object_mask.float()  # (B, 1, F, H, W), over the 3 channels
        norm = weight.sum(dims) * video.shape[1]
        l1, mse = (err.abs() * weight).sum(dims) / norm, (err.square() * weight).sum(dims) / norm
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean(dims)
    (rx, ry), (vx, vy) = _edges(recon), _edges(video)
    edge = 0.5 * ((rx - vx).abs().mean(dims) + (ry - vy).abs().mean(dims))
    total = l1 + cfg.kl_weight * kl + cfg.edge_weight * edge + cfg.mse_weight * mse
    parts = {"l1": l1.detach(), "kl": kl.detach(), "edge": edge.detach(), "mse": mse.detach()}
    if cfg.temporal_weight:  # a one-frame clip has no steps: 0
        steps = (recon.diff(dim=2) - video.diff(dim=2)).abs().mean((1, 3, 4))  # (B, F - 1)
        weight = torch.ones(steps.shape[1], device=steps.device)
        weight[::temporal_factor] = cfg.temporal_across_weight  # step i goes from frame i to frame i + 1
        temporal = (steps * weight).sum(1) / weight.sum() if steps.shape[1] else recon.new_zeros(recon.shape[0])
        total = total + cfg.temporal_weight * temporal
        parts["temporal"] = temporal.detach()
    return total, parts


def timestep_bins(t: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin index in [0, bins) of each time in [0, 1]."""
    return (t * bins).long().clamp_(0, bins - 1)

