"""Exponential moving average of the trained parameters.

The shadow copy lives beside each trained parameter with the same layout (a sharded DTensor under
FSDP), so it costs one parameter's memory per rank and updates with no communication. Keys are the
model's own parameter names, which is what checkpoints and export use.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """Shadow weights ``ema = decay * ema + (1 - decay) * param`` for every trainable parameter."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}

    def decay_at(self, step: int) -> float:
        """The decay used after optimizer step ``step`` (1-based): warmed up so early averages are not stale."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the shadow towards the current parameters."""
        weight = 1.0 - self.decay_at(step)
        # one fused call (a per-tensor loop costs a launch per parameter on a GPU); both dicts share one key order
        torch._foreach_lerp_(list(self.shadow.values()), [p.detach() for p in self.params.values()], weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow tensors by parameter name (loaded in place by checkpoint loading)."""
        return self.shadow

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` into the shadow (names must match)."""
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {missing[:5]}")
        for name, t in self.shadow.items():
            if state[name] is not t:
                t.copy_(state[name])

    @contextlib.contextmanager
    def swapped(self):
        """Within the block the model's parameters hold the EMA weights; restored exactly afterwards."""
        with torch.no_grad():
            backup = {name: p.detach().clone() for name, p in self.params.items()}
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(backup[name])
