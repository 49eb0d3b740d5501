"""The procedural world: determinism, JSON round trips, captions that parse back, the held-out
split, any size and aspect, physics that keeps objects in the frame."""

import dataclasses
import json
import math

import numpy as np
import pytest

from kinema.data.world import (
    BACKGROUNDS, CAMERAS, HELD_OUT, MOTIONS, TEXTURED_BACKGROUNDS, ObjectSpec, Scene, SceneSpec, WorldClips,
    WorldObject, caption, camera_at, is_held_out, make_clip, parse_caption, render, sample_scene, sample_spec,
    scene_from_prompt, simulate, world_box,
)  # fmt: skip
from kinema.data.world.captions import (
    BACKGROUND_WORDS, CAMERA_WORDS, COLOUR_WORDS, MOTION_WORDS, SHAPE_WORDS, SIZE_WORDS,
)  # fmt: skip
from kinema.data.world.physics import floor_reach
from kinema.data.world.vocab import CIRCUMRADIUS, COLOURS, SIZES


def _asked_matches(asked: SceneSpec, truth: SceneSpec) -> bool:
    """Every attribute the caption names equals the scene's; unnamed ones (None) are free."""
    if len(asked.objects) != len(truth.objects):
        return False
    for a, t in zip(asked.objects, truth.objects):
        if (a.colour, a.shape, a.motion) != (t.colour, t.shape, t.motion) or a.size not in (None, t.size):
            return False
    return asked.background in (None, truth.background) and asked.camera in (None, truth.camera)


def test_same_seed_same_clip_and_caption():
    a_frames, a_caption, a_scene = make_clip(7, 64, 48, 9, 8)
    b_frames, b_caption, b_scene = make_clip(7, 64, 48, 9, 8)
    assert np.array_equal(a_frames, b_frames) and a_caption == b_caption and a_scene == b_scene
    c_frames, c_caption, _ = make_clip(8, 64, 48, 9, 8)
    assert not np.array_equal(a_frames, c_frames) or a_caption != c_caption
    clips = list(WorldClips(64, 48, 9, 8, start=7, count=2))
    assert len(clips) == 2 and np.array_equal(clips[0][0], a_frames) and clips[0][1] == a_caption


def test_scenes_without_the_motion_check_are_deterministic_and_simulate_less(monkeypatch):
    import kinema.data.world.sample as sample

    calls = []
    real = sample.simulate
    monkeypatch.setattr(sample, "simulate", lambda scene: calls.append(1) or real(scene))
    for seed in range(6):
        loose = sample_scene(seed, 128, 128, 5, 8, motion_check=False)
        assert loose == sample_scene(seed, 128, 128, 5, 8, motion_check=False)
        assert 1 <= len(loose.objects) <= 3 and render(loose).shape == (5, 128, 128, 3)
    assert not calls  # no set-up is simulated to read its motion back
    sample_scene(0, 128, 128, 5, 8)
    assert calls  # the checked sampler does


def test_scene_and_spec_round_trip_through_json():
    scene = sample_scene(3, 96, 64, 9, 8, num_objects=3)
    back = Scene.from_dict(json.loads(json.dumps(scene.to_dict())))
    assert back == scene and np.array_equal(render(back), render(scene))
    spec = scene.spec()
    assert SceneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="unknown key"):
        Scene.from_dict({**scene.to_dict(), "colour_space": "rgb"})


def test_bad_values_are_refused_with_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown colour 'white'"):
        WorldObject("circle", "white", "small", 5.0, "still", 10.0, 10.0)
    with pytest.raises(ValueError, match="camera_rate"):
        Scene(64, 64, 9, 8, "sky", (WorldObject("circle", "red", "small", 5.0, "still", 30.0, 30.0),), "pan_left", 3.0)
    with pytest.raises(ValueError, match="held_out"):
        sample_scene(0, 64, 64, 9, 8, held_out="some")


@pytest.mark.parametrize("style", ["train", "heldout_phrasing"])
def test_every_caption_parses_back_to_its_scene(style):
    rng = np.random.default_rng(0)
    for _ in range(400):
        spec = sample_spec(rng, None, "allow")
        text = caption(spec, rng, style)
        assert _asked_matches(parse_caption(text), spec), text


