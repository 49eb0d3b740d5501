"""Entry points behind ``kinema serve``: the API and its workers together, each alone, and key management.

``kinema serve`` runs the HTTP server in this process and spawns ``workers`` worker processes,
restarting any that die (their jobs are requeued by lease, so nothing is lost). On SIGINT/SIGTERM
the server stops taking requests, then each worker puts its current job back in the queue and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

from .config import ServeConfig
from .store import JobStore

log = logging.getLogger("kinema.serve")
WONT_FIT = 3  # exit status of a worker whose models cannot fit its device in its memory mode: not restarted
WONT_START = 4  # ... of one whose model cannot be loaded (a bad folder, config or weights file): not restarted
NOT_RESTARTED = {WONT_FIT: "its models do not fit its device in its memory mode",
                 WONT_START: "its model cannot be loaded"}


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def prepare(cfg: ServeConfig) -> JobStore:
    """Create the data folder and the job store's tables; the store handle."""
    cfg.data_path.mkdir(parents=True, exist_ok=True)
    (cfg.data_path / "videos").mkdir(exist_ok=True)
    return JobStore(cfg.db_url, lease_s=cfg.lease_s, max_attempts=cfg.max_attempts, ttl_s=cfg.ttl_s)


def serve_api(cfg: ServeConfig, catalog: dict | None = None, workers: Supervisor | None = None) -> int:
    """Run the HTTP API until SIGINT / SIGTERM (no workers: run those with ``serve_worker``). ``catalog``: the
    models' specs, when the caller already read them; ``workers``: the Supervisor of this process's workers
    (``/healthz`` reports them)."""
    import uvicorn

    from .api import create_app
    _logging()
    store = prepare(cfg)
    app = create_app(cfg, store=store, catalog=catalog, workers=workers)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=5, server_header=False))
    # uvicorn re-raises the signal that stopped it; a no-op handler lets the caller shut workers down after.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host  # an IPv6 address in a URL is bracketed
    log.info("kinema serve: http://%s:%d (auth %s, store %s)", host, cfg.port, "on" if cfg.auth else "OFF",
             store.db.dialect)
    server.run()
    return 0


def serve_worker(cfg: ServeConfig, slot: int = 0, max_jobs: int | None = None) -> int:
    """Run one worker in this process until SIGINT / SIGTERM (or ``max_jobs`` done)."""
    from .worker import run_worker
    prepare(cfg)
    run_worker(cfg, slot, max_jobs=max_jobs)
    return 0


def supervised_worker(cfg: ServeConfig, slot: int) -> None:
    """A worker started by ``kinema serve``; exits, the reason logged, with WONT_FIT if its models cannot fit its
    device, with WONT_START if its model cannot be loaded or its models' folders read (``kinema serve`` checked
    them before it started, but they may have changed since)."""
    from ..config import ConfigError
    from ..infer.offload import MemoryFitError
    from ..weights import WeightsError
    from .worker import ModelUnavailable, run_worker
    try:
        run_worker(cfg, slot)
    except MemoryFitError as e:
        log.error("worker %d: %s", slot, e)
        sys.exit(WONT_FIT)
    except ModelUnavailable as e:
        log.error("worker %d: %s", slot, e)
        sys.exit(WONT_START)
    except (ConfigError, WeightsError, FileNotFoundError) as e:
        log.error("worker %d: %s", slot, e)
        sys.exit(WONT_START)


def cpu_workers_wait_passively(cfg: ServeConfig) -> bool:
    """Several CPU workers on one machine: set ``OMP_WAIT_POLICY=PASSIVE`` for them (they read it when PyTorch
    loads), so that two busy workers' threads do not spin against each other at every barrier, which makes
    both tens of times slower (``kinema.common.threads``). The thread count stays PyTorch's (or ``--threads``),
    so a worker's clip is the CLI's at the same seed. Not where the user set a wait policy."""
    from ..common.threads import user_chose_wait_policy
    if cfg.workers < 2 or not (cfg.device or "cpu").startswith("cpu") or user_chose_wait_policy():
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


