"""The serve worker in-process (one tiny model, SQLite): results, progress, stop, delete, failures; and the CLI."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from kinema import cli
from kinema.infer import make_settings
from kinema.serve import ServeConfig
from kinema.serve.media import VARIANTS, job_dir
from kinema.serve.store import Job
from kinema.serve.worker import Worker


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tmp_path_factory):
    cfg = ServeConfig(data_dir=str(tmp_path_factory.mktemp("serve-worker")), models=(str(tiny_model_dir),), lease_s=5)
    return Worker(cfg, "test-w0")


def queue(worker, n: int, **settings) -> Job:
    s = make_settings(worker.catalog["tiny"].cfg, f"prompt {n}", **{"steps": 3, "seed": n, **settings})
    job = Job(id=f"video_{n:032x}", owner="key_a", kind="create", model="tiny", prompt=s.prompt, seconds="1",
              size=f"{s.width}x{s.height}", params={"settings": asdict(s)})
    worker.store.submit(job, 1000, 1000)
    return worker.store.claim(worker.name)


def test_a_job_completes_with_all_three_files_and_progress_per_step(worker, monkeypatch):
    seen = []
    beat = worker.store.heartbeat
    monkeypatch.setattr(worker.store, "heartbeat", lambda job, progress=None: seen.append(progress) or beat(job, progress))
    monkeypatch.setattr("kinema.serve.worker.PROGRESS_EVERY_S", 0.0)
    job = queue(worker, 1, steps=4)
    assert worker.process(job) == 1
    done = worker.store.get(job.id, "key_a")
    assert (done.status, done.progress, done.attempts) == ("completed", 100, 1)
    for name, _ in VARIANTS.values():
        assert (job_dir(worker.data, job.id) / name).stat().st_size > 0
    steps = [p for p in seen if p is not None]
    assert steps[:4] == [5 + 85 * i // 4 for i in range(1, 5)] and steps == sorted(steps)  # one per sampling step


def test_stopping_mid_job_puts_it_back_unharmed(worker):
    job = queue(worker, 2, steps=6)
    worker.stopping.set()
    try:
        assert worker.process(job) == 0
    finally:
        worker.stopping.clear()
    back = worker.store.get(job.id, "key_a")
    assert (back.status, back.attempts, back.progress) == ("queued", 0, 0)
    assert not (job_dir(worker.data, job.id) / "video.mp4").exists()
    again = worker.store.claim(worker.name)
    assert again.id == job.id and worker.process(again) == 1


def test_a_job_deleted_while_running_is_not_completed(worker, monkeypatch):
    job = queue(worker, 3, steps=6)
    real_run = worker.pipeline("tiny").run

    def run_then_delete(s, progress=None, **kw):
        worker.store.delete(job.id, "key_a")  # the client deletes it while it samples
        return real_run(s, progress=progress, **kw)

    monkeypatch.setattr(worker.pipeline("tiny"), "run", run_then_delete)
    assert worker.process(job) == 0
    assert worker.store.get(job.id, "key_a") is None


def test_failures_are_recorded_and_the_worker_goes_on(worker, monkeypatch):
    job = queue(worker, 4)
    job.params["settings"]["width"] = 50  # not a multiple of 16: refused by the pipeline's own check
    assert worker.process(job) == 0
    failed = worker.store.get(job.id, "key_a")
    assert failed.status == "failed" and failed.error_code == "invalid_request" and "width 50" in failed.error_message

    def explode(*a, **k):
        raise RuntimeError("CUDA out of memory (pretend)")
    monkeypatch.setattr(worker.pipeline("tiny"), "run", explode)
    job = queue(worker, 5)
    assert worker.process(job) == 0
    failed = worker.store.get(job.id, "key_a")
    assert (failed.error_code, failed.error_message) == ("generation_failed", "RuntimeError: CUDA out of memory (pretend)")


def test_a_second_worker_cannot_take_the_same_name(worker):
    worker._take_name()
    with pytest.raises(RuntimeError, match="already running"):
        Worker(worker.cfg, worker.name)._take_name()


def test_cli_manages_keys(tmp_path, capsys):
    data = ["--data", str(tmp_path)]
    assert cli.main(["serve", "keys", "create", "--name", "alice", "--key-rate", "5", *data]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("kn-")
    assert cli.main(["serve", "keys", "list", *data]) == 0
    listed = capsys.readouterr().out
    assert "name=alice" in listed and "rate/min=5" in listed and secret not in listed
    assert cli.main(["serve", "keys", "revoke", "alice", *data]) == 0
    assert cli.main(["serve", "keys", "revoke", "alice", *data]) == 2  # nothing left to revoke
    assert "no live key" in capsys.readouterr().err


def test_cli_refuses_no_auth_off_loopback(tmp_path, capsys):
    assert cli.main(["serve", "--no-auth", "--host", "0.0.0.0", "--data", str(tmp_path)]) == 2
    assert "only allowed on a loopback address" in capsys.readouterr().err
