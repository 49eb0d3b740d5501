"""Caption: a text for every kept clip, from a mapping file, sidecar files, or a captioner you plug in.

Where a clip's caption comes from, first match wins:

1. ``mapping``: a CSV or Parquet file with a ``caption`` column and a key column: ``clip_id``, or
   ``path`` (the source file; relative paths are relative to the mapping file), or ``name`` (the
   source's file name, with or without extension).
2. sidecars next to the source: ``VIDEO.json`` holding ``{"caption": ...}`` or
   ``{"segments": [{"start": s, "end": e, "caption": ...}, ...]}`` (the segment overlapping the clip
   most), then ``VIDEO.txt``. A sidecar that is there but cannot be read (bad UTF-8, invalid JSON, a
   ``.json`` without those keys and no ``.txt``) rejects the clip with the reason; a video without
   sidecars is kept uncaptioned, and the stage says how many clips will train as the empty prompt.

A ``captioner`` ("package.module:function") then re-captions every clip, as Sora re-captioned its
training set with descriptive captions: it is called as ``function(frames, prompt) -> str`` with
``frames`` uint8 (F, H, W, 3) spread over the clip and ``prompt`` the ``prompt_template`` filled in
(the caption found above is ``{caption}``), so a VLM on your own machine can write the captions.
Finally ``caption_template`` shapes the stored caption (e.g. "sks style, {caption}").

Template fields: {caption} {duration} {width} {height} {fps} {motion} {name} {clip_id}.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kinema.common.video import VideoDecodeError
from kinema.data.config import CaptionConfig, as_dict
from kinema.data.decode import fit_width, iter_frames, resample
from kinema.data.manifest import CAPTIONED_SCHEMA, REJECT_SCHEMA, Dataset, reject
from kinema.data.shards import DataError, Shard, StageRun, fingerprint, read_parquet, run_units, write_parquet

CAPTION_VERSION = 1
TEMPLATE_FIELDS = ("caption", "duration", "width", "height", "fps", "motion", "name", "clip_id")


def fill(template: str, clip: dict, caption: str) -> str:
    """``template`` with the clip's fields filled in; an unknown field names the accepted ones."""
    fields = {"caption": caption, "duration": clip["duration"], "width": clip["width"], "height": clip["height"],
              "fps": clip["fps"], "motion": clip.get("motion") or 0.0, "name": Path(clip["path"]).stem,
              "clip_id": clip["clip_id"]}
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(f"caption template {template!r}: bad field {err}; accepted: "
                        + " ".join("{" + f + "}" for f in TEMPLATE_FIELDS)) from None


def load_captioner(spec: str) -> Callable[[np.ndarray, str], str]:
    """The function "package.module:function" names, as f(frames, prompt) -> str."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise DataError(f"captioner {spec!r} cannot be loaded ({err}); give 'package.module:function' "
                        "importable from here (e.g. on PYTHONPATH)") from None
    if not callable(fn):
        raise DataError(f"captioner {spec!r} is a {type(fn).__name__}, not a function")
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    takes_prompt = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    return fn if takes_prompt else (lambda frames, prompt: fn(frames))


class Mapping:
    """Captions from a CSV / Parquet file, looked up by clip id, source path or source name."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"caption mapping {str(path)!r} does not exist")
        if path.suffix.lower() == ".parquet":
            rows = read_parquet(path)
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        keys = [k for k in ("clip_id", "path", "name") if rows and k in rows[0]]
        if not rows or "caption" not in rows[0] or not keys:
            columns = sorted(rows[0]) if rows else []
            raise DataError(f"caption mapping {str(path)!r} needs a 'caption' column and one of 'clip_id', 'path', "
                            f"'name'; it has {columns}")
        self.by: dict[str, dict[str, str]] = {k: {} for k in ("clip_id", "path", "name")}
        for row in rows:
            caption = str(row["caption"] or "").strip()
            for key in keys:
                value = row.get(key)
                if value in (None, ""):
                    continue
                if key == "path":
                    value = str((path.parent / value).resolve())
                self.by[key][str(value)] = caption

    def lookup(self, clip: dict) -> str | None:
        """The mapped caption of a clip (by clip id, then source path, then file name), or None."""
        source = Path(clip["path"])
        for key, value in (("clip_id", clip["clip_id"]), ("path", str(source)), ("name", source.name),
                           ("name", source.stem)):
            if value in self.by[key]:
                return self.by[key][value]
        return None


class SidecarError(ValueError):
    """A caption sidecar that is there but cannot be read: the clip is rejected with this reason."""


