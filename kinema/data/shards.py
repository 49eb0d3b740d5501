"""Work units, shards and resumable stages: how many processes and machines share one corpus.

A dataset is cut once, at ingest, into ``units`` work units by a stable hash of each source's id, and
every stage works unit by unit: unit ``u`` of a stage reads unit ``u`` of the stage before it. Shard
``i/n`` (``--shard i/n``, or the ``RANK`` / ``WORLD_SIZE`` that torchrun sets) owns the units with
``u % n == i``. Since units never depend on ``n``, two shards together write exactly the files of one
unsharded run, and a shard can run every stage on its units without waiting for the others.

A finished unit is its Parquet tables (each written to a temporary name and renamed) plus a marker
``uNNNNN.done.json`` written last, holding a *fingerprint* of everything the output depends on (the
upstream unit's fingerprint and this stage's settings). A killed run leaves no marker for the unit it
was in, so re-running redoes that unit only; a changed setting or input changes the fingerprint, so
exactly the affected units are redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kinema.common.io import atomic_path, atomic_write_text


class DataError(RuntimeError):
    """The data pipeline cannot go on (missing upstream stage, bad input); the message says what to do."""


@dataclass(frozen=True)
class Shard:
    """This process's share of the units: those with ``unit % count == index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self):
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise DataError(f"shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    def owns(self, unit: int) -> bool:
        """True when ``unit`` is this shard's work."""
        return unit % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def resolve_shard(text: str | None = None) -> Shard:
    """The shard "i/n" names; without one, torchrun's RANK / WORLD_SIZE; else the whole corpus (0/1)."""
    if text:
        parts = text.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise DataError(f"--shard must be i/n (e.g. 0/4: the first of four), got {text!r}")
        return Shard(int(parts[0]), int(parts[1]))
    if "WORLD_SIZE" in os.environ:
        return Shard(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]))
    return Shard()


def unit_of(key: str, units: int) -> int:
    """The unit a source id belongs to (stable across runs, machines and Python versions)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % units


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts: equal parts, equal fingerprint."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------
# Tables


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    """Write rows as a Parquet table with a fixed schema (so empty tables keep their columns), atomically."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: Path) -> list[dict]:
    """The rows of a Parquet table, as dicts."""
    return pq.read_table(path).to_pylist()


# ---------------------------------------------------------------------------------------------
# A stage's per-unit outputs


class UnitStore:
    """One stage's finished units under ``root/units/<stage>/``: tables, then a done marker."""

    def __init__(self, root: Path, stage: str):
        self.stage = stage
        self.dir = Path(root) / "units" / stage

    def table_path(self, unit: int, table: str) -> Path:
        """Where one table of a unit lives."""
        return self.dir / f"u{unit:05d}.{table}.parquet"

    def marker_path(self, unit: int) -> Path:
        """Where a unit's done marker lives."""
        return self.dir / f"u{unit:05d}.done.json"

    def marker(self, unit: int) -> dict | None:
        """The unit's done marker, or None when it never finished."""
        try:
            return json.loads(self.marker_path(unit).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def fingerprint(self, unit: int) -> str | None:
        """The fingerprint the unit finished with, or None."""
        marker = self.marker(unit)
        return marker["fingerprint"] if marker else None

    def is_done(self, unit: int, fp: str) -> bool:
        """True when the unit finished with fingerprint ``fp``."""
        return self.fingerprint(unit) == fp

    def read(self, unit: int, table: str) -> list[dict]:
        """Rows of one of the unit's tables."""
        return read_parquet(self.table_path(unit, table))

    def write(self, unit: int, fp: str, tables: dict[str, tuple[list[dict], pa.Schema]], info: dict | None = None) -> None:
        """Write the unit's tables, then its marker: a unit with a marker is whole."""
        self.marker_path(unit).unlink(missing_ok=True)  # a half-replaced unit must never look finished
        for name, (rows, schema) in tables.items():
            write_parquet(self.table_path(unit, name), rows, schema)
        counts = {name: len(rows) for name, (rows, _) in tables.items()}
        marker = {"stage": self.stage, "unit": unit, "fingerprint": fp, "rows": counts, "info": info or {},
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_text(self.marker_path(unit), json.dumps(marker, indent=1, default=str))


@dataclass
class StageRun:
    """What one call of a stage did: units it finished, units already done, units left to other shards."""

    stage: str
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    others: list[int] = field(default_factory=list)  # not this shard's and not finished yet
    stale: list[int] = field(default_factory=list)  # of ``others``: finished by their shard, but with other settings
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """True when every unit of the stage is finished (by any shard)."""
        return not self.others

    def summary(self) -> str:
        """One line: what was done, skipped and left."""
        line = (f"{self.stage}: {len(self.done)} unit(s) done in {self.seconds:.1f}s, "
                f"{len(self.skipped)} already done")
        if self.others:
            line += f", {len(self.others)} left to other shards"
        if self.stale:  # the merge waits for them: say why, or it waits in silence
            line += (f" ({len(self.stale)} of them finished with other settings or inputs than this run's: run every "
                     f"shard with the same options; their shards redo them)")
        return line


def run_units(store: UnitStore, units: int, shard: Shard, fingerprint_of: Callable[[int], str],
              work: Callable[[int, str], None], log: Callable[[str], None] | None = None) -> StageRun:
    """Run ``work(unit, fp)`` for this shard's unfinished units; ``work`` ends with ``store.write``."""
    run = StageRun(store.stage)
    start = time.perf_counter()
    todo: list[tuple[int, str]] = []
    for unit in range(units):
        fp = fingerprint_of(unit)
        if store.is_done(unit, fp):
            run.skipped.append(unit)
        elif shard.owns(unit):
            todo.append((unit, fp))
        else:
            run.others.append(unit)
    for i, (unit, fp) in enumerate(todo):
        work(unit, fp)
        if not store.is_done(unit, fp):
            raise RuntimeError(f"{store.stage}: unit {unit} finished without its marker (work must call store.write)")
        run.done.append(unit)
        if log:
            log(f"{store.stage}: unit {unit} done ({i + 1}/{len(todo)} of shard {shard})")
    run.seconds = time.perf_counter() - start
    # Other shards may have finished theirs meanwhile: look again, so the last shard to end sees it all.
    run.others = [u for u in run.others if not store.is_done(u, fingerprint_of(u))]
    run.stale = [u for u in run.others if store.fingerprint(u) is not None]
    return run
