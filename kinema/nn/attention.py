"""Attention through ``torch.nn.functional.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention ``(B, heads, Nq, d) x (B, heads, Nk, d) -> (B, heads, Nq, d)``.

    ``key_mask`` (B, Nk) bool marks real keys (False = padding, e.g. past a prompt's end).
    """
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
