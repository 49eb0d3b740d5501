"""A latent cache of procedural-world clips (``kinema data world``).

A DiT trained on the world straight from pixels renders and VAE-encodes every clip of every step: about
two thirds of a CPU step, and what bounds a GPU step (measured on an H200: 91 clips/s, MFU 0.1%). Encoded
once into a cache (``data.kind = "latents"``), the same clips cost the DiT's own step only. Clip ``i`` is the
world's clip of seed ``seed + i`` (``kinema.data.world.make_clip``: training captions, no held-out
combinations), at the bucket ``i mod len(buckets)`` (repeat a bucket to give it more clips).

Shards of ``shard_size`` clips are written one at a time, each with a JSON sidecar of its entries, so an
interrupted run resumes where it stopped; the manifest comes last, so training only ever sees a whole cache.
A folder made with other settings (model, buckets, seed, fps) is refused rather than mixed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from kinema.common.io import atomic_write_text
from kinema.config import ConfigError
from kinema.data.cache import NULL_TEXT, write_manifest, write_null_text, write_shard
from kinema.data.config import Bucket
from kinema.data.encode import Encoders, check_bucket
from kinema.data.world import make_clip

SETTINGS = "world.json"


def encode_world(out: str | os.PathLike, model: str | os.PathLike, clips: int, buckets: Sequence[Bucket],
                 seed: int = 0, fps: float = 8.0, batch_size: int = 16, shard_size: int = 256, device: str = "auto",
                 dtype: torch.dtype = torch.float32, log: Callable[[str], None] | None = print) -> Path:
    """Write (or finish) the latent cache of ``clips`` world clips at ``out``; returns ``out``."""
    if clips < 1 or batch_size < 1 or shard_size < 1:
        raise ConfigError(f"world cache: clips, batch size and shard size must be >= 1, got {clips}, {batch_size}, "
                          f"{shard_size}")
    if not buckets:
        raise ConfigError("world cache: give at least one bucket (FRAMESxHEIGHTxWIDTH, e.g. 17x64x64)")
    if not fps > 0:
        raise ConfigError(f"world cache: fps must be > 0, got {fps}")
    out = Path(out)
    encoders = Encoders(model, device, dtype)
    for bucket in buckets:
        check_bucket(bucket, encoders.cfg)
    settings = {"clips": clips, "buckets": [b.name for b in buckets], "seed": seed, "fps": fps,
                "shard_size": shard_size, "encoders": encoders.identity()}
    _claim(out, settings)

    shards = math.ceil(clips / shard_size)
    entries: list[dict] = []
    for k in range(shards):
        shard, sidecar = out / f"shard-{k:05d}.safetensors", out / f"shard-{k:05d}.json"
        if shard.is_file() and sidecar.is_file():  # done by an earlier run with these settings
            entries += json.loads(sidecar.read_text())
            continue
        samples = _encode_range(range(k * shard_size, min((k + 1) * shard_size, clips)), buckets, seed, fps,
                                batch_size, encoders)
        done = write_shard(shard, samples)
        atomic_write_text(sidecar, json.dumps(done))
        entries += done
        if log:
            log(f"world cache: shard {k + 1}/{shards}, {len(entries)}/{clips} clips")
    write_null_text(out, *encoders.text([""])[0])
    info = {"model": str(encoders.path.resolve()), "vae": encoders.cfg.vae.to_dict(), "text": encoders.cfg.text.to_dict(),
            "fps": fps, "buckets": settings["buckets"], "source": f"world seeds {seed}..{seed + clips - 1}"}
    write_manifest(out, entries, NULL_TEXT, info)
    return out


def _claim(out: Path, settings: dict) -> None:
    """Record the settings in a new folder, or check an existing folder was made with the same ones."""
    path = out / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text())
        if before != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if before.get(k) != json.loads(json.dumps(settings[k])))
            raise ConfigError(f"world cache {str(out)!r} was made with other settings ({', '.join(changed)} differ); "
                              f"use a new folder, or remove this one to start over")
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"world cache: {str(out)!r} exists and is not a world cache; give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1))


def _encode_range(indices: range, buckets: Sequence[Bucket], seed: int, fps: float, batch_size: int,
                  encoders: Encoders) -> list[dict]:
    """Cache samples of the clips ``indices``, encoded in batches of one bucket, in index order."""
    samples: dict[int, dict] = {}
    for b, bucket in enumerate(buckets):
        members = [i for i in indices if i % len(buckets) == b]
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            rendered = [make_clip(seed + i, bucket.width, bucket.height, bucket.frames, fps)[:2] for i in batch]
            latents = encoders.video(np.stack([frames for frames, _ in rendered]))
            texts = encoders.text([caption for _, caption in rendered])
            for i, (_, caption), z, (tokens, mask) in zip(batch, rendered, latents, texts):
                samples[i] = {"id": f"world-{seed + i}", "latents": z, "text_tokens": tokens, "text_mask": mask,
                              "caption": caption}
    return [samples[i] for i in indices]
