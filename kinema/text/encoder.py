"""The one text-encoder interface: prompts -> (tokens (B, L, D), mask (B, L)).

Every encoder returns per-token features, not a pooled sentence vector: the DiT cross-attends to
them. ``L`` is always the encoder's ``max_length``; positions past a prompt's real length are
zeros and masked out (Wan 2.1 does the same: trim to the real length, pad with zeros to 512).

Classifier-free guidance: the unconditional embedding is the encoding of the negative prompt,
``""`` by default (``null``), never a zero tensor, as in Wan 2.1. Training drops captions to
``""`` so that the model learns exactly what inference will feed it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


def check_prompts(prompts: list[str]) -> list[str]:
    """The prompts, checked: a non-empty list of str (a bare str is refused, not split into characters)."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of str, got {type(prompts).__name__}; wrap one prompt as [prompt]")
    if not prompts:
        raise ValueError("prompts must hold at least one prompt, got an empty list")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must all be str, got {type(bad[0]).__name__}: {bad[0]!r}")
    return list(prompts)


def pad_to_length(hidden: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, length, D), mask (B, length)): ``hidden`` with padding zeroed and zero-extended to ``length``."""
    b, n, d = hidden.shape
    mask = mask.bool()
    tokens = hidden.new_zeros((b, length, d))
    full_mask = torch.zeros((b, length), dtype=torch.bool, device=hidden.device)
    n = min(n, length)
    tokens[:, :n] = hidden[:, :n] * mask[:, :n, None]
    full_mask[:, :n] = mask[:, :n]
    return tokens, full_mask


class TextEncoder(ABC):
    """Prompts -> (tokens (B, max_length, dim), mask (B, max_length)); gradients never flow into it."""

    dim: int
    max_length: int

    @abstractmethod
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens float (B, max_length, dim), mask bool (B, max_length)); True marks real tokens."""

    @abstractmethod
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEncoder:
        """This encoder, moved to ``device`` / cast to ``dtype``."""

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    def null(self, batch: int, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional (tokens, mask) for guidance: ``batch`` copies of the negative prompt's encoding."""
        if batch < 1:
            raise ValueError(f"null() batch must be >= 1, got {batch}")
        tokens, mask = self.encode([negative_prompt])
        return tokens.expand(batch, -1, -1).clone(), mask.expand(batch, -1).clone()

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(prompts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, max_length={self.max_length}, device={self.device}, dtype={self.dtype})"


def split_device_dtype(device, dtype) -> tuple[torch.device | None, torch.dtype | None]:
    """Allow ``.to(torch.bfloat16)`` as well as ``.to("cuda", torch.bfloat16)``, like ``nn.Module.to``."""
    if isinstance(device, torch.dtype):
        device, dtype = None, device
    return (torch.device(device) if device is not None else None), dtype
