"""kinema.flow on fields whose answers are known in closed form.

Two data distributions with exact flow velocities (x_t = (1 - t) x0 + t noise, v = noise - x0):

- a point c: x_t = (1 - t) c + t noise, so v(x, t) = (x - c) / t and every trajectory ends at c;
- Gaussian data x0 ~ N(mu, s^2): x_t ~ N((1 - t) mu, V) with V = (1 - t)^2 s^2 + t^2,
  Cov(noise, x_t) = t and Cov(x0, x_t) = (1 - t) s^2, so
      E[v | x_t] = (t - (1 - t) s^2) / V * (x_t - (1 - t) mu) - mu,
  and its ODE carries x_1 to x_0 = mu + s * x_1 (it keeps the standardized value
  (x_t - (1 - t) mu) / sqrt(V) fixed).
"""

from __future__ import annotations

import math

import pytest
import torch

from kinema.flow import (
    SAMPLERS,
    cfg,
    check_interval,
    draw_t,
    euler,
    expand_t,
    flow_loss,
    get_sampler,
    guided,
    heun,
    interpolate,
    predict_x0,
    resolution_shift,
    sample_t,
    sampling_schedule,
    shift_t,
    unipc,
    velocity_target,
)

SHAPE = (2, 3, 2, 4, 4)  # (B, C, F, H, W), a tiny video latent
ALL_SAMPLERS = [
    pytest.param(euler, id="euler"),
    pytest.param(heun, id="heun"),
    *[pytest.param(lambda v, x, ts, callback=None, o=o: unipc(v, x, ts, order=o, callback=callback), id=f"unipc{o}")
      for o in (1, 2, 3)],
]


def _noise(dtype=torch.float64, seed=0):
    return torch.randn(SHAPE, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def gaussian_field(mu, s):
    """Exact flow velocity for data N(mu, s^2) (mu, s broadcastable to x)."""

    def velocity(x, t):
        t = expand_t(t, x)
        var = (1 - t) ** 2 * s**2 + t**2
        return (t - (1 - t) * s**2) / var * (x - (1 - t) * mu) - mu

    return velocity


# Per-channel data statistics, shaped (1, C, 1, 1, 1).
MU = torch.tensor([0.5, -0.3, 1.0], dtype=torch.float64).view(1, 3, 1, 1, 1)
STD = torch.tensor([1.0, 0.8, 1.5], dtype=torch.float64).view(1, 3, 1, 1, 1)


# ----------------------------------------------------------------------------- objective


def test_interpolate_and_velocity_round_trip():
    x0, noise = _noise(seed=1), _noise(seed=2)
    t = torch.tensor([0.25, 0.9], dtype=torch.float64)
    x_t = interpolate(x0, noise, t)
    v = velocity_target(x0, noise)
    tb = t.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(x_t - tb * v, x0)
    torch.testing.assert_close(predict_x0(x_t, v, t), x0)
    torch.testing.assert_close(x_t + (1 - tb) * v, noise)
    # The ends are exact: t = 0 is the data, t = 1 the noise.
    assert torch.equal(interpolate(x0, noise, torch.zeros(2, dtype=torch.float64)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(2, dtype=torch.float64)), noise)


def test_interpolate_per_frame_t_and_dtype():
    x0, noise = _noise(torch.float32, 1), _noise(torch.float32, 2)
    t = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1)  # frame 0 clean (conditioning), frame 1 pure noise
    x_t = interpolate(x0, noise, t)
    assert torch.equal(x_t[:, :, 0], x0[:, :, 0]) and torch.equal(x_t[:, :, 1], noise[:, :, 1])
    # bf16 latents with float32 t: the blend is done in float32, so t = 0.999 is not rounded to 1.
    x_bf16 = interpolate(x0.bfloat16(), torch.zeros(SHAPE, dtype=torch.bfloat16), torch.full((2,), 0.999))
    assert x_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(x_bf16.float(), (0.001 * x0.bfloat16().float()).bfloat16().float())
    with pytest.raises(ValueError, match="batch size 2"):
        interpolate(x0, noise, torch.ones(3))