def _read_sidecar(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SidecarError(f"sidecar {path.name}: not valid UTF-8 (byte 0x{err.object[err.start]:02x} at "
                           f"offset {err.start}); save it as UTF-8") from None


def _segment_caption(data: dict, clip: dict, name: str) -> str | None:
    """The caption of the segment overlapping the clip most, or None when none overlaps it."""
    best, overlap = None, 0.0
    for i, seg in enumerate(data["segments"]):
        ok = (isinstance(seg, dict) and isinstance(seg.get("caption"), str)
              and all(isinstance(seg.get(k), (int, float)) and not isinstance(seg.get(k), bool)
                      for k in ("start", "end")))
        if not ok:
            raise SidecarError(f"sidecar {name}: segments[{i}] must be {{\"start\": seconds, \"end\": seconds, "
                               f"\"caption\": text}}, got {json.dumps(seg)[:120]}")
        shared = min(float(seg["end"]), clip["end_time"]) - max(float(seg["start"]), clip["start_time"])
        if shared > overlap:
            best, overlap = seg["caption"].strip(), shared
    return best


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def sidecar_caption(clip: dict) -> tuple[str, str] | None:
    """(caption, "sidecar-json" | "sidecar-txt") from files next to the clip's source, or None when there is none
    (or a segments file has no segment over the clip).

    A sidecar that is there but unreadable raises SidecarError (the clip is rejected with its reason rather than
    trained as the empty prompt): bad UTF-8, a ``.json`` that is not valid JSON, or one whose ``caption`` /
    ``segments`` are malformed. A valid ``.json`` without either key is refused too, unless a ``.txt`` sidecar
    gives the caption (the ``.json`` is then taken for another tool's metadata).
    """
    source = Path(clip["path"])
    side_json, side_txt = source.with_suffix(".json"), source.with_suffix(".txt")
    if side_json.is_file():
        try:
            data = json.loads(_read_sidecar(side_json))
        except json.JSONDecodeError as err:
            raise SidecarError(f"sidecar {side_json.name}: not valid JSON (line {err.lineno} col {err.colno}: "
                               f"{err.msg})") from None
        if isinstance(data, dict) and "caption" in data:
            if not isinstance(data["caption"], str):
                raise SidecarError(f"sidecar {side_json.name}: 'caption' must be a string, "
                                   f"got {json.dumps(data['caption'])[:120]}")
            return data["caption"].strip(), "sidecar-json"
        if isinstance(data, dict) and "segments" in data:
            if not isinstance(data["segments"], list):
                raise SidecarError(f"sidecar {side_json.name}: 'segments' must be a list of {{\"start\", \"end\", "
                                   f"\"caption\"}}, got {json.dumps(data['segments'])[:120]}")
            found = _segment_caption(data, clip, side_json.name)
            if found is not None:
                return found, "sidecar-json"
        elif not side_txt.is_file():
            what = f"keys {sorted(data)[:8]}" if isinstance(data, dict) else f"a JSON {_JSON_KINDS[type(data)]}"
            raise SidecarError(f"sidecar {side_json.name}: has no 'caption' or 'segments' key ({what}); accepted: "
                               '{"caption": text} or {"segments": [{"start": s, "end": e, "caption": text}, ...]}')
    if side_txt.is_file():
        return _read_sidecar(side_txt).strip(), "sidecar-txt"
    return None


def clip_frames(clip: dict, count: int, max_size: int) -> np.ndarray:
    """``count`` frames (F, H, W, 3) spread evenly over the clip, longer side at most ``max_size``."""
    scale = min(1.0, max_size / max(clip["width"], clip["height"]))
    size = fit_width(clip["width"], clip["height"], max(2, round(clip["width"] * scale)))
    step = clip["duration"] / count
    frames = iter_frames(clip["path"], size=size, start=clip["start_time"], end=clip["end_time"],
                         stream_start=clip["stream_start"], fps=clip["fps"])
    picked = resample(frames, clip["start_time"] + step / 2, 1.0 / step, count)
    if not picked:
        raise VideoDecodeError(clip["path"], f"no frame decodes in {clip['start_time']:.2f}-{clip['end_time']:.2f}s")
    return np.stack(picked)


def _sidecar_state(path: str) -> list:
    out = []
    for side in (Path(path).with_suffix(".json"), Path(path).with_suffix(".txt")):
        try:
            st = side.stat()
            out.append([st.st_size, st.st_mtime_ns])
        except OSError:
            out.append(None)
    return out


def caption(root: str | os.PathLike, cfg: CaptionConfig = CaptionConfig(), shard: Shard = Shard(),
            log: Callable[[str], None] | None = print) -> StageRun:
    """Caption the kept clips of this shard's units; writes clips.parquet when every unit is done."""
    ds = Dataset.open(root)
    upstream, store = ds.store("score"), ds.store("caption")
    probe_clip = {"duration": 1.0, "width": 1, "height": 1, "fps": 1.0, "motion": 0.0, "path": "x", "clip_id": "x"}
    fill(cfg.prompt_template, probe_clip, ""), fill(cfg.caption_template, probe_clip, "")  # refuse bad templates now
    mapping = Mapping(cfg.mapping) if cfg.mapping else None
    mapping_state = os.stat(cfg.mapping).st_mtime_ns if cfg.mapping else None
    captioner: list[Callable] = []  # loaded on first use: a VLM is not loaded when nothing needs it

    def fp_of(unit: int) -> str:
        up = ds.upstream_fingerprint("caption", unit, shard.owns(unit))
        sidecars = []
        if not up.startswith("missing:"):
            paths = sorted({c["path"] for c in upstream.read(unit, "clips") if c["keep"]})
            sidecars = [_sidecar_state(p) for p in paths]
        return fingerprint("caption", CAPTION_VERSION, as_dict(cfg), mapping_state, sidecars, up)

    def caption_clip(clip: dict) -> tuple[str, str, str]:
        found = mapping.lookup(clip) if mapping else None
        original, source = (found, "mapping") if found is not None else (sidecar_caption(clip) or ("", "none"))
        text = original
        if cfg.captioner:
            if not captioner:
                captioner.append(load_captioner(cfg.captioner))
            frames = clip_frames(clip, cfg.frames, cfg.max_size)
            written = captioner[0](frames, fill(cfg.prompt_template, clip, original))
            if not isinstance(written, str):
                raise TypeError(f"captioner {cfg.captioner} returned {type(written).__name__}, expected str")
            if written.strip():
                text, source = written.strip(), "captioner"
        return fill(cfg.caption_template, clip, text), source, original

    def work(unit: int, fp: str) -> None:
        rows, rejects = [], []
        for clip in upstream.read(unit, "clips"):
            row = {**clip, "caption": None, "caption_source": None, "original_caption": None}
            if clip["keep"]:
                try:
                    row["caption"], row["caption_source"], row["original_caption"] = caption_clip(clip)
                except DataError:
                    raise
                except Exception as err:  # a bad sidecar, or a captioner that fails on one clip: that clip only
                    reason = (str(err) if isinstance(err, SidecarError)
                              else f"captioning failed: {type(err).__name__}: {err}")
                    rejects.append(reject("caption", clip["path"], reason, clip["source_id"], clip["clip_id"]))
                    row["keep"], row["reasons"] = False, [*clip["reasons"], f"caption: {reason}"]
            rows.append(row)
        store.write(unit, fp, {"clips": (rows, CAPTIONED_SCHEMA), "rejects": (rejects, REJECT_SCHEMA)})

    run = run_units(store, ds.units, shard, fp_of, work, log)
    if run.complete:
        rows = ds.gather("caption", "clips", ("path", "clip_index"))
        write_parquet(ds.root / "clips.parquet", rows, CAPTIONED_SCHEMA)
        rejected = [r for r in ds.write_rejects("caption") if r["stage"] == "caption"]
        if log:
            for line in coverage(rows, rejected, ds.root):
                log(line)
    return run


def uncaptioned(row: dict) -> bool:
    """True for a clip that got no caption text (no sidecar, mapping row or captioner answer, or an empty one)."""
    return row["caption_source"] != "captioner" and not (row["original_caption"] or "").strip()


def coverage(rows: list[dict], rejected: list[dict], root: Path) -> list[str]:
    """What the caption stage tells the user: kept clips without a caption, and clips it rejected."""
    kept = [r for r in rows if r["keep"]]
    lines = []
    missing = [r for r in kept if uncaptioned(r)]
    if missing:
        stored = {r["caption"] for r in missing}
        trains_as = ("the empty prompt" if stored == {""} else
                     f"the caption template alone (e.g. {sorted(stored)[0]!r})")
        names = sorted({Path(r["path"]).name for r in missing})
        lines.append(f"caption: {len(missing)} of {len(kept)} clips have no caption: they train as {trains_as} "
                     f"(from {len(names)} video(s): {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}; "
                     "give each a VIDEO.txt / VIDEO.json sidecar, a --mapping row or a --captioner)")
    if rejected:
        lines.append(f"caption: {len(rejected)} clip(s) rejected (why: `kinema data inspect {root}` or rejects.parquet)")
    return lines
