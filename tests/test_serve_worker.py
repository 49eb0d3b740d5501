"""The serve worker in-process (one tiny model, SQLite): results, progress, stop, delete, failures, memory modes;
and the CLI."""

from __future__ import annotations

import os
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from kinema import cli
from kinema.config import ConfigError
from kinema.infer import InputError, make_settings
from kinema.infer.memory import estimate_memory
from kinema.infer.offload import MemoryFitError, MemoryPlan
from kinema.serve import ServeConfig
from kinema.serve.media import VARIANTS, job_dir
from kinema.serve.run import WONT_FIT, WONT_START, Supervisor, supervised_worker
from kinema.serve.store import Job
from kinema.serve.worker import ModelUnavailable, Worker, lasting_load_error


@pytest.fixture(scope="module")
def worker(tiny_model_dir, tmp_path_factory):
    cfg = ServeConfig(data_dir=str(tmp_path_factory.mktemp("serve-worker")), models=(str(tiny_model_dir),), lease_s=5)
    return Worker(cfg, "test-w0")


def new_job(worker, n: int, **settings) -> Job:
    s = make_settings(worker.catalog["tiny"].cfg, f"prompt {n}", **{"steps": 3, "seed": n, **settings})
    return Job(id=f"video_{n:032x}", owner="key_a", kind="create", model="tiny", prompt=s.prompt, seconds="1",
               size=f"{s.width}x{s.height}", params={"settings": asdict(s)})


def queue(worker, n: int, **settings) -> Job:
    worker.store.submit(new_job(worker, n, **settings), 1000, 1000)
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


def test_a_job_store_outage_leaves_the_job_in_progress_and_the_worker_running(worker, monkeypatch):
    import sqlite3
    job = queue(worker, 30, steps=2)

    def down(*a, **k):
        raise sqlite3.OperationalError("unable to open database file")
    for name in ("heartbeat", "finish", "fail"):  # the store goes away mid-job, and stays away to the end
        monkeypatch.setattr(worker.store, name, down)
    assert worker.process(job) == 0  # no exception: the job is neither failed nor lost
    monkeypatch.undo()
    back = worker.store.get(job.id, "key_a")
    assert back.status == "in_progress" and back.error_code is None  # retried once its lease lapses
    worker.store.release(job)


def test_a_video_deleted_while_its_files_are_written_leaves_no_files(worker, monkeypatch):
    job = queue(worker, 31, steps=2)
    real = worker.store.finish

    def deleted_first(job, **kw):
        worker.store.delete(job.id, "key_a")  # the client deletes it during the final write
        return real(job, **kw)
    monkeypatch.setattr(worker.store, "finish", deleted_first)
    assert worker.process(job) == 0
    assert not job_dir(worker.data, job.id).exists()  # gone now, not at the next sweep


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

    job = queue(worker, 6)

    def unreadable(*a, **k):  # the server's folders stay out of what the client reads
        raise InputError(f"cannot decode {job_dir(worker.data, job.id) / 'input.png'}; see {worker.data / 'tmp'}")
    monkeypatch.setattr(worker.pipeline("tiny"), "run", unreadable)
    assert worker.process(job) == 0
    assert worker.store.get(job.id, "key_a").error_message == "cannot decode input.png; see <data>/tmp"


def test_a_job_deleted_while_its_files_are_written_is_no_error(worker, monkeypatch, caplog):
    import kinema.serve.worker as worker_module
    job = queue(worker, 7)

    def deleted_meanwhile(folder, *a, **k):
        worker.store.delete(job.id, "key_a")
        raise FileNotFoundError(folder / "video.mp4")  # its folder went with it
    monkeypatch.setattr(worker_module, "write_results", deleted_meanwhile)
    with caplog.at_level("INFO", logger="kinema.serve.worker"):
        assert worker.process(job) == 0
    assert worker.store.get(job.id, "key_a") is None
    assert "deleted while it was being written" in caplog.text and not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_second_worker_cannot_take_the_same_name(worker):
    worker._take_name()
    with pytest.raises(RuntimeError, match="already running"):
        Worker(worker.cfg, worker.name)._take_name()


def test_serve_refuses_a_bad_model_or_device_before_any_worker_starts(tmp_path, capsys, monkeypatch):
    from kinema.serve.run import Supervisor
    monkeypatch.setattr(Supervisor, "start", lambda self: pytest.fail("a worker was started"))
    data = ["--no-auth", "--data", str(tmp_path / "data")]
    assert cli.main(["serve", "--model", str(tmp_path / "missing"), *data]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["serve", "--sizes", "100x100", *data]) == 2
    assert "positive multiples of 16" in capsys.readouterr().err
    assert cli.main(["serve", "--device", "tpu9", *data]) == 2
    assert "'tpu9' is not a device" in capsys.readouterr().err


