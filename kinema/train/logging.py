"""Rank-0 output: ``print0``, the metrics logger (JSONL always; TensorBoard / W&B when installed), bad samples.

Named after the stdlib module on purpose (it is this package's logging); inside kinema every import is
absolute, so ``import logging`` elsewhere still gets the standard library.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any


def rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def print0(*args, **kwargs) -> None:
    """``print`` on rank 0 only (flushed, so torchrun's interleaved output stays in order)."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsLogger:
    """Writes one JSON line per logged step to ``metrics.jsonl`` (rank 0), mirrored to TensorBoard / W&B if present."""

    def __init__(self, out_dir: str | Path, tensorboard: bool, wandb_project: str | None, config: dict,
                 resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rewind(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
            except ImportError:  # tensorboard is optional; metrics.jsonl has everything
                pass
        if wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(project=wandb_project, config=config, dir=str(out_dir))
            except ImportError:
                print0(f"log.wandb_project={wandb_project!r} but wandb is not installed (pip install wandb); skipping W&B")

    def _rewind(self, step: int) -> None:
        """Drop lines past ``step`` (a run killed after its last checkpoint logged steps that will be redone)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` for ``step`` everywhere that is enabled."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


class BadSampleLog:
    """Appends each skipped sample (step, source, error) to ``bad_samples[.rankN].jsonl`` and counts them."""

    def __init__(self, out_dir: str | Path, rank_: int, world_size: int):
        name = "bad_samples.jsonl" if world_size == 1 else f"bad_samples.rank{rank_:05d}.jsonl"
        self.path = Path(out_dir) / name
        self.count = 0

    def record(self, step: int, source: str, error: str, echo: bool = True) -> None:
        """Append one skipped sample; the first few are also printed (``echo``)."""
        self.count += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "source": source, "error": error}) + "\n")
        if echo and self.count <= 3:
            print(f"[rank {rank()}] skipped bad sample {source}: {error}", file=sys.stderr, flush=True)
