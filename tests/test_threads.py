"""Other processes' CPU use: /proc/stat read over an interval, less the process's own CPU time."""

from __future__ import annotations

import time

import pytest

from kinema.common import threads


def _stat(path, busy_ticks: int, cpus: list[int]) -> None:
    """A /proc/stat whose every listed CPU has ``busy_ticks`` of user time (and 1000 idle)."""
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


def test_passive_waiting_only_when_busy_and_only_before_torch_loads(monkeypatch):
    import sys

    for var in threads.WAIT_POLICY_VARIABLES:
        monkeypatch.setenv(var, "")  # recorded first, so that whatever the code sets is undone after the test
        monkeypatch.delenv(var)
    monkeypatch.setattr(sys, "platform", "linux")
    modules = {k: v for k, v in sys.modules.items() if k != "torch"}
    monkeypatch.setattr(sys, "modules", modules)  # as in a fresh `kinema generate`, before PyTorch loads
    monkeypatch.setattr(threads, "busy_now", lambda window=0.1: 0.2)
    assert threads.wait_passively_if_busy() is None and "OMP_WAIT_POLICY" not in threads.os.environ
    monkeypatch.setattr(threads, "busy_now", lambda window=0.1: 1.0)
    assert threads.wait_passively_if_busy() == 1.0 and threads.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own choice stands
    assert threads.wait_passively_if_busy() is None and threads.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    modules["torch"] = object()  # too late: OpenMP has read its settings
    assert threads.wait_passively_if_busy() is None and "OMP_WAIT_POLICY" not in threads.os.environ


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_the_same_seed_gives_the_same_latents_on_any_thread_count(tiny_model_dir, dtype):
    import torch

    from kinema.infer import Pipeline

    pipe = Pipeline.from_pretrained(tiny_model_dir, dtype=dtype)
    before, latents = torch.get_num_threads(), {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            pipe._prompt_cache.clear()  # the text is encoded again on this thread count
            latents[n] = pipe.generate("a red ball bounces on the floor", seed=5, steps=3).latents
    finally:
        torch.set_num_threads(before)
    assert torch.equal(latents[1], latents[2])