def test_cli_manages_keys(tmp_path, capsys):
    data = ["--data", str(tmp_path)]
    assert cli.main(["serve", "keys", "create", "--name", "alice", "--key-rate", "5", *data]) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("kn-")
    assert cli.main(["serve", "keys", "list", *data]) == 0
    listed = capsys.readouterr().out
    assert "name=alice" in listed and "rate/min=5" in listed and secret not in listed
    assert cli.main(["serve", "keys", "create", "--name", "alice", *data]) == 2  # `revoke alice` would take both
    assert "already named 'alice'" in capsys.readouterr().err
    assert cli.main(["serve", "keys", "revoke", "alice", *data]) == 0
    assert cli.main(["serve", "keys", "revoke", "alice", *data]) == 2  # nothing left to revoke
    assert "no live key" in capsys.readouterr().err
    assert cli.main(["serve", "keys", "create", "--name", "alice", *data]) == 0  # the name is free again
    capsys.readouterr()
    for flags, said in ((["--name", "bob", "--key-rate", "-1"], "--key-rate must be a whole number >= 1"),
                        (["--name", "bob", "--key-queue", "0"], "--key-queue must be a whole number >= 1"),
                        (["--name", "  "], "needs a name")):
        assert cli.main(["serve", "keys", "create", *flags, *data]) == 2, flags
        assert said in capsys.readouterr().err
    assert cli.main(["serve", "keys", "list", *data]) == 0
    assert "bob" not in capsys.readouterr().out  # nothing was stored


def test_cli_refuses_no_auth_off_loopback(tmp_path, capsys):
    assert cli.main(["serve", "--no-auth", "--host", "0.0.0.0", "--data", str(tmp_path)]) == 2
    assert "only allowed on a loopback address" in capsys.readouterr().err


# -- memory modes: --offload / --quantize, as `kinema generate` takes them ----------------------------------------

def test_an_offloading_worker_makes_the_video_of_one_without(worker, tmp_path, monkeypatch):
    """--offload model (fp32, CPU): the same latents; frames within one level (its VAE decodes frame by frame).
    Pinned to fp32: ``auto`` means bf16 on CPUs with AVX-512 BF16, where decoding frame by frame rounds
    differently from decoding 4 latent frames at a time (oneDNN blocks a channels-last map by its extent)."""
    plain_cfg = replace(worker.cfg, data_dir=str(tmp_path / "plain"), dtype="fp32")
    worker = Worker(plain_cfg, "test-w0")
    offloaded = Worker(replace(plain_cfg, data_dir=str(tmp_path / "offload"), offload="model"), "test-offload")
    videos = {}
    for w in (worker, offloaded):
        pipe = w.pipeline("tiny")

        def keep(s, _run=pipe.run, _name=w.name, **kw):
            videos[_name] = _run(s, **kw)
            return videos[_name]
        monkeypatch.setattr(pipe, "run", keep)
    job = new_job(worker, 20, steps=3)
    plain, plain_fps = worker._generate(job, lambda i, n: None)
    frames, fps = offloaded._generate(job, lambda i, n: None)
    assert worker.pipeline("tiny").offloader is None
    assert offloaded.pipeline("tiny").offloader.loads == {"text": 1, "dit": 1, "vae": 1}  # each moved in once
    torch.testing.assert_close(videos["test-offload"].latents, videos["test-w0"].latents, rtol=0, atol=1e-5)
    diff = np.abs(frames.astype(int) - plain.astype(int))
    assert frames.shape == plain.shape and fps == plain_fps and diff.max() <= 1 and diff.mean() < 0.01


def test_an_int8_worker_stores_the_dit_blocks_in_8_bits(worker, tmp_path):
    pipe = Worker(replace(worker.cfg, data_dir=str(tmp_path), quantize="int8"), "test-int8").pipeline("tiny")
    kinds = {type(m).__name__ for m in pipe.dit.blocks.modules()}
    assert "Int8Linear" in kinds and "Linear" not in kinds


def test_a_compile_worker_loads_compiled_pipelines_and_refuses_offloading(worker, tmp_path):
    assert not worker.pipeline("tiny").compiled
    assert Worker(replace(worker.cfg, data_dir=str(tmp_path), compile=True), "test-compile").pipeline("tiny").compiled
    for memory in (dict(offload="model"), dict(quantize="int8")):
        with pytest.raises(ConfigError, match=r"--compile does not combine with --offload \w+ / --quantize \w+"):
            replace(worker.cfg, compile=True, **memory)