def test_flow_loss_mask_counts_only_marked_elements():
    pred = _noise(torch.float32, 1).requires_grad_()
    target = _noise(torch.float32, 2)
    frame_mask = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1)  # frame 0 is conditioning: ignored
    loss = flow_loss(pred, target, frame_mask)
    torch.testing.assert_close(loss, ((pred[:, :, 1] - target[:, :, 1]) ** 2).mean())
    loss.backward()
    assert torch.all(pred.grad[:, :, 0] == 0) and torch.all(pred.grad[:, :, 1] != 0)
    torch.testing.assert_close(flow_loss(pred, target, torch.ones(1)), ((pred - target) ** 2).mean())
    assert flow_loss(pred, target, torch.zeros(1)).item() == 0.0  # nothing counted: 0, not NaN
    # per sample: each row's own masked mean, equal to the scalar loss of that row alone
    preds, targets = torch.randn(3, 4, 2, 3, 3), torch.randn(3, 4, 2, 3, 3)
    masks = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]).view(3, 1, 2, 1, 1)
    rows = flow_loss(preds, targets, masks, per_sample=True)
    assert rows.shape == (3,) and rows[2].item() == 0.0
    torch.testing.assert_close(rows, torch.stack([flow_loss(preds[i:i + 1], targets[i:i + 1], masks[i:i + 1])
                                                  for i in range(3)]))
    torch.testing.assert_close(flow_loss(preds, targets, per_sample=True), ((preds - targets) ** 2).mean((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="does not broadcast"):
        flow_loss(pred, target, torch.ones(3, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="target shape"):
        flow_loss(pred, target[:1])


# ----------------------------------------------------------------------------- schedule


def test_sample_t_range_determinism_and_median():
    for kind in ("logit_normal", "uniform"):
        t = sample_t(20000, torch.Generator().manual_seed(0), kind=kind)
        assert t.shape == (20000,) and t.dtype == torch.float32
        assert bool(((t > 0) & (t < 1)).all())
        assert torch.equal(t, sample_t(20000, torch.Generator().manual_seed(0), kind=kind))
        assert abs(t.median().item() - 0.5) < 0.02
    logit_normal = sample_t(20000, torch.Generator().manual_seed(0))
    # Logit-normal is denser around the middle than uniform.
    assert ((logit_normal - 0.5).abs() < 0.25).float().mean() > 0.55
    # A shift moves the median to shift_t(0.5) = shift / (1 + shift).
    shifted = sample_t(20000, torch.Generator().manual_seed(0), shift=3.0)
    assert abs(shifted.median().item() - 0.75) < 0.02
    with pytest.raises(ValueError, match="'cosine'"):
        sample_t(4, kind="cosine")
    with pytest.raises(ValueError, match="batch"):
        sample_t(0)


def test_draw_t_follows_sample_t():
    import random

    for kind, shift in (("logit_normal", 1.0), ("uniform", 1.0), ("logit_normal", 3.0)):
        rng = random.Random("0")
        one_by_one = torch.tensor([draw_t(rng, kind=kind, shift=shift) for _ in range(20000)])
        batched = sample_t(20000, torch.Generator().manual_seed(0), kind=kind, shift=shift)
        assert bool(((one_by_one > 0) & (one_by_one < 1)).all())
        quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        assert torch.allclose(one_by_one.double().quantile(quantiles), batched.double().quantile(quantiles), atol=0.015)
        assert draw_t(random.Random("x"), kind=kind, shift=shift) == draw_t(random.Random("x"), kind=kind, shift=shift)
    with pytest.raises(ValueError, match="'cosine'"):
        draw_t(random.Random(0), kind="cosine")


def test_shift_t_monotone_and_fixes_ends():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for shift in (0.5, 1.0, 3.0, 7.0):
        shifted = shift_t(t, shift)
        assert shifted[0].item() == 0.0 and shifted[-1].item() == 1.0
        assert bool((shifted[1:] > shifted[:-1]).all())
    assert torch.equal(shift_t(t, 1.0), t)
    assert bool((shift_t(t[1:-1], 3.0) > t[1:-1]).all())  # shift > 1 spends more time at high noise
    with pytest.raises(ValueError, match="-1"):
        shift_t(t, -1.0)


def test_resolution_shift_interpolates_log_linearly_and_clamps():
    assert resolution_shift(256) == pytest.approx(1.0)
    assert resolution_shift(4096) == pytest.approx(3.0)
    assert resolution_shift(16) == pytest.approx(1.0) and resolution_shift(10**6) == pytest.approx(3.0)
    assert resolution_shift(1024) == pytest.approx(math.sqrt(3.0))  # halfway in log tokens -> geometric mean
    sizes = [256, 512, 1000, 2048, 4096]
    assert all(resolution_shift(a) < resolution_shift(b) for a, b in zip(sizes, sizes[1:]))
    with pytest.raises(ValueError, match="num_tokens"):
        resolution_shift(0)
    with pytest.raises(ValueError, match="max_tokens=100"):
        resolution_shift(10, base_tokens=256, max_tokens=100)


def test_sampling_schedule_ends_and_order():
    for steps, shift, t_start in [(1, 1.0, 1.0), (10, 3.0, 1.0), (7, 5.0, 0.6), (50, 0.7, 0.3)]:
        ts = sampling_schedule(steps, shift, t_start)
        assert ts.shape == (steps + 1,)
        assert ts[-1].item() == 0.0
        assert ts[0].item() == pytest.approx(shift_t(t_start, shift), abs=1e-12)
        assert bool((ts[1:] < ts[:-1]).all())
    assert sampling_schedule(10, 3.0)[0].item() == 1.0
    torch.testing.assert_close(sampling_schedule(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=0), "steps must be an int >= 1, got 0"),
        (dict(steps=2.5), "got 2.5"),
        (dict(steps=4, shift=0.0), "shift must be > 0, got 0.0"),
        (dict(steps=4, t_start=0.0), r"t_start must be in \(0, 1\], got 0.0"),
        (dict(steps=4, t_start=1.5), "got 1.5"),
    ],
)
def test_sampling_schedule_rejects_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sampling_schedule(**kwargs)


# ----------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_point_data_is_reached_exactly(sampler):
    # For point data every x0-prediction is exactly c, so each method lands on c.
    c = _noise(seed=3)

    def velocity(x, t):
        return (x - c) / expand_t(t, x)

    for ts in (sampling_schedule(5, shift=3.0), sampling_schedule(3, t_start=0.5)):
        torch.testing.assert_close(sampler(velocity, _noise(), ts), c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_gaussian_data_converges(sampler):
    x1 = _noise()
    exact = MU + STD * x1
    out = sampler(gaussian_field(MU, STD), x1, sampling_schedule(64, shift=1.0))
    assert (out - exact).abs().max().item() < 0.15


def _convergence_order(sampler, steps=(8, 16, 32, 64)):
    x1 = _noise()
    exact = MU + STD * x1
    errors = [(sampler(gaussian_field(MU, STD), x1, sampling_schedule(n)) - exact).abs().max().item() for n in steps]
    # Least-squares slope of log(error) against log(steps).
    logn = torch.tensor(steps, dtype=torch.float64).log()
    loge = torch.tensor(errors, dtype=torch.float64).log()
    slope = ((logn - logn.mean()) * (loge - loge.mean())).sum() / ((logn - logn.mean()) ** 2).sum()
    return errors, -slope.item()


def test_higher_order_samplers_converge_faster():
    euler_err, euler_order = _convergence_order(euler)
    heun_err, heun_order = _convergence_order(heun)
    unipc_err, unipc_order = _convergence_order(unipc)
    assert 0.8 < euler_order < 1.2, euler_order
    assert heun_order > 1.8, heun_order
    assert unipc_order > 1.8, unipc_order
    assert all(h < e / 4 for h, e in zip(heun_err, euler_err))
    assert all(u < e / 4 for u, e in zip(unipc_err, euler_err))


def test_unipc_matches_diffusers_flow_unipc():
    # Same schedule as Wan's FlowMatch-UniPC (diffusers' UniPCMultistepScheduler with flow sigmas).
    diffusers = pytest.importorskip("diffusers")
    field = gaussian_field(MU, STD)
    x1 = _noise()
    for order, steps, shift in [(1, 6, 1.0), (2, 10, 3.0), (3, 8, 5.0)]:
        scheduler = diffusers.UniPCMultistepScheduler(
            use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift, solver_order=order
        )
        scheduler.set_timesteps(steps)
        x = x1
        for i, timestep in enumerate(scheduler.timesteps):
            t = torch.full((x.shape[0],), scheduler.sigmas[i].item(), dtype=torch.float64)
            x = scheduler.step(field(x, t), timestep, x).prev_sample
        ours = unipc(field, x1, scheduler.sigmas.double(), order=order)
        # diffusers computes its coefficients in float32; ours in float64.
        torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
@pytest.mark.parametrize("t_start", [1.0, 0.6])
def test_zero_velocity_elements_are_held(sampler, t_start):
    # Conditioning frames: velocity is exactly 0 there and x starts at the clean value.
    frame_mask = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1)  # frame 0 conditioned
    c = _noise(torch.float32, seed=4)
    x = torch.where(frame_mask.bool(), _noise(torch.float32), c)
    field = gaussian_field(MU.float(), STD.float())

    def velocity(x, t):
        return field(x, t) * frame_mask

    out = sampler(velocity, x, sampling_schedule(7, shift=3.0, t_start=t_start))
    torch.testing.assert_close(out[:, :, 0], c[:, :, 0], rtol=0, atol=1e-6)
    assert (out[:, :, 1] - x[:, :, 1]).abs().max() > 0.1  # the free frame did move


@pytest.mark.parametrize("sampler", ALL_SAMPLERS)
def test_sampler_is_deterministic_calls_back_and_keeps_input(sampler):
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def velocity(x, t):  # a fixed nonlinear field standing in for a network
        return torch.tanh(torch.einsum("dc,bcfhw->bdfhw", weight, x)) * (1 + expand_t(t, x))

    x = _noise()
    x_before = x.clone()
    calls = []
    ts = sampling_schedule(5, shift=2.0)
    out = sampler(velocity, x, ts, callback=lambda i, n, xi: calls.append((i, n, xi.shape)))
    assert torch.equal(out, sampler(velocity, x, ts))
    assert torch.equal(x, x_before)
    assert calls == [(i, 5, x.shape) for i in range(5)]


def test_samplers_pass_batched_float_times():
    seen = []

    def velocity(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    x = _noise(torch.bfloat16)
    euler(velocity, x, sampling_schedule(2))
    assert [tuple(t.shape) for t in seen] == [(2,), (2,)]
    assert all(t.dtype == torch.float32 for t in seen)
    assert seen[0].tolist() == [1.0, 1.0] and seen[1].tolist() == [0.5, 0.5]


def test_sampler_registry_and_bad_args():
    assert set(SAMPLERS) == {"euler", "heun", "unipc"}
    assert get_sampler("heun") is heun
    with pytest.raises(ValueError, match=r"'dpm'.*\['euler', 'heun', 'unipc'\]"):
        get_sampler("dpm")
    x = _noise()
    with pytest.raises(ValueError, match="strictly decreasing"):
        euler(lambda x, t: x, x, torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        heun(lambda x, t: x, x, torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match=">= 2 times"):
        unipc(lambda x, t: x, x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="order must be one of"):
        unipc(lambda x, t: x, x, sampling_schedule(3), order=4)
    with pytest.raises(ValueError, match="velocity returned shape"):
        euler(lambda x, t: x[:1], x, sampling_schedule(3))


# ----------------------------------------------------------------------------- guidance


def test_cfg_formula():
    v_cond, v_uncond = _noise(seed=1), _noise(seed=2)
    torch.testing.assert_close(cfg(v_cond, v_uncond, 1.0), v_cond)
    assert torch.equal(cfg(v_cond, v_uncond, 0.0), v_uncond)
    torch.testing.assert_close(cfg(v_cond, v_uncond, 5.0), 5 * v_cond - 4 * v_uncond)


def test_guided_skips_uncond_at_scale_one():
    asked = []

    def cond_uncond(x, t, need_uncond):  # conditional velocity 2x, unconditional x
        asked.append(need_uncond)
        if not need_uncond:
            return 2 * x, None
        # One batched call on cat([x, x]), as the pipeline does.
        scale = torch.tensor([2.0, 1.0]).repeat_interleave(x.shape[0]).view(-1, 1, 1, 1, 1)
        v_cond, v_uncond = (torch.cat([x, x]) * scale).chunk(2)
        return v_cond, v_uncond

    x = _noise(torch.float32)
    t = torch.full((2,), 0.5)
    assert torch.equal(guided(cond_uncond, 1.0)(x, t), 2 * x)
    assert asked == [False]
    torch.testing.assert_close(guided(cond_uncond, 3.0)(x, t), x + 3 * (2 * x - x))
    assert asked == [False, True]
    with pytest.raises(ValueError, match="scale 3.0"):
        guided(lambda x, t, need: (x, None), 3.0)(x, t)


def test_guided_in_an_interval_guides_only_the_steps_inside_it():
    asked = []

    def cond_uncond(x, t, need_uncond):  # conditional velocity 2x, unconditional x
        asked.append(need_uncond)
        return 2 * x, (x if need_uncond else None)

    x = _noise(torch.float32)
    velocity = guided(cond_uncond, 3.0, interval=(0.2, 0.6))
    for t, guided_here in ((1.0, False), (0.6, True), (0.4, True), (0.2, True), (0.1, False)):
        want = x + 3 * (2 * x - x) if guided_here else 2 * x
        torch.testing.assert_close(velocity(x, torch.full((2,), t)), want)
    assert asked == [False, True, True, True, False]  # outside: the conditional half alone
    # per-frame times (given frames held at 0): the step's noise level is that of the frames being made
    asked.clear()
    velocity(x, torch.tensor([[0.0, 0.9, 0.9], [0.0, 0.9, 0.9]]))
    velocity(x, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]))
    assert asked == [False, True]
    asked.clear()
    guided(cond_uncond, 3.0, interval=(0.0, 1.0))(x, torch.full((2,), 1.0))  # the whole range: every step
    guided(cond_uncond, 1.0, interval=(0.0, 1.0))(x, torch.full((2,), 0.5))  # scale 1: never
    assert asked == [True, False]
    for bad in ((0.6, 0.2), (0.0, 1.5), (-0.1, 0.5), (0.3, 0.3), (0.5,), "0.5", (True, 1), (float("nan"), 1)):
        with pytest.raises(ValueError, match="guidance interval must be two noise levels LO,HI with 0 <= LO < HI <= 1"):
            guided(cond_uncond, 3.0, interval=bad)
    assert check_interval(" 0.25, 0.75") == (0.25, 0.75)  # text as the CLI and the HTTP API take it
