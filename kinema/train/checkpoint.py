"""Checkpoints that lose nothing, written atomically; the same format for one process and for FSDP.

Layout of ``OUT/checkpoints/step-00001000/``::

    .metadata, __*_*.distcp   torch.distributed.checkpoint (DCP): "model", "optim", "ema" (sharded runs
                              write shards in parallel; any world size can load them back)
    rng.rank00000.pt          python / numpy / torch (/ cuda) RNG states of each rank
    trainer.json              step, data position, LR scheduler, counters, the run and model configs

Everything is written into ``.tmp-step-00001000`` and renamed when complete, so a crash mid-save
leaves the previous checkpoint as the latest; only the last ``keep_last`` are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from kinema.common.io import atomic_write_text
from kinema.train.config import TrainError
from kinema.train.parallel import barrier

TRAINER_FILE = "trainer.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(root) / f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


def dcp_save(tensors: dict, path: Path) -> None:
    """``dcp.save`` collectively under torchrun, plainly in one process (without DCP's warning about it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(tensors, checkpoint_id=str(path), no_dist=_no_dist())


def dcp_load(tensors: dict, path: Path, single_process: bool = False) -> None:
    """``dcp.load`` into ``tensors`` in place; ``single_process`` reads alone even under torchrun."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(tensors, checkpoint_id=str(path), no_dist=single_process or _no_dist())


def rng_state() -> dict:
    """This process's RNG states, as tensors and ints only (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, step: int, tensors: dict, meta: dict, rank: int, keep_last: int) -> Path:
    """Write ``tensors`` (DCP state) + ``meta`` as the checkpoint of ``step``; every rank calls this."""
    root = Path(root)
    final, tmp = step_dir(root, step), root / f".tmp-step-{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    dcp_save(tensors, tmp)
    torch.save(rng_state(), tmp / f"rng.rank{rank:05d}.pt")
    barrier()
    if rank == 0:
        atomic_write_text(tmp / TRAINER_FILE, json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def read_meta(path: Path) -> dict:
    """The ``trainer.json`` of a checkpoint."""
    file = Path(path) / TRAINER_FILE
    if not file.is_file():
        raise TrainError(f"{path} is not a complete checkpoint (no {TRAINER_FILE})")
    return json.loads(file.read_text(encoding="utf-8"))


def load_checkpoint(path: Path, tensors: dict, rank: int) -> dict:
    """Fill ``tensors`` (DCP state, in place) from the checkpoint at ``path``, restore this rank's RNG; returns its meta."""
    path = Path(path)
    meta = read_meta(path)
    dcp_load(tensors, path)
    rng_file = path / f"rng.rank{rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return meta


def check_resumable(path: Path, meta: dict, cfg) -> list[str]:
    """TrainError when run config ``cfg`` would give the checkpoint's tensors at ``path`` (its ``meta``) another
    shape or meaning; else the optimizer settings and length that changed ("optim.lr 0.001 -> 0.01"), which apply
    from the next step."""
    was, now = meta["config"], json.loads(json.dumps(cfg.to_dict()))
    fixed = ["model", "preset", "model_config", "lora", "distill"] + (["init_from"] if cfg.lora.rank else [])
    for key in fixed:
        was_value, now_value = was.get(key), now.get(key)
        if key in ("lora", "distill") and was_value and now_value:  # the fields both versions have, except
            both = set(was_value) & set(now_value) - {"reuse"}  # how often a teacher batch is reused (not state)
            was_value, now_value = ({k: v[k] for k in both} for v in (was_value, now_value))
        if was_value != now_value:
            raise TrainError(f"--resume: {key} was {json.dumps(was.get(key))} in {path}, this run has "
                             f"{json.dumps(now.get(key))}; a checkpoint continues only the run that wrote it: "
                             f"choose a new out_dir (to start from its weights: init_from its exported model)")
    changed = [f"optim.{k} {json.dumps(v)} -> {json.dumps(now['optim'][k])}" for k, v in was["optim"].items()
               if now["optim"].get(k) != v]
    return changed + ([f"max_steps {was['max_steps']} -> {now['max_steps']}"] if was["max_steps"] != now["max_steps"]
                      else [])
