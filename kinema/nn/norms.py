"""Normalisations used by the DiT and the VAE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (stable under bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channel axis of ``(B, C, ...)`` maps (the Wan VAE's norm): ``x / |x| * sqrt(C) * gamma``."""

    def __init__(self, dim: int, spatial_dims: int = 3, bias: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))
        self.bias = nn.Parameter(torch.zeros(dim, *([1] * spatial_dims))) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.normalize(x.float(), dim=1).type_as(x) * (self.scale * self.gamma).to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)