class Supervisor:
    """Keeps ``cfg.workers`` worker processes alive, restarting any that exit, with a growing back-off."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        # Workers fork from a single-threaded server process that has imported torch and kinema once, so a
        # (re)started worker skips those imports and inherits none of this process's threads or sockets.
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["kinema.serve.worker"])
        self.procs: dict[int, multiprocessing.Process] = {}
        self.stopped: dict[int, str] = {}  # slot -> why it was not restarted (NOT_RESTARTED)
        self.lock = threading.Lock()  # procs and stopped change in the watching thread; health() reads them
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _spawn(self, slot: int) -> None:
        proc = self.ctx.Process(target=supervised_worker, args=(self.cfg, slot), name=f"kinema-worker-{slot}")
        proc.start()
        self.procs[slot] = proc
        log.info("worker %d started (pid %d)", slot, proc.pid)

    def start(self) -> None:
        """Start every worker and the thread that restarts them."""
        if cpu_workers_wait_passively(self.cfg):
            log.info("%d CPU workers share the cores: their PyTorch threads wait passively (OMP_WAIT_POLICY=PASSIVE)",
                     self.cfg.workers)
        for slot in range(self.cfg.workers):
            self._spawn(slot)
        self.thread.start()

    def _watch(self) -> None:
        backoff = {slot: 0.5 for slot in self.procs}
        started = {slot: time.monotonic() for slot in self.procs}
        while not self.stopping.wait(0.5):
            for slot, proc in list(self.procs.items()):
                if proc.is_alive() or self.stopping.is_set():
                    continue
                if proc.exitcode in NOT_RESTARTED:  # restarting cannot help; the API keeps queueing for other workers
                    log.error("worker %d will not be restarted: %s (reason above)", slot, NOT_RESTARTED[proc.exitcode])
                    with self.lock:
                        del self.procs[slot]
                        self.stopped[slot] = NOT_RESTARTED[proc.exitcode]
                    if not self.procs:
                        log.error("no worker is running: %s. The API stays up and keeps queueing jobs for workers "
                                  "elsewhere (`kinema serve worker` on a host sharing this job store), and /healthz "
                                  "answers 503; fix the model or its memory flags and restart `kinema serve` to "
                                  "run the queued jobs here", "; ".join(f"worker {n}: {why}"
                                                                       for n, why in sorted(self.stopped.items())))
                    continue
                quick = time.monotonic() - started[slot] < 30
                backoff[slot] = min(60.0, backoff[slot] * 2) if quick else 0.5
                log.warning("worker %d exited (code %s); restarting in %.1f s", slot, proc.exitcode, backoff[slot])
                if self.stopping.wait(backoff[slot]):
                    return
                self._spawn(slot)
                started[slot] = time.monotonic()

    def health(self) -> dict:
        """``/healthz``'s view of the workers: how many were asked for, how many run (or are being restarted),
        and why any stopped for good (the reasons in words; the log has the details)."""
        with self.lock:
            running, stopped = len(self.procs), dict(self.stopped)
        return {"configured": self.cfg.workers, "running": running,
                "stopped": [{"worker": slot, "reason": why} for slot, why in sorted(stopped.items())]}

    def stop(self, timeout: float = 20.0) -> None:
        """Ask every worker to requeue its job and exit; kill those still running after ``timeout``."""
        self.stopping.set()
        for proc in self.procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def serve_all(cfg: ServeConfig) -> int:
    """The API and ``cfg.workers`` workers (the default ``kinema serve``)."""
    from .catalog import check_model_files, load_catalog
    _logging()
    catalog = load_catalog(cfg.models, cfg.sizes, cfg.seconds)  # a bad model, size or length: refused before any
    if cfg.workers:                                              # worker starts (each would say it again), and
        for spec in catalog.values():                            # a truncated weights file: what is cheap to check
            check_model_files(spec)
    prepare(cfg)
    supervisor = Supervisor(cfg)
    supervisor.start()
    try:
        return serve_api(cfg, catalog, workers=supervisor)
    finally:
        supervisor.stop()


# -- keys ----------------------------------------------------------------------------------------------------

def create_key(cfg: ServeConfig, name: str, rate_per_min: int | None = None, max_queue: int | None = None) -> str:
    """Make a key; returns the secret (printed once, stored only as a hash). A name a live key already has is
    refused: ``keys revoke NAME`` would revoke both."""
    from ..config import ConfigError
    if not name.strip():
        raise ConfigError("a key needs a name (--name), e.g. --name alice")
    for flag, value in (("--key-rate", rate_per_min), ("--key-queue", max_queue)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be a whole number >= 1 (leave it out for the server's default), got {value}")
    store = prepare(cfg)
    if any(k.name == name and not k.revoked_at for k in store.keys()):
        raise ConfigError(f"a live key is already named {name!r}; choose another name (or revoke it first)")
    _, secret = store.add_key(name, rate_per_min, max_queue)
    return secret


def key_table(cfg: ServeConfig) -> list[dict]:
    """Every key as a row: id, name, prefix, created, revoked, limits (never the secret)."""
    rows = []
    for k in prepare(cfg).keys():
        rows.append({"id": k.id, "name": k.name, "prefix": k.prefix + "...",
                     "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at)),
                     "revoked": time.strftime("%Y-%m-%d %H:%M", time.localtime(k.revoked_at)) if k.revoked_at else "-",
                     "rate/min": k.rate_per_min or f"{cfg.rate_per_min} (default)",
                     "queue": k.max_queue or f"{cfg.max_queue} (default)"})
    return rows


def revoke_key(cfg: ServeConfig, key: str) -> bool:
    """Revoke a key by id or name; False if none matched."""
    return prepare(cfg).revoke_key(key)
