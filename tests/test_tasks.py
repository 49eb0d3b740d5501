"""Prompting with images and videos on a tiny random model: given latent frames come out exactly as
encoded from the inputs, pixel <-> latent bookkeeping round-trips for any length, inputs are joined back
unchanged, and bad input is refused before any sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kinema.common.video import read_video, resize_video, to_model
from kinema.common.video_write import write_video
from kinema.infer import InputError
from kinema.infer import tasks
from kinema.tasks import cyclic_velocity
from kinema.tasks.builders import place
from kinema.tasks.fit import fit_latents
from kinema.tasks.motion import carry_motion
from test_motion import square_clip
from kinema.tasks.frames import (frame_mask, grid_count, latent_count, latent_index, masked_pixel_frames, pad_frames,
                                 pixel_count, pixel_span, valid_length)

KW = dict(width=32, height=32, steps=2)  # 9-frame clips (3 latent frames) at the tiny preset's 8 fps
TF = 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def media():
    rng = np.random.default_rng(0)
    return dict(image=rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),  # another size: cropped to 32x32
                other=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                video=rng.integers(0, 256, (11, 32, 32, 3), dtype=np.uint8),  # 11 frames: not 4k+1
                short=rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))


@torch.inference_mode()
def encode(pipe, frames: np.ndarray) -> torch.Tensor:
    """The VAE's own encoding of uint8 frames (F, H, W, 3) as a clip, for independent expectations."""
    return pipe.vae.encode(to_model(frames))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


@pytest.fixture
def sampling_starts(pipe, monkeypatch):
    """The (init latents, strength) each sampling of ``pipe`` starts from, in order."""
    seen = []
    sample = pipe.sample

    def spy(s, condition=None, init_latents=None, callback=None, **kw):
        seen.append((init_latents, s.strength))
        return sample(s, condition=condition, init_latents=init_latents, callback=callback, **kw)

    monkeypatch.setattr(pipe, "sample", spy)
    return seen


