"""Ingest: find the videos, probe each one, and record it in the sources table (or why not).

The probe opens the container, decodes the first frame (codec, size, display rotation) and demuxes
every packet without decoding: that counts the frames a file really holds, so a truncated download
is caught here, by its missing packets, at the cost of reading the file once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import av

from kinema.common.video import VIDEO_EXTS, VideoDecodeError
from kinema.data.decode import open_video
from kinema.data.manifest import REJECT_SCHEMA, SOURCE_SCHEMA, Dataset, reject
from kinema.data.shards import DataError, Shard, StageRun, fingerprint, run_units, unit_of, write_parquet

VIDEO_SUFFIXES = VIDEO_EXTS  # what a folder walk picks up; a list file (--list) may name any file
INGEST_VERSION = 1  # bump when the probe changes what it records


def source_id(path: str) -> str:
    """The id of a source file: a hash of its absolute path."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def list_sources(inputs: list[str]) -> list[str]:
    """Absolute paths of the video files under ``inputs`` (folders walked, files and list files read), sorted."""
    found: set[str] = set()
    for item in inputs:
        path = Path(item).expanduser()
        if item.startswith("@"):  # @paths.txt: one path per line (relative to the list file)
            listing = Path(item[1:]).expanduser()
            if not listing.is_file():
                raise DataError(f"list file {str(listing)!r} does not exist")
            for line in listing.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    found.add(str((listing.parent / line).resolve()))
        elif path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.update(str((Path(folder) / f).resolve()) for f in files
                             if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES)
        elif path.exists():
            found.add(str(path.resolve()))
        else:
            raise DataError(f"ingest input {item!r} does not exist (give folders, video files or @list.txt)")
    return sorted(found)


def probe(path: str) -> dict:
    """A sources-table row for one file (without id and unit); raises VideoDecodeError with the reason."""
    if not os.path.isfile(path):
        raise VideoDecodeError(path, "no such file")
    with open_video(path) as container:
        stream = container.streams.video[0]
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, EOFError, OSError) as err:
            raise VideoDecodeError(path, f"the first frame does not decode ({err})") from None
        if first is None:
            raise VideoDecodeError(path, "no frame decodes")
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        listed = stream.frames
        rotation = int(round(first.rotation)) % 360
        stream_start = first.time or 0.0
        row = dict(container=container.format.name, codec=stream.codec_context.name,
                   pix_fmt=stream.codec_context.pix_fmt or "", coded_width=first.width, coded_height=first.height,
                   rotation=rotation, bit_rate=int(container.bit_rate or 0), has_audio=bool(container.streams.audio),
                   stream_start=float(stream_start))
    packets, last_time = _demux(path)
    if packets == 0:
        raise VideoDecodeError(path, "the video stream holds no packets")
    # An edit list may hide a frame or two of what the index lists; truncation loses far more.
    if listed and packets < listed - 2:
        raise VideoDecodeError(path, f"truncated: the container lists {listed} frames but only {packets} are in the file")
    if not fps:
        raise VideoDecodeError(path, "the video stream has no frame rate")
    turned = round(rotation / 90) % 2
    width, height = (row["coded_height"], row["coded_width"]) if turned else (row["coded_width"], row["coded_height"])
    duration = max(packets / fps, (last_time - stream_start + 1 / fps) if last_time is not None else 0.0)
    return {**row, "width": width, "height": height, "fps": fps, "frames": packets, "duration": duration,
            "file_bytes": os.path.getsize(path)}


def _demux(path: str) -> tuple[int, float | None]:
    """(video packets, the latest presentation time) by reading the file without decoding."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        count, last = 0, None
        try:
            for packet in container.demux(stream):
                if packet.size:
                    count += 1
                    if packet.pts is not None:
                        t = float(packet.pts * stream.time_base)
                        last = t if last is None else max(last, t)
        except (av.FFmpegError, EOFError, OSError) as err:
            raise VideoDecodeError(path, f"truncated or corrupt: demuxing stops after {count} packets ({err})") from None
    return count, last


def _absolute(item: str) -> str:
    """An input as an absolute path (``@`` kept on list files), so the dataset works from any folder."""
    if item.startswith("@"):
        return "@" + str(Path(item[1:]).expanduser().resolve())
    return str(Path(item).expanduser().resolve())


def _file_state(path: str) -> list:
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, None, None]


def ingest(root: str | os.PathLike, inputs: list[str] | None = None, units: int | None = None,
           shard: Shard = Shard(), log: Callable[[str], None] | None = print) -> StageRun:
    """Probe this shard's units of sources into ``root``; writes sources.parquet when every unit is done."""
    inputs = [_absolute(item) for item in inputs or []]
    listing = list_sources(inputs) if inputs else None
    ds = Dataset.create(root, inputs, units, len(listing or []))
    if listing is None:
        listing = list_sources(ds.inputs)
    members: dict[int, list[str]] = {u: [] for u in range(ds.units)}
    for path in listing:
        members[unit_of(source_id(path), ds.units)].append(path)
    store = ds.store("ingest")
    prints = {u: fingerprint("ingest", INGEST_VERSION, [_file_state(p) for p in paths]) for u, paths in members.items()}

    def work(unit: int, fp: str) -> None:
        rows, rejects = [], []
        for path in members[unit]:
            sid = source_id(path)
            try:
                rows.append({"source_id": sid, "path": path, "unit": unit, **probe(path)})
            except VideoDecodeError as err:
                rejects.append(reject("ingest", path, err.reason, source_id=sid))
            except (av.FFmpegError, OSError, ValueError, EOFError) as err:  # what a strange file makes PyAV raise
                rejects.append(reject("ingest", path, f"{type(err).__name__}: {err}", source_id=sid))
        store.write(unit, fp, {"sources": (rows, SOURCE_SCHEMA), "rejects": (rejects, REJECT_SCHEMA)},
                    {"sources": len(members[unit])})

    run = run_units(store, ds.units, shard, prints.__getitem__, work, log)
    if run.complete:
        sources = ds.gather("ingest", "sources", ("path",))
        write_parquet(ds.root / "sources.parquet", sources, SOURCE_SCHEMA)
        rejected = ds.write_rejects("ingest")
        if log:
            log(f"ingest: {len(sources)} video(s) readable, {len(rejected)} rejected"
                + (f" (why: `kinema data inspect {root}` or rejects.parquet)" if rejected else ""))
    return run