@pytest.mark.parametrize("flag, value, accepted", [("--offload", "blocks", "'none', 'model', 'block'"),
                                                   ("--quantize", "int4", "'none', 'int8'")])
def test_bad_memory_flags_are_refused_naming_the_value_and_the_choices(tmp_path, capsys, flag, value, accepted):
    for role in ([], ["worker"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["serve", *role, flag, value, "--data", str(tmp_path)])
        assert exit_.value.code == 2
        assert f"argument {flag}: invalid choice: '{value}' (choose from {accepted})" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=rf"{flag[2:]} must be one of \({accepted}\), got '{value}'"):
        ServeConfig(**{flag[2:]: value})


def test_each_role_takes_only_the_flags_it_reads(tmp_path, capsys):
    """`serve api --device cuda` would be silently ignored (the API runs no model): refused, and not in its --help."""
    for role, flag, value in (("api", "--device", "cuda"), ("api", "--threads", "2"), ("api", "--workers", "2"),
                              ("worker", "--port", "9000"), ("worker", "--no-auth", None), ("keys list", "--model", "m")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["serve", *role.split(), flag, *([value] if value else []), "--data", str(tmp_path)])
        assert exit_.value.code == 2
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err
    helps = {}
    for role in ("api", "worker"):
        with pytest.raises(SystemExit):
            cli.main(["serve", role, "--help"])
        helps[role] = capsys.readouterr().out
    assert "--port" in helps["api"] and "--device" not in helps["api"] and "--threads" not in helps["api"]
    assert "--device" in helps["worker"] and "--port" not in helps["worker"] and "--rate" not in helps["worker"]
    for role in ("api", "worker"):
        assert "--data" in helps[role] and "--model" in helps[role] and "--seconds" in helps[role]


