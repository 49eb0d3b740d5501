"""The world evaluator: right about ground-truth renders (blurred, noisy, colour-shifted like a
small VAE's output), wrong-footed by nothing, and clearly failing corrupted videos."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from kinema.data.world import (
    COLOURS, HELD_OUT, SHAPES, Scene, WorldObject, camera_at, is_held_out, parse_caption, render, render_background,
    sample_scene, scene_from_prompt,
)  # fmt: skip
from kinema.eval.temporal import dynamic_degree, optical_flow, temporal_flicker
from kinema.eval.world import (
    ATTRIBUTES, CATEGORIES, build_eval_prompts, evaluate_videos, judge_video, run_world_eval,
)  # fmt: skip


def vae_like(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild blur ([1, 2, 1] / 4 each way, sigma ~0.7 px), a per-channel gain and offset, and pixel
    noise: what a small VAE does to a clip."""
    x = np.pad(video.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    x = 0.25 * (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:])
    x = 0.25 * (x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:])
    x = x * rng.uniform(0.95, 1.05, size=3) + rng.uniform(-6, 6, size=3) + rng.normal(0, 4, size=x.shape)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _accuracy(size, seeds, frames=17, fps=8.0):
    width, height = size
    results = []
    for seed in seeds:
        scene = sample_scene(seed, width, height, frames, fps, held_out="allow")
        video = vae_like(render(scene), np.random.default_rng(seed))
        results.append(judge_video(video, scene.spec(), fps))
    table = {a: np.mean([r["attributes"][a] for r in results if a in r["attributes"]]) for a in ATTRIBUTES}
    return table, np.mean([r["all_correct"] for r in results])


@pytest.mark.parametrize("size,seeds", [((64, 64), range(150)), ((128, 128), range(1000, 1030)),
                                        ((192, 112), range(2000, 2015)), ((112, 192), range(3000, 3015))])
def test_ground_truth_renders_score_right_on_every_attribute(size, seeds):
    table, all_correct = _accuracy(size, seeds)
    assert all(v >= 0.99 for v in table.values()), table
    assert all_correct >= 0.98, table


def _moving_scene(seed):
    while True:
        scene = sample_scene(seed, 96, 96, 17, 8, num_objects=1, held_out="allow")
        if scene.objects[0].motion != "still":
            return scene
        seed += 10_000


def test_shuffled_frames_fail():
    for seed in range(12):
        scene = _moving_scene(seed)
        rng = np.random.default_rng(seed)
        order = np.roll(rng.permutation(17), 1)
        video = vae_like(render(scene)[order], rng)
        result = judge_video(video, scene.spec(), 8.0)
        assert not result["all_correct"], (scene.objects[0].motion, result["attributes"])
        assert not result["attributes"]["motion"] or not result["attributes"].get("camera", True)


def test_recoloured_and_reshaped_objects_fail():
    for seed in range(12):
        scene = sample_scene(seed, 96, 96, 17, 8, num_objects=1, held_out="allow")
        obj = scene.objects[0]
        rng = np.random.default_rng(seed)
        colour = [c for c in COLOURS if c != obj.colour][seed % 7]
        recoloured = dataclasses.replace(scene, objects=(dataclasses.replace(obj, colour=colour),))
        result = judge_video(vae_like(render(recoloured), rng), scene.spec(), 8.0)
        assert not result["attributes"]["colour"] and result["objects"][0]["colour"]["detected"] == colour

        shapes = [s for s in SHAPES if s != obj.shape and not (obj.motion == "spins" and s == "circle")]
        shape = shapes[seed % len(shapes)]
        reshaped = dataclasses.replace(scene, objects=(dataclasses.replace(obj, shape=shape),))
        result = judge_video(vae_like(render(reshaped), rng), scene.spec(), 8.0)
        assert not result["attributes"]["shape"] and result["objects"][0]["shape"]["detected"] == shape
        assert result["attributes"]["colour"]  # the rest is still judged right


@pytest.mark.parametrize("gone_from", [6, 12])
def test_an_object_vanishing_midway_fails_persistence(gone_from):
    for seed in range(8):
        scene = sample_scene(seed, 96, 96, 17, 8, held_out="allow")
        if len(scene.objects) > 1:  # the last object leaves, the others stay
            after = render(dataclasses.replace(scene, objects=scene.objects[:-1]))
        else:
            pan, scale = camera_at(scene.camera, scene.camera_rate, scene.times())
            after = (np.clip(render_background(scene, pan, scale), 0, 1) * 255 + 0.5).astype(np.uint8)
        video = render(scene)
        video[gone_from:] = after[gone_from:]
        result = judge_video(vae_like(video, np.random.default_rng(seed)), scene.spec(), 8.0)
        assert not result["persistence"] and not result["all_correct"]


