"""What a ``kinema serve`` deployment is: where it keeps its data, which models it runs, its limits.

One typed config is shared by the API process and every worker process (workers get a copy when
they are spawned, or the same command-line flags on another host).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """A deployment: data folder, job store, models, network address, and the limits it enforces."""

    data_dir: str = str(Path.home() / ".kinema" / "serve")
    db: str | None = None  # None: SQLite in data_dir; "postgresql://..." for a queue shared by several hosts
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[str, ...] = ()  # model folders; empty = the bundled model
    sizes: tuple[str, ...] = ()  # "WxH" accepted sizes; empty = derived from each model's default size
    seconds: tuple[str, ...] = ()  # accepted durations; empty = derived from each model's default length
    workers: int = 1  # worker processes started by ``kinema serve`` (one per GPU is usual)
    device: str = "cpu"
    dtype: str = "auto"  # bf16 where the device has it natively, else fp32 (as `kinema generate`)
    offload: str = "none"  # workers' memory mode, as ``kinema generate --offload``: "none" | "model" | "block"
    quantize: str = "none"  # "int8": workers store the DiT blocks' linear weights in 8 bits
    threads: int | None = None  # CPU threads per worker
    compile: bool = False  # workers load their pipelines with torch.compile (Pipeline.compile)
    auth: bool = True  # False (``--no-auth``) is only allowed on a loopback address
    lease_s: float = 60.0  # a job whose worker sent no heartbeat for this long is retried
    max_attempts: int = 3  # claims per job before it fails as "worker_lost"
    ttl_s: float = 7 * 24 * 3600.0  # results and metadata are deleted this long after a job ends
    poll_ms: int = 1000  # the openai-poll-after-ms hint, and how often an idle worker looks for jobs
    rate_per_min: int = 30  # default job creations per key per minute (keys may override)
    max_queue: int = 16  # default unfinished jobs per key (keys may override)
    max_prompt_chars: int = 4000
    max_steps: int = 100
    max_upload_bytes: int = 16 * 2**20
    max_request_bytes: int = 24 * 2**20
    max_input_frames: int = 257  # frames read from an uploaded video (extend / edit)

    def __post_init__(self):
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if not self.auth and not is_loopback(self.host):
            raise ConfigError(f"--no-auth is only allowed on a loopback address (127.0.0.1, ::1, localhost), "
                              f"got host {self.host!r}; create a key with `kinema serve keys create` instead")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}")
        plan = self.memory_plan()  # an unknown offload or quantize value is refused here, by name
        if self.compile and not plan.weights_as_loaded:
            raise ConfigError(f"--compile does not combine with --offload {self.offload} / --quantize {self.quantize}")
        if not self.lease_s > 0 or self.max_attempts < 1:
            raise ConfigError(f"lease must be > 0 s and max attempts >= 1, got {self.lease_s} s / {self.max_attempts}")
        if not self.ttl_s > 0 or not self.poll_ms > 0:
            raise ConfigError(f"ttl and poll interval must be > 0, got {self.ttl_s} s / {self.poll_ms} ms")
        for name in ("rate_per_min", "max_queue", "max_prompt_chars", "max_steps", "max_upload_bytes",
                     "max_request_bytes", "max_input_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    def memory_plan(self):
        """The ``MemoryPlan`` workers load their pipelines with (see ``kinema.infer.offload``)."""
        from ..infer.offload import MemoryPlan  # here, not at the top: importing kinema.serve stays torch-free
        try:
            return MemoryPlan.for_mode(self.offload, self.quantize)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def db_url(self) -> str:
        """The job store's URL: the given one, or SQLite in the data folder."""
        return self.db or f"sqlite:///{self.data_path / 'jobs.sqlite3'}"
