"""Split: each source into single-shot clips, kept as timestamps into the source (or exported as files)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kinema.common.video import VideoDecodeError
from kinema.data.config import SplitConfig, as_dict
from kinema.data.decode import ClipWriter, fit_width, iter_frames
from kinema.data.manifest import CLIP_SCHEMA, REJECT_SCHEMA, SCENE_SCHEMA, Dataset, reject
from kinema.data.scenes import ChangeSeries, detect_cuts, frame_time, plan_clips, scene_bounds
from kinema.data.shards import Shard, StageRun, fingerprint, run_units, write_parquet

SPLIT_VERSION = 1


def split_source(source: dict, cfg: SplitConfig) -> tuple[list[dict], list[dict]]:
    """(scene rows, clip rows) of one sources-table row; raises VideoDecodeError for a file that breaks."""
    series, times = ChangeSeries(), []
    size = fit_width(source["width"], source["height"], cfg.analysis_width)
    for frame in iter_frames(source["path"], size=size, stream_start=source["stream_start"], fps=source["fps"]):
        series.add(frame.pixels)
        times.append(frame.time)
    if len(times) < source["frames"] - 2:
        raise VideoDecodeError(source["path"], f"truncated: {source['frames']} frames listed, {len(times)} decode")
    fps = source["fps"]
    cuts = detect_cuts(series.changes, series.skips, fps, cfg)
    scenes, clips = [], []
    for scene_index, (start, end) in enumerate(scene_bounds(cuts, len(times))):
        pieces = plan_clips(start, end, times, fps, cfg)
        scenes.append(dict(source_id=source["source_id"], path=source["path"], scene_index=scene_index,
                           start_frame=start, end_frame=end, start_time=times[start],
                           end_time=frame_time(end, times, fps), cut_score=series.changes[start] if start else 0.0,
                           clips=len(pieces)))
        for a, b in pieces:
            t0, t1 = times[a], frame_time(b, times, fps)
            clips.append(dict(
                clip_id=f"{source['source_id']}-{len(clips):04d}", source_id=source["source_id"], path=source["path"],
                unit=source["unit"], scene_index=scene_index, clip_index=len(clips), start_frame=a, end_frame=b,
                frames=b - a, start_time=t0, end_time=t1, duration=t1 - t0, fps=fps, width=source["width"],
                height=source["height"], rotation=source["rotation"], stream_start=source["stream_start"],
                clip_path=None))
    return scenes, clips


def no_clip_reason(scenes: list[dict], cfg: SplitConfig) -> str:
    """Why a source gave no clip: it (or each of its shots) is shorter than ``split.min_seconds``."""
    limit = f"split.min_seconds ({cfg.min_seconds:g} s)"
    if not scenes:
        return "no frame decodes"
    seconds = [s["end_time"] - s["start_time"] for s in scenes]
    if len(scenes) == 1:
        return f"shorter than {limit}: {seconds[0]:.2f} s"
    return f"no shot reaches {limit}: {len(scenes)} shots, the longest {max(seconds):.2f} s"


def export_clips(source: dict, clips: list[dict], out_dir: Path) -> None:
    """Write each clip of one source as ``out_dir/<clip_id>.mp4`` (one decode pass); sets ``clip_path``."""
    todo = sorted(clips, key=lambda c: c["start_frame"])
    writer: ClipWriter | None = None
    try:
        for frame in iter_frames(source["path"], fps=source["fps"]):
            if writer is not None and frame.index >= todo[0]["end_frame"]:
                writer.close()
                writer = None
                todo.pop(0)
            if not todo:
                break
            if writer is None and frame.index >= todo[0]["start_frame"]:
                todo[0]["clip_path"] = str(out_dir / f"{todo[0]['clip_id']}.mp4")
                writer = ClipWriter(Path(todo[0]["clip_path"]), source["fps"])
            if writer is not None:
                writer.write(frame.pixels)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.close(ok=False)


def split(root: str | os.PathLike, cfg: SplitConfig = SplitConfig(), export: bool = False, shard: Shard = Shard(),
          log: Callable[[str], None] | None = print) -> StageRun:
    """Detect shots and plan clips for this shard's units; writes scenes/clips.parquet when every unit is done."""
    ds = Dataset.open(root)
    upstream, store = ds.store("ingest"), ds.store("split")
    settings = ("split", SPLIT_VERSION, as_dict(cfg), export)

    def fp_of(unit: int) -> str:
        return fingerprint(*settings, ds.upstream_fingerprint("split", unit, shard.owns(unit)))

    def work(unit: int, fp: str) -> None:
        scenes, clips, rejects = [], [], []
        for source in upstream.read(unit, "sources"):
            try:
                source_scenes, source_clips = split_source(source, cfg)
                if not source_clips:  # left out like a broken file: with its reason, not silently
                    rejects.append(reject("split", source["path"], no_clip_reason(source_scenes, cfg),
                                          source_id=source["source_id"]))
                elif export:
                    export_clips(source, source_clips, ds.root / "clips")
            except VideoDecodeError as err:
                rejects.append(reject("split", source["path"], err.reason, source_id=source["source_id"]))
                continue
            scenes += source_scenes
            clips += source_clips
        store.write(unit, fp, {"scenes": (scenes, SCENE_SCHEMA), "clips": (clips, CLIP_SCHEMA),
                               "rejects": (rejects, REJECT_SCHEMA)})

    run = run_units(store, ds.units, shard, fp_of, work, log)
    if run.complete:
        write_parquet(ds.root / "scenes.parquet", ds.gather("split", "scenes", ("path", "scene_index")), SCENE_SCHEMA)
        clips = ds.gather("split", "clips", ("path", "clip_index"))
        write_parquet(ds.root / "clips.parquet", clips, CLIP_SCHEMA)
        rejected = [r for r in ds.write_rejects("split") if r["stage"] == "split"]
        if log:
            log(f"split: {len(clips)} clip(s) from {len({c['source_id'] for c in clips})} video(s), "
                f"{len(rejected)} video(s) rejected"
                + (f" (why: `kinema data inspect {root}` or rejects.parquet)" if rejected else ""))
    return run
