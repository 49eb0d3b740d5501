"""Samplers: integrate dx/dt = velocity(x, t) from ts[0] down to ts[-1] (usually 0).

Each sampler takes a velocity function ``velocity(x, t) -> v`` with x (B, ...) and t (B,),
never a model. They are deterministic, leave their input untouched, and keep only a few
copies of x alive. Where velocity returns exactly 0, x is held where it started (every update
below is x plus a combination of velocities, or a combination of x and x0 = x - t * v whose
weights sum to 1), which is what image/video conditioning relies on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, int, Tensor], None]


def _check_times(ts: Tensor | list[float]) -> list[float]:
    times = torch.as_tensor(ts, dtype=torch.float64)
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"ts must be 1-D with >= 2 times (steps + 1), got shape {tuple(times.shape)}")
    if not bool(((times >= 0) & (times <= 1)).all()):
        raise ValueError(f"ts must lie in [0, 1], got min {times.min().item()} max {times.max().item()}")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"ts must be strictly decreasing, got {times.tolist()}")
    return times.tolist()


def _call(velocity: Velocity, x: Tensor, t: float) -> Tensor:
    # float32 times even for bf16 latents: the network scales t by 1000, where bf16 is too coarse.
    t_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = velocity(x, torch.full((x.shape[0],), t, dtype=t_dtype, device=x.device))
    if v.shape != x.shape:
        raise ValueError(f"velocity returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
    return v


def euler(velocity: Velocity, x: Tensor, ts: Tensor, callback: Callback | None = None) -> Tensor:
    """Returns x integrated to ts[-1] with explicit Euler (one velocity call per step)."""
    times = _check_times(ts)
    n = len(times) - 1
    for i in range(n):
        x = x + (times[i + 1] - times[i]) * _call(velocity, x, times[i])
        if callback is not None:
            callback(i, n, x)
    return x


def heun(velocity: Velocity, x: Tensor, ts: Tensor, callback: Callback | None = None) -> Tensor:
    """Returns x integrated to ts[-1] with Heun's 2nd-order method (Euler on a final step to t = 0)."""
    times = _check_times(ts)
    n = len(times) - 1
    for i in range(n):
        dt = times[i + 1] - times[i]
        v = _call(velocity, x, times[i])
        x_euler = x + dt * v
        if times[i + 1] == 0:  # the velocity at t = 0 can be singular (e.g. point data: (x - c) / t)
            x = x_euler
        else:
            x = x + (0.5 * dt) * (v + _call(velocity, x_euler, times[i + 1]))
        if callback is not None:
            callback(i, n, x)
    return x


# UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), B(h) = e^h - 1
# ("bh2"), in data-prediction form for the flow path alpha_t = 1 - t, sigma_t = t, with
# lambda_t = log(alpha_t / sigma_t). Each step combines x with the x0-predictions
# x0 = x - t * v of the last few steps; the corrector re-uses the prediction made at the new
# point to refine that point before stepping on, so it costs no extra velocity call.
# Scheduling follows diffusers' UniPCMultistepScheduler (use_flow_sigmas, flow_prediction):
# order ramps up from 1, and the final steps drop order so the step into t = 0
# (lambda = inf) is first order, which lands exactly on the last x0-prediction.

# t = 1 has lambda = -inf; like diffusers, the solver treats it as 1 - 1e-6.
_UNIPC_T_MAX = 1 - 1e-6
UNIPC_ORDERS = (1, 2, 3)


def _log_snr(sigma: float) -> float:
    return math.inf if sigma == 0 else math.log1p(-sigma) - math.log(sigma)


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    return torch.linalg.solve(torch.tensor(matrix, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)).tolist()


def _unipc_weights(sigmas: list[float], lambdas: list[float], s: int, t: int, order: int, corrector: bool) -> list[float]:
    """Weights of one UniPC update from time index s to t, in the order
    [x_s, m_s, m_{s-1}, ..., m_{s-order+1}] plus m_t last when corrector (m = x0-predictions)."""
    h = lambdas[t] - lambdas[s]
    hh = -h  # data prediction integrates e^{-lambda}
    h_phi_1 = math.expm1(hh)  # h * phi_1(h) = e^hh - 1
    b_h = h_phi_1  # the "bh2" choice B(h) = e^hh - 1 ("bh1" would be hh)
    rks = [(lambdas[s - k] - lambdas[s]) / h for k in range(1, order)] + [1.0]
    b, phi, factorial = [], h_phi_1 / hh - 1, 1
    for k in range(1, order + 1):  # b_k = k! phi_{k+1}(hh) / B(h), phi by its recurrence
        b.append(phi * factorial / b_h)
        factorial *= k + 1
        phi = phi / hh - 1 / factorial
    powers = [[r**k for r in rks] for k in range(order)]
    if corrector:
        rhos = [0.5] if order == 1 else _solve(powers, b)
    else:
        rhos = [] if order == 1 else [0.5] if order == 2 else _solve([row[:-1] for row in powers[:-1]], b[:-1])
    alpha_t = 1 - sigmas[t]
    # x_t = sigma_t/sigma_s x_s - alpha_t h_phi_1 m_s - alpha_t B(h) sum_k rho_k D_k,
    # with D_k = (m_{s-k} - m_s) / r_k for past points and D = m_t - m_s for the corrector's new one.
    scale = -alpha_t * b_h
    past = [scale * rho / r for rho, r in zip(rhos[: order - 1], rks[:-1])]
    weights = [sigmas[t] / sigmas[s], -alpha_t * h_phi_1 - sum(past)] + past
    if corrector:
        weights[1] -= scale * rhos[-1]
        weights.append(scale * rhos[-1])
    return weights


def _combine(weights: list[float], tensors: list[Tensor]) -> Tensor:
    out = weights[0] * tensors[0]
    for w, tensor in zip(weights[1:], tensors[1:]):
        out = out + w * tensor
    return out


def unipc(velocity: Velocity, x: Tensor, ts: Tensor, order: int = 2, callback: Callback | None = None) -> Tensor:
    """Returns x integrated to ts[-1] with UniPC-bh2 (multistep predictor + free corrector), one call per step."""
    if order not in UNIPC_ORDERS:
        raise ValueError(f"unipc order must be one of {UNIPC_ORDERS}, got {order!r}")
    times = _check_times(ts)
    n = len(times) - 1
    sigmas = [min(t, _UNIPC_T_MAX) for t in times]
    lambdas = [_log_snr(s) for s in sigmas]
    x0_preds: list[Tensor] = []  # newest first: x0-predictions at times i, i-1, ...
    x_prev, prev_order = x, 0
    for i in range(n):
        x0_pred = x - sigmas[i] * _call(velocity, x, times[i])
        if i > 0:  # corrector: refine x at times[i] using the prediction just made there
            weights = _unipc_weights(sigmas, lambdas, i - 1, i, prev_order, corrector=True)
            x = _combine(weights, [x_prev, *x0_preds[:prev_order], x0_pred])
        x0_preds = [x0_pred, *x0_preds][:order]
        step_order = min(order, i + 1, n - i)  # warm up from 1; lower order into the final step(s)
        weights = _unipc_weights(sigmas, lambdas, i, i + 1, step_order, corrector=False)
        x_prev, prev_order = x, step_order
        x = _combine(weights, [x, *x0_preds[:step_order]])
        if callback is not None:
            callback(i, n, x)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"euler": euler, "heun": heun, "unipc": unipc}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """Returns the sampler function registered under name."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {sorted(SAMPLERS)}")
    return SAMPLERS[name]