def test_held_out_phrasings_never_appear_in_training_captions():
    held = set()
    for table in (COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS, MOTION_WORDS, BACKGROUND_WORDS, CAMERA_WORDS):
        for train, heldout in table.values():
            assert not set(train) & set(heldout)
            held.update(heldout)
    rng = np.random.default_rng(1)
    seen_heldout_word = False
    for _ in range(300):
        spec = sample_spec(rng, None, "allow")
        words = " " + caption(spec, rng, "train").lower() + " "
        assert not any(f" {w} " in words or f" {w}," in words for w in held), words
        heldout_words = " " + caption(spec, rng, "heldout_phrasing").lower() + " "
        seen_heldout_word |= any(f" {w} " in heldout_words for w in held)
    assert seen_heldout_word


def test_parse_caption_reads_free_prompts_and_refuses_empty_ones():
    spec = parse_caption("A crimson sphere keeps bouncing under a blue sky")
    assert spec.objects == (ObjectSpec("red", "circle", "bounces"),) and spec.background == "sky"
    assert spec.camera is None  # "blue" in "blue sky" is the background, not a second object
    spec = parse_caption("a green triangle falls while a yellow star spins at night, as the camera zooms in")
    assert [(o.colour, o.shape, o.motion) for o in spec.objects] == [("green", "triangle", "falls"),
                                                                     ("yellow", "star", "spins")]
    assert (spec.background, spec.camera) == ("night", "zoom_in")
    with pytest.raises(ValueError, match="no object"):
        parse_caption("a beautiful sunset over the sea")
    with pytest.raises(ValueError):
        parse_caption("   ")


def test_scene_from_prompt_shows_what_was_asked():
    text = "a small blue box slides to the left on a black background"
    scene = scene_from_prompt(text, 128, 96, 17, 8, seed=4)
    (obj,) = scene.objects
    assert (obj.colour, obj.shape, obj.motion, obj.size, scene.background) == ("blue", "square", "moves_left",
                                                                                "small", "black")
    track = simulate(scene).centres[:, 0, 0]
    assert np.all(np.diff(track) < 0)  # moves left every frame
    assert scene_from_prompt(text, 128, 96, 17, 8, seed=4) == scene


def test_held_out_combinations_are_excluded_or_isolated():
    assert 8 <= len(HELD_OUT) <= 12 and len(set(HELD_OUT)) == len(HELD_OUT)
    held_colours = {c for c, _, _ in HELD_OUT}
    assert held_colours <= set(COLOURS)
    rng = np.random.default_rng(2)
    for _ in range(300):
        assert not any(is_held_out(o) for o in sample_spec(rng, None, "exclude").objects)
        assert any(is_held_out(o) for o in sample_spec(rng, None, "only").objects)
    for seed in range(20):  # the full sampler too
        assert not any(is_held_out(o) for o in sample_scene(seed, 64, 64, 9, 8).objects)


def test_sampled_scenes_cover_the_vocabulary():
    rng = np.random.default_rng(3)
    specs = [sample_spec(rng, None, "allow") for _ in range(400)]
    assert {s.background for s in specs} == set(BACKGROUNDS)
    assert {s.camera for s in specs} == set(CAMERAS)
    assert {o.motion for s in specs for o in s.objects} == set(MOTIONS)
    for s in specs:
        assert s.camera == "static" or s.background in TEXTURED_BACKGROUNDS  # a plain colour shows no camera
        assert len({o.colour for o in s.objects}) == len(s.objects)
        assert not any(o.shape == "circle" and o.motion == "spins" for o in s.objects)


@pytest.mark.parametrize("size", [(128, 128), (192, 112), (112, 192), (64, 64)])
def test_any_size_renders_and_objects_stay_inside(size):
    width, height = size
    for seed in range(12):
        scene = sample_scene(seed, width, height, 17, 8)
        frames = render(scene)
        assert frames.shape == (17, height, width, 3) and frames.dtype == np.uint8
        x0, y0, x1, y1 = world_box(scene)
        tracks = simulate(scene)
        for i, obj in enumerate(scene.objects):
            reach = CIRCUMRADIUS[obj.shape] * tracks.radius[:, i]  # walls hold the bounding circle
            lowest = tracks.radius[:, i] * [floor_reach(obj.shape, a) for a in tracks.angle[:, i]]  # the floor the shape
            xy = tracks.centres[:, i]
            assert np.all(xy[:, 0] - reach >= x0 - 1e-6) and np.all(xy[:, 0] + reach <= x1 + 1e-6)
            assert np.all(xy[:, 1] - reach >= y0 - 1e-6) and np.all(xy[:, 1] + lowest <= y1 + 1e-6)
        # the box is seen in every frame, so objects are always fully on screen
        pan, scale = camera_at(scene.camera, scene.camera_rate, tracks.times)
        left = width / 2 + scale * (x0 - pan - width / 2)
        right = width / 2 + scale * (x1 - pan - width / 2)
        assert np.all(left >= -1e-6) and np.all(right <= width + 1e-6)


