"""Shared helpers for the serve tests (no tests here): a throwaway PostgreSQL server, `kinema serve` processes.

Everything listens on 127.0.0.1 only. A service the tests need but cannot find is a skip on a
developer's machine and a failure in CI (CI=true), so a green CI run has really run them.
"""

from __future__ import annotations

import atexit
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(ok: bool, what: str) -> None:
    """Skip (or, in CI, fail) unless ``ok``: ``what`` names the missing service and how to get it."""
    if not ok:
        if IN_CI:
            pytest.fail(f"{what} is required in CI (scripts/ci-services.sh installs it)")
        pytest.skip(f"{what} is not available here (scripts/ci-services.sh installs it)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.05):
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -- PostgreSQL -------------------------------------------------------------------------------------------------

class _Postgres:
    """A throwaway cluster in a temporary folder, on a loopback port, trusted local connections only."""

    def __init__(self):
        self.url: str | None = None
        self.error: str | None = None
        self.folder: str | None = None
        self.as_user: list[str] = []

    def start(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = bins[-1] if bins else shutil.which("initdb")
        if not initdb:
            self.error = "PostgreSQL (Debian package postgresql)"
            return
        bindir = Path(initdb).parent
        self.folder = tempfile.mkdtemp(prefix="kinema-pg-")
        if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
            shutil.chown(self.folder, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        data, port = os.path.join(self.folder, "data"), free_port()
        run = lambda *cmd: subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
        try:
            run(str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
            opts = f"-h 127.0.0.1 -p {port} -k {self.folder} -c fsync=off -c max_connections=200"
            run(str(bindir / "pg_ctl"), "-D", data, "-o", opts, "-l", os.path.join(self.folder, "log"), "-w",
                "-t", "60", "start")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            out = getattr(e, "stderr", b"") or b""
            self.error = f"a PostgreSQL server (starting one failed: {e}; {out.decode(errors='replace')[-500:]})"
            return
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._pg_ctl, self._data = str(bindir / "pg_ctl"), data
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.url:
            subprocess.run([*self.as_user, self._pg_ctl, "-D", self._data, "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
            self.url = None
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


_postgres: _Postgres | None = None


def postgres_database() -> str:
    """The URL of a fresh, empty database on the session's throwaway PostgreSQL server (started on first use)."""
    global _postgres
    if _postgres is None:
        _postgres = _Postgres()
        _postgres.start()
    need(_postgres.url is not None, _postgres.error or "PostgreSQL")
    try:
        import psycopg
    except ImportError:
        psycopg = None
    need(psycopg is not None, "the psycopg Python package (pip install 'psycopg[binary]')")
    name = "kinema_" + uuid.uuid4().hex[:12]
    with psycopg.connect(_postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return _postgres.url.rsplit("/", 1)[0] + "/" + name


def store_url(backend: str, folder: Path) -> str:
    """A fresh job store URL for ``backend`` ("sqlite" or "postgresql")."""
    return f"sqlite:///{folder / 'jobs.sqlite3'}" if backend == "sqlite" else postgres_database()


# -- kinema serve processes ---------------------------------------------------------------------------------------

class Proc:
    """A ``kinema serve ...`` child process in its own process group, logging to a file."""

    def __init__(self, args: list[str], log: Path):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log = log
        self._log_file = open(log, "ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "kinema.cli", "serve", *args], stdout=self._log_file,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Signal the process (SIGTERM: a clean shutdown) and wait; kill its group if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # the group we created: its spawned workers too
        except ProcessLookupError:
            pass
        self.popen.wait(10)
        self._log_file.close()


class Server:
    """A running ``kinema serve`` (or ``serve api``) on a loopback port, with a raw HTTP client."""

    def __init__(self, folder: Path, model: Path, db: str, role: list[str] | None = None, extra: list[str] = (),
                 name: str = "server"):
        self.folder, self.model, self.db, self.port = folder, model, db, free_port()
        self.data = folder / "data"
        self.common = ["--data", str(self.data), "--db", db, "--model", str(model), "--poll-ms", "100", *extra]
        threads = [] if role == ["api"] else ["--threads", "1"]  # `serve api` runs no model: it refuses --threads
        self.proc = Proc([*(role or []), "--port", str(self.port), *self.common, *threads], folder / f"{name}.log")
        self.workers: list[Proc] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90.0) -> Server:
        def ready():
            if self.proc.popen.poll() is not None:
                raise AssertionError(f"kinema serve exited with {self.proc.popen.returncode}:\n{self.proc.tail()}")
            try:
                return self.request("GET", "/healthz")[0] == 200
            except OSError:
                return False
        wait_for(ready, timeout, f"kinema serve on port {self.port}", interval=0.2)
        return self

    def start_worker(self, slot: int, extra: list[str] = ()) -> Proc:
        """A separate ``kinema serve worker`` on the same store and data folder."""
        proc = Proc(["worker", "--slot", str(slot), *self.common, "--threads", "1", *extra], self.folder / f"worker{slot}-{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                key: str | None = None, timeout: float = 30.0) -> tuple[int, dict | bytes, dict]:
        """(status, parsed JSON or raw bytes, headers) for one raw HTTP request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = dict(headers or {})
            if key:
                headers["Authorization"] = f"Bearer {key}"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        if hdrs.get("content-type", "").startswith("application/json"):
            return resp.status, json.loads(data), hdrs
        return resp.status, data, hdrs

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        self.proc.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.tail()}" for p in [self.proc, *self.workers])


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]] = {}, boundary: str = "kinemaTEST"):
    """(body, headers) of a multipart/form-data request."""
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, ctype) in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n").encode()
        parts.append(head + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def add_key(db: str, name: str, rate: int | None = None, queue: int | None = None) -> str:
    """A new API key's secret, made directly in the job store (what `kinema serve keys create` does)."""
    from kinema.serve.store import JobStore
    store = JobStore(db)
    try:
        return store.add_key(name, rate, queue)[1]
    finally:
        store.db.close()
