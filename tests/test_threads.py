"""Threads left to other processes: /proc/stat read over an interval, less the process's own CPU time."""

from __future__ import annotations

import time

import pytest
import torch

from kinema.common import threads


def _stat(path, busy_ticks: int, cpus: list[int]) -> None:
    """A /proc/stat whose every allowed CPU has ``busy_ticks`` of user time (and 1000 idle)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"] + [f"cpu{i} {busy_ticks} 0 0 1000 0 0 0 0 0 0" for i in cpus]
    path.write_text("\n".join(lines) + "\nintr 0\n")


def test_busy_elsewhere_is_the_cpus_busy_time_less_the_processes_own(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1])
    stat = tmp_path / "stat"
    tick = threads.os.sysconf("SC_CLK_TCK")
    _stat(stat, 0, [0, 1])
    start = threads.mark(str(stat))
    time.sleep(0.3)
    _stat(stat, int(0.3 * tick), [0, 1])  # each CPU busy for the whole 0.3 s: two cores' worth, none of it ours
    others = threads.busy_elsewhere(start, str(stat))
    assert others == pytest.approx(2.0, abs=0.25)
    assert threads.busy_elsewhere(threads.mark(str(stat)), str(stat)) is None  # too short an interval to tell
    _stat(stat, 0, [0])  # a CPU missing from the file: unknown, not idle
    assert threads._busy_seconds([0, 1], str(stat)) is None
    assert threads.busy_elsewhere(start, str(tmp_path / "absent")) is None


def test_threads_beside_leaves_the_busy_cores(monkeypatch):
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1, 2, 3])
    assert threads.threads_beside(None, 4) == 4  # unknown: as PyTorch chose
    assert threads.threads_beside(0.3, 4) == 4  # a little background work takes no thread
    assert threads.threads_beside(1.2, 4) == 3
    assert threads.threads_beside(2.0, 2) == 2  # never more than it had
    assert threads.threads_beside(9.0, 4) == 1  # never fewer than one


def test_the_cli_runs_on_fewer_threads_beside_a_busy_process(monkeypatch, capsys):
    from kinema.cli import generate

    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        generate._leave_busy_cores(1.0, quiet=False)
        assert torch.get_num_threads() == 1
        assert "about 1.0 of this process's CPU cores: running on 1 thread instead of 2" in capsys.readouterr().err
        torch.set_num_threads(2)
        generate._leave_busy_cores(0.1, quiet=False)  # an idle machine: nothing changes, nothing said
        assert torch.get_num_threads() == 2 and not capsys.readouterr().err
    finally:
        torch.set_num_threads(before)

