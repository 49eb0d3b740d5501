"""``nn.Linear`` with a faster bf16 inference path on CPUs that multiply bf16 natively."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

# Layers of at most this many weights keep a copy of their weight laid out for oneDNN (the bundled DiT's
# largest has 262k; Wan 2.1-1.3B's smallest 2.4M, whose matmuls dwarf the per-call layout change).
PACK_MAX_WEIGHTS = 1 << 20


@functools.cache
def onednn_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 / AMX), and this PyTorch build has the
    oneDNN kernels that inductor calls (``mkldnn._linear_pointwise``, ``mkldnn._reorder_linear_weight``)."""
    try:
        ops = torch.ops.mkldnn
        return bool(torch.backends.mkldnn.is_available() and ops._is_mkldnn_bf16_supported()
                    and ops._linear_pointwise is not None and ops._reorder_linear_weight is not None)
    except (AttributeError, RuntimeError):
        return False


def onednn_bf16_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A bf16 product of ``x`` and ``weight`` on a CPU with native bf16, without autograd or torch.compile:
    where calling oneDNN's fused kernels directly pays."""
    return (x.dtype == weight.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and onednn_bf16())


def onednn_weight(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """``linear``'s weight laid out once for oneDNN's bf16 matmul with ``x``, or None where that path does not
    apply (not a bf16 CPU inference on a CPU with native bf16, autograd, torch.compile, a large layer).

    PyTorch's bf16 ``F.linear`` on a CPU goes through oneDNN, which re-lays the plain weight out into its
    blocked format on every call (0.3 ms for a 1024x256 weight): a third of a 2-row call and ~10% of a
    640-row one. The copy is kept on the layer and made again when the weight changes (another tensor, or
    an in-place update bumping its version); the products are bit for bit those of ``F.linear``.
    """
    return kept_layout(linear) if onednn_bf16_inference(x, linear.weight) else None


def kept_layout(linear: nn.Linear) -> torch.Tensor | None:
    """The oneDNN layout of ``linear``'s weight, kept on the layer (``onednn_weight``, whose checks the caller
    has made); None for a layer above ``PACK_MAX_WEIGHTS``."""
    w = linear.weight
    if w.numel() > PACK_MAX_WEIGHTS:
        return None
    try:
        key = (w.data_ptr(), w._version, tuple(w.shape))
    except RuntimeError:  # an inference tensor keeps no version counter: nothing to tell a change by
        return None
    held = linear.__dict__.get("_onednn_weight")
    if held is None or held[0] != key:
        held = linear.__dict__["_onednn_weight"] = (key, torch.ops.mkldnn._reorder_linear_weight(w))
    return held[1]


def plain_linear(module: nn.Module) -> bool:
    """``torch.nn.Linear`` itself or kinema's ``Linear``: a layer that is its weight and bias and nothing more
    (a subclass such as a LoRA layer adds to its forward, so it is not replaced, fused or quantised)."""
    return type(module) in (nn.Linear, Linear)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) whose bf16 CPU inference multiplies by a weight laid out
    once for oneDNN (``onednn_weight``): the bundled DiT's bf16 step 4-9% faster, the same bits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = onednn_weight(self, x)
        if packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
