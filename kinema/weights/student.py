"""A few-step student beside its teacher in a kinema model folder.

    student.safetensors   the student DiT: same names and shapes as transformer.safetensors (the teacher's
                          Wan layout), so it loads and converts wherever the teacher does
    student.json          how to sample it: the K steps and the K + 1 times t_0 > ... > t_K = 0 it was
                          trained at, what is baked into it (guidance scale, negative prompt), provenance

A student is sampled with Euler over ``times`` and one conditional forward per step: the teacher's
classifier-free guidance was distilled into it (``kinema.train.distill``). ``student.json`` is
written after the weights, so a folder that has it has the whole student.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common.io import atomic_path, atomic_write_text
from ..dit import DiT
from .folder import WeightsError, folder_kind, load_dit

STUDENT_FILE, STUDENT_CONFIG = "student.safetensors", "student.json"
STUDENT_FORMAT = 1


@dataclass(frozen=True)
class StudentInfo:
    """What a student was distilled for: its sampling times and what it bakes in."""

    steps: int
    times: tuple[float, ...]  # (steps + 1,) flow times, strictly decreasing, ending at exactly 0
    guidance: float  # the teacher's CFG scale the student reproduces with one conditional forward
    negative_prompt: str = ""  # the teacher's unconditional text during distillation
    shift: float = 1.0  # times = sampling_schedule(steps, shift)
    teacher: str = ""  # the teacher's model folder, as the run named it
    train_steps: int = 0  # optimizer steps the student has trained (continued runs add theirs)
    # Set when the student was carried over to a fine-tuned teacher (scripts/carry_student.py) rather than
    # distilled from it: "student S + teacher NEW - teacher OLD".
    carried_from: str = ""

    def __post_init__(self):
        times = tuple(float(t) for t in self.times)
        object.__setattr__(self, "times", times)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise WeightsError(f"student steps must be an integer >= 1, got {self.steps!r}")
        if len(times) != self.steps + 1:
            raise WeightsError(f"student times must hold steps + 1 = {self.steps + 1} values, got {len(times)}: {times}")
        if not (0 < times[0] <= 1 and times[-1] == 0 and all(a > b for a, b in zip(times, times[1:]))):
            raise WeightsError(f"student times must fall strictly from (0, 1] to exactly 0, got {times}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise WeightsError(f"student guidance must be a finite number >= 0, got {self.guidance}")

    def to_dict(self) -> dict:
        return {"format_version": STUDENT_FORMAT, **dataclasses.asdict(self), "times": list(self.times)}


def save_student(folder: str | os.PathLike, dit: DiT, info: StudentInfo) -> Path:
    """Write ``dit`` and ``info`` into model folder ``folder`` (weights first, then the JSON); returns the folder."""
    p = Path(folder)
    with atomic_path(p / STUDENT_FILE) as tmp:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in dit.state_dict().items()}, str(tmp),
                  metadata={"format": "kinema-student", "steps": str(info.steps)})
    atomic_write_text(p / STUDENT_CONFIG, json.dumps(info.to_dict(), indent=2))
    return p


def read_student(folder: str | os.PathLike) -> StudentInfo | None:
    """The ``StudentInfo`` of a kinema folder's student, or None when it has none."""
    p = Path(folder)
    if not (p / STUDENT_CONFIG).is_file() or folder_kind(p) != "kinema":
        return None
    try:
        d = json.loads((p / STUDENT_CONFIG).read_text())
        d.pop("format_version", None)
        return StudentInfo(**d)
    except (json.JSONDecodeError, TypeError) as e:
        raise WeightsError(f"{p / STUDENT_CONFIG} is not a student description: {e}") from e


def load_student(folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> tuple[DiT, StudentInfo] | None:
    """(student DiT in eval mode, its info) from a kinema folder, or None when the folder has no student."""
    info = read_student(folder)
    if info is None:
        return None
    if not (Path(folder) / STUDENT_FILE).is_file():
        raise WeightsError(f"{Path(folder) / STUDENT_CONFIG} names a student but {STUDENT_FILE} is missing")
    return load_dit(folder, dtype=dtype, weights=STUDENT_FILE), info
