"""Encode: every kept clip into VAE latents at its bucket's size, with its caption's text tokens.

A clip goes to the bucket it fits best (the rule training's clip folder uses): a video bucket before
a 1-frame one, then the nearest aspect ratio, no upscaling, the longest, the largest. The bucket's
frames are taken from the middle of the clip at ``fps`` (away from the cut at either end), scaled to
cover the bucket and centre-cropped. Each unit writes its samples to its own safetensors shards
``shard-UUUUU-PPP.safetensors``; when every unit is done the cache manifest is written
(``kinema.data.cache`` has the format), so training only ever sees a whole cache.
"""

from __future__ import annotations

import dataclasses

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from kinema.common.video import VideoDecodeError
from kinema.config import ConfigError, ModelConfig, TextConfig
from kinema.data.cache import NULL_TEXT, write_manifest, write_null_text, write_shard
from kinema.data.config import Bucket, EncodeConfig, as_dict
from kinema.data.decode import iter_frames, resample
from kinema.data.manifest import REJECT_SCHEMA, SAMPLE_SCHEMA, Dataset, reject
from kinema.data.shards import DataError, Shard, StageRun, fingerprint, run_units, write_parquet

ENCODE_VERSION = 1


def check_bucket(bucket: Bucket, model_cfg: ModelConfig) -> None:
    """Nothing, or a ConfigError saying which size of ``bucket`` the model cannot take and what would fit."""
    tf, pixel, pt = model_cfg.vae.temporal_factor, model_cfg.pixel_multiple, model_cfg.dit.patch_size[0]
    where = f"encode bucket {bucket.name} (frames x height x width)"
    if (bucket.frames - 1) % tf:
        k = (bucket.frames - 1) // tf
        raise ConfigError(f"{where}: frames must be {tf}k+1 for the VAE, got {bucket.frames}; "
                          f"nearest: {tf * k + 1} or {tf * (k + 1) + 1}")
    for name, size in (("height", bucket.height), ("width", bucket.width)):
        if size % pixel:
            low = size // pixel * pixel
            raise ConfigError(f"{where}: {name} must be a multiple of {pixel}, got {size}; "
                              f"nearest: {low or pixel}{f' or {low + pixel}' if low else ''}")
    if ((bucket.frames - 1) // tf + 1) % pt:
        raise ConfigError(f"{where}: its latent frames are not a multiple of the DiT's temporal patch {pt}")


def assign_bucket(clip: dict, buckets: tuple[Bucket, ...], fps: float) -> Bucket | None:
    """The bucket a clip fits best, or None when it is too short for every one."""
    usable = math.floor(clip["duration"] * fps + 1e-6)
    aspect = clip["width"] / clip["height"]
    best, best_score = None, None
    for b in buckets:
        if b.frames > usable:
            continue
        area = b.width * b.height
        upscale = area > clip["width"] * clip["height"]
        score = (b.frames == 1 < usable, round(abs(math.log(b.width / b.height / aspect)), 3), upscale, -b.frames,
                 area if upscale else -area)
        if best_score is None or score < best_score:
            best, best_score = b, score
    return best


def read_window(clip: dict, bucket: Bucket, fps: float) -> tuple[np.ndarray, float]:
    """(uint8 frames (bucket.frames, H, W, 3), window start in seconds): the middle of the clip at ``fps``,
    scaled to cover the bucket and centre-cropped."""
    w, h = clip["width"], clip["height"]
    scale = max(bucket.width / w, bucket.height / h)
    cover = (max(bucket.width, round(w * scale)), max(bucket.height, round(h * scale)))
    start = clip["start_time"] + max(0.0, (clip["duration"] - bucket.frames / fps) / 2)
    frames = iter_frames(clip["path"], size=cover, start=start, end=clip["end_time"],
                         stream_start=clip["stream_start"], fps=clip["fps"])
    picked = resample(frames, start, fps, bucket.frames)
    if len(picked) < bucket.frames:
        raise VideoDecodeError(clip["path"], f"only {len(picked)} of {bucket.frames} frames decode at {start:.2f}s")
    top, left = (cover[1] - bucket.height) // 2, (cover[0] - bucket.width) // 2
    video = np.stack(picked)[:, top:top + bucket.height, left:left + bucket.width]
    return np.ascontiguousarray(video), start


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


_TEXT_ENCODERS: dict[tuple, object] = {}


def _text_encoder(cfg: TextConfig, device: torch.device, dtype: torch.dtype):
    """The text encoder for ``cfg``, built once per process (MiniLM takes seconds, umT5 minutes)."""
    key = (cfg, str(device), dtype)
    if key not in _TEXT_ENCODERS:
        from kinema.text import build_text_encoder

        _TEXT_ENCODERS[key] = build_text_encoder(cfg, device=device, dtype=dtype)
    return _TEXT_ENCODERS[key]


class Encoders:
    """The VAE and the text encoder of a model folder, loaded on first use."""

    def __init__(self, model: str | os.PathLike, device: str = "auto", dtype: torch.dtype = torch.float32):
        from kinema.weights import read_config

        self.path, self.device, self.dtype = Path(model), _device(device), dtype
        self.cfg = read_config(self.path)
        self._vae = self._text = None

    def identity(self) -> dict:
        """What the latents depend on: the model folder, its config and its weight files' states."""
        files = sorted(p for p in self.path.rglob("*.safetensors"))
        return {"model": str(self.path.resolve()), "config": self.cfg.to_dict(), "dtype": str(self.dtype),
                "files": [[str(p.relative_to(self.path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}

    def video(self, frames: np.ndarray) -> torch.Tensor:
        """Normalised latents (B, C, f, h, w) of uint8 frames (B, F, H, W, 3)."""
        if self._vae is None:
            from kinema.weights import load_vae

            self._vae = load_vae(self.path, dtype=self.dtype).to(self.device)
        x = torch.from_numpy(frames).to(self.device).permute(0, 4, 1, 2, 3)  # (B, F, H, W, 3) -> (B, 3, F, H, W)
        with torch.inference_mode():
            return self._vae.encode(x.to(self.dtype) / 127.5 - 1.0).float().cpu()

    def text(self, prompts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per prompt: (tokens (L, D), mask (L,)) trimmed to its real tokens (at least one)."""
        if self._text is None:
            self._text = _text_encoder(self.cfg.text, self.device, self.dtype)
        with torch.inference_mode():
            tokens, mask = self._text.encode(prompts)
        out = []
        for t, m in zip(tokens.float().cpu(), mask.cpu()):
            n = max(1, int(m.sum()))
            out.append((t[:n].clone(), m[:n].clone()))
        return out


def encode_clips(clips: list[dict], cfg: EncodeConfig, encoders: Encoders) -> tuple[list[dict], list[dict], list[dict]]:
    """(cache samples, samples-table rows, rejects) for clips: each read at its bucket, VAE- and text-encoded
    in batches of one bucket."""
    groups: dict[Bucket, list[dict]] = {}
    samples, rows, rejects = [], [], []
    for clip in clips:
        bucket = assign_bucket(clip, cfg.buckets, cfg.fps)
        if bucket is None:
            reason = (f"fits no bucket: {clip['duration']:.2f} s at {cfg.fps:g} fps, {clip['width']}x{clip['height']}; "
                      f"buckets: {' '.join(b.name for b in cfg.buckets)}")
            rejects.append(reject("encode", clip["path"], reason, clip["source_id"], clip["clip_id"]))
        else:
            groups.setdefault(bucket, []).append(clip)
    for bucket in cfg.buckets:
        members = groups.get(bucket, [])
        for i in range(0, len(members), cfg.batch_size):
            batch, windows = [], []
            for clip in members[i:i + cfg.batch_size]:
                try:
                    windows.append(read_window(clip, bucket, cfg.fps))
                    batch.append(clip)
                except VideoDecodeError as err:
                    rejects.append(reject("encode", clip["path"], err.reason, clip["source_id"], clip["clip_id"]))
            if not batch:
                continue
            latents = encoders.video(np.stack([frames for frames, _ in windows]))  # (B, C, f, h, w)
            texts = encoders.text([c["caption"] or "" for c in batch])
            for clip, (_, start), z, (tokens, mask) in zip(batch, windows, latents, texts):
                caption = clip["caption"] or ""
                samples.append({"id": clip["clip_id"], "latents": z, "text_tokens": tokens, "text_mask": mask,
                                "caption": caption})
                rows.append({"sample_id": clip["clip_id"], "clip_id": clip["clip_id"], "source_id": clip["source_id"],
                             "path": clip["path"], "bucket": bucket.name, "shard": None, "shape": list(z.shape),
                             "fps": cfg.fps, "window_start": start, "window_end": start + bucket.frames / cfg.fps,
                             "caption": caption})
    return samples, rows, rejects


def encode(root: str | os.PathLike, model: str | os.PathLike, cfg: EncodeConfig = EncodeConfig(),
           out: str | os.PathLike | None = None, device: str = "auto", dtype: torch.dtype = torch.float32,
           shard: Shard = Shard(), log: Callable[[str], None] | None = print) -> StageRun:
    """Encode the kept clips of this shard's units into the cache at ``out`` (default DATASET/cache);
    writes the cache manifest when every unit is done."""
    ds = Dataset.open(root)
    cache = Path(out) if out is not None else ds.root / "cache"
    encoders = Encoders(model, device, dtype)
    if cfg.fps is None:  # the rate the model makes video at: a Wan model's 16, the bundled model's 8
        cfg = dataclasses.replace(cfg, fps=float(encoders.cfg.sampling.fps))
    for bucket in cfg.buckets:
        check_bucket(bucket, encoders.cfg)
    upstream, store = ds.store("caption"), ds.store("encode")
    settings = ("encode", ENCODE_VERSION, as_dict(cfg), encoders.identity(), str(cache.resolve()))

    def fp_of(unit: int) -> str:
        return fingerprint(*settings, ds.upstream_fingerprint("encode", unit, shard.owns(unit)))

    def work(unit: int, fp: str) -> None:
        clips = sorted((c for c in upstream.read(unit, "clips") if c["keep"]), key=lambda c: c["clip_id"])
        samples, rows, rejects = encode_clips(clips, cfg, encoders)
        names = []
        for part in range(0, len(samples), cfg.shard_size):
            name = f"shard-{unit:05d}-{part // cfg.shard_size:03d}.safetensors"
            write_shard(cache / name, samples[part:part + cfg.shard_size])
            for row in rows[part:part + cfg.shard_size]:
                row["shard"] = name
            names.append(name)
        for stale in cache.glob(f"shard-{unit:05d}-*.safetensors"):  # a redone unit may write fewer parts
            if stale.name not in names:
                stale.unlink()
        store.write(unit, fp, {"samples": (rows, SAMPLE_SCHEMA), "rejects": (rejects, REJECT_SCHEMA)})

    run = run_units(store, ds.units, shard, fp_of, work, log)
    if run.complete:
        _finish(ds, cache, encoders, cfg, new_null=bool(run.done))
    return run


def _finish(ds: Dataset, cache: Path, encoders: Encoders, cfg: EncodeConfig, new_null: bool) -> None:
    """Write the cache's null text, manifest.json and samples.parquet from every unit's samples."""
    rows = ds.gather("encode", "samples", ("path", "clip_id"))
    write_parquet(cache / "samples.parquet", rows, SAMPLE_SCHEMA)
    ds.write_rejects("encode")
    if not rows:
        raise DataError(f"encode kept no sample: every clip of {ds.root} was filtered out or fits no bucket "
                        f"(see {ds.root / 'rejects.parquet'} and report.txt)")
    text_dim = encoders.cfg.text.dim
    if new_null or not (cache / NULL_TEXT).is_file():
        write_null_text(cache, *encoders.text([""])[0])
    entries = [{"id": r["sample_id"], "shard": r["shard"], "shape": r["shape"], "caption": r["caption"],
                "text_dim": text_dim} for r in rows]
    info = {"model": str(encoders.path.resolve()), "vae": encoders.cfg.vae.to_dict(),
            "text": encoders.cfg.text.to_dict(), "fps": cfg.fps, "buckets": [b.name for b in cfg.buckets]}
    write_manifest(cache, entries, NULL_TEXT, info)
