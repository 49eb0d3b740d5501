"""Classifier-free guidance (Ho & Salimans 2022) on velocities, optionally in a limited interval of noise levels.

Guidance in a limited interval (Kynkaanniemi et al. 2024, arXiv:2404.07724): CFG is applied only at steps
whose noise level t lies in ``[lo, hi]``; outside it the step takes the conditional prediction alone, which
also saves the unconditional half of that step's network call.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..config import check_interval

# (x, t, need_uncond) -> (v_cond, v_uncond); v_uncond may be None when need_uncond is False.
CondUncondVelocity = Callable[[Tensor, Tensor, bool], tuple[Tensor, Tensor | None]]

FULL_INTERVAL = (0.0, 1.0)  # every noise level: guidance at every step
EDGE = 1e-6  # an interval's ends include times within this of them (a float32 schedule's 0.6 is 0.6000000238)


def cfg(v_cond: Tensor, v_uncond: Tensor, scale: float) -> Tensor:
    """Returns the guided velocity v_uncond + scale * (v_cond - v_uncond)."""
    return v_uncond + scale * (v_cond - v_uncond)


def guided(velocity_cond_uncond: CondUncondVelocity, scale: float,
           interval: tuple[float, float] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Returns a velocity(x, t) applying CFG at scale; at scale 1 it asks for the conditional prediction only.

    ``velocity_cond_uncond(x, t, need_uncond)`` returns ``(v_cond, v_uncond)``, typically from
    one batched network call on ``cat([x, x])`` with conditional and null text; when
    ``need_uncond`` is False it may skip the unconditional half and return ``(v_cond, None)``.

    ``interval``: ``(lo, hi)``, guidance only at steps whose noise level is in it (None: every step). A step's
    noise level is the largest entry of ``t`` (per-frame times hold given frames at 0; the rest share one).
    """
    lo, hi = FULL_INTERVAL if interval is None else check_interval(interval)
    everywhere = (lo, hi) == FULL_INTERVAL

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        need_uncond = scale != 1 and (everywhere or lo - EDGE <= float(t.max()) <= hi + EDGE)
        v_cond, v_uncond = velocity_cond_uncond(x, t, need_uncond)
        if not need_uncond:
            return v_cond
        if v_uncond is None:
            raise ValueError(f"guidance scale {scale} needs the unconditional prediction, but it came back None")
        return cfg(v_cond, v_uncond, scale)

    return velocity
