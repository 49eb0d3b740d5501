"""Inspect: summary statistics of a dataset folder, and a contact sheet of its clips (a PNG grid)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kinema.common.io import atomic_path
from kinema.common.video import VideoDecodeError
from kinema.data.decode import iter_frames
from kinema.data.manifest import Dataset
from kinema.data.shards import DataError, read_parquet


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.percentile(np.asarray(values, dtype=np.float64), [10, 50, 90])
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])}


def summarize(root: str | os.PathLike) -> dict:
    """Counts, durations, formats, filter outcomes, caption coverage and cache contents of a dataset."""
    ds = Dataset.open(root)
    sources, rejects, scenes, clips = ds.table("sources"), ds.table("rejects"), ds.table("scenes"), ds.table("clips")
    stats: dict = {"root": str(ds.root), "units": ds.units}
    stats["sources"] = {
        "count": len(sources), "hours": sum(s["duration"] for s in sources) / 3600,
        "containers": dict(Counter(s["container"].split(",")[0] for s in sources)),
        "codecs": dict(Counter(s["codec"] for s in sources)),
        "sizes": dict(Counter(f"{s['width']}x{s['height']}" for s in sources).most_common(8)),
        "fps": dict(Counter(f"{s['fps']:.3g}" for s in sources)), "rotated": sum(1 for s in sources if s["rotation"]),
    }  # fmt: skip
    stats["rejects"] = {"count": len(rejects), "by_stage": dict(Counter(r["stage"] for r in rejects)),
                        "files": [f"{r['stage']}: {Path(r['path']).name}: {r['reason']}" for r in rejects]}
    stats["scenes"] = {"count": len(scenes)}
    kept = [c for c in clips if c.get("keep", True)]
    stats["clips"] = {"count": len(clips), "seconds": sum(c["duration"] for c in clips),
                      "duration": _quantiles([c["duration"] for c in clips]), "kept": len(kept),
                      "kept_seconds": sum(c["duration"] for c in kept)}
    if clips and "keep" in clips[0]:
        stats["clips"]["dropped_by"] = dict(Counter(r.split(":")[0] for c in clips for r in c["reasons"]))
        stats["measures"] = {m: _quantiles([c[m] for c in clips]) for m in ("motion", "sharpness", "black_fraction",
                                                                               "static_fraction")}
    if clips and "caption" in clips[0]:
        stats["captions"] = {"captioned": sum(1 for c in kept if c["caption"]),
                             "by_source": dict(Counter(c["caption_source"] for c in kept))}
    samples_path = ds.root / "cache" / "samples.parquet"
    if samples_path.is_file():
        samples = read_parquet(samples_path)
        cache = ds.root / "cache"
        stats["cache"] = {"samples": len(samples), "by_bucket": dict(Counter(s["bucket"] for s in samples)),
                          "shards": len({s["shard"] for s in samples}),
                          "megabytes": sum(p.stat().st_size for p in cache.glob("*.safetensors")) / 2**20}
    return stats


def format_summary(stats: dict) -> str:
    """The summary as a few readable lines."""
    s, c = stats["sources"], stats["clips"]
    lines = [f"dataset {stats['root']} ({stats['units']} units)",
             f"sources: {s['count']} files, {s['hours'] * 60:.1f} min; containers {s['containers']}; codecs {s['codecs']}; "
             f"sizes {s['sizes']}; fps {s['fps']}; rotated {s['rotated']}",
             f"rejects: {stats['rejects']['count']} {stats['rejects']['by_stage']}"]
    lines += [f"  {line}" for line in stats["rejects"]["files"][:20]]
    lines.append(f"scenes: {stats['scenes']['count']}; clips: {c['count']} ({c['seconds']:.1f} s, duration {c['duration']}); "
                 f"kept {c['kept']} ({c['kept_seconds']:.1f} s)")
    if "dropped_by" in c:
        lines.append(f"dropped by rule: {c['dropped_by']}")
        lines += [f"  {m}: {q}" for m, q in stats["measures"].items()]
    if "captions" in stats:
        lines.append(f"captions: {stats['captions']['captioned']} of {c['kept']} kept clips; {stats['captions']['by_source']}")
    if "cache" in stats:
        k = stats["cache"]
        lines.append(f"cache: {k['samples']} samples in {k['shards']} shards ({k['megabytes']:.1f} MB); {k['by_bucket']}")
    return "\n".join(lines)


def _thumbnail(clip: dict, width: int, height: int) -> Image.Image:
    """The clip's middle frame fitted into width x height (black bars), or a grey tile if it does not decode."""
    tile = Image.new("RGB", (width, height), (40, 40, 40))
    scale = min(width / clip["width"], height / clip["height"])
    size = (max(2, round(clip["width"] * scale)), max(2, round(clip["height"] * scale)))
    middle = (clip["start_time"] + clip["end_time"]) / 2
    try:
        frame = next(iter_frames(clip["path"], size=size, start=middle, end=clip["end_time"],
                                 stream_start=clip["stream_start"], fps=clip["fps"]), None)
    except VideoDecodeError:
        frame = None
    if frame is not None:
        tile.paste(Image.fromarray(frame.pixels), ((width - size[0]) // 2, (height - size[1]) // 2))
    return tile


def _no_clips(ds: Dataset) -> str:
    """Why a dataset has no clip to show: split never ran, split kept none, or score measured none."""
    if not (ds.root / "clips.parquet").is_file():
        return f"{ds.root} has no clips yet: run `kinema data split {ds.root}` first"
    see = f"see the rejects (`kinema data inspect {ds.root}` lists them; {ds.root / 'rejects.parquet'})"
    split_clips = len(ds.gather("split", "clips"))
    if not split_clips:
        return f"no clips to show: split kept none of {len(ds.table('sources'))} videos; {see}"
    return f"no clips to show: score could measure none of the {split_clips} clips split found; {see}"


def contact_sheet(root: str | os.PathLike, out: str | os.PathLike, max_clips: int = 48, columns: int = 8,
                  tile_width: int = 160) -> Path:
    """Write a PNG grid of clip thumbnails (spread over the dataset), labelled kept (green) or the first
    rule that dropped it (red); returns its path."""
    ds = Dataset.open(root)
    clips = ds.table("clips")
    if not clips:
        raise DataError(_no_clips(ds))
    if len(clips) > max_clips:
        clips = [clips[round(i * (len(clips) - 1) / (max_clips - 1))] for i in range(max_clips)]
    tile_height, label = tile_width * 9 // 16, 14
    columns = min(columns, len(clips))
    rows = -(-len(clips) // columns)
    sheet = Image.new("RGB", (columns * (tile_width + 4), rows * (tile_height + label + 4)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, clip in enumerate(clips):
        x, y = (i % columns) * (tile_width + 4) + 2, (i // columns) * (tile_height + label + 4) + 2
        sheet.paste(_thumbnail(clip, tile_width, tile_height), (x, y))
        kept = clip.get("keep", True)
        colour = (80, 220, 80) if kept else (230, 70, 70)
        draw.rectangle([x - 1, y - 1, x + tile_width, y + tile_height], outline=colour)
        note = "kept" if kept else clip["reasons"][0].split(":")[0]
        draw.text((x + 2, y + tile_height + 1), f"{Path(clip['path']).stem[:10]} {clip['start_time']:.1f}s {note}",
                  fill=colour)
    out = Path(out)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return out