def test_a_worker_refuses_a_model_too_large_for_its_mode_naming_one_that_fits(worker, monkeypatch):
    monkeypatch.setattr(worker, "cfg", replace(worker.cfg, dtype="fp32"))  # auto: bf16 on some CPUs
    spec = worker.catalog["tiny"]
    assert spec.largest_request == (64, 64, 17)  # 64x64 beats 80x48; 2 s at 8 fps
    plain, small = (estimate_memory(spec.cfg, 64, 64, 17, torch.float32, MemoryPlan.for_mode("none", q)).total
                    for q in ("none", "int8"))
    assert small < plain
    monkeypatch.setattr("kinema.infer.memory.available_memory", lambda device: (plain + small) // 2)
    with pytest.raises(MemoryFitError, match=r"model 'tiny', at its largest offered size and duration: tiny at "
                                             r"64x64x17 in float32 needs .* --offload none --quantize int8 needs .* fits"):
        worker.check_memory()
    monkeypatch.setattr("kinema.infer.memory.available_memory", lambda device: plain)
    worker.check_memory()


def test_cli_worker_notes_that_offload_saves_nothing_on_the_cpu_and_refuses_what_cannot_fit(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    """The same note `kinema generate --offload model` prints on the CPU, then the same refusal, before any load."""
    monkeypatch.setattr("kinema.infer.memory.available_memory", lambda device: 1)
    monkeypatch.setattr("kinema.serve.worker.Worker.pipeline", lambda *a: pytest.fail("loaded weights"))
    assert cli.main(["serve", "worker", "--model", str(tiny_model_dir), "--data", str(tmp_path),
                     "--offload", "model", "--dtype", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "note: --offload model keeps weights in host memory and moves them to the accelerator only while used; " \
           "on the CPU that saves nothing (--quantize int8 and --dtype bf16 do)" in err
    assert "kinema serve: error: model 'tiny', at its largest offered size and duration: tiny at 64x64x17" in err
    assert "no memory mode fits: try --dtype bf16, smaller --sizes or fewer --seconds" in err


def test_a_supervised_worker_that_cannot_fit_exits_and_is_not_restarted(worker, tmp_path, monkeypatch):
    monkeypatch.setattr("kinema.infer.memory.available_memory", lambda device: 1)
    with pytest.raises(SystemExit) as exit_:
        supervised_worker(replace(worker.cfg, data_dir=str(tmp_path)), slot=0)
    assert exit_.value.code == WONT_FIT

    class Exited:  # what the supervisor sees of that process
        exitcode = WONT_FIT

        def is_alive(self):
            return False

    supervisor = Supervisor(worker.cfg)
    spawned = []
    monkeypatch.setattr(supervisor, "_spawn", spawned.append)
    watch(supervisor, {0: Exited()})
    assert supervisor.procs == {} and spawned == []


def watch(supervisor: Supervisor, procs: dict) -> None:
    """Run ``supervisor``'s watching thread over ``procs`` until it has none left (or 5 s), then stop it."""
    supervisor.procs = procs
    supervisor.thread.start()
    try:
        for _ in range(100):
            if not supervisor.procs:
                break
            supervisor.stopping.wait(0.05)
    finally:
        supervisor.stopping.set()
        supervisor.thread.join()


# -- a model that cannot load: the worker stops for good, saying why -----------------------------------------------

@pytest.fixture(scope="module")
def broken_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its DiT weights cut off half way (a download that stopped)."""
    import shutil
    folder = tmp_path_factory.mktemp("models") / "broken"
    shutil.copytree(tiny_model_dir, folder)
    data = (folder / "transformer.safetensors").read_bytes()
    (folder / "transformer.safetensors").write_bytes(data[:len(data) // 2])
    return folder


def test_a_worker_whose_model_cannot_load_exits_and_is_not_restarted(worker, broken_model_dir, tmp_path, monkeypatch,
                                                                   caplog):
    monkeypatch.setattr("signal.signal", lambda *a: None)  # Worker.run takes SIGTERM / SIGINT in the main thread
    cfg = replace(worker.cfg, data_dir=str(tmp_path), models=(str(broken_model_dir),))
    with caplog.at_level("ERROR", logger="kinema.serve"), pytest.raises(SystemExit) as exit_:
        supervised_worker(cfg, slot=0)
    assert exit_.value.code == WONT_START
    assert f"worker 0: model 'tiny' cannot be loaded from {broken_model_dir}: " in caplog.text
    assert "transformer.safetensors" in caplog.text

    class Exited:  # what the supervisor sees of that process
        exitcode = WONT_START

        def is_alive(self):
            return False

    supervisor = Supervisor(cfg)
    spawned = []
    monkeypatch.setattr(supervisor, "_spawn", spawned.append)
    caplog.clear()
    with caplog.at_level("INFO", logger="kinema.serve"):
        watch(supervisor, {0: Exited()})
    assert supervisor.procs == {} and spawned == []
    assert "worker 0 will not be restarted: its model cannot be loaded (reason above)" in caplog.text
    assert "no worker is running: worker 0: its model cannot be loaded" in caplog.text
    assert supervisor.health() == {"configured": 1, "running": 0,
                                   "stopped": [{"worker": 0, "reason": "its model cannot be loaded"}]}


def test_a_crashed_worker_is_still_restarted(worker, monkeypatch):
    class Crashed:
        exitcode = 1

        def is_alive(self):
            return False

    supervisor = Supervisor(worker.cfg)
    spawned = []
    monkeypatch.setattr(supervisor, "_spawn", lambda slot: spawned.append(slot) or supervisor.procs.pop(slot))
    watch(supervisor, {0: Crashed()})
    assert spawned == [0] and supervisor.health()["stopped"] == []
    # what a new try cannot change stops the worker; a resource that ran short may be back on the next try
    from kinema.weights import WeightsError
    assert all(lasting_load_error(e) for e in (WeightsError("cut off"), ConfigError("x"), InputError("cuda"),
                                                FileNotFoundError(2, "gone"), OSError("no file named model.bin")))
    assert not any(lasting_load_error(e) for e in (RuntimeError("CUDA out of memory"), MemoryError(),
                                                    OSError(5, "Input/output error")))


def test_cli_worker_and_serve_refuse_a_model_that_cannot_load(broken_model_dir, tmp_path, capsys, monkeypatch):
    """`serve worker`: status 2 naming the model and why; `kinema serve`: refused before any worker starts (its
    weights file is cut off: the header says how long it should be)."""
    monkeypatch.setattr("signal.signal", lambda *a: None)
    assert cli.main(["serve", "worker", "--model", str(broken_model_dir), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"kinema serve: error: model 'tiny' cannot be loaded from {broken_model_dir}: " in err
    assert err.rstrip().endswith("; the worker does not start")
    monkeypatch.setattr(Supervisor, "start", lambda self: pytest.fail("a worker was started"))
    assert cli.main(["serve", "--no-auth", "--model", str(broken_model_dir), "--data", str(tmp_path)]) == 2
    assert f"{broken_model_dir}/transformer.safetensors is truncated" in capsys.readouterr().err


def test_jobs_for_a_model_that_cannot_load_fail_and_the_worker_goes_on(worker, tiny_model_dir, broken_model_dir,
                                                                      tmp_path, monkeypatch):
    from kinema.infer import Pipeline
    two = Worker(replace(worker.cfg, data_dir=str(tmp_path), models=(str(tiny_model_dir), str(broken_model_dir))),
                 "test-two")
    assert list(two.catalog) == ["tiny", "broken"]
    loads = []
    real = Pipeline.from_pretrained.__func__
    monkeypatch.setattr(Pipeline, "from_pretrained", classmethod(lambda cls, path, **kw: loads.append(path) or
                                                                 real(cls, path, **kw)))
    for n in (30, 31):
        job = replace(new_job(two, n, steps=2), model="broken")
        two.store.submit(job, 1000, 1000)
        assert two.process(two.store.claim(two.name)) == 0
        failed = two.store.get(job.id, "key_a")
        assert (failed.status, failed.error_code) == ("failed", "model_unavailable")
        assert failed.error_message == ("model 'broken' cannot run on this server: it failed to load (WeightsError); "
                                        "the server's log says why")  # the server's folders are not the client's
    assert loads == [str(broken_model_dir)]  # read once: the second job failed without reading it again
    with pytest.raises(ModelUnavailable, match="model 'broken' cannot be loaded from"):
        two.pipeline("broken")
    assert two.process(queue(two, 32, steps=2)) == 1  # the model that loads still runs


# -- a Wan 2.1 image-to-video model: video from an image, nothing else ---------------------------------------------

@pytest.fixture(scope="module")
def wan_i2v_worker(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from test_wan_pipeline import build_wan_i2v_folder
    folder = build_wan_i2v_folder(tmp_path_factory.mktemp("wan-i2v") / "wan-i2v")
    cfg = ServeConfig(data_dir=str(tmp_path_factory.mktemp("serve-wan")), models=(str(folder),), sizes=("32x32",),
                      seconds=("1",), dtype="fp32")
    return Worker(cfg, "test-wan")


def test_a_wan_i2v_worker_makes_video_from_an_image_and_refuses_text_alone(wan_i2v_worker):
    from kinema.serve.media import INPUT_IMAGE, save_image
    w = wan_i2v_worker
    spec = w.catalog["wan-i2v"]
    assert spec.describe()["tasks"] == ["image_to_video"]
    s = make_settings(spec.cfg, "a red fox runs", width=32, height=32, frames=9, steps=2, seed=1)
    image = np.zeros((48, 40, 3), np.uint8)
    image[:, 20:] = (200, 40, 40)
    made = []
    for n, with_image in ((40, True), (41, False)):
        job = Job(id=f"video_{n:032x}", owner="key_a", kind="create", model="wan-i2v", prompt=s.prompt, seconds="1",
                  size="32x32", params={"settings": asdict(s), **({"input": "image"} if with_image else {})})
        if with_image:  # as the API stores an upload
            job_dir(w.data, job.id).mkdir(parents=True)
            save_image(job_dir(w.data, job.id) / INPUT_IMAGE, image)
        w.store.submit(job, 1000, 1000)
        made.append(w.process(w.store.claim(w.name)))
    assert made == [1, 0]
    done = w.store.get(f"video_{40:032x}", "key_a")
    assert done.status == "completed" and (job_dir(w.data, done.id) / "video.mp4").stat().st_size > 0
    from kinema.common.video import probe_video
    assert probe_video(job_dir(w.data, done.id) / "video.mp4")["frames"] == 9
    refused = w.store.get(f"video_{41:032x}", "key_a")  # queued by an API that offered it (an older one)
    assert (refused.status, refused.error_code) == ("failed", "unsupported")
    assert refused.error_message.startswith("model 'wan-i2v' is a Wan 2.1 image-to-video model: it makes video from "
                                            "an image, so text-to-video")
    assert list(w.image_encoders) == ["wan-i2v"]  # its CLIP tower loaded with the model, once


def test_several_cpu_workers_wait_passively(monkeypatch):
    from kinema.serve import ServeConfig
    from kinema.common.threads import WAIT_POLICY_VARIABLES
    from kinema.serve.run import cpu_workers_wait_passively
    for var in WAIT_POLICY_VARIABLES:
        monkeypatch.setenv(var, "")  # recorded first, so that whatever the code sets is undone after the test
        monkeypatch.delenv(var)
    assert not cpu_workers_wait_passively(ServeConfig(workers=1))  # alone on its cores: spinning is faster
    assert not cpu_workers_wait_passively(ServeConfig(workers=2, device="cuda"))
    assert "OMP_WAIT_POLICY" not in os.environ
    assert cpu_workers_wait_passively(ServeConfig(workers=2)) and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stands
    assert not cpu_workers_wait_passively(ServeConfig(workers=3)) and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
