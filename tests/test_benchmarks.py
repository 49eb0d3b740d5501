"""The benchmark scripts still run against the code they measure: each answers --help, and the cheap ones run.

They are not timed here (timings live in the README, from the scripts themselves); this only keeps them from
rotting when an API they call changes.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def run(script: Path, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    runpy.run_path(str(script), run_name="__main__")


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_every_benchmark_answers_help(script, monkeypatch, capsys):
    with pytest.raises(SystemExit) as done:
        run(script, ["--help"], monkeypatch)
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


def test_long_seams_measures_the_joins_of_a_long_video(monkeypatch, capsys, one_thread):
    script = next(p for p in BENCHMARKS if p.name == "long_seams.py")
    run(script, ["--n", "1", "--seconds", "2.6"], monkeypatch)  # two windows of the bundled model
    report = json.loads(capsys.readouterr().out.splitlines()[0])
    assert report["videos"] == 1 and report["median_join_step"] > 0 and report["median_step"] > 0
