"""Other processes on this process's CPU cores, and PyTorch's threads waiting politely beside them.

PyTorch's CPU kernels run in OpenMP parallel regions, hundreds per sampling step, each ending at a barrier
where every thread waits for the slowest, spinning by default (GNU OpenMP's active wait). When another
process keeps a core busy, the thread that shares it waits for its time slice at every barrier while the
others spin; against a second PyTorch process (an eval, a training run, another `kinema generate`) both spin,
each taking the other's time. Measured on 2 cores beside a 2-thread matmul loop: the bundled model's clip took
48 s instead of 0.8 s. With ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) it took 1.4 s, and 1.8 s on one
thread; but passive waiting costs an idle machine about 1.5x, so it is chosen only when the cores are busy.

The measure: the CPUs' busy time from ``/proc/stat`` (only the CPUs this process may run on) over an interval,
less this process's own CPU time over it. Linux only; elsewhere, or when anything is unclear, nothing changes.
OpenMP reads its policy once, when PyTorch loads: ``kinema generate`` measures for 0.1 s before that.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

BUSY_ENOUGH = 0.5  # cores' worth of other processes' work that makes PyTorch's threads wait passively


@dataclass
class _Mark:
    wall: float
    own: float  # this process's CPU seconds (all threads)
    busy: float | None  # the allowed CPUs' busy seconds, None where unreadable


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _busy_seconds(cpus: list[int], stat: str = "/proc/stat") -> float | None:
    """Busy seconds (everything but idle and iowait) summed over ``cpus`` since boot; None if unreadable."""
    try:
        with open(stat) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    wanted = {f"cpu{i}" for i in cpus}
    total, seen = 0, 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(values) - values[3] - values[4]
            seen += 1
    return total / tick if seen == len(wanted) else None


def mark(stat: str = "/proc/stat") -> _Mark:
    """A point to measure other processes' CPU use from (see ``busy_elsewhere``)."""
    times = os.times()
    return _Mark(time.monotonic(), times.user + times.system, _busy_seconds(allowed_cpus(), stat))


def busy_elsewhere(since: _Mark, stat: str = "/proc/stat") -> float | None:
    """Cores' worth of work other processes did on this process's CPUs since ``since``; None if unknown or
    the interval was too short to tell (under 0.1 s)."""
    now = mark(stat)
    wall = now.wall - since.wall
    if now.busy is None or since.busy is None or wall < 0.1:
        return None
    others = (now.busy - since.busy) - (now.own - since.own)
    return max(0.0, others / wall)


def busy_now(window: float = 0.1, stat: str = "/proc/stat") -> float | None:
    """Cores' worth of work other processes do on this process's CPUs, sampled over ``window`` seconds."""
    start = mark(stat)
    time.sleep(window)
    return busy_elsewhere(start, stat)


WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # the user's own say on waiting


def user_chose_wait_policy() -> bool:
    """Whether the environment already says how OpenMP threads wait (then kinema leaves it alone)."""
    return any(k in os.environ for k in WAIT_POLICY_VARIABLES)


def wait_passively_if_busy(window: float = 0.1) -> float | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other processes keep at least ``BUSY_ENOUGH`` of this process's
    cores busy; returns how busy (None: left alone). Only before PyTorch loads (OpenMP reads the variable
    then), on Linux, and when the user set no wait policy of their own."""
    import sys
    if "torch" in sys.modules or not sys.platform.startswith("linux") or user_chose_wait_policy():
        return None
    others = busy_now(window)
    if others is None or others < BUSY_ENOUGH:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return others


@contextlib.contextmanager
def fixed_threads(n: int, device):
    """Run the block on ``n`` CPU threads (elsewhere, or already so: as it is). For a small computation whose
    result must not depend on the machine's thread count: the MiniLM text encoder's fp32 matmuls round
    differently on 1 and 2 threads (by ~1e-6), and a bf16 clip sampled from the two encodings differs by up to
    56 levels of 255, where the DiT and the VAE give the same bits on any thread count."""
    import torch
    before = torch.get_num_threads()
    if getattr(device, "type", str(device)) != "cpu" or before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
