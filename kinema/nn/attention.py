"""Attention through ``torch.nn.functional.scaled_dot_product_attention``, or two matmuls where that is faster."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# At most this many scores (batch x heads x queries x keys; 8 MiB in bf16), a bf16 attention on a CPU runs as
# two matmuls around a softmax: PyTorch's fused CPU kernel walks the keys in blocks with a running softmax,
# which at a few hundred tokens costs more than it saves, and its backward more so. Measured on 2 cores
# (AVX-512 BF16), 4 heads of 64: forward x1.2-1.65 faster from 320 to 960 tokens, the bundled DiT's step
# x1.08; forward and backward of 6 heads at 320 tokens x2.0 (self) and x2.8 (64 text keys), a dim-384 DiT's
# bf16 training step x1.19 with its gradients as far from fp32's as the fused kernel's (0.59% relative, both).
# In fp32 the fused kernel is as fast or faster (x0.4-1.0), and above this size it keeps memory linear in the
# keys (autograd holds the scores and probabilities of the matmul path).
MATMUL_SCORES = 1 << 22


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention ``(B, heads, Nq, d) x (B, heads, Nk, d) -> (B, heads, Nq, d)``.

    ``key_mask`` (B, Nk) bool marks real keys (False = padding, e.g. past a prompt's end). A query whose keys
    are all padding gets zeros.
    """
    if (q.device.type == "cpu" and q.dtype == torch.bfloat16
            and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= MATMUL_SCORES
            and not torch.compiler.is_compiling() and (key_mask is None or bool(key_mask.any(-1).all()))):
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
        if key_mask is not None:
            scores.masked_fill_(~key_mask[:, None, None, :], float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
