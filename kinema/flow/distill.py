"""Few-step trajectory distillation for rectified flow, as pure math (takes a velocity function).

A student samples with K Euler steps over times t_0 = 1 > t_1 > ... > t_K = 0. For each segment k the
teacher integrates the guided ODE from the state x_k at t_k to t_{k+1} with M fine sub-steps, and the
student is taught that segment's mean velocity

    target_k = (teacher(x_k; t_k -> t_{k+1}) - x_k) / (t_{k+1} - t_k)

so one student Euler step x_k + (t_{k+1} - t_k) * target_k lands exactly where the teacher did.
The K-grid is every M-th time of the teacher's (K * M)-step schedule with the same shift (shift_t
of an even grid keeps the coarse grid inside the fine one), so the student's times are points the
teacher's own many-step sampler visits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .samplers import Velocity, get_sampler
from .schedule import sampling_schedule

TEACHER_SAMPLERS = ("euler", "heun")  # one-step methods: each segment is solved on its own


def distill_schedule(steps: int, substeps: int, shift: float) -> tuple[Tensor, Tensor]:
    """(student times (K + 1,), teacher times (K * M + 1,)) float64; the first is every M-th of the second."""
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"substeps must be an int >= 1, got {substeps!r}")
    fine = sampling_schedule(steps * substeps, shift=shift)
    return fine[::substeps].clone(), fine


def segment_targets(velocity: Velocity, x: Tensor, fine_ts: Tensor, substeps: int, sampler: str = "heun",
                    restart: Callable[[int], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(states (K, *x.shape), targets (K, *x.shape)): where each student step starts, and its mean teacher velocity.

    ``x`` is the state at ``fine_ts[0]``. Segment k starts from the teacher's own end of segment k - 1,
    or, with ``restart``, from ``restart(k)`` for k >= 1 (e.g. a real latent noised to t_k).
    """
    if sampler not in TEACHER_SAMPLERS:
        raise ValueError(f"teacher sampler must be one of {TEACHER_SAMPLERS}, got {sampler!r}")
    solve = get_sampler(sampler)
    times = fine_ts.tolist()
    steps, rem = divmod(len(times) - 1, substeps)
    if rem or steps < 1:
        raise ValueError(f"fine_ts has {len(times) - 1} steps, not a positive multiple of substeps={substeps}")
    states, targets = [], []
    for k in range(steps):
        if k > 0 and restart is not None:
            x = restart(k)
        t_from, t_to = times[k * substeps], times[(k + 1) * substeps]
        end = solve(velocity, x, fine_ts[k * substeps:(k + 1) * substeps + 1])
        states.append(x)
        targets.append((end - x) / (t_to - t_from))
        x = end
    return torch.stack(states), torch.stack(targets)
