"""When to look: training timesteps, the time shift, and the sampling schedule.

All times are flow times t in [0, 1] (t = 1 is pure noise). The time shift

    shift_t(t, s) = s * t / (1 + (s - 1) * t)

is SD3's (Esser et al. 2024, eq. 23): s > 1 moves every t towards noise, so training and
sampling spend more of their effort at high noise, where large frames (many tokens, hence
more redundant signal that survives a given noise level) still have their layout undecided.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

T_KINDS = ("logit_normal", "uniform")
# Training times stay this far from both ends: t = 0 has nothing to learn, t = 1 no signal.
_T_EPS = 1e-5


def shift_t(t: Tensor | float, shift: float) -> Tensor | float:
    """Returns the shifted time shift * t / (1 + (shift - 1) * t); monotone, fixes 0 and 1."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def sample_t(
    batch: int,
    generator: torch.Generator | None = None,
    kind: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
) -> Tensor:
    """Returns (batch,) float32 training times in (0, 1) on the generator's device, then time-shifted."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    device = generator.device if generator is not None else None
    if kind == "logit_normal":  # SD3's default: sigmoid of a normal, dense around the middle
        t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    elif kind == "uniform":
        t = torch.rand(batch, generator=generator, device=device)
    else:
        raise ValueError(f"kind must be one of {T_KINDS}, got {kind!r}")
    return shift_t(t, shift).clamp(_T_EPS, 1 - _T_EPS)


def draw_t(rng: random.Random, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0,
           shift: float = 1.0) -> float:
    """One training time from the distribution of ``sample_t``, drawn with a Python generator: for the
    per-sample draws of training, on the host, where one-element tensor calls cost tens of microseconds."""
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    if kind == "logit_normal":
        t = 1.0 / (1.0 + math.exp(-(mean + std * rng.gauss(0.0, 1.0))))
    elif kind == "uniform":
        t = rng.random()
    else:
        raise ValueError(f"kind must be one of {T_KINDS}, got {kind!r}")
    return min(max(shift_t(t, shift), _T_EPS), 1 - _T_EPS)


def resolution_shift(
    num_tokens: int,
    base_tokens: int = 256,
    base_shift: float = 1.0,
    max_tokens: int = 4096,
    max_shift: float = 3.0,
) -> float:
    """Returns the time shift for a latent of num_tokens patches (frames x height x width), clamped.

    log(shift) is linear in log(num_tokens) through (base_tokens, base_shift) and
    (max_tokens, max_shift), i.e. a power law

        shift = base_shift * (num_tokens / base_tokens) ** (log(max_shift / base_shift) / log(max_tokens / base_tokens))

    clamped between base_shift and max_shift outside that range. SD3 argues the shift should
    grow like sqrt(token ratio) (a power law, exponent 0.5); Flux interpolates mu = log(shift)
    linearly in tokens instead. The power law is scale free, so doubling the duration
    multiplies the shift by the same factor at every size; the defaults give exponent ~0.40.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if not 0 < base_tokens < max_tokens:
        raise ValueError(f"need 0 < base_tokens < max_tokens, got base_tokens={base_tokens}, max_tokens={max_tokens}")
    if not (base_shift > 0 and max_shift > 0):
        raise ValueError(f"base_shift and max_shift must be > 0, got {base_shift} and {max_shift}")
    frac = (math.log(num_tokens) - math.log(base_tokens)) / (math.log(max_tokens) - math.log(base_tokens))
    frac = min(max(frac, 0.0), 1.0)
    return math.exp(math.log(base_shift) + frac * (math.log(max_shift) - math.log(base_shift)))


def sampling_schedule(steps: int, shift: float = 1.0, t_start: float = 1.0, kind: str = "kinema") -> Tensor:
    """Returns (steps + 1,) float64 times from shift_t(t_start) down to exactly 0.0.

    kind "kinema": shift_t of an even grid from t_start to 0. kind "wan": the grid Wan 2.1 and diffusers'
    flow UniPC sample on, an even grid from t_start to t_start / 1000 (its last point dropped), shifted,
    the first time nudged below 1 by 1e-6, then 0.
    t_start < 1 starts from a partly noised input (SDEdit: an edit of strength s starts at
    t = s, so the first time is shift_t(s, shift)).
    """
    if kind == "wan":
        _check_schedule(steps, shift, t_start)
        grid = shift_t(torch.linspace(t_start, t_start / 1000, steps + 1, dtype=torch.float64)[:-1], shift)
        if abs(float(grid[0]) - 1.0) < 1e-6:
            grid[0] -= 1e-6  # as diffusers' UniPC does, so its log(alpha) stays finite at the first step
        return torch.cat([grid, grid.new_zeros(1)])
    if kind != "kinema":
        raise ValueError(f"schedule kind must be 'kinema' or 'wan', got {kind!r}")
    _check_schedule(steps, shift, t_start)
    ts = shift_t(torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64), shift)
    ts[-1] = 0.0  # linspace already ends at 0 and shift_t fixes 0; make it exact by construction
    return ts


def _check_schedule(steps: int, shift: float, t_start: float) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if not 0 < t_start <= 1:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