def test_a_spawned_object_fails_persistence():
    ball = WorldObject("circle", "red", "medium", 10.0, "still", 30.0, 48.0)
    scene = Scene(96, 96, 17, 8, "grey", (ball,))
    video = render(scene)
    video[-4:] = render(dataclasses.replace(scene, objects=(ball, dataclasses.replace(ball, x=70.0))))[-4:]
    result = judge_video(vae_like(video, np.random.default_rng(0)), scene.spec(), 8.0)
    assert not result["persistence"]
    assert judge_video(vae_like(render(scene), np.random.default_rng(0)), scene.spec(), 8.0)["persistence"]


def test_eval_prompts_rows():
    prompts = build_eval_prompts(n_per_row=20, seed=0)
    assert [c for c, _, _ in prompts] == [c for c in CATEGORIES for _ in range(20)]
    assert prompts == build_eval_prompts(n_per_row=20, seed=0)
    for category, prompt, spec in prompts:
        assert parse_caption(prompt) == spec
        held = any(is_held_out(o) for o in spec.objects)
        assert held == (category == "single_heldout"), prompt
        assert len(spec.objects) == (2 if category == "two_objects" else 1)
        if category == "physics":
            assert spec.objects[0].motion in ("falls", "bounces")
    heldout_combos = {(o.colour, o.shape, o.motion) for c, _, s in prompts if c == "single_heldout" for o in s.objects}
    assert heldout_combos <= set(HELD_OUT)


def test_run_world_eval_on_ground_truth_and_on_garbage():
    def truth(prompt, seed):
        return vae_like(render(scene_from_prompt(prompt, 64, 64, 17, 8, seed)), np.random.default_rng(seed))

    report = run_world_eval(truth, n_per_row=3, width=64, height=64, frames=17, fps=8, seed=1)
    assert set(report["table"]) == set(CATEGORIES) | {"overall"}
    assert report["table"]["overall"]["all_correct"] >= 0.9 and report["table"]["overall"]["videos"] == 15

    blank = np.full((17, 64, 64, 3), 128, dtype=np.uint8)
    report = evaluate_videos([blank] * 3, [p[2] for p in build_eval_prompts(1, 0)[:3]], fps=8)
    row = report["table"]["all"]
    assert row["all_correct"] == 0.0 and row["colour"] == 0.0 and row["persistence"] == 0.0
    assert row["flicker"] == 1.0 and row["dynamic_degree"] == 0.0


def test_temporal_metrics():
    rng = np.random.default_rng(0)
    texture = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 1.5) * 60 + 128
    shifted = ndimage.shift(texture, (-1.5, 2.5), order=3)
    flow = optical_flow(texture[None, 16:80, 16:80], shifted[None, 16:80, 16:80])
    assert np.allclose(np.median(flow[0, 8:-8, 8:-8], axis=(0, 1)), [2.5, -1.5], atol=0.1)

    still = render(sample_scene(0, 64, 64, 9, 8))[:1].repeat(9, axis=0)
    assert temporal_flicker(still) == 1.0 and dynamic_degree(still)[0] is False
    assert dynamic_degree(vae_like(still, rng))[0] is False  # pixel noise is not motion
    moving = np.stack([np.roll(still[0], 3 * k, axis=1) for k in range(9)])
    assert temporal_flicker(moving) < 1.0 and dynamic_degree(moving)[0] is True


def test_touching_objects_of_two_colours_are_two_objects():
    red = WorldObject("circle", "red", "large", 16.0, "still", 40.0, 48.0)
    blue = WorldObject("square", "blue", "small", 8.0, "still", 40.0 + 16.0 + 8.0 * 1.1, 48.0)  # touching
    scene = Scene(96, 96, 9, 8, "white", (red, blue))
    result = judge_video(vae_like(render(scene), np.random.default_rng(0)), scene.spec(), 8.0)
    assert result["all_correct"], result["attributes"]


