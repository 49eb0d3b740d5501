"""`kinema data`: the six stages behind one call each, with the settings of a data config file.

    kinema data ingest  DATASET VIDEOS...      probe files into sources.parquet (bad ones into rejects)
    kinema data split   DATASET                shots -> clips (timestamps; --export writes files)
    kinema data score   DATASET                measures + filter -> clips.parquet, report.txt
    kinema data caption DATASET                sidecars / mapping / --captioner -> captions
    kinema data encode  DATASET --model M      latents + text tokens -> DATASET/cache (training reads it)
    kinema data inspect DATASET --sheet S.png  statistics and a contact sheet

Every stage is resumable and shardable (see ``kinema.data.shards``). ``cli.py`` parses the arguments;
``run_command`` maps them onto the stage functions.
"""

from __future__ import annotations

import dataclasses
import json
from argparse import Namespace

from kinema.common.precision import DTYPES
from kinema.data.caption import caption
from kinema.data.config import Bucket, PipelineConfig, load_data_config
from kinema.data.encode import encode
from kinema.data.ingest import ingest
from kinema.data.inspect import contact_sheet, format_summary, summarize
from kinema.data.score import score
from kinema.data.shards import resolve_shard
from kinema.data.split import split

COMMANDS = ("ingest", "split", "score", "caption", "encode", "inspect")


def config_with_flags(args: Namespace) -> PipelineConfig:
    """The data config file (or defaults) with the command-line flags that override it."""
    cfg = load_data_config(getattr(args, "config", None))
    changes = {key: getattr(args, key, None) for key in ("mapping", "captioner", "prompt_template", "caption_template")}
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes:
        cfg = dataclasses.replace(cfg, caption=dataclasses.replace(cfg.caption, **changes))
    encode_changes = {}
    if getattr(args, "bucket", None):
        encode_changes["buckets"] = tuple(Bucket.parse(b) for b in args.bucket)
    if getattr(args, "fps", None) is not None:
        encode_changes["fps"] = args.fps
    if encode_changes:
        cfg = dataclasses.replace(cfg, encode=dataclasses.replace(cfg.encode, **encode_changes))
    return cfg


def run_command(args: Namespace) -> int:
    """Run ``args.data_command`` on ``args.dataset``; returns the exit status."""
    log = None if getattr(args, "quiet", False) else print
    command = args.data_command
    if command == "inspect":
        stats = summarize(args.dataset)
        print(format_summary(stats))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(stats, f, indent=1)
        if args.sheet:
            print(f"wrote {contact_sheet(args.dataset, args.sheet, max_clips=args.max_clips)}")
        return 0
    shard = resolve_shard(args.shard)
    cfg = config_with_flags(args)
    if command == "ingest":
        inputs = list(args.inputs) + ([f"@{args.list}"] if args.list else [])
        run = ingest(args.dataset, inputs, units=args.units, shard=shard, log=log)
    elif command == "split":
        run = split(args.dataset, cfg.split, export=args.export, shard=shard, log=log)
    elif command == "score":
        run = score(args.dataset, cfg.score, cfg.filter, shard=shard, log=log)
    elif command == "caption":
        run = caption(args.dataset, cfg.caption, shard=shard, log=log)
    else:
        run = encode(args.dataset, args.model, cfg.encode, out=args.out, device=args.device, dtype=DTYPES[args.dtype],
                     shard=shard, log=log)
    if log:
        log(run.summary() + ("" if run.complete else "; the merged tables are written when they finish"))
    return 0
