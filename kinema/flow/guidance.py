"""Classifier-free guidance (Ho & Salimans 2022) on velocities."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

# (x, t, need_uncond) -> (v_cond, v_uncond); v_uncond may be None when need_uncond is False.
CondUncondVelocity = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]


def cfg(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Returns the guided velocity v_uncond + scale * (v_cond - v_uncond)."""
    return v_uncond + scale * (v_cond - v_uncond)


def guided(velocity_cond_uncond: CondUncondVelocity, scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Returns a velocity(x, t) applying CFG at scale; at scale 1 it asks for the conditional prediction only.

    ``velocity_cond_uncond(x, t, need_uncond)`` returns ``(v_cond, v_uncond)``, typically from
    one batched network call on ``cat([x, x])`` with conditional and null text; when
    ``need_uncond`` is False it may skip the unconditional half and return ``(v_cond, None)``.
    """
    need_uncond = scale != 1

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        v_cond, v_uncond = velocity_cond_uncond(x, t, need_uncond)
        if not need_uncond:
            return v_cond
        if v_uncond is None:
            raise ValueError(f"guidance scale {scale} needs the unconditional prediction, but it came back None")
        return cfg(v_cond, v_uncond, scale)

    return velocity
