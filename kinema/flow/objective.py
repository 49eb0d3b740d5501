"""The rectified-flow objective (Wan / SD3 convention).

    x_t = (1 - t) * x0 + t * noise        t in [0, 1], t = 1 is pure noise
    v   = noise - x0                      the velocity the network learns
    x0  = x_t - t * v,   noise = x_t + (1 - t) * v

The network sees ``t * 1000``; that scaling is the caller's job, here t lives in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_t(t: Tensor | float, x: Tensor) -> Tensor | float:
    """Returns t shaped to broadcast against x: (B,) becomes (B, 1, ..., 1); other shapes pass through."""
    if isinstance(t, Tensor) and t.ndim == 1 and x.ndim > 1:
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"t has shape {tuple(t.shape)} but x has batch size {x.shape[0]}; expected ({x.shape[0]},)")
        return t.view(-1, *([1] * (x.ndim - 1)))
    return t


def interpolate(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """Returns x_t = (1 - t) * x0 + t * noise, in x0's dtype; t is (B,) or already broadcastable (e.g. per frame)."""
    t = expand_t(t, x0)
    # (1 - t) in the blend's own dtype would round t = 0.999 to 1 in bf16; blend in t's precision, then cast.
    return ((1 - t) * x0 + t * noise).to(x0.dtype)


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Returns the flow-matching velocity target noise - x0."""
    return noise - x0


def predict_x0(x_t: Tensor, velocity: Tensor, t: Tensor | float) -> Tensor:
    """Returns the clean-data prediction x_t - t * v implied by a velocity at time t."""
    return (x_t - expand_t(t, x_t) * velocity).to(x_t.dtype)


def flow_loss(pred: Tensor, target: Tensor, weight_mask: Tensor | None = None, per_sample: bool = False) -> Tensor:
    """Returns the mean squared error (float32 scalar), averaged only where weight_mask counts (1) if given;
    with ``per_sample``, one such mean per batch row (B,)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    sq_err = (pred.float() - target.float()).square()
    dims = tuple(range(1, sq_err.ndim)) if per_sample else tuple(range(sq_err.ndim))
    if weight_mask is None:
        return sq_err.mean(dims)
    try:
        fits = torch.broadcast_shapes(weight_mask.shape, pred.shape) == pred.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"weight_mask shape {tuple(weight_mask.shape)} does not broadcast to pred shape {tuple(pred.shape)}")
    weight = weight_mask.float().expand_as(sq_err)
    # Nothing counted (every frame is conditioning) gives 0, not NaN, so one such batch can't poison training.
    return (sq_err * weight).sum(dims) / weight.sum(dims).clamp_min(torch.finfo(torch.float32).tiny)
