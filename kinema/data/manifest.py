"""A dataset folder: what every stage writes, as Parquet tables with fixed schemas.

    DATASET/
      dataset.json           {"format": "kinema-dataset", "version": 1, "units": U, "inputs": [...]}
      units/<stage>/         per-unit work (kinema.data.shards): uNNNNN.<table>.parquet + uNNNNN.done.json
      sources.parquet        ingest: one row per readable source file (probe results)
      scenes.parquet         split:  one row per detected shot
      clips.parquet          one row per clip, with the columns of the furthest finished stage
                             (split: timestamps; score: + measures, keep, reasons; caption: + caption)
      rejects.parquet        one row per file or clip left out, with the stage and the reason
      report.txt             score: what the filter kept and why
      clips/<clip_id>.mp4    split --export only: clips as files (otherwise clips are timestamps)
      cache/                 encode: the latent cache training reads (kinema.data.cache)

The merged tables at the top are written when every unit of a stage is finished (by any shard);
stages themselves only read their upstream stage's unit tables.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from kinema.common.io import atomic_write_text
from kinema.data.shards import DataError, UnitStore, read_parquet, write_parquet

DATASET_FORMAT, DATASET_VERSION, DATASET_FILE = "kinema-dataset", 1, "dataset.json"
STAGES = ("ingest", "split", "score", "caption", "encode")

_s, _i32, _i64, _f64, _bool = pa.string(), pa.int32(), pa.int64(), pa.float64(), pa.bool_()

SOURCE_SCHEMA = pa.schema([
    ("source_id", _s), ("path", _s), ("unit", _i32), ("file_bytes", _i64), ("container", _s), ("codec", _s),
    ("pix_fmt", _s), ("width", _i32), ("height", _i32), ("coded_width", _i32), ("coded_height", _i32),
    ("rotation", _i32), ("fps", _f64), ("frames", _i64), ("duration", _f64), ("stream_start", _f64),
    ("bit_rate", _i64), ("has_audio", _bool),
])  # fmt: skip  (width/height as displayed: rotation applied)

REJECT_SCHEMA = pa.schema([("stage", _s), ("source_id", _s), ("clip_id", _s), ("path", _s), ("reason", _s)])

SCENE_SCHEMA = pa.schema([
    ("source_id", _s), ("path", _s), ("scene_index", _i32), ("start_frame", _i64), ("end_frame", _i64),
    ("start_time", _f64), ("end_time", _f64), ("cut_score", _f64), ("clips", _i32),
])  # fmt: skip  (frames [start, end), seconds from the first frame)

CLIP_SCHEMA = pa.schema([
    ("clip_id", _s), ("source_id", _s), ("path", _s), ("unit", _i32), ("scene_index", _i32), ("clip_index", _i32),
    ("start_frame", _i64), ("end_frame", _i64), ("frames", _i64), ("start_time", _f64), ("end_time", _f64),
    ("duration", _f64), ("fps", _f64), ("width", _i32), ("height", _i32), ("rotation", _i32),
    ("stream_start", _f64), ("clip_path", _s),
])  # fmt: skip

MEASURE_FIELDS = [
    ("motion", _f64), ("motion_max", _f64), ("sharpness", _f64), ("black_fraction", _f64),
    ("static_fraction", _f64), ("flashes", _i32), ("luma", _f64), ("contrast", _f64), ("aspect", _f64),
]  # fmt: skip
SCORED_SCHEMA = pa.schema(list(CLIP_SCHEMA) + [pa.field(n, t) for n, t in MEASURE_FIELDS]
                          + [pa.field("keep", _bool), pa.field("reasons", pa.list_(_s))])
CAPTIONED_SCHEMA = pa.schema(list(SCORED_SCHEMA) + [pa.field("caption", _s), pa.field("caption_source", _s),
                                                    pa.field("original_caption", _s)])

SAMPLE_SCHEMA = pa.schema([
    ("sample_id", _s), ("clip_id", _s), ("source_id", _s), ("path", _s), ("bucket", _s), ("shard", _s),
    ("shape", pa.list_(_i32)), ("fps", _f64), ("window_start", _f64), ("window_end", _f64), ("caption", _s),
])  # fmt: skip  (shape: latent (C, F, H, W); window: the seconds of the source that were encoded)


@dataclass
class Dataset:
    """A dataset folder: its unit count (fixed when it was made) and the inputs ingest walks."""

    root: Path
    units: int
    inputs: list[str]

    @classmethod
    def open(cls, root: str | os.PathLike) -> Dataset:
        """The dataset at ``root``; an error says to run ingest when there is none."""
        root = Path(root)
        path = root / DATASET_FILE
        if not path.is_file():
            raise DataError(f"{str(root)!r} is not a kinema dataset (no {DATASET_FILE}); "
                            f"make one with `kinema data ingest {root} VIDEOS_FOLDER`")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != DATASET_FORMAT or meta.get("version") != DATASET_VERSION:
            raise DataError(f"{path}: format {meta.get('format')!r} v{meta.get('version')!r}; "
                            f"expected {DATASET_FORMAT!r} v{DATASET_VERSION}")
        return cls(root, int(meta["units"]), list(meta["inputs"]))

    @classmethod
    def create(cls, root: str | os.PathLike, inputs: list[str], units: int | None, sources: int) -> Dataset:
        """Open the dataset at ``root`` (recording new inputs), or make it with ``units`` work units."""
        root = Path(root)
        if (root / DATASET_FILE).is_file():
            ds = cls.open(root)
            if units is not None and units != ds.units:
                raise DataError(f"{root} was made with --units {ds.units}; it cannot change (got {units}). "
                                "Use a new dataset folder to re-cut the corpus")
            if inputs and inputs != ds.inputs:
                ds.inputs = inputs
                ds.save()
            return ds
        if not inputs:
            raise DataError(f"{root} is a new dataset: name the folders or files to ingest (or --list FILE)")
        if units is None:  # about 32 sources per unit: small enough to lose little to a kill
            units = max(1, min(4096, math.ceil(sources / 32)))
        if units < 1:
            raise DataError(f"--units must be >= 1, got {units}")
        ds = cls(root, units, inputs)
        ds.save()
        return ds

    def save(self) -> None:
        """Write dataset.json (atomically)."""
        meta = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "units": self.units, "inputs": self.inputs}
        atomic_write_text(self.root / DATASET_FILE, json.dumps(meta, indent=1) + "\n")

    def store(self, stage: str) -> UnitStore:
        """The per-unit outputs of ``stage``."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {STAGES}")
        return UnitStore(self.root, stage)

    def upstream_fingerprint(self, stage: str, unit: int, shard_owns: bool) -> str:
        """The fingerprint unit ``unit`` of the stage before ``stage`` finished with.

        For this shard's own units a missing upstream is an error that names the command to run;
        another shard's unit just counts as not finished.
        """
        before = STAGES[STAGES.index(stage) - 1]
        fp = self.store(before).fingerprint(unit)
        if fp is None:
            if shard_owns:
                raise DataError(f"{stage} needs {before} first: unit {unit} of {self.root} has not finished {before}; "
                                f"run `kinema data {before} {self.root}` (with the same --shard)")
            return f"missing:{before}"
        return fp

    def gather(self, stage: str, table: str, sort_key: tuple[str, ...] | None = None) -> list[dict]:
        """Rows of ``table`` over all units of ``stage`` (finished ones), sorted by ``sort_key``."""
        store = self.store(stage)
        rows: list[dict] = []
        for unit in range(self.units):
            if store.marker(unit) is not None:
                rows.extend(store.read(unit, table))
        if sort_key:
            rows.sort(key=lambda r: tuple(r[k] for k in sort_key))
        return rows

    def write_rejects(self, upto: str) -> list[dict]:
        """Write rejects.parquet: what every stage up to ``upto`` left out, and why."""
        rows: list[dict] = []
        for stage in STAGES[: STAGES.index(upto) + 1]:
            rows.extend(self.gather(stage, "rejects", ("path", "stage")))
        write_parquet(self.root / "rejects.parquet", rows, REJECT_SCHEMA)
        return rows

    def table(self, name: str) -> list[dict]:
        """Rows of a merged table (sources, scenes, clips, rejects); [] when it was never written."""
        path = self.root / f"{name}.parquet"
        return read_parquet(path) if path.is_file() else []


def reject(stage: str, path: str, reason: str, source_id: str | None = None, clip_id: str | None = None) -> dict:
    """One rejects-table row."""
    return {"stage": stage, "source_id": source_id, "clip_id": clip_id, "path": path, "reason": reason}
