"""Per-frame conditioning: some latent frames are given (clean), the rest are generated.

One mechanism serves every task (image-to-video, extend, loop, connect, keyframes): a condition is a
set of clean latent frames plus a per-frame mask. We hold conditioned frames clean with per-frame
timesteps rather than by re-noising and replacing: conditioned frames sit at t = 0 (the DiT sees them
as finished), their velocity is zero, so every sampler — which only moves x along the predicted
velocity — leaves them exactly where they started. Training does the same: conditioned frames are
clean inputs at t = 0 and are left out of the loss, so the model learns every task at once.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch

# latent frames of a cycle copied in front of its turned frames (``cyclic_velocity``)
CYCLE_CONTEXT = 1


@dataclass
class Condition:
    """Clean latents (B, C, F, H, W) and mask (B, F) bool: True where the frame is given, not generated."""

    latents: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.mask.ndim != 2 or self.mask.shape[0] != self.latents.shape[0] or self.mask.shape[1] != self.latents.shape[2]:
            raise ValueError(f"condition mask must be (B, F)=({self.latents.shape[0]}, {self.latents.shape[2]}), "
                             f"got {tuple(self.mask.shape)}")
        self.mask = self.mask.to(device=self.latents.device, dtype=torch.bool)

    @property
    def frame_mask(self) -> torch.Tensor:
        """The mask broadcastable over latents: (B, 1, F, 1, 1) float."""
        return self.mask[:, None, :, None, None].to(self.latents.dtype)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with conditioned frames replaced by their clean values."""
        return torch.where(self.mask[:, None, :, None, None], self.latents.to(x.dtype), x)

    def frame_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Per-frame timesteps (B, F): ``t`` (B,) for generated frames, 0 for conditioned ones."""
        return t[:, None].to(torch.float32) * (~self.mask).to(torch.float32)


def conditioned_velocity(velocity, cond: Condition | None):
    """Wrap ``velocity(x, t_frames (B, F)) -> v`` into a sampler velocity ``(x, t (B,)) -> v`` that holds ``cond``."""
    if cond is None:
        def plain(x, t):
            return velocity(x, t[:, None].expand(-1, x.shape[2]))
        return plain

    keep = (~cond.mask)[:, None, :, None, None]

    def held(x, t):
        return velocity(x, cond.frame_timesteps(t)) * keep.to(x.dtype)

    return held


def cyclic_velocity(velocity, context: int = CYCLE_CONTEXT):
    """Wrap a network velocity ``(x, t_frames (B, F)) -> v`` so that x's latent frames are sampled as a cycle.

    A window is sampled as a line: its last frame is never the neighbour of its first, so a loop sampled as
    a line has a seam where it wraps, whatever pins its ends. Here call i sees the frames rotated by
    ``i mod F`` (their per-frame times with them) and its prediction is rotated back, so across the sampling
    steps every pair of neighbours, the wrap included, sits inside the window, and every frame takes every
    position. A window's first latent frame is also where a clip starts (a causal VAE's first latent frame
    holds one image, with nothing before it), and a cycle has no start: so the turned frames are preceded by
    copies of the ``context`` frames that come before them in the cycle, whose predictions are dropped, and
    every frame is predicted as a continuation (on the world's loops, the seam no larger than a typical frame
    step in 52% of loops instead of 32%, fp32 and bf16; the copy without turning, 18%). Given frames turn with the rest
    and keep their time 0, so ``conditioned_velocity`` goes around this unchanged. The same sampler and
    network serve; only the view turns.
    """
    calls = itertools.count()

    def rotated(x, t_frames):
        n = x.shape[2]
        if context > n:
            raise ValueError(f"a cycle of {n} latent frames cannot be preceded by {context} of its own")
        r = next(calls) % n
        x, t_frames = x.roll(-r, dims=2), t_frames.roll(-r, dims=1)
        if context:
            x = torch.cat([x[:, :, n - context:], x], dim=2)
            t_frames = torch.cat([t_frames[:, n - context:], t_frames], dim=1)
        return velocity(x, t_frames)[:, :, context:].roll(r, dims=2)

    return rotated


# Conditioning patterns sampled during training (names are config keys for their probabilities).
PATTERNS = ("none", "first", "last", "first_k", "last_k", "both_ends", "keyframes")


def sample_mask(num_frames: int, probs: dict[str, float], rng: random.Random) -> torch.Tensor:
    """A random conditioning mask (F,) bool drawn from the pattern probabilities ``probs`` (normalised here)."""
    unknown = sorted(set(probs) - set(PATTERNS))
    if unknown:
        raise ValueError(f"unknown conditioning pattern(s) {unknown}; known: {list(PATTERNS)}")
    names = [p for p in PATTERNS if probs.get(p, 0.0) > 0]
    mask = torch.zeros(num_frames, dtype=torch.bool)
    if not names or num_frames < 2:
        return mask
    pattern = rng.choices(names, weights=[probs[p] for p in names])[0]
    k = rng.randrange(1, max(2, num_frames // 2 + 1))
    if pattern == "first":
        mask[0] = True
    elif pattern == "last":
        mask[-1] = True
    elif pattern == "first_k":
        mask[:k] = True
    elif pattern == "last_k":
        mask[-k:] = True
    elif pattern == "both_ends":
        mask[0] = mask[-1] = True
    elif pattern == "keyframes":
        mask[rng.sample(range(num_frames), rng.randrange(1, max(2, num_frames // 2)))] = True
    return mask
