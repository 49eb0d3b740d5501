"""Data pipeline throughput: clips per second through ingest + split + score, and encode throughput.

    python benchmarks/data.py [--videos 16] [--size 256x144] [--fps 24] [--presets tiny world-small] [--json out.json]

The corpus is made here: procedural-world videos of four shots joined by hard cuts (H.264 .mp4), so
the scene detector's accuracy is measured against the truth in the same run (a cut counts when found
within one frame). ingest + split + score run three ways on the same corpus: one process on one
core, one process with two threads, and two shards (``--shard 0/2``, ``1/2``) in two single-threaded
processes at once, the way several machines share a corpus. Encode runs each preset's VAE (random
weights) and text encoder over the kept clips at one bucket; clips/s counts both. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


SHOT_SECONDS = (2.0, 2.5, 1.5, 3.0)  # four shots, three hard cuts per video


def make_corpus(folder: Path, videos: int, width: int, height: int, fps: float) -> dict[str, list[int]]:
    """Write the videos; returns path -> true cut frames."""
    from kinema.data.synthetic import world_shots, write_test_video

    truth = {}
    for i in range(videos):
        lengths = [round(fps * s) for s in SHOT_SECONDS]
        frames, cuts, _ = world_shots([4 * i + k for k in range(4)], lengths, width, height, fps)
        path = folder / f"video{i:03d}.mp4"
        write_test_video(path, frames, fps)
        truth[str(path.resolve())] = cuts
    return truth


def _threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def prepare(root: Path, videos: Path, shard: str | None, threads: int) -> float:
    """ingest + split + score of one shard (None: all); returns seconds."""
    _threads(threads)
    from kinema.data.config import FilterConfig, SplitConfig
    from kinema.data.ingest import ingest
    from kinema.data.score import score
    from kinema.data.shards import resolve_shard
    from kinema.data.split import split

    s = resolve_shard(shard)
    start = time.perf_counter()
    ingest(root, [str(videos)], units=8, shard=s, log=None)
    split(root, SplitConfig(max_seconds=4.0), shard=s, log=None)
    score(root, filters=FilterConfig(max_static_fraction=1.0), shard=s, log=None)
    return time.perf_counter() - start


def _prepare_job(args) -> float:
    return prepare(*args)


def accuracy(root: Path, truth: dict[str, list[int]]) -> tuple[float, float]:
    """(recall, precision) of the detected cuts against the truth, within one frame."""
    from kinema.data.manifest import Dataset

    found: dict[str, list[int]] = {}
    for s in Dataset.open(root).table("scenes"):
        if s["scene_index"]:
            found.setdefault(s["path"], []).append(s["start_frame"])
    hits = sum(any(abs(f - c) <= 1 for f in found.get(p, [])) for p, cuts in truth.items() for c in cuts)
    true_cuts, detected = sum(len(c) for c in truth.values()), sum(len(f) for f in found.values())
    return hits / max(1, true_cuts), hits / max(1, detected)


def bench_encode(root: Path, preset_name: str, bucket: str, repeats: int) -> dict:
    """Encode the kept clips with a random-weight model of ``preset_name``; returns timings."""
    import torch

    from kinema.config import preset
    from kinema.data.caption import caption
    from kinema.data.config import Bucket, EncodeConfig
    from kinema.data.encode import Encoders, encode, read_window
    from kinema.data.manifest import Dataset
    from kinema.dit import DiT
    from kinema.vae import VAE
    from kinema.weights import save_model

    _threads(2)
    caption(root, log=None)
    model = root / f"model-{preset_name}"
    cfg = preset(preset_name)
    torch.manual_seed(0)
    save_model(model, cfg, DiT(cfg.dit), VAE(cfg.vae))
    Encoders(model).text([""])  # build the text encoder once, outside the timing
    clips = [c for c in Dataset.open(root).table("clips") if c["keep"]]
    start = time.perf_counter()
    for clip in clips:  # what encode does besides the networks: decode, resample, scale, crop
        read_window(clip, Bucket.parse(bucket), 8.0)
    read_seconds = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        shutil.rmtree(root / "units" / "encode", ignore_errors=True)
        shutil.rmtree(root / "cache", ignore_errors=True)
        start = time.perf_counter()
        encode(root, model, EncodeConfig(buckets=(Bucket.parse(bucket),), fps=8.0, batch_size=4), log=None)
        times.append(time.perf_counter() - start)
    samples = len(json.loads((root / "cache" / "manifest.json").read_text())["samples"])
    return {"preset": preset_name, "bucket": bucket, "samples": samples, "seconds": statistics.median(times),
            "read_seconds": read_seconds}


def main() -> None:
    """Run the benchmark and print its tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--size", default="256x144")
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--presets", nargs="+", default=["tiny", "world-small"])
    p.add_argument("--bucket", default="17x128x128", help="encode bucket FxHxW (default: the bundled model's size)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    work = Path(tempfile.mkdtemp(prefix="kinema-data-bench-"))
    try:
        videos = work / "videos"
        videos.mkdir()
        truth = make_corpus(videos, args.videos, width, height, args.fps)
        source_seconds = len(truth) * sum(SHOT_SECONDS)
        rows = []
        for label, shards, threads in (("1 process, 1 thread", [None], 1), ("1 process, 2 threads", [None], 2),
                                       ("2 shards x 1 thread", ["0/2", "1/2"], 1)):
            root = work / f"ds-{len(rows)}"
            start = time.perf_counter()
            if len(shards) == 1:
                work_seconds = prepare(root, videos, shards[0], threads)
            else:
                with mp.get_context("spawn").Pool(len(shards)) as pool:
                    work_seconds = max(pool.map(_prepare_job, [(root, videos, s, threads) for s in shards]))
            seconds = time.perf_counter() - start
            from kinema.data.manifest import Dataset

            clips = len(Dataset.open(root).table("clips"))
            recall, precision = accuracy(root, truth)
            rows.append({"run": label, "videos": len(truth), "clips": clips, "seconds": seconds,
                         "work_seconds": work_seconds, "clips_per_s": clips / work_seconds,
                         "video_s_per_s": source_seconds / work_seconds,
                         "cut_recall": recall, "cut_precision": precision})
        print(f"\ningest + split + score: {len(truth)} videos of {width}x{height} at {args.fps:g} fps "
              f"({source_seconds:.0f} s of video, 3 hard cuts each); load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        print(f"{'run':<24}{'clips':>7}{'work s':>8}{'wall s':>8}{'clips/s':>9}{'video s/s':>11}{'cut recall':>12}"
              f"{'precision':>11}")
        for r in rows:
            print(f"{r['run']:<24}{r['clips']:>7}{r['work_seconds']:>8.2f}{r['seconds']:>8.2f}{r['clips_per_s']:>9.2f}"
                  f"{r['video_s_per_s']:>11.1f}{r['cut_recall']:>12.3f}{r['cut_precision']:>11.3f}")
        print("(work s: the stages themselves, the slowest shard for two; wall s adds starting the processes)")

        encodes = [bench_encode(work / "ds-2", name, args.bucket, args.repeats) for name in args.presets]
        frames = int(args.bucket.split("x")[0])
        print(f"\nencode (VAE + text encoder, fp32 CPU, 2 threads, batch 4, bucket {args.bucket})")
        print(f"{'preset':<14}{'samples':>9}{'seconds':>9}{'clips/s':>9}{'frames/s':>10}{'reading only, clips/s':>23}")
        for e in encodes:
            e["clips_per_s"] = e["samples"] / e["seconds"]
            print(f"{e['preset']:<14}{e['samples']:>9}{e['seconds']:>9.2f}{e['clips_per_s']:>9.2f}"
                  f"{e['clips_per_s'] * frames:>10.1f}{e['samples'] / e['read_seconds']:>23.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"prepare": rows, "encode": encodes}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