def test_objects_bounce_off_walls_and_the_floor():
    unit = 64.0
    ball = WorldObject("circle", "red", "medium", SIZES["medium"] * unit, "moves_left", 20.0, 32.0, vx=-60.0)
    scene = Scene(64, 64, 33, 8, "black", (ball,))
    x = simulate(scene).centres[:, 0, 0]
    assert x.min() >= ball.radius - 1e-6 and np.diff(x)[0] < 0 < np.diff(x)[-1]  # hit the left wall, came back

    drop = WorldObject("circle", "red", "medium", 6.0, "bounces", 32.0, 12.0, gravity=True, restitution=0.8)
    y = simulate(Scene(64, 64, 25, 8, "black", (drop,))).centres[:, 0, 1]
    low = int(np.argmax(y))
    assert y.max() <= 64 - 6.0 + 1e-6 and 0 < low < 24 and y[low + 1] < y[low]  # reversed at the floor
    assert y[low:].min() > y[0]  # and rose less high than it fell (restitution < 1)

    brick = dataclasses.replace(drop, restitution=0.0, motion="falls")
    y = simulate(Scene(64, 64, 25, 8, "black", (brick,))).centres[:, 0, 1]
    assert np.allclose(y[-5:], 64 - 6.0)  # landed and stays


def test_objects_collide_instead_of_passing_through():
    a = WorldObject("circle", "red", "medium", 8.0, "moves_right", 20.0, 32.0, vx=40.0)
    b = WorldObject("circle", "blue", "medium", 8.0, "moves_left", 108.0, 32.0, vx=-40.0)
    tracks = simulate(Scene(128, 64, 33, 8, "black", (a, b)))
    gap = np.linalg.norm(tracks.centres[:, 0] - tracks.centres[:, 1], axis=1)
    assert gap.min() >= 16.0 - 1e-3
    assert tracks.centres[-1, 0, 0] < tracks.centres[-1, 1, 0]  # still on their own sides


def test_shapes_are_anti_aliased_with_the_right_area():
    for shape in ("circle", "square", "triangle", "star"):
        obj = WorldObject(shape, "red", "large", 20.0, "still", 64.0, 64.0, angle=0.3)
        frame = render(Scene(128, 128, 1, 8, "black", (obj,)))[0].astype(np.float64)
        coverage = (frame[..., 0] - 8.0) / (COLOURS["red"][0] - 8.0)  # 0 on the background, 1 inside
        assert abs(coverage.sum() - math.pi * 20.0**2) < 0.02 * math.pi * 20.0**2, shape
        assert ((coverage > 0.1) & (coverage < 0.9)).sum() > 20  # soft edges, not a hard 0/1 mask


def test_camera_moves_the_background_but_not_the_world():
    obj = WorldObject("circle", "red", "small", 6.0, "still", 64.0, 64.0)
    static = render(Scene(128, 128, 9, 8, "checkered", (obj,), seed=1))
    panned = render(Scene(128, 128, 9, 8, "checkered", (obj,), "pan_right", 20.0, seed=1))
    assert np.array_equal(static[0], panned[0])  # the camera starts where a static one stays
    assert not np.array_equal(static[-1], panned[-1])
    assert np.array_equal(static[0], static[-1])


def test_world_windows_start_mid_way_and_still_read_back_as_their_captions():
    from kinema.data.world.captions import parse_caption
    from kinema.eval.world.evaluate import judge_video
    from kinema.train.data import render_world, world_window

    starts = []
    for seed in range(24):
        scene, caption, start = world_window(seed, 96, 96, 17, 8.0, span=2.0)
        assert 17 <= scene.frames <= 33 and 0 <= start <= scene.frames - 17
        starts.append(start)
        video, text = render_world(seed, 96, 96, 17, 8.0, span=2.0)
        assert text == caption and video.shape == (17, 96, 96, 3)
        assert np.array_equal(video, render(scene)[start:start + 17])  # only the window is drawn, the same
        assert judge_video(video, parse_caption(caption), 8.0)["all_correct"], (seed, caption, start)
    assert sum(s > 0 for s in starts) >= 6  # many clips start mid-way through their motions
    plain, start = world_window(5, 96, 96, 17, 8.0)[::2]  # span 1: a scene set up for the clip, from frame 0
    assert plain.frames == 17 and start == 0
