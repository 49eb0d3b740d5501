"""A worker process: claim a job, generate it, write its files, mark it done; repeat.

Workers run apart from the HTTP server (``kinema serve`` spawns them; ``kinema serve worker`` runs
one on any host that reaches the job store and the data folder). While a job runs, a heartbeat
thread renews its lease; if the process dies, the lease runs out and another worker (or this one,
restarted: it requeues what its previous run left) takes the job again. SIGTERM / SIGINT stop the
worker at the next sampling step and put its job back in the queue unharmed.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import re
import signal
import socket
import threading
import time

import numpy as np

from ..common.video import VideoDecodeError
from ..infer.pipeline import InputError, Settings, check_settings
from .catalog import TaskUnavailable, job_task, load_catalog, task_function
from .config import ServeConfig
from .media import INPUT_IMAGE, INPUT_VIDEO, UploadError, job_dir, remove_job_files, write_results
from .db import is_store_error
from .store import Job, JobStore

log = logging.getLogger("kinema.serve.worker")
SWEEP_EVERY_S = 60.0
PROGRESS_EVERY_S = 0.2  # at most this often a job's progress is written (a step can take milliseconds)


class JobInterrupted(Exception):
    """Raised from the progress callback: the worker is stopping, or the job was deleted / taken over."""


class ModelUnavailable(Exception):
    """A model this worker serves could not be loaded, for a reason loading it again would not change (a missing
    or unreadable folder, a config its weights do not fit, a truncated weights file). ``public``: what a client
    is told (the server's folders left out; the log has the whole message)."""

    def __init__(self, message: str, public: str):
        super().__init__(message)
        self.public = public


def lasting_load_error(e: BaseException) -> bool:
    """Whether a model loader's error would come again on every try: a bad folder, config or weights file (and
    the loaders' own checks: WeightsError, ConfigError and InputError are ValueErrors), not a resource running
    short (out of memory, a failing disk or network file system: RuntimeError, MemoryError, OSError with an errno).
    An OSError without an errno is a library's message about a file (transformers: "does not appear to have a
    file named ...")."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover -- a dependency of the loaders
        SafetensorError = ValueError
    if isinstance(e, (ValueError, LookupError, TypeError, SafetensorError, FileNotFoundError, NotADirectoryError,
                      IsADirectoryError, PermissionError)):
        return True
    return type(e) is OSError and e.errno is None


def task_overrides(s: Settings, *drop: str) -> dict:
    """A task function's keyword settings from ``s`` (less the prompt, strength and whatever ``drop`` names)."""
    return {k: v for k, v in vars(s).items() if k not in ("prompt", "strength", *drop)}


def worker_name(slot: int) -> str:
    """A stable name for this host's worker ``slot`` (a restarted worker recognises its own jobs by it)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"
    return f"{host}-w{slot}"


class Worker:
    """One worker: a job store handle, the models it has loaded, and its stop flag."""

    def __init__(self, cfg: ServeConfig, name: str):
        self.cfg, self.name = cfg, name
        self.data = cfg.data_path
        self.store = JobStore(cfg.db_url, lease_s=cfg.lease_s, max_attempts=cfg.max_attempts, ttl_s=cfg.ttl_s)
        self.catalog = load_catalog(cfg.models, cfg.sizes, cfg.seconds)
        self.pipes: dict = {}
        self.image_encoders: dict = {}  # model name -> its CLIP image encoder (Wan 2.1 image-to-video models)
        self.unavailable: dict[str, tuple[str, str]] = {}  # models that cannot load: their ModelUnavailable's args
        self.stopping = threading.Event()
        self._lock_file = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def run(self, max_jobs: int | None = None) -> int:
        """Process jobs until stopped (or ``max_jobs`` done); returns how many jobs it finished."""
        self.check_memory()
        self._take_name()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stopping.set())
        if self.cfg.threads:
            import torch
            torch.set_num_threads(self.cfg.threads)
        requeued = self.store.recover(self.name)
        if requeued:
            log.warning("%s: requeued %d job(s) left running by its previous run", self.name, requeued)
        # Load before the first job, so it does not wait for weights. A model that cannot load (ModelUnavailable)
        # stops the worker here: `kinema serve` does not restart it, `serve worker` exits with status 2.
        self.pipeline(next(iter(self.catalog)))
        log.info("%s: ready (models: %s)", self.name, ", ".join(self.catalog))
        done, last_sweep = 0, 0.0
        parent = multiprocessing.parent_process()  # set when `kinema serve` started this worker
        while not self.stopping.is_set() and (max_jobs is None or done < max_jobs):
            if parent is not None and not parent.is_alive():
                log.warning("%s: the server process is gone; stopping", self.name)
                break
            try:
                if time.monotonic() - last_sweep > SWEEP_EVERY_S:
                    self.sweep()
                    last_sweep = time.monotonic()
                job = self.store.claim(self.name, models=tuple(self.catalog))
            except Exception:  # the job store is unreachable: keep trying, the jobs are safe in it
                log.exception("%s: job store error; retrying", self.name)
                self.stopping.wait(min(5.0, self.cfg.poll_ms / 1000 * 5))
                continue
            if job is None:
                self.stopping.wait(self.cfg.poll_ms / 1000)
                continue
            try:
                done += self.process(job)
            except Exception as e:  # a store error process() could not settle: never the end of the worker
                if not is_store_error(e):
                    raise
                log.exception("%s: job store error; retrying", self.name)
                self.stopping.wait(min(5.0, self.cfg.poll_ms / 1000 * 5))
        log.info("%s: stopped after %d job(s)", self.name, done)
        return done

    def _take_name(self) -> None:
        """Hold a lock on this worker's name, so two live workers never share one (and its recovery)."""
        path = self.data / "workers" / f"{self.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(path, "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"a worker named {self.name} is already running on this data folder; "
                               f"start this one with another --slot") from None

    def sweep(self) -> None:
        """Delete expired jobs and their files."""
        for video_id in self.store.purge_expired():
            remove_job_files(self.data, video_id)

    def check_memory(self) -> None:
        """Refuse (MemoryFitError, naming a mode that fits) a model whose largest request cannot fit the device.

        ``kinema generate`` checks each request before loading; a worker checks once, before any weights are
        read, the largest size and duration it offers, each model alone against the memory free now. Guidance
        is taken as on (two rows), since a request may ask for it whatever the model's default.
        """
        from ..infer.memory import check_memory
        from ..infer.offload import MemoryFitError
        from ..common.precision import compute_dtype
        plan, dtype = self.cfg.memory_plan(), compute_dtype(self.cfg.dtype, self.cfg.device)
        for spec in self.catalog.values():
            width, height, frames = spec.largest_request
            try:
                check_memory(spec.cfg, width, height, frames, dtype, plan, self.cfg.device,
                             smaller="smaller --sizes or fewer --seconds", gpus=None)
            except MemoryFitError as e:
                raise MemoryFitError(f"model {spec.name!r}, at its largest offered size and duration: {e}") from None

    def pipeline(self, model: str):
        """The loaded Pipeline for a model name (loaded once per process, in the configured memory mode; a Wan 2.1
        image-to-video model's CLIP image encoder with it). ModelUnavailable if it cannot load for a lasting reason
        (``lasting_load_error``), remembered: its files are not read again (the caller logs it)."""
        if model in self.unavailable:
            raise ModelUnavailable(*self.unavailable[model])
        if model not in self.pipes:
            spec = self.catalog[model]
            try:
                from ..infer import Pipeline
                pipe = Pipeline.from_pretrained(spec.path, device=self.cfg.device, dtype=self.cfg.dtype,
                                                compile=self.cfg.compile, memory=self.cfg.memory_plan())
                if spec.wan_i2v:
                    self.image_encoders[model] = self._image_encoder(pipe)
            except Exception as e:
                if not lasting_load_error(e):
                    raise
                ours = type(e).__module__.startswith("kinema.") or isinstance(e, FileNotFoundError)  # worded for users
                self.unavailable[model] = (
                    f"model {model!r} cannot be loaded from {spec.path}: {e if ours else f'{type(e).__name__}: {e}'}",
                    f"model {model!r} cannot run on this server: it failed to load ({type(e).__name__}); the server's "
                    f"log says why")
                raise ModelUnavailable(*self.unavailable[model]) from e
            self.pipes[model] = pipe
        return self.pipes[model]

    @staticmethod
    def _image_encoder(pipe):
        """A Wan 2.1 I2V folder's CLIP image encoder, as ``i2v_wan.image_to_video`` would load it for each call: on
        the pipeline's device (in a low-memory mode on the CPU, moved in for each job)."""
        import torch

        from ..infer.i2v_wan import CLIPImageEncoder
        dtype = torch.bfloat16 if pipe.dtype != torch.float32 else torch.float32
        return CLIPImageEncoder(pipe.cfg.text.path, device="cpu" if pipe.offloader is not None else pipe.device,
                                dtype=dtype)

    # -- one job -------------------------------------------------------------------------------------------
    def process(self, job: Job) -> int:
        """Run one claimed job to completed / failed / released; 1 if this worker completed it. While the job
        store is unreachable the job is left in progress (its lease lapses and it is retried), never failed."""
        lost = threading.Event()
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, lost, done), daemon=True)
        beat.start()
        last_write = [0.0]

        def progress(i: int, n: int) -> None:
            if self.stopping.is_set() or lost.is_set():
                raise JobInterrupted()
            now = time.monotonic()
            if now - last_write[0] >= PROGRESS_EVERY_S or i == n:
                last_write[0] = now
                if not self._beat(job, 5 + int(85 * i / max(n, 1))):
                    lost.set()

        try:
            try:
                frames, fps = self._generate(job, progress)
                self._beat(job, 92)
                folder = job_dir(self.data, job.id)
                write_results(folder, frames, fps, metadata={"prompt": job.prompt, "model": job.model,
                                                               "video_id": job.id, "software": "kinema"})
                # extend: the stitched total, edit: the input's length; the others keep the requested length
                seconds = f"{len(frames) / fps:g}" if job.kind in ("extend", "edit") else None
                if self.store.finish(job, seconds=seconds):
                    log.info("%s: completed %s", self.name, job.id)
                    return 1
                if self.store.get(job.id, job.owner) is None:  # deleted meanwhile: its files go now, not at a sweep
                    remove_job_files(self.data, job.id)
                log.warning("%s: %s was deleted or taken over before it finished", self.name, job.id)
            except JobInterrupted:
                if self.stopping.is_set() and not lost.is_set():
                    self.store.release(job)
                    log.info("%s: stopping; %s goes back to the queue", self.name, job.id)
            except (InputError, UploadError, VideoDecodeError) as e:
                self.store.fail(job, "invalid_request", self._public(job, str(e)))
            except TaskUnavailable as e:
                self.store.fail(job, "unsupported", str(e))
            except ModelUnavailable as e:
                log.error("%s: %s failed: %s", self.name, job.id, e)
                self.store.fail(job, "model_unavailable", e.public)
            except Exception as e:  # a bug or a resource error: the job fails with the reason, the worker goes on
                if is_store_error(e):
                    raise
                if not self._beat(job):  # deleted while its files were written: not a failure
                    log.info("%s: %s was deleted while it was being written", self.name, job.id)
                    return 0
                log.exception("%s: %s failed", self.name, job.id)
                self.store.fail(job, "generation_failed", self._public(job, f"{type(e).__name__}: {e}"))
        except Exception as e:
            if not is_store_error(e):
                raise
            log.warning("%s: the job store is unreachable (%s); %s stays in progress until its lease lapses, "
                        "then it is retried", self.name, e, job.id)
        finally:
            done.set()
            beat.join()
        return 0

    def _beat(self, job: Job, progress: int | None = None) -> bool:
        """Renew the job's lease (recording ``progress``): False when it was deleted or taken over; True while the
        store is briefly unreachable (the heartbeat thread keeps the lease)."""
        try:
            return self.store.heartbeat(job, progress)
        except Exception as e:
            if not is_store_error(e):
                raise
            return True

    def _public(self, job: Job, message: str) -> str:
        """An error message for the client: the server's folders left out (a job's own files by their names)."""
        folder = job_dir(self.data, job.id)
        for path in {folder, folder.resolve()}:
            message = message.replace(f"{path}{os.sep}", "")
        for path in {self.data, self.data.resolve()}:
            message = message.replace(str(path), "<data>")
        return message

    def _heartbeat(self, job: Job, lost: threading.Event, done: threading.Event) -> None:
        try:
            while not done.wait(self.cfg.lease_s / 3):
                try:
                    if not self.store.heartbeat(job):
                        lost.set()
                        return
                except Exception:  # the store is briefly unreachable: the lease may lapse, the job is then retried
                    log.exception("%s: heartbeat for %s failed", self.name, job.id)
        finally:
            self.store.db.close()  # this thread's connection

    def _generate(self, job: Job, progress) -> tuple[np.ndarray, float]:
        """Frames (F, H, W, 3) uint8 and fps for a job, by its kind."""
        spec = self.catalog[job.model]
        task = job_task(job.kind, job.params)
        if task not in spec.tasks:  # the API refuses these; a job queued by another (older) API may still ask
            raise TaskUnavailable(spec.refusal(task))
        pipe = self.pipeline(job.model)
        s = Settings(**job.params["settings"])
        check_settings(pipe.cfg, s)
        folder = job_dir(self.data, job.id)
        if task == "image_to_video" and spec.wan_i2v:  # the image enters through the DiT's channels and CLIP tokens
            from ..infer import i2v_wan
            from ..infer.tasks import load_image
            image = load_image(str(folder / INPUT_IMAGE), s.width, s.height)
            encoder = self.image_encoders[job.model]
            if pipe.offloader is not None:  # i2v_wan moves it back to the CPU once it has run
                encoder.model.to(pipe.device)
            video = i2v_wan.image_to_video(pipe, image, s.prompt, image_encoder=encoder, progress=progress,
                                           **task_overrides(s))
        elif job.kind == "create" and job.params.get("input") == "image":
            video = task_function("image_to_video")(pipe, s.prompt, str(folder / INPUT_IMAGE), progress=progress,
                                                    **task_overrides(s))
        elif job.kind == "create" or (job.kind == "remix" and job.params.get("remix_mode") != "edit"):
            # A remix without an edit task re-runs the source's settings and noise (same seed) with the new
            # prompt: flow sampling from the same noise keeps much of the layout and motion.
            video = pipe.run(s, progress=progress)
        elif job.kind == "extend":
            motion = ({"motion_strength": float(job.params["motion_strength"])}
                      if "motion_strength" in job.params else {})  # else the task's default
            video = task_function("extend")(pipe, s.prompt, str(folder / INPUT_VIDEO),
                                            float(job.params["extend_seconds"]), progress=progress, **motion,
                                            **task_overrides(s, "frames"))
        else:  # edit, or a remix through edit (SDEdit of the source with the new prompt)
            video = task_function("edit")(pipe, s.prompt, str(folder / INPUT_VIDEO), float(job.params["strength"]),
                                          progress=progress, **task_overrides(s, "frames"))
        return np.asarray(video.frames, dtype=np.uint8), float(video.fps)


def run_worker(cfg: ServeConfig, slot: int = 0, max_jobs: int | None = None) -> int:
    """Run a worker named after this host and ``slot`` until stopped; returns the jobs it completed. MemoryFitError
    or ModelUnavailable (before any job) when its models cannot run: restarting it would not help."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return Worker(cfg, worker_name(slot)).run(max_jobs=max_jobs)

