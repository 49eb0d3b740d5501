"""Few-step distillation: the segment math, config errors, a tiny run that closes the gap to the teacher,
the Pipeline's choice of student or teacher, and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kinema.config import ConfigError, preset
from kinema.data.cache import write_latent_cache
from kinema.flow import euler, heun, sampling_schedule, shift_t
from kinema.flow.distill import distill_schedule, segment_targets
from kinema.infer import Pipeline
from kinema.infer.pipeline import student_times
from kinema.train import load_config, train
from kinema.weights.student import STUDENT_CONFIG, STUDENT_FILE, read_student

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["a red ball bounces", "a blue cube slides left", "a green star spins", "two balls collide"]
GUIDANCE, SHIFT = 3.0, 2.0


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny random teacher (kinema folder) whose guidance moves its samples far from the unguided ones."""
    from kinema.dit import DiT
    from kinema.vae import VAE
    from kinema.weights import save_model

    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg = cfg.replace(sampling=cfg.sampling.replace(guidance=GUIDANCE, shift=SHIFT, steps=20))
    dit = DiT(cfg.dit)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("teacher") / "tiny"
    save_model(path, cfg, dit, VAE(cfg.vae))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A latent cache whose text tokens are the real encodings of PROMPTS, so the Pipeline conditions alike."""
    from kinema.text import build_text_encoder

    encoder = build_text_encoder(preset("tiny").text)
    tokens, mask = encoder.encode(PROMPTS + [""])
    g = torch.Generator().manual_seed(1)
    samples = [dict(id=f"clip{i:03d}", latents=torch.randn(4, 3, 8, 8, generator=g), text_tokens=tokens[i % 4].clone(),
                    text_mask=mask[i % 4].clone(), caption=PROMPTS[i % 4]) for i in range(16)]
    return write_latent_cache(tmp_path_factory.mktemp("cache"), samples, null_text=(tokens[-1], mask[-1]), shard_size=8)


def recipe(out, teacher, cache_path, **changes) -> dict:
    cfg = dict(init_from=str(teacher), out_dir=str(out), max_steps=30, seed=0,
               data=dict(kind="latents", path=str(cache_path), buckets=[dict(frames=9, height=64, width=64, batch_size=4)]),
               flow=dict(text_dropout=0.0, cond_probs={"none": 1.0}),
               distill=dict(steps=4, substeps=4, sampler="heun"),
               optim=dict(lr=1e-3, warmup_steps=2, schedule="constant"), ema=dict(decay=0.5),
               log=dict(every=1, progress=False, tensorboard=False), sample=dict(every=0), checkpoint=dict(every=100))
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, teacher_dir, cache):
    return train(recipe(tmp_path_factory.mktemp("run") / "distill", teacher_dir, cache))


def losses(result) -> list[float]:
    return [json.loads(line)["loss"] for line in result.metrics.read_text().splitlines()]


# -- the math -----------------------------------------------------------------------------------------------


def test_student_euler_steps_on_the_targets_land_where_the_teacher_does():
    def velocity(x, t):  # a curved field: Euler over 4 coarse steps alone would miss the fine solution
        return torch.sin(3 * x) * (1 + t.view(-1, 1)) - x

    coarse, fine = distill_schedule(4, 8, SHIFT)
    assert torch.allclose(coarse, sampling_schedule(4, SHIFT), atol=1e-12) and coarse[-1] == 0
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    states, targets = segment_targets(velocity, x, fine, 8, "heun")
    assert states.shape == targets.shape == (4, 3, 5)
    assert torch.equal(states[0], x)
    student = x
    for k in range(4):
        assert torch.allclose(student, states[k], atol=1e-6)  # each segment starts where the last one ended
        student = student + (coarse[k + 1] - coarse[k]).item() * targets[k]
    teacher = heun(velocity, x, fine)
    assert torch.allclose(student, teacher, atol=1e-5)
    assert (euler(velocity, x, coarse) - teacher).abs().max() > 1e-2  # so the targets are not plain velocities

    restarts = [torch.full_like(x, float(k)) for k in range(4)]
    states, _ = segment_targets(velocity, x, fine, 8, "euler", restart=lambda k: restarts[k])
    assert torch.equal(states[0], x) and all(torch.equal(states[k], restarts[k]) for k in range(1, 4))


# -- bad config ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,match", [
    (dict(distill=dict(steps=0)), r"distill\.steps must be an integer in \[1, 64\], got 0"),
    (dict(distill=dict(substeps=0)), r"distill\.substeps must be .* got 0"),
    (dict(distill=dict(sampler="unipc")), r"distill\.sampler must be one of \('euler', 'heun'\).*got 'unipc'"),
    (dict(distill=dict(states="random")), r"distill\.states must be one of .*got 'random'"),
    (dict(distill=dict(guidance=-2.0)), r"distill\.guidance must be in \[0, 50\] or null, got -2\.0"),
    (dict(distill=dict(reuse=0)), r"distill\.reuse must be an integer in \[1, 64\], got 0"),
    (dict(distill=dict(guidance="lots")), r"distill\.guidance must be a number, got 'lots'"),
    (dict(init_from=None), r"distill needs a teacher: set distill\.teacher or init_from"),
    (dict(lora=dict(rank=4)), r"lora\.rank must be 0, got 4"),
    (dict(model="vae", data=dict(kind="world")), r"distill applies to model: dit, got model: 'vae'"),
    (dict(init_from=None, distill=dict(teacher="t/", continue_student=True)),
     r"distill\.continue_student starts from init_from's student: set init_from"),
])
def test_bad_distill_settings_are_refused_naming_the_value(tmp_path, changes, match):
    with pytest.raises(ConfigError, match=match):
        load_config(recipe(tmp_path, "teacher", "cache", **changes))


def test_the_bundled_recipe_parses_and_names_its_teacher():
    cfg = load_config("configs/world-small-distill.toml")
    assert cfg.distill.steps == 4 and cfg.teacher == cfg.init_source == "kinema/assets/world-small"
    only_teacher = load_config("configs/world-small-distill.toml", ["--init_from", "null", "--distill.teacher", "t/"])
    assert only_teacher.teacher == only_teacher.init_source == "t/"


# -- a run -------------------------------------------------------------------------------------------------


def test_distillation_closes_most_of_the_gap_between_four_student_steps_and_the_guided_teacher(distilled, teacher_dir):
    teacher = Pipeline.from_pretrained(teacher_dir)
    student = Pipeline.from_pretrained(distilled.exported)
    assert teacher.student is None and student.student is not None

    def gap(pipe, **kw) -> float:  # mean squared distance of the final latents, over prompts and fresh seeds
        errors = []
        for i, prompt in enumerate(PROMPTS):
            for seed in (100 + i, 200 + i):
                reference = teacher.generate(prompt, seed=seed, steps=48, sampler="heun").latents
                errors.append((pipe.generate(prompt, seed=seed, steps=4, **kw).latents - reference).square().mean())
        return float(torch.stack(errors).mean())

    before = gap(teacher, guidance=1.0, sampler="euler")  # the untrained student: the teacher, unguided, 4 steps
    after = gap(student)
    assert after < 0.2 * before, (before, after)  # measured: 0.063 -> 0.0022
    curve = losses(distilled)
    assert sum(curve[-5:]) < 0.5 * sum(curve[:5]), curve


def test_a_student_continues_from_an_exported_one_and_a_mismatched_start_is_refused(distilled, teacher_dir, cache,
                                                                                     tmp_path):
    """distill.continue_student: the run starts at the exported student (its loss where the first run ended, far
    below where that one began), the teacher stays the folder's DiT, and train_steps adds up; a folder without a
    student, or a student of another schedule, is refused before training."""
    more = train(recipe(tmp_path / "more", distilled.exported, cache, max_steps=3, distill=dict(continue_student=True),
                        optim=dict(lr=1e-4)))
    first, again = losses(distilled), losses(more)
    assert again[0] < 0.5 * first[0] and again[0] < 2 * max(first[-5:]), (first, again)
    assert read_student(more.exported).train_steps == 30 + 3
    teacher = load_file(teacher_dir / "transformer.safetensors")
    assert all(torch.equal(teacher[k], v) for k, v in load_file(more.exported / "transformer.safetensors").items())
    with pytest.raises(ConfigError, match=r"has no few-step student .* drop the option"):
        train(recipe(tmp_path / "none", teacher_dir, cache, distill=dict(continue_student=True)))
    with pytest.raises(ConfigError, match=r"samples differently from this run's \(steps 4 vs 2; times .*\)"):
        train(recipe(tmp_path / "other", distilled.exported, cache, distill=dict(continue_student=True, steps=2)))


def test_reuse_trains_on_earlier_teacher_batches_of_the_same_shape_but_never_on_stand_ins(tmp_path, teacher_dir,
                                                                                           cache, monkeypatch):
    """distill.reuse = 3: the teacher computes a batch's segments every third call; the calls between train on a
    kept batch of the same shape (the same loss as on it), a batch of a new shape or with a stand-in for a bad
    sample (weight 0) is computed fresh, and one with a stand-in is never kept."""
    from kinema.text import build_text_encoder
    from kinema.train.distill import Distiller
    from kinema.weights import load_dit, read_config

    cfg = load_config(recipe(tmp_path, teacher_dir, cache, distill=dict(reuse=3)))
    model_cfg = read_config(teacher_dir)
    encoder = build_text_encoder(model_cfg.text)
    distiller = Distiller(cfg, model_cfg, torch.device("cpu"), lambda p: tuple(x[0] for x in encoder.encode([p])))
    computed = []
    segments = distiller.segments
    monkeypatch.setattr(distiller, "segments", lambda *a: computed.append(a[0].shape[0]) or segments(*a))
    student = load_dit(teacher_dir).eval()
    g = torch.Generator().manual_seed(3)

    def batch(n):
        text, mask = encoder.encode(PROMPTS[:n])
        return (torch.randn(n, 4, 3, 8, 8, generator=g), torch.randn(n, 4, 3, 8, 8, generator=g),
                torch.zeros(n, 3, dtype=torch.bool), text, mask)

    def losses(b, weights=None):
        with torch.no_grad():
            return distiller.losses(student, *b, weights)[0]

    first = losses(batch(2))                                   # call 0: computed
    assert torch.equal(losses(batch(2)), first)                # call 1: the kept batch again, same loss
    other = losses(batch(3))                                   # call 2: no kept batch of 3: computed, kept
    losses(batch(2))                                           # call 3: computed (every third call)
    stand_in = batch(2)
    losses(stand_in, torch.tensor([1.0, 0.0]))                 # call 4: a stand-in: computed, not kept
    assert computed == [2, 3, 2, 2] and len(distiller.computed) == 3
    assert torch.equal(segments(*stand_in)[0][0], stand_in[1])  # a batch's first states are its noise ...
    assert not any(torch.equal(c[0][0], stand_in[1]) for c in distiller.computed)  # ... and the stand-in's are not kept
    again = losses(batch(3))                                   # call 5: the kept batch of 3
    assert torch.equal(again, other) and computed == [2, 3, 2, 2]


def test_export_writes_the_teacher_folder_with_the_student_and_its_schedule(distilled, teacher_dir):
    out = distilled.exported
    assert (out / STUDENT_FILE).is_file() and (out / STUDENT_CONFIG).is_file()
    info = read_student(out)
    assert info.steps == 4 and info.guidance == GUIDANCE and info.shift == SHIFT and info.train_steps == 30
    assert torch.allclose(torch.tensor(info.times, dtype=torch.float64), sampling_schedule(4, SHIFT), atol=1e-12)
    teacher, exported = load_file(teacher_dir / "transformer.safetensors"), load_file(out / "transformer.safetensors")
    student = load_file(out / STUDENT_FILE)
    assert all(torch.equal(teacher[k], exported[k]) for k in teacher)  # the teacher is untouched
    assert set(student) == set(teacher) and any(not torch.equal(teacher[k], student[k]) for k in teacher)


def test_pipeline_uses_the_student_for_its_step_count_and_the_teacher_otherwise(distilled, monkeypatch):
    pipe = Pipeline.from_pretrained(distilled.exported)
    calls = {"teacher": [], "student": []}
    for name, dit in (("teacher", pipe.dit), ("student", pipe.student[0])):
        forward = dit.forward
        monkeypatch.setattr(dit, "forward",
                            lambda x, *a, _f=forward, _n=name, **k: calls[_n].append(x.shape[0]) or _f(x, *a, **k))

    video = pipe.generate("a red ball bounces", steps=4, seed=1)
    assert calls == {"teacher": [], "student": [1, 1, 1, 1]}  # one unguided forward per step
    assert json.loads(video.metadata()["student"])["guidance_baked"] == GUIDANCE
    calls["student"].clear()
    video = pipe.generate("a red ball bounces", steps=5, seed=1, sampler="euler")
    assert calls == {"teacher": [2] * 5, "student": []} and "student" not in video.metadata()
    calls["teacher"].clear()
    # a partly noised start (edit, extend) takes the student's steps from the first of its times at or below
    # the teacher's start, shift_t(strength), noised to that time
    info = pipe.student[1]
    times = student_times(info, 0.5)
    first = int(np.flatnonzero(np.asarray(info.times) <= shift_t(0.5, info.shift) + 1e-12)[0])
    assert times.tolist() == list(info.times[first:]) and 1 <= len(times) - 1 < info.steps
    assert student_times(info, 1.0).tolist() == list(info.times)
    assert student_times(info, 1e-3).tolist() == list(info.times[-2:])  # below all of them: the last step
    edited = pipe.run(pipe.settings("a red ball bounces", steps=4, strength=0.5),
                      init_latents=torch.zeros(pipe.latent_shape(pipe.settings("x", steps=4))))
    assert calls["teacher"] == [] and calls["student"] == [1] * (len(times) - 1)
    assert json.loads(edited.metadata()["student"])["times"] == times.tolist()

    forced = Pipeline.from_pretrained(distilled.exported, student=False)
    assert forced.student is None and "student" not in forced.generate("a ball", steps=4).metadata()


def test_a_killed_and_resumed_distillation_run_continues_exactly(tmp_path, teacher_dir, cache):
    # noised segment starts and conditioning patterns, so those paths run too
    changes = dict(max_steps=4, distill=dict(states="noised", substeps=2, sampler="euler"),
                   flow=dict(cond_probs={"none": 0.5, "first": 0.5}))
    whole = train(recipe(tmp_path / "whole", teacher_dir, cache, **changes))
    first = train(recipe(tmp_path / "parts", teacher_dir, cache, stop_after=2, **changes))
    assert first.step == 2 and first.exported is None
    second = train(recipe(tmp_path / "parts", teacher_dir, cache, **changes), resume=True)
    assert second.step == 4 and losses(second) == losses(whole)
    a, b = (load_file(tmp_path / run / "model" / STUDENT_FILE) for run in ("whole", "parts"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    segments = [json.loads(line) for line in whole.metrics.read_text().splitlines()]
    assert all(f"seg{k}" in row for row in segments for k in range(4))
