"""Score and filter: measure every clip (one decode pass per source), then keep the ones that pass.

The measures are stored whatever the thresholds; the keep / drop decision and its reasons are made
from them. Changing only the ``[filter]`` thresholds re-applies them without decoding anything again.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable

from kinema.common.io import atomic_write_text
from kinema.common.video import VideoDecodeError
from kinema.data.config import FilterConfig, ScoreConfig, as_dict
from kinema.data.decode import fit_width, iter_frames
from kinema.data.manifest import MEASURE_FIELDS, REJECT_SCHEMA, SCORED_SCHEMA, Dataset, reject
from kinema.data.measures import ClipMeter, reasons
from kinema.data.shards import Shard, StageRun, fingerprint, run_units, write_parquet

SCORE_VERSION = 1


def measure_source(clips: list[dict], cfg: ScoreConfig) -> tuple[dict[str, dict], dict[str, str]]:
    """(clip_id -> measures, clip_id -> why it could not be measured) for the clips of one source, in one
    decode pass; a file that stops decoding raises VideoDecodeError."""
    first = clips[0]
    size = fit_width(first["width"], first["height"], cfg.analysis_width)
    meters = {c["clip_id"]: ClipMeter(c["frames"], c["fps"], cfg) for c in clips}
    eps = 0.25 / first["fps"]
    todo = sorted(clips, key=lambda c: c["start_time"])
    frames = iter_frames(first["path"], size=size, start=todo[0]["start_time"], end=todo[-1]["end_time"],
                         stream_start=first["stream_start"], fps=first["fps"])
    for frame in frames:
        while todo and frame.time >= todo[0]["end_time"] - eps:
            todo.pop(0)
        if not todo:
            break
        if frame.time >= todo[0]["start_time"] - eps:
            meters[todo[0]["clip_id"]].add(frame.pixels)
    measured, failed = {}, {}
    for clip_id, meter in meters.items():
        try:
            measured[clip_id] = meter.result()
        except ValueError as err:
            failed[clip_id] = str(err)
    return measured, failed


def _by_source(clips: Iterable[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for clip in clips:
        groups.setdefault(clip["source_id"], []).append(clip)
    return groups


def decide(row: dict, cfg: FilterConfig) -> dict:
    """The row with ``aspect``, ``reasons`` and ``keep`` set from its measures."""
    row = {**row, "aspect": row["width"] / row["height"]}
    row["reasons"] = reasons(row, cfg)
    row["keep"] = not row["reasons"]
    return row


def score(root: str | os.PathLike, cfg: ScoreConfig = ScoreConfig(), filters: FilterConfig = FilterConfig(),
          shard: Shard = Shard(), log: Callable[[str], None] | None = print) -> StageRun:
    """Measure and filter this shard's units; writes clips.parquet and report.txt when every unit is done."""
    ds = Dataset.open(root)
    upstream, store = ds.store("split"), ds.store("score")

    def measure_fp(unit: int) -> str:
        return fingerprint("score", SCORE_VERSION, as_dict(cfg), ds.upstream_fingerprint("score", unit, shard.owns(unit)))

    def fp_of(unit: int) -> str:
        return fingerprint(measure_fp(unit), as_dict(filters))

    def work(unit: int, fp: str) -> None:
        clips = upstream.read(unit, "clips")
        marker = store.marker(unit)
        measured: dict[str, dict] = {}
        rejects = []
        if marker and marker["info"].get("measure_fingerprint") == measure_fp(unit):  # only thresholds changed
            fields = [name for name, _ in MEASURE_FIELDS]
            measured = {r["clip_id"]: {k: r[k] for k in fields} for r in store.read(unit, "clips")}
            rejects = store.read(unit, "rejects")
        else:
            for source_clips in _by_source(clips).values():
                try:
                    done, failed = measure_source(source_clips, cfg)
                except VideoDecodeError as err:
                    done, failed = {}, {c["clip_id"]: err.reason for c in source_clips}
                measured.update(done)
                rejects += [reject("score", c["path"], failed[c["clip_id"]], c["source_id"], c["clip_id"])
                            for c in source_clips if c["clip_id"] in failed]
        rows = [decide({**clip, **measured[clip["clip_id"]]}, filters) for clip in clips if clip["clip_id"] in measured]
        store.write(unit, fp, {"clips": (rows, SCORED_SCHEMA), "rejects": (rejects, REJECT_SCHEMA)},
                    {"measure_fingerprint": measure_fp(unit)})

    run = run_units(store, ds.units, shard, fp_of, work, log)
    if run.complete:
        rows = ds.gather("score", "clips", ("path", "clip_index"))
        write_parquet(ds.root / "clips.parquet", rows, SCORED_SCHEMA)
        rejected = ds.write_rejects("score")
        atomic_write_text(ds.root / "report.txt", filter_report(rows, filters, rejected))
    return run


def filter_report(rows: list[dict], filters: FilterConfig, rejects: Iterable[dict] = ()) -> str:
    """What the filter kept and why the rest was dropped: totals, counts per rule, what earlier stages (and
    scoring) left out with their reasons, then every clip."""
    kept = [r for r in rows if r["keep"]]
    rules = Counter(reason.split(":")[0] for r in rows for reason in r["reasons"])
    seconds = sum(r["duration"] for r in kept)
    lines = [f"{len(kept)} of {len(rows)} clips kept ({seconds:.1f} s of video)", "",
             "thresholds: " + ", ".join(f"{k}={v}" for k, v in as_dict(filters).items()), ""]
    if rules:
        lines.append("dropped by rule (a clip can fail several):")
        lines += [f"  {rule:<22} {count}" for rule, count in rules.most_common()]
        lines.append("")
    rejects = list(rejects)
    if rejects:
        lines.append(f"left out before the filter ({len(rejects)}; also in rejects.parquet):")
        lines += [f"  {r['stage']}: {os.path.basename(r['path'])}{' ' + r['clip_id'] if r['clip_id'] else ''}: "
                  f"{r['reason']}" for r in rejects]
        lines.append("")
    for r in rows:
        verdict = "kept" if r["keep"] else "dropped: " + "; ".join(r["reasons"])
        lines.append(f"{r['clip_id']}  {os.path.basename(r['path'])} {r['start_time']:.2f}-{r['end_time']:.2f}s  "
                     f"motion={r['motion']:.3g} sharpness={r['sharpness']:.3g}  {verdict}")
    return "\n".join(lines) + "\n"
