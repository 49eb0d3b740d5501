"""kinema train stopped and continued: exact resume, time limits, Ctrl-C / SIGTERM, and what a resume may change
(the tiny preset on the latent cache of test_train.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train import cache, losses, recipe  # noqa: F401 -- cache: the module-scoped fixture

from kinema.config import ConfigError
from kinema.train import TrainError, load_config, train


# -- exact resume -----------------------------------------------------------------------------------


def test_killed_and_resumed_run_follows_the_uninterrupted_loss_curve_bit_exactly(tmp_path, cache):
    whole = train(recipe(tmp_path / "whole", cache, max_steps=5))
    first = train(recipe(tmp_path / "parts", cache, max_steps=5, stop_after=2))
    assert first.step == 2 and first.exported is None and len(losses(first)) == 2
    # a run that got further than its last checkpoint before dying: its extra metric lines are redone
    with open(first.metrics, "a") as f:
        f.write(json.dumps({"step": 3, "loss": 123.0}) + "\n")
    second = train(recipe(tmp_path / "parts", cache, max_steps=5), resume=True)
    assert second.step == 5
    assert losses(second) == losses(whole)  # bit for bit, not approximately
    whole_weights, parts_weights = (load_file(tmp_path / run / "model" / "transformer.safetensors") for run in ("whole", "parts"))
    assert all(torch.equal(whole_weights[k], parts_weights[k]) for k in whole_weights)


def test_schedule_steps_ends_a_run_part_way_along_a_longer_schedule_and_exports_it(tmp_path, cache):
    def lrs(result):
        return [json.loads(line)["lr"] for line in result.metrics.read_text().splitlines()]

    longer = train(recipe(tmp_path / "long", cache, max_steps=6))
    short = train(recipe(tmp_path / "short", cache, max_steps=3, optim=dict(schedule_steps=6)))
    assert short.step == 3 and short.exported is not None  # it ends at max_steps: exported, not left to resume
    assert lrs(short) == lrs(longer)[:3]  # the same rates as the first half of the 6-step run
    assert lrs(longer)[-1] < lrs(short)[-1]  # the 6-step cosine had further to fall
    assert losses(short) == losses(longer)[:3]
    with pytest.raises(ConfigError, match=r"optim.schedule_steps must be null or more than warmup_steps \(2\), got 2"):
        load_config({"preset": "tiny", "optim": {"warmup_steps": 2, "schedule_steps": 2}})


def test_time_limit_stops_checkpointed_and_the_run_resumes_to_the_end(tmp_path, cache):
    first = train(recipe(tmp_path / "run", cache, max_steps=4, stop_after_minutes=1e-6))  # out of time after step 1
    assert first.step == 1 and first.exported is None and first.checkpoint is not None
    assert first.checkpoint.name.endswith("1") and len(losses(first)) == 1
    second = train(recipe(tmp_path / "run", cache, max_steps=4), resume=True)
    assert second.step == 4 and second.exported is not None


def test_resume_takes_this_runs_learning_rate_and_length_and_refuses_another_model(tmp_path, cache, capsys):
    from kinema.train.loop import lr_factor

    def lrs(result):
        return [json.loads(line)["lr"] for line in result.metrics.read_text().splitlines()]

    first = lrs(train(recipe(tmp_path / "run", cache, max_steps=6, stop_after=3)))
    capsys.readouterr()
    longer = train(recipe(tmp_path / "run", cache, max_steps=8, optim=dict(lr=5e-3)), resume=True)
    assert "optim.lr 0.002 -> 0.005, max_steps 6 -> 8" in capsys.readouterr().out
    optim = load_config(recipe(tmp_path / "x", cache, max_steps=8, optim=dict(lr=5e-3))).optim
    expected = [5e-3 * lr_factor(optim, 8, i) for i in range(3, 8)]  # steps 4..8 on the new 8-step cosine
    assert lrs(longer)[:3] == first and lrs(longer)[3:] == pytest.approx(expected, rel=1e-6)
    for changes, key in ((dict(model_config={"dit": {"num_layers": 3}}), "model_config"),
                         (dict(lora=dict(rank=4)), "lora")):
        with pytest.raises(TrainError, match=rf"--resume: {key} was .* this run has .*choose a new out_dir"):
            train(recipe(tmp_path / "run", cache, max_steps=10, **changes), resume=True)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_checkpoints_the_step_it_stopped_at(tmp_path, cache, sig, code):
    config = tmp_path / "run.json"
    config.write_text(json.dumps(recipe(tmp_path / "run", cache, max_steps=10_000, checkpoint=dict(every=1000),
                                        data=dict(num_workers=1))))  # loader workers must not die first
    proc = subprocess.Popen([sys.executable, "-m", "kinema", "train", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.1)
        os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C or a scheduler's SIGTERM: the whole process group
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == code, out
    step = int(re.search(rf"{signal.Signals(sig).name}: stopped at step (\d+) \(checkpointed", out).group(1))
    assert step >= 3 and (tmp_path / "run" / "checkpoints" / f"step-{step:08d}").is_dir()
    assert len(metrics.read_text().splitlines()) == step  # every step it made is kept
    resumed = train(recipe(tmp_path / "run", cache, max_steps=step + 1), resume=True)
    assert resumed.step == step + 1 and resumed.exported is not None


def test_existing_run_needs_resume_and_resume_of_a_finished_run_is_a_no_op(tmp_path, cache):
    train(recipe(tmp_path / "run", cache, max_steps=2))
    with pytest.raises(TrainError, match="--resume"):
        train(recipe(tmp_path / "run", cache, max_steps=2))
    assert train(recipe(tmp_path / "run", cache, max_steps=2), resume=True).step == 2


def test_resume_of_a_run_already_past_max_steps_or_stop_after_says_there_is_nothing_to_train(tmp_path, cache, capsys):
    train(recipe(tmp_path / "run", cache, max_steps=4))
    capsys.readouterr()
    result = train(recipe(tmp_path / "run", cache, max_steps=2), resume=True)
    out = capsys.readouterr().out
    assert result.step == 4 and len(losses(result)) == 4  # nothing trained, nothing logged
    assert (f"--resume: the run is already at step 4, past max_steps 2: nothing to train; its export is the step-4 "
            f"weights, in {tmp_path / 'run' / 'model'} (to train further, set max_steps above 4)") in out
    train(recipe(tmp_path / "part", cache, max_steps=6, stop_after=3))
    capsys.readouterr()
    assert train(recipe(tmp_path / "part", cache, max_steps=6, stop_after=2), resume=True).step == 3
    assert ("--resume: the run is already at step 3, past stop_after 2: nothing to train (set stop_after above 3, or "
            "drop it, to continue to max_steps 6)") in capsys.readouterr().out
