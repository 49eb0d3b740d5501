"""How many CPU threads a command should use, given what else is running on its cores.

PyTorch's CPU kernels run in OpenMP parallel regions, hundreds per sampling step, each ending at a barrier
where every thread waits for the slowest. When another process keeps some of the cores busy, the thread
that shares a core waits for its time slice at every barrier, and the others spin meanwhile. Against a second
PyTorch process (an eval, a training run, another `kinema generate`) both spin, each stealing the other's
time: measured on 2 cores with a 2-thread matmul loop beside it, the bundled model's clip took 48 s instead
of 0.8 s, and 1.9 s on one thread. So a command measures, while its model loads, how much of its cores other
processes used, and leaves those to them.

The measure: the CPUs' busy time from ``/proc/stat`` (only the CPUs this process may run on) over the load,
less this process's own CPU time over the same interval. Linux only; elsewhere, or when anything is unclear,
the threads stay as PyTorch chose.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

BUSY_ENOUGH = 0.5  # cores' worth of other processes' work that takes a thread away


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


def threads_beside(others: float | None, threads: int) -> int:
    """``threads`` less one per core of ``others``' work (rounded; at least 1); unchanged when unknown."""
    if others is None or others < BUSY_ENOUGH:
        return threads
    return max(1, min(threads, len(allowed_cpus()) - round(others)))
