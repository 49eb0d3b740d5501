"""``kinema data``: raw videos -> a training-ready latent cache (issue 7; the stages are kinema.data.pipeline)."""

from __future__ import annotations

import argparse

from . import CLIError


def add_parser(sub) -> None:
    """The ``data`` command and its stages."""
    d = sub.add_parser("data", help="turn a folder of videos into a latent cache (ingest, split, score, caption, "
                                    "encode, inspect)",
                       description="Each stage is resumable (re-running skips finished work) and shardable: --shard "
                                   "i/n, or one shard per torchrun rank. Run them in order on one DATASET folder.")
    stages = d.add_subparsers(dest="data_command", required=True, metavar="STAGE")

    def stage(name: str, about: str) -> argparse.ArgumentParser:
        p = stages.add_parser(name, help=about)
        p.add_argument("dataset", help="the dataset folder")
        if name != "inspect":
            p.add_argument("--config", help="data config (.toml/.json): [split] [score] [filter] [caption] [encode]")
            p.add_argument("--shard", help="i/n: this process's share of the units (default: RANK/WORLD_SIZE, or all)")
            p.add_argument("-q", "--quiet", action="store_true")
        return p

    ing = stage("ingest", "probe videos into DATASET/sources.parquet (bad files: rejects.parquet)")
    ing.add_argument("inputs", nargs="*", help="folders (walked) and video files; default: those of the last ingest")
    ing.add_argument("--list", help="a text file of video paths, one per line")
    ing.add_argument("--units", type=int, help="work units the corpus is cut into (fixed when the dataset is made; "
                                               "default: one per ~32 files)")
    stage("split", "detect shots and cut them into clips (timestamps)").add_argument(
        "--export", action="store_true", help="also write every clip to DATASET/clips/ID.mp4")
    stage("score", "measure motion, sharpness, black/frozen/flash frames; filter; report.txt")
    cap = stage("caption", "captions from sidecars (VIDEO.txt / .json), a mapping, or a captioner")
    cap.add_argument("--mapping", help="CSV or Parquet: a caption column and a clip_id, path or name column")
    cap.add_argument("--captioner", metavar="MODULE:FUNCTION", help="function(frames, prompt) -> str, e.g. a local VLM")
    cap.add_argument("--prompt-template", help="what the captioner is asked ({caption} {duration} {width} ...)")
    cap.add_argument("--caption-template", help="the stored caption, e.g. 'sks style, {caption}'")
    enc = stage("encode", "VAE latents + text tokens of the kept clips into DATASET/cache")
    enc.add_argument("--model", required=True, help="model folder whose VAE and text encoder are used")
    enc.add_argument("--bucket", action="append", metavar="FxHxW", help="a training size, e.g. 17x96x160 (repeatable; "
                                                                        "default: the config's)")
    enc.add_argument("--fps", type=float, help="frame rate clips are resampled to (default: the model's, e.g. 8 for the bundled model, "
                                                 "16 for Wan 2.1)")
    enc.add_argument("--out", help="cache folder (default DATASET/cache)")
    enc.add_argument("--device", default="auto",
                     help="auto (cuda:LOCAL_RANK when there is a GPU), cpu, cuda, cuda:N, mps")
    enc.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    world = stages.add_parser("world", help="a latent cache of procedural-world clips (no dataset folder): what the "
                                            "bundled model's DiT trains on without rendering and encoding each step")
    world.add_argument("out", help="cache folder (an interrupted run resumes in it)")
    world.add_argument("--model", required=True, help="model folder whose VAE and text encoder are used")
    world.add_argument("--clips", type=int, required=True, help="how many clips (seeds SEED, SEED+1, ...)")
    world.add_argument("--bucket", action="append", metavar="FxHxW", help="a size, e.g. 17x64x64 (repeatable; clip i "
                                                                          "takes bucket i mod count; default 17x64x64)")
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--fps", type=float, default=8.0)
    world.add_argument("--batch-size", type=int, default=16, help="clips per VAE batch")
    world.add_argument("--device", default="auto", help="auto (cuda when there is a GPU), cpu, cuda, cuda:N, mps")
    world.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    world.add_argument("-q", "--quiet", action="store_true")
    ins = stage("inspect", "summary statistics and a contact sheet")
    ins.add_argument("--sheet", help="write a PNG grid of clip thumbnails here")
    ins.add_argument("--max-clips", type=int, default=48)
    ins.add_argument("--json", help="write the statistics here as JSON")
    d.set_defaults(func=cmd_data)


def cmd_data(args) -> int:
    from ..config import ConfigError
    from ..data.pipeline import run_command
    from ..data.shards import DataError
    if args.data_command in ("encode", "world") and args.device != "auto":
        _check_device(args.device)
    try:
        if args.data_command == "world":
            return _world(args)
        return run_command(args)
    except (DataError, ConfigError) as e:
        raise CLIError(str(e)) from e


def _check_device(name: str) -> None:
    """``--device`` checked before the model loads, as ``kinema generate`` checks it (auto is also accepted)."""
    from .generate import check_device
    try:
        check_device(name)
    except CLIError as e:
        if "accepted:" not in str(e):
            raise
        raise CLIError(f"{e}, or auto (the default: a GPU when there is one, else the CPU)") from None


def _world(args) -> int:
    from ..common.precision import DTYPES
    from ..data.config import Bucket
    from ..data.world_cache import encode_world
    from ..weights import WeightsError

    dtype = DTYPES[args.dtype]
    buckets = [Bucket.parse(b) for b in (args.bucket or ["17x64x64"])]
    try:
        out = encode_world(args.out, args.model, args.clips, buckets, args.seed, args.fps, args.batch_size,
                           device=args.device, dtype=dtype, log=None if args.quiet else print)
    except (WeightsError, FileNotFoundError) as e:
        raise CLIError(f"--model {args.model}: {e}") from e
    print(f"wrote {out} ({args.clips} clips); train on it with data.kind = \"latents\", data.path = \"{out}\"")
    return 0