@pytest.fixture
def no_sampling(pipe, monkeypatch):
    """Make any sampling fail the test: bad input must be refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started on bad input")
    monkeypatch.setattr(pipe, "sample", refuse)
    return pipe


# -- bookkeeping ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tf", [1, 2, 4])
def test_pixel_latent_index_round_trips_for_every_length(tf):
    for n in range(1, 42):
        valid = valid_length(n, tf)
        assert valid >= n and (valid - 1) % tf == 0
        assert valid == 1 or valid - tf < n  # the smallest valid length that holds n frames
        latents = latent_count(valid, tf)
        assert pixel_count(latents, tf) == valid
        covered = [p for j in range(latents) for p in pixel_span(j, tf)]
        assert covered == list(range(valid))  # the spans partition the clip, in order
        for p in range(n):
            assert p in pixel_span(latent_index(p, tf), tf)
        mask = frame_mask(latents, [latent_index(n - 1, tf)])
        assert n - 1 in masked_pixel_frames(mask, tf)


def test_a_large_input_video_is_decoded_at_twice_the_target_size_not_its_own(tmp_path, monkeypatch):
    from kinema.infer import tasks as task_module
    rng = np.random.default_rng(0)
    big = np.repeat(rng.integers(0, 255, (9, 45, 80, 3), dtype=np.uint8), 8, axis=1).repeat(8, axis=2)  # 640x360
    write_video(tmp_path / "big", big, fps=8)  # lossless PNG frames
    asked = []
    real = task_module.read_video
    monkeypatch.setattr(task_module, "read_video", lambda *a, **k: asked.append(k["max_pixels"]) or real(*a, **k))
    frames = tasks.load_video(tmp_path / "big", 8, 64, 36)
    assert asked == [128 * 72] and frames.shape == (9, 36, 64, 3)  # decoded at 128x72: 2x the target's sides
    direct = resize_video(big, 64, 36)
    assert np.abs(frames.astype(float) - direct).mean() < 4  # the same picture as resizing the full frames


def test_pad_policy_holds_the_last_frame_and_keeps_every_input_frame(media):
    for n in range(1, 12):
        clip = media["video"][:n]
        padded = pad_frames(clip, TF)
        assert len(padded) == valid_length(n, TF)
        assert np.array_equal(padded[:n], clip)
        assert (padded[n:] == clip[-1]).all()


def test_grid_counts():
    assert [grid_count(x, 4, 0, 4) for x in (0, 3, 5, 6, 9)] == [4, 4, 4, 8, 8]
    assert [grid_count(x, 4, 1, 1) for x in (0, 4, 7, 8)] == [1, 5, 9, 9]


def test_keyframe_times_land_in_the_latent_frame_holding_them():
    pixels = tasks.keyframe_frames([0.0, 0.25, 1.0], frames=9, fps=8, tf=TF)
    assert pixels == [0, 2, 8]
    assert [latent_index(p, TF) for p in pixels] == [0, 1, 2]


def test_place_refuses_overlapping_and_outside_pieces():
    piece = torch.zeros(1, 4, 2, 2, 2)
    cond = place([(0, piece), (3, piece[:, :, :1])], 4)
    assert cond.mask.tolist() == [[True, True, False, True]]
    with pytest.raises(ValueError, match="given twice"):
        place([(0, piece), (1, piece)], 4)
    with pytest.raises(ValueError, match="outside"):
        place([(3, piece)], 4)


# -- every task holds its given frames exactly ------------------------------------------------------------------


def test_image_to_video_frame_0_is_the_image_encoding(pipe, media):
    video = tasks.image_to_video(pipe, "a ball", media["image"], **KW)
    fitted = resize_video(media["image"][None], 32, 32, "crop")
    assert video.frames.shape == (9, 32, 32, 3)
    assert same(video.latents[:, :, :1], encode(pipe, fitted))
    assert not torch.equal(video.latents[:, :, 1], video.latents[:, :, 0])  # the rest is generated


def test_image_at_a_later_frame_pins_a_still_in_the_latent_frame_holding_it(pipe, media):
    video = tasks.image_to_video(pipe, "a ball", media["other"], frame=5, **KW)
    still = encode(pipe, np.repeat(media["other"][None], 1 + TF, axis=0))[:, :, 1:]
    assert latent_index(5, TF) == 2
    assert same(video.latents[:, :, 2:3], still)


def test_keyframes_hold_every_image(pipe, media):
    video = tasks.keyframes(pipe, "a ball", [(0.0, media["other"]), (1.0, media["image"])], **KW)
    fitted = resize_video(media["image"][None], 32, 32, "crop")
    assert same(video.latents[:, :, :1], encode(pipe, media["other"][None]))
    assert same(video.latents[:, :, 2:3], encode(pipe, np.repeat(fitted, 1 + TF, axis=0))[:, :, 1:])


def test_fit_latents_reaches_least_squares_never_loses_and_leaves_the_decoder_alone():
    torch.manual_seed(0)
    decoder = torch.nn.Linear(4, 12)  # a decoder with a known best latent: least squares
    target, z0 = torch.randn(3, 12).clamp(-1, 1), torch.randn(3, 4)

    @torch.no_grad()
    def loss(z):
        return float(torch.nn.functional.mse_loss(decoder(z), target))

    with torch.no_grad():
        best = torch.linalg.lstsq(decoder.weight, (target - decoder.bias).T).solution.T
    with torch.inference_mode():  # as the tasks call it
        ten, many = fit_latents(decoder, z0, target, steps=10), fit_latents(decoder, z0, target, steps=400)
    assert loss(best) < loss(ten) < loss(z0)
    assert loss(many) == pytest.approx(loss(best), abs=1e-4)
    assert loss(fit_latents(decoder, z0, target, steps=3, lr=100.0)) <= loss(z0)  # overshooting keeps the best seen
    assert fit_latents(decoder, z0, target, steps=0) is z0
    assert all(p.grad is None for p in decoder.parameters())  # only the latents were differentiated
    with pytest.raises(ValueError, match="fit steps must be an integer >= 0"):
        fit_latents(decoder, z0, target, steps=-1)


def test_a_first_frame_image_is_decoded_fitted_to_it_and_sampled_from_its_encoding(pipe, media):
    image = media["other"]
    for run in (lambda **kw: tasks.image_to_video(pipe, "a ball", image, **kw, **KW),
                lambda **kw: tasks.keyframes(pipe, "a ball", [(0.0, image), (1.0, media["image"])], **kw, **KW)):
        plain, fitted = run(fit_steps=0), run()
        assert same(fitted.latents, plain.latents)  # the DiT saw the encoder's latent either way
        assert np.array_equal(plain.frames, pipe.decode(plain.latents))

        def error(video):
            return np.abs(video.frames[0].astype(float) - image).mean()

        assert error(fitted) < error(plain)
        assert not np.array_equal(fitted.frames[1:], plain.frames[1:])  # later frames decode after the fitted one
        assert fitted.timings["fit"] > 0 and "fit" not in plain.timings
    later = tasks.image_to_video(pipe, "a ball", image, frame=5, **KW)  # a still later on: nothing fitted
    assert "fit" not in later.timings and np.array_equal(later.frames, pipe.decode(later.latents))
    pipe.vae_tiles = (2, 1)  # decoding in tiles (to bound memory): decoded as encoded, no backward pass
    try:
        tiled = tasks.image_to_video(pipe, "a ball", image, **KW)
        assert "fit" not in tiled.timings and np.array_equal(tiled.frames, pipe.decode(tiled.latents))
    finally:
        pipe.vae_tiles = None


def fades(out: np.ndarray, start: np.ndarray, end: np.ndarray) -> bool:
    """Whether ``out`` goes from ``start``'s frames towards ``end``'s: each pixel between the two, and each
    frame nearer ``end`` than the one before it."""
    lo, hi = np.minimum(start, end), np.maximum(start, end)
    if not ((out >= lo) & (out <= hi)).all():
        return False
    share = [np.abs(o.astype(float) - s).sum() / max(np.abs(e.astype(float) - s).sum(), 1.0)
             for o, s, e in zip(out, start, end)]
    return all(a < b for a, b in zip(share, share[1:])) and 0 < share[0] and share[-1] < 1


def test_extend_forward_starts_from_the_end_of_the_input(pipe, media):
    clip = media["video"]
    video = tasks.extend(pipe, "a ball", clip, seconds=1.0, join="cut", **KW)
    assert len(video.frames) == len(clip) + 8 and np.array_equal(video.frames[:len(clip)], clip)
    assert same(video.latents[:, :, :2], encode(pipe, clip[-5:]))  # last 2 latent frames' worth, a clip of its own
    # by default the 5 frames the window shares with the input fade from the input to their decoding
    faded = tasks.extend(pipe, "a ball", clip, seconds=1.0, **KW)
    decoded = pipe.decode(faded.latents)
    assert np.array_equal(faded.frames[:len(clip) - 5], clip[:-5]) and np.array_equal(faded.frames[len(clip):], video.frames[len(clip):])
    assert fades(faded.frames[len(clip) - 5:len(clip)], clip[-5:], decoded[:5])


def test_extend_backward_ends_with_the_start_of_the_input(pipe, media):
    clip = media["video"]
    video = tasks.extend(pipe, "a ball", clip, seconds=1.0, direction="backward", join="cut", **KW)
    assert len(video.frames) == 9 + len(clip) and np.array_equal(video.frames[-len(clip):], clip)
    given = encode(pipe, np.concatenate([clip[:1], clip[:8]]))[:, :, 1:]  # a proper start, then frames 0..7
    assert same(video.latents[:, :, -2:], given)
    faded = tasks.extend(pipe, "a ball", clip, seconds=1.0, direction="backward", **KW)
    decoded = pipe.decode(faded.latents)  # 9 new frames, then the window's copy of the input's first 8
    assert np.array_equal(faded.frames[:9], video.frames[:9]) and np.array_equal(faded.frames[9 + 8:], clip[8:])
    assert fades(faded.frames[9:9 + 8], decoded[9:], clip[:8])


def test_extend_a_clip_shorter_than_the_overlap(pipe, media):
    clip = media["short"]
    forward = tasks.extend(pipe, "a ball", clip, seconds=0.5, **KW)
    assert same(forward.latents[:, :, :1], encode(pipe, clip[-1:])) and len(forward.frames) == 2 + 4
    backward = tasks.extend(pipe, "a ball", clip, seconds=0.5, direction="backward", **KW)
    held = np.concatenate([clip[:1], clip, clip[-1:], clip[-1:]])  # start, 2 frames, last frame held to 4
    assert same(backward.latents[:, :, -1:], encode(pipe, held)[:, :, 1:])


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_extend_starts_sampling_from_the_carried_motion_at_its_strength(pipe, direction, sampling_starts):
    clip = square_clip(11, 8, 1.0, size=32, side=6)
    seen = sampling_starts
    video = tasks.extend(pipe, "a ball", clip, 1.0, direction, motion_strength=0.3, **KW)
    if direction == "forward":  # the window: the clip's last 5 frames, then 8 carried on
        guess = np.concatenate([clip[-5:], carry_motion(clip, 8)])
    else:  # 9 carried back before the clip's first 8
        guess = np.concatenate([carry_motion(clip[::-1], 9)[::-1], clip[:8]])
    init, strength = seen[-1]
    assert strength == 0.3 and same(init, encode(pipe, guess))
    # the given latent frames are still held exactly as the condition encodes them
    if direction == "forward":
        assert same(video.latents[:, :, :2], encode(pipe, clip[-5:]))
    else:
        assert same(video.latents[:, :, -2:], encode(pipe, np.concatenate([clip[:1], clip[:8]]))[:, :, 1:])
    tasks.extend(pipe, "a ball", clip, 1.0, direction, motion_strength=1.0, **KW)
    assert seen[-1] == (None, 1.0)  # 1: from pure noise, nothing carried


def test_connect_holds_both_ends_and_joins_the_inputs(pipe, media):
    a, b = media["video"], media["video"][::-1][:9].copy()
    transition, joined = tasks.connect(pipe, "a ball", a, b, seconds=0.5, join="cut", **KW)
    assert len(transition.frames) == 4
    assert np.array_equal(joined.frames, np.concatenate([a, transition.frames, b]))
    _, faded = tasks.connect(pipe, "a ball", a, b, seconds=0.5, **KW)  # A's last 5 and B's first 8 frames fade
    decoded = pipe.decode(faded.latents)  # A's last 5 frames, the transition, B's first 8
    assert np.array_equal(faded.frames[len(a):len(a) + 4], transition.frames)
    assert np.array_equal(faded.frames[:len(a) - 5], a[:-5]) and np.array_equal(faded.frames[-1:], b[-1:])
    assert fades(faded.frames[len(a) - 5:len(a)], a[-5:], decoded[:5])
    assert fades(faded.frames[len(a) + 4:len(a) + 12], decoded[9:], b[:8])
    assert same(transition.latents[:, :, :2], encode(pipe, a[-5:]))
    assert same(transition.latents[:, :, -2:], encode(pipe, np.concatenate([b[:1], b[:8]]))[:, :, 1:])


def test_connect_starts_from_a_carried_on_cross_faded_into_b_carried_back(pipe, sampling_starts):
    a, b = square_clip(11, 2, 1.0, size=32, side=6), square_clip(9, 16, 1.0, size=32, side=6)
    seen = sampling_starts
    transition, _ = tasks.connect(pipe, "a ball", a, b, seconds=0.5, motion_strength=0.5, **KW)
    after_a, before_b = carry_motion(a, 4).astype(float), carry_motion(b[::-1], 4)[::-1].astype(float)
    w = np.arange(1, 5)[:, None, None, None] / 5  # the new frames go from A's carry to B's
    middle = np.rint((1 - w) * after_a + w * before_b).astype(np.uint8)
    init, strength = seen[-1]
    assert strength == 0.5 and same(init, encode(pipe, np.concatenate([a[-5:], middle, b[:8]])))
    assert same(transition.latents[:, :, :2], encode(pipe, a[-5:]))  # the given frames are held as ever
    tasks.connect(pipe, "a ball", a, b, seconds=0.5, motion_strength=1.0, **KW)
    assert seen[-1] == (None, 1.0)


@pytest.mark.parametrize("with_image", [False, True])
def test_loop_is_a_cycle(pipe, media, with_image):
    from kinema.infer.pipeline import LOOP_WARMUP

    image = media["other"] if with_image else None
    video = tasks.loop(pipe, "a ball", image, frames=13, **KW)
    assert len(video.frames) == 12  # the period: frame 12 would be frame 0 again
    latents = video.latents
    assert latents.shape[2] == 3  # three latent frames of 4 pixel frames each, all of them the loop
    if with_image:  # given, it stays exactly as encoded while the cycle turns around it
        assert same(latents[:, :, :1], encode(pipe, np.repeat(media["other"][None], TF + 1, axis=0))[:, :, 1:])
    # decoded after its own end (continued backwards), so its first frames follow its last ones as it plays
    before = [(i - LOOP_WARMUP) % 3 for i in range(LOOP_WARMUP)]
    assert np.array_equal(video.frames, pipe.decode(torch.cat([latents[:, :, before], latents], dim=2))[-12:])
    assert not np.array_equal(video.frames[1:9], pipe.decode(latents)[1:9])  # not the period decoded as a clip
    # the step cache, which reuses residuals across similar inputs, stays off while the cycle turns
    assert same(tasks.loop(pipe, "a ball", image, frames=13, cache_threshold=0.9, **KW).latents, latents)


@pytest.mark.parametrize("context", [0, 1, 2])
def test_cyclic_velocity_turns_frames_and_their_times_together(context):
    x = torch.arange(4.0).view(1, 1, 4, 1, 1)
    t = torch.tensor([[0.0, 0.5, 0.5, 0.5]])  # frame 0 given (time 0)
    seen = []

    def weighted(x, t_frames):  # not shift-equivariant: each window position has its own weight
        seen.append((x.flatten().tolist(), t_frames.flatten().tolist()))
        return x * torch.arange(1.0, x.shape[2] + 1).view(1, 1, -1, 1, 1)

    v = cyclic_velocity(weighted, context=context)
    for i in range(6):
        out = v(x, t).flatten().tolist()
        r = i % 4
        frames_in, times_in = seen[-1]
        # turned by r, after copies of the `context` frames before the turned first one in the cycle
        assert frames_in == [float((j + r) % 4) for j in range(-context, 4)]
        assert times_in == [0.0 if (j + r) % 4 == 0 else 0.5 for j in range(-context, 4)]  # frame 0's time with it
        # frame j sat at window position context + (j - r) mod 4 (weight 1 + that) and comes back in place;
        # the copies' predictions are dropped
        assert out == [j * (1.0 + context + (j - r) % 4) for j in range(4)]
    with pytest.raises(ValueError, match="cannot be preceded by 5"):
        cyclic_velocity(weighted, context=5)(x, t)


@pytest.mark.parametrize("sampler", ["euler", "heun", "unipc"])
def test_cyclic_sampling_of_a_pointwise_field_is_plain_sampling(sampler):
    from kinema.flow import sampling_schedule
    from kinema.flow.samplers import get_sampler
    from kinema.tasks import conditioned_velocity

    target = torch.randn(1, 2, 1, 3, 3, generator=torch.Generator().manual_seed(0))  # one image for every frame

    def field(x, t_frames):  # the rectified-flow velocity toward it: the same rule at every frame position
        return (x - target) / t_frames[:, None, :, None, None].clamp_min(1e-6)

    noise = torch.randn(1, 2, 5, 3, 3, generator=torch.Generator().manual_seed(1))
    ts = sampling_schedule(4, shift=2.0)
    plain = get_sampler(sampler)(conditioned_velocity(field, None), noise, ts)
    turned = get_sampler(sampler)(conditioned_velocity(cyclic_velocity(field), None), noise, ts)
    assert torch.allclose(turned, plain, atol=1e-6)


def test_loop_seam_measure():
    frames = np.zeros((8, 4, 4, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(8)[:, None, None] * 10  # +10 per frame, wrap 70 -> 0
    seam, typical = tasks.loop_seam(frames)
    assert typical == pytest.approx(10 / 3) and seam == pytest.approx(70 / 3)


def test_edit_starts_from_the_input_and_keeps_its_length(pipe, media, monkeypatch):
    clip = media["video"]
    seen = {}
    sample = pipe.sample

    def spy(s, condition=None, init_latents=None, callback=None, **kw):
        seen["init"], seen["strength"] = init_latents, s.strength
        return sample(s, condition=condition, init_latents=init_latents, callback=callback, **kw)

    monkeypatch.setattr(pipe, "sample", spy)
    light = tasks.edit(pipe, "a ball", clip, strength=0.05, **KW)
    init = encode(pipe, pad_frames(clip, TF))
    assert same(seen["init"], init) and seen["strength"] == 0.05
    assert len(light.frames) == len(clip)
    full = tasks.edit(pipe, "a ball", clip, strength=1.0, **KW)
    assert (light.latents - init).norm() < 0.5 * (full.latents - init).norm()


def test_image_generation_is_one_frame_saved_as_png(pipe, tmp_path):
    video = tasks.image(pipe, "a ball", **KW)
    assert video.frames.shape == (1, 32, 32, 3) and video.latents.shape[2] == 1
    frames, _ = read_video(video.save(tmp_path / "still.png"))
    assert np.array_equal(frames[0], video.frames[0])


def test_paths_and_arrays_give_the_same_result(pipe, media, tmp_path):
    path = tmp_path / "clip"
    write_video(path, media["video"], fps=8)  # a lossless folder of PNGs at the request's fps
    from_path = tasks.extend(pipe, "a ball", path, seconds=0.5, **KW)
    from_array = tasks.extend(pipe, "a ball", media["video"], seconds=0.5, **KW)
    assert np.array_equal(from_path.frames, from_array.frames)
    # the output's metadata says which task made it, from what, and its own length
    assert json.loads(from_path.metadata()["task"]) == {
        "task": "extend", "frames": len(from_path.frames), "video": str(path), "seconds": 0.5, "direction": "forward",
        "new_frames": 4, "overlap": 2, "join": "fade", "motion_strength": tasks.MOTION_STRENGTH, "resize": "crop"}
    assert json.loads(from_array.metadata()["task"])["video"] == "(array)"
    transition, joined = tasks.connect(pipe, "a ball", path, media["video"], seconds=0.5, **KW)
    parts = [json.loads(v.metadata()["task"]) for v in (transition, joined)]
    assert [(p["part"], p["frames"]) for p in parts] == [("transition", 4), ("joined", len(joined.frames))]


# -- bad input is refused before sampling --------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    return tmp_path


@pytest.mark.parametrize("call,match", [
    (lambda p, d, m: tasks.image_to_video(p, "x", d / "broken.png", **KW), "cannot decode"),
    (lambda p, d, m: tasks.image_to_video(p, "x", d / "missing.png", **KW), "no such file"),
    (lambda p, d, m: tasks.image_to_video(p, "x", m["other"], frame=9, **KW), r"image frame must be .* \[0, 8\]"),
    (lambda p, d, m: tasks.image_to_video(p, "x", m["other"].astype(np.float32), **KW), "uint8"),
    (lambda p, d, m: tasks.extend(p, "x", d / "broken.mp4", 1.0, **KW), "cannot decode"),
    (lambda p, d, m: tasks.extend(p, "x", m["video"], 0, **KW), "seconds must be"),
    (lambda p, d, m: tasks.extend(p, "x", m["video"], 1.0, "sideways", **KW), "direction"),
    (lambda p, d, m: tasks.extend(p, "x", m["video"], 1.0, frames=17, **KW), "sets .*frames"),
    (lambda p, d, m: tasks.extend(p, "x", m["video"], 1.0, overlap=0, **KW), "overlap"),
    (lambda p, d, m: tasks.extend(p, "x", m["video"], 1.0, motion_strength=0, **KW), r"motion strength .* \(0, 1\]"),
    (lambda p, d, m: tasks.extend(p, "x", m["video"], 1.0, motion_strength=1.5, **KW), "motion strength"),
    (lambda p, d, m: tasks.connect(p, "x", m["video"], m["video"], 1.0, motion_strength=-1, **KW), "motion strength"),
    (lambda p, d, m: tasks.connect(p, "x", m["video"], d / "broken.mp4", 1.0, **KW), "video B"),
    (lambda p, d, m: tasks.edit(p, "x", m["video"], 0.0, **KW), r"strength must be in \(0, 1\]"),
    (lambda p, d, m: tasks.edit(p, "x", m["video"], 1.5, **KW), r"strength must be in \(0, 1\]"),
    (lambda p, d, m: tasks.edit(p, "x", m["video"], float("nan"), **KW), "strength"),
    (lambda p, d, m: tasks.keyframes(p, "x", [(1.5, m["other"])], **KW), r"outside the clip.*0 \.\. 1\.000 s"),
    (lambda p, d, m: tasks.keyframes(p, "x", [(-0.1, m["other"])], **KW), "outside the clip"),
    (lambda p, d, m: tasks.keyframes(p, "x", [(0.2, m["other"]), (0.3, m["other"])], **KW), "same latent frame"),
    (lambda p, d, m: tasks.keyframes(p, "x", [(0.5, d / "broken.png")], **KW), "keyframe at 0.5 s"),
    (lambda p, d, m: tasks.loop(p, "x", frames=5, **KW), "at least 9 frames"),
    (lambda p, d, m: tasks.image(p, "x", frames=9, **KW), "sets .*frames"),
    (lambda p, d, m: tasks.image_to_video(p, "x", m["other"], resize="squash", **KW), "resize policy"),
    (lambda p, d, m: tasks.image_to_video(p, "x", m["other"], fit_steps=-1, **KW), "fit steps must be an integer"),
    (lambda p, d, m: tasks.extend(p, "x", m["video"], 1.0, join="blend", **KW), r"join must be one of \['fade', 'cut'\]"),
    (lambda p, d, m: tasks.connect(p, "x", m["video"], m["video"], 1.0, join=None, **KW), "join must be"),
    (lambda p, d, m: tasks.keyframes(p, "x", [(0.0, m["other"])], fit_steps=2.5, **KW), "fit steps"),
])
def test_bad_input_is_refused_before_sampling(no_sampling, broken, media, call, match):
    with pytest.raises(InputError, match=match):
        call(no_sampling, broken, media)