def test_eval_reconstruct_scores_the_vae_round_trip_not_the_renders(tiny_model_dir, tmp_path, one_thread):
    import json

    from kinema.cli import main

    out = tmp_path / "report.json"
    assert main(["eval", "world", "--reconstruct", "--model", str(tiny_model_dir), "--n", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "VAE reconstructions" in report["model"] and report["table"]["overall"]["videos"] == 5
    # a random VAE loses every object: the same prompts score near 100% when the renders are judged directly
    assert report["table"]["overall"]["colour"] < 0.5 and report["table"]["overall"]["all_correct"] == 0.0


def test_task_cases_move_the_way_they_say_and_direction_reads_them_back():
    from kinema.eval.tasks import MOVES, direction, task_cases

    cases = task_cases(8, 128, 128, 17, 8.0, seed=1, after=8, before=9)
    assert [case[2] for case in cases] == list(MOVES) * 2
    for prompt, clip, move, continuation, lead_in in cases:
        assert clip.shape == (17, 128, 128, 3) and direction(clip, 8.0) == move
        # the world goes on the same way after the clip, and came the same way before it: what extensions
        # forwards and backwards are asked to do
        assert continuation.shape == (9, 128, 128, 3) and np.array_equal(continuation[0], clip[-1])
        assert lead_in.shape == (10, 128, 128, 3) and np.array_equal(lead_in[-1], clip[0])
        assert direction(continuation, 8.0) == move and direction(lead_in, 8.0) == move
        opposite = {"moves_left": "moves_right", "moves_right": "moves_left", "moves_up": "moves_down",
                    "moves_down": "moves_up"}[move]
        assert direction(clip[::-1].copy(), 8.0) == opposite  # played backwards: the other way
        assert direction(np.repeat(clip[:1], 17, axis=0), 8.0) is None  # a still frame does not move


def test_eval_tasks_on_a_tiny_model(tiny_model_dir, tmp_path, one_thread):
    import json

    from kinema.cli import main

    out = tmp_path / "tasks.json"
    assert main(["eval", "tasks", "--model", str(tiny_model_dir), "--n", "2", "--steps", "2", "--guidance", "2.5",
                 "--shift", "4", "--motion-strength", "0.7", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cases"] == 2 and report["settings"]["steps"] == 2 and report["settings"]["guidance"] == 2.5
    assert report["settings"]["extend_motion_strength"] == 0.7
    assert report["settings"]["shift"] == 4.0
    assert report["settings"]["student"] is False  # the tiny model has none
    # the pinned first latent frame is the encoder's, decoded fitted to the image: above the VAE's round trip
    i2v = report["image_to_video"]
    assert i2v["psnr_db"] > i2v["vae_round_trip_psnr_db"] and report["settings"]["fit_steps"] == 10
    assert 0.0 <= i2v["direction_as_asked"] <= 1.0 and 0.0 <= i2v["text_to_video_direction_as_asked"] <= 1.0
    assert 0.0 <= report["extend"]["direction_kept"] <= 1.0 and report["extend"]["median_join_step"] >= 0.0
    assert 0.0 <= report["extend"]["backward_direction_kept"] <= 1.0
    assert 0.0 <= report["loop"]["seam_within_typical"] <= 1.0 and report["loop"]["median_typical_step"] >= 0.0
    assert 0.0 <= report["loop"]["seam_within_boundary"] <= 1.0 and report["loop"]["median_latent_boundary_step"] >= 0.0
    assert 0.0 <= report["image_loop"]["seam_within_typical"] <= 1.0
    assert all(0.0 <= report[k]["inner_within_typical"] <= 1.0 for k in ("loop", "image_loop"))


def test_eval_tasks_measures_the_parts_asked_for_as_a_full_run_does(tiny_model_dir, tmp_path, one_thread, capsys):
    import json

    from kinema.cli import main

    common = ["eval", "tasks", "--model", str(tiny_model_dir), "--n", "1", "--steps", "1"]
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert main(common + ["--json", str(full)]) == 0
    assert main(common + ["--only", "loop, extend", "--json", str(part)]) == 0
    full, part = json.loads(full.read_text()), json.loads(part.read_text())
    assert part["parts"] == ["extend", "loop"] and full["parts"] == ["image", "extend", "loop"]
    assert "image_to_video" not in part and "image_to_video" in full
    for key in ("extend", "loop", "image_loop"):  # each case sampled with its own seed, whatever else is measured
        assert part[key] == full[key]
    table = capsys.readouterr().out.split("tasks benchmark:")[-1]
    assert "(extend, loop only)" in table and "extend forwards" in table and "image-to-video" not in table
    capsys.readouterr()
    for bad in (["--only", "i2v"], ["--only", ""], ["--only", "image", "--motion-strength", "0.5"]):
        assert main(common + bad) == 2  # refused before any model loads
    err = capsys.readouterr().err
    assert "'i2v'" in err and "image, extend, loop" in err and "--only leaves out" in err
    assert main(["eval", "world", "--only", "extend", "--n", "1"]) == 2


def test_eval_world_generates_with_the_steps_and_guidance_asked_for(tiny_model_dir, tmp_path, one_thread, monkeypatch):
    import json

    from kinema.cli import main
    from kinema.infer import Pipeline

    seen = []
    original = Pipeline.generate

    def spy(self, prompt, **kw):
        seen.append((kw["steps"], kw["guidance"], kw["shift"], kw["guidance_interval"]))
        return original(self, prompt, **kw)

    monkeypatch.setattr(Pipeline, "generate", spy)
    out = tmp_path / "world.json"
    assert main(["eval", "world", "--model", str(tiny_model_dir), "--n", "1", "--steps", "1", "--guidance", "1.5",
                 "--shift", "5", "--guidance-interval", "0.2,0.9", "--json", str(out)]) == 0
    assert seen == [(1, 1.5, 5.0, (0.2, 0.9))] * 5  # one video per row
    assert json.loads(out.read_text())["sampling"] == {"steps": 1, "guidance": 1.5, "guidance_interval": [0.2, 0.9],
                                                       "shift": 5.0, "student": False, "dtype": "float32"}
    assert main(["eval", "world", "--model", str(tiny_model_dir), "--n", "1", "--steps", "1", "--json", str(out)]) == 0
    defaults = Pipeline.from_pretrained(tiny_model_dir).cfg.sampling
    sampling = json.loads(out.read_text())["sampling"]
    assert seen[-1] == (1, None, None, None)
    assert (sampling["guidance"], sampling["shift"]) == (defaults.guidance, defaults.shift)  # the model's, recorded
    assert sampling["guidance_interval"] == list(defaults.guidance_interval)
    assert main(["eval", "world", "--reconstruct", "--guidance", "2", "--n", "1"]) == 2  # refused: nothing is sampled
    assert main(["eval", "world", "--ground-truth", "--shift", "3", "--n", "1"]) == 2
    assert main(["eval", "world", "--model", str(tiny_model_dir), "--guidance-interval", "1,0", "--n", "1"]) == 2


def test_eval_world_with_the_step_cache_reports_what_it_reused(tiny_model_dir, tmp_path, one_thread):
    import json

    from kinema.cli import main

    out = tmp_path / "world.json"
    # a threshold no change reaches: every evaluation after a row's first reuses its cache
    assert main(["eval", "world", "--model", str(tiny_model_dir), "--n", "1", "--steps", "3", "--cache-threshold",
                 "1e9", "--json", str(out)]) == 0
    sampling = json.loads(out.read_text())["sampling"]
    # 5 videos x 3 steps x 2 rows (guided: conditional and unconditional), the first of each row's runs in full
    assert (sampling["cache_threshold"], sampling["cache_evaluations"], sampling["cache_reused"]) == (1e9, 30, 20)
    assert main(["eval", "world", "--model", str(tiny_model_dir), "--n", "1", "--steps", "1", "--cache-threshold",
                 "0", "--json", str(out)]) == 0
    assert "cache_threshold" not in json.loads(out.read_text())["sampling"]  # 0 is off, as for generate
    assert main(["eval", "world", "--cache-threshold", "-0.5", "--n", "1"]) == 2  # refused before any model loads
    assert main(["eval", "world", "--ground-truth", "--cache-threshold", "0.1", "--n", "1"]) == 2


def test_eval_tasks_with_the_step_cache_leaves_the_loops_uncached(tiny_model_dir, tmp_path, one_thread):
    import json

    from kinema.cli import main

    out = tmp_path / "tasks.json"
    assert main(["eval", "tasks", "--model", str(tiny_model_dir), "--n", "1", "--steps", "2", "--cache-threshold",
                 "1e9", "--json", str(out)]) == 0
    settings = json.loads(out.read_text())["settings"]
    # one case: image-to-video, the prompt alone, extend forwards and backwards (4 runs x 2 steps x 2 rows,
    # one of each row's 2 reused); its two loops are sampled as cycles, which the cache does not serve
    assert (settings["cache_evaluations"], settings["cache_reused"]) == (16, 8)


def test_eval_samples_with_the_models_student_unless_told_not_to(tiny_model_dir, tmp_path, one_thread, monkeypatch):
    import json
    import shutil

    from kinema.cli import main
    from kinema.infer import Pipeline
    from kinema.weights import load_dit
    from kinema.weights.student import StudentInfo, save_student

    folder = tmp_path / "with-student"
    shutil.copytree(tiny_model_dir, folder)
    save_student(folder, load_dit(folder), StudentInfo(steps=1, times=(1.0, 0.0), guidance=2.0))
    used = []  # per generated video: did the student sample it?
    original = Pipeline.generate

    def spy(self, prompt, **kw):
        video = original(self, prompt, **kw)
        used.append("student" in video.metadata())
        return video

    monkeypatch.setattr(Pipeline, "generate", spy)
    out = tmp_path / "world.json"
    assert main(["eval", "world", "--model", str(folder), "--n", "1", "--steps", "1", "--json", str(out)]) == 0
    assert used == [True] * 5 and json.loads(out.read_text())["sampling"]["student"] is True
    used.clear()
    assert main(["eval", "world", "--model", str(folder), "--n", "1", "--steps", "1", "--no-student", "--json", str(out)]) == 0
    assert used == [False] * 5 and json.loads(out.read_text())["sampling"]["student"] is False
    used.clear()
    assert main(["eval", "world", "--model", str(folder), "--n", "1", "--steps", "2", "--json", str(out)]) == 0
    assert used == [False] * 5  # another step count: the teacher
    assert main(["eval", "world", "--reconstruct", "--no-student", "--n", "1"]) == 2  # refused: nothing is sampled
    used.clear()  # flags the student would not use are refused, not recorded as used
    assert main(["eval", "world", "--model", str(folder), "--n", "1", "--steps", "1", "--guidance", "3"]) == 2
    assert main(["eval", "tasks", "--model", str(folder), "--n", "1", "--steps", "1", "--shift", "7"]) == 2
    assert used == []


def test_eval_refuses_flags_it_would_not_use_and_an_unwritable_report_before_any_work(tmp_path, capsys, monkeypatch):
    from kinema.cli import main
    from kinema.infer import Pipeline
    monkeypatch.setattr(Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "afile").write_text("mine")
    for flags, said in ((["--seed", "-1"], "--seed must be an integer in [0, 2^62], got -1"),
                        (["--json", str(tmp_path)], "it is a folder"),
                        (["--json", str(tmp_path / "afile" / "r.json")], "afile is a file, not a folder"),
                        (["--ground-truth", "--steps", "4"], "--steps applies to generated videos"),
                        (["--ground-truth", "--model", "x"], "--model has no part in it"),
                        (["--ground-truth", "--reconstruct"], "one")):
        assert main(["eval", "world", "--n", "1", *flags]) == 2, flags
        assert said in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"


def test_loop_steps_reference_is_the_share_of_inner_latent_steps_within_the_median_step():
    from kinema.eval.tasks import _loop_steps

    # 9 flat frames (tf = 4), steps 1, 1, 1, 3 | 1, 1, 2, 1: the steps between latent frames are 3->4 and 7->8
    levels = np.cumsum([0, 1, 1, 1, 3, 1, 1, 2, 1])
    frames = np.broadcast_to(levels[:, None, None, None], (9, 2, 2, 3)).astype(np.uint8)
    seam, typical, inner_median, inner_share = _loop_steps(frames, 4)
    assert (seam, typical) == (11.0, 1.0)
    assert (inner_median, inner_share) == (2.0, 0.5)  # inner steps 3 and 1: one passes the seam rule


def test_join_step_is_the_largest_step_through_the_join_over_the_new_frames_median():
    from kinema.eval.tasks import _join_step

    def clip(steps):
        levels = np.cumsum([0, *steps])
        return np.broadcast_to(levels[:, None, None, None], (len(levels), 2, 2, 3)).astype(np.uint8)

    # 6 input frames (the last 2 shared with the window), then 4 new: steps 2 throughout -> 1
    assert _join_step(clip([2] * 9), before=6, shared=2) == 1.0
    # a jump of 8 into the first new frame, new frames stepping 2 -> 4
    assert _join_step(clip([2, 2, 2, 2, 2, 8, 2, 2, 2]), before=6, shared=2) == 4.0
    # a larger step before the shared frames is the input's own, not the join's
    assert _join_step(clip([9, 2, 2, 2, 2, 2, 2, 2, 2]), before=6, shared=2) == 1.0
