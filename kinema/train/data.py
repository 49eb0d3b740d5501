"""Training data: the procedural world, a folder of raw clips, or a latent cache, as ``Item``s per index.

Every dataset knows each sample's latent grid up front (``keys``), so the bucket sampler can group
them without loading anything, and loads one sample per ``__getitem__``. A sample that fails to load
never stops training: it comes back as an ``Item`` with ``error`` set, and the loop skips and records it.

Sources (``data.kind``):

* ``world``   clips of the procedural world rendered on the fly at the bucket sizes (weighted by
              ``bucket.weight``), captioned by the world itself; VAE-encoded by the loop.
* ``clips``   a folder (searched recursively) of videos (.mp4 .webm .gif) and images (.png .jpg
              .jpeg .webp .bmp), each with an optional caption sidecar of the same stem (``a.mp4`` +
              ``a.txt``). A clip goes to the bucket of nearest aspect ratio among those it has enough
              frames for (images only to 1-frame buckets), is centre-cropped to that size and read from
              its start at ``data.fps``; VAE-encoded by the loop.
* ``latents`` a latent cache, the format below; nothing is encoded during training.

Latent cache format (version 1), a folder::

    manifest.json            {"format": "kinema-latent-cache", "version": 1,
                              "latent_channels": C, "text_dim": D, "null_text": "null.safetensors" | null,
                              "info": {...free-form: the VAE / text encoder that made it...},
                              "samples": [{"id": str, "shard": "shard-00000.safetensors",
                                           "shape": [C, F, H, W], "caption": str}, ...]}
    shard-00000.safetensors  per sample id: "<id>.latents" float (C, F, H, W) normalised VAE latents,
                             "<id>.text_tokens" float (L, D), "<id>.text_mask" bool (L,)  (L may vary)
    null.safetensors         optional: "text_tokens" (L, D), "text_mask" (L,) of the empty prompt ""
                             (caption dropout uses it; without it the text encoder is built once)

``write_latent_cache`` writes one; every file is written atomically and the manifest last.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kinema.common.io import atomic_path, atomic_write_text
from kinema.common.video import IMAGE_EXTS, VIDEO_EXTS, probe_video, read_video, resize_video, to_model
from kinema.config import ConfigError, ModelConfig
from kinema.train.buckets import Grid, bucket_grids
from kinema.train.config import BucketConfig, DataConfig, TrainError

CACHE_FORMAT, CACHE_VERSION, MANIFEST = "kinema-latent-cache", 1, "manifest.json"


@dataclass
class Item:
    """One loaded sample: pixels + caption (world, clips) or latents + text tokens (cache), or an error."""

    index: int
    key: Grid
    source: str
    video: torch.Tensor | None = None  # (3, F, H, W) float in [-1, 1]
    caption: str | None = None
    latents: torch.Tensor | None = None  # (C, F, H, W)
    text_tokens: torch.Tensor | None = None  # (L, D)
    text_mask: torch.Tensor | None = None  # (L,) bool
    error: str | None = None


class TrainDataset(torch.utils.data.Dataset):
    """Samples with a latent grid each (``keys``); ``__getitem__`` never raises for a bad sample."""

    keys: list[Grid]
    skipped: list[tuple[str, str]]  # (source, reason) left out when the dataset was built
    pixels: bool  # True: items hold video + caption; False: latents + text tokens

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> Item:
        try:
            return self.load(index)
        except Exception as err:  # one bad sample is skipped and recorded, never fatal
            return Item(index, self.keys[index], self.source(index), error=f"{type(err).__name__}: {err}")

    def load(self, index: int) -> Item:
        raise NotImplementedError

    def source(self, index: int) -> str:
        return str(index)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class WorldDataset(TrainDataset):
    """``num_clips`` procedural-world clips per epoch, sizes drawn from the buckets by weight."""

    pixels = True

    def __init__(self, buckets: dict[Grid, BucketConfig], num_clips: int, seed: int, fps: float):
        grids = list(buckets)
        weights = np.asarray([buckets[g].weight for g in grids], dtype=np.float64)
        if weights.sum() <= 0:
            raise ConfigError("data.buckets: every weight is 0; the world needs at least one size to draw")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5A11])))
        choice = rng.choice(len(grids), size=num_clips, p=weights / weights.sum())
        self.keys = [grids[c] for c in choice]
        self.buckets, self.seed, self.fps, self.skipped = buckets, seed, fps, []

    def source(self, index: int) -> str:
        return f"world:{self.seed}:{index}"

    def load(self, index: int) -> Item:
        bucket = self.buckets[self.keys[index]]
        frames, caption = render_world(_seed(self.seed, index), bucket.width, bucket.height, bucket.frames, self.fps)
        return Item(index, self.keys[index], self.source(index), video=to_model(frames)[0], caption=caption)


def render_world(seed: int, width: int, height: int, frames: int, fps: float) -> tuple[np.ndarray, str]:
    """(uint8 frames (F, H, W, 3), caption) of one procedural-world clip."""
    import kinema.data.world as world

    if hasattr(world, "make_clip"):
        video, text, _ = world.make_clip(seed=seed, width=width, height=height, frames=frames, fps=fps)
        return video, text
    from kinema.data.world.captions import caption  # until make_clip lands: the same three steps
    from kinema.data.world.render import render
    from kinema.data.world.sample import sample_scene

    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, width, height, frames, fps)
    return render(scene), caption(scene, rng)


class ClipFolder(TrainDataset):
    """Raw clips and images in a folder, each assigned to the best-fitting bucket, read on demand."""

    pixels = True

    def __init__(self, root: str | os.PathLike, buckets: dict[Grid, BucketConfig], fps: float | None):
        root = Path(root)
        if not root.is_dir():
            raise TrainError(f"data.path {str(root)!r} is not a folder")
        exts = VIDEO_EXTS + IMAGE_EXTS
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."))
        if not files:
            raise TrainError(f"data.path {str(root)!r} holds no clips: looked for {' '.join(exts)} files (recursively)")
        self.fps, self.buckets = fps, buckets
        self.files: list[Path] = []
        self.keys, self.skipped = [], []
        for path in files:
            try:
                info = probe_video(path)
            except Exception as err:
                self.skipped.append((str(path), f"unreadable: {err}"))
                continue
            grid = self._assign(path, info)
            if grid is None:
                self.skipped.append((str(path), f"fits no bucket ({info['frames']} frames at {info['fps']:.3g} fps, "
                                                f"{info['width']}x{info['height']})"))
                continue
            self.files.append(path)
            self.keys.append(grid)

    def _usable_frames(self, path: Path, info: dict) -> int:
        if path.suffix.lower() in IMAGE_EXTS or info["frames"] <= 1:
            return 1
        if self.fps is None or not info["fps"]:
            return int(info["frames"])
        return int(math.floor(info["frames"] * self.fps / info["fps"] + 1e-6))

    def _assign(self, path: Path, info: dict) -> Grid | None:
        frames = self._usable_frames(path, info)
        aspect = info["width"] / info["height"]
        best, best_score = None, None
        for grid, b in self.buckets.items():
            if b.frames > frames:
                continue
            area = b.width * b.height
            upscale = area > info["width"] * info["height"]
            # a video goes to a video bucket first, then: nearest aspect, no upscaling, longest, largest
            score = (b.frames == 1 < frames, round(abs(math.log(b.width / b.height / aspect)), 3), upscale,
                     -b.frames, area if upscale else -area)
            if best_score is None or score < best_score:
                best, best_score = grid, score
        return best

    def source(self, index: int) -> str:
        return str(self.files[index])

    def load(self, index: int) -> Item:
        path = self.files[index]
        bucket = self.buckets[self.keys[index]]
        frames, _ = read_video(path, max_frames=bucket.frames, fps=self.fps if bucket.frames > 1 else None)
        if frames.shape[0] < bucket.frames:
            raise ValueError(f"{path} gave {frames.shape[0]} frames, bucket {bucket.name} needs {bucket.frames}")
        frames = resize_video(frames[:bucket.frames], bucket.width, bucket.height, policy="crop")
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        return Item(index, self.keys[index], str(path), video=to_model(frames)[0], caption=caption)


class LatentCache(TrainDataset):
    """Precomputed latents + text tokens (the format in this module's docstring)."""

    pixels = False

    def __init__(self, root: str | os.PathLike, grids: set[Grid], latent_channels: int, text_dim: int):
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            hint = "it does not exist" if not root.exists() else f"no {MANIFEST} in it"
            raise TrainError(f"data.path {str(root)!r} is not a latent cache: {hint} (see kinema.train.data)")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
            raise TrainError(f"{manifest_path}: format {manifest.get('format')!r} v{manifest.get('version')!r}; "
                             f"expected {CACHE_FORMAT!r} v{CACHE_VERSION}")
        for name, got, want in (("latent_channels", manifest.get("latent_channels"), latent_channels),
                                ("text_dim", manifest.get("text_dim"), text_dim)):
            if got != want:
                raise TrainError(f"{manifest_path}: {name} is {got}, the model needs {want}")
        if not manifest.get("samples"):
            raise TrainError(f"latent cache {str(root)!r} holds no samples")
        self.root, self.samples, self.keys, self.skipped = root, [], [], []
        for s in manifest["samples"]:
            grid = tuple(s["shape"][1:])
            if grid in grids:
                self.samples.append(s)
                self.keys.append(grid)
            else:
                self.skipped.append((s["id"], f"latent grid {grid} matches no bucket"))
        if not self.samples:
            known = sorted({tuple(s["shape"][1:]) for s in manifest["samples"]})
            raise TrainError(f"no sample of latent cache {str(root)!r} matches a bucket: the cache has latent grids "
                             f"{known[:8]}, the buckets give {sorted(grids)}")
        self.null_file = manifest.get("null_text")

    def source(self, index: int) -> str:
        return f"{self.root}:{self.samples[index]['id']}"

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tokens (L, D), mask (L,)) of the empty prompt, if the cache stores them."""
        if not self.null_file:
            return None
        with safe_open(str(self.root / self.null_file), framework="pt") as f:
            return f.get_tensor("text_tokens"), f.get_tensor("text_mask").bool()

    def load(self, index: int) -> Item:
        s = self.samples[index]
        with safe_open(str(self.root / s["shard"]), framework="pt") as f:
            latents = f.get_tensor(f"{s['id']}.latents")
            tokens, mask = f.get_tensor(f"{s['id']}.text_tokens"), f.get_tensor(f"{s['id']}.text_mask").bool()
        if tuple(latents.shape) != tuple(s["shape"]):
            raise ValueError(f"latents have shape {tuple(latents.shape)}, the manifest says {tuple(s['shape'])}")
        if not (torch.isfinite(latents).all() and torch.isfinite(tokens).all()):
            raise ValueError("non-finite values in latents or text tokens")
        return Item(index, self.keys[index], self.source(index), latents=latents.float(), caption=s.get("caption"),
                    text_tokens=tokens.float(), text_mask=mask)


def build_dataset(cfg: DataConfig, model_cfg: ModelConfig, seed: int) -> TrainDataset:
    """The dataset ``cfg.kind`` names, with every bucket checked against the model."""
    buckets = bucket_grids(cfg.buckets, model_cfg)
    if cfg.kind == "world":
        return WorldDataset(buckets, cfg.num_clips, seed, cfg.fps or 8.0)
    if cfg.kind == "clips":
        return ClipFolder(cfg.path, buckets, cfg.fps)
    return LatentCache(cfg.path, set(buckets), model_cfg.vae.z_dim, model_cfg.text.dim)


# ---------------------------------------------------------------------------------------------
# Writing a latent cache (the data pipeline's job; small runs and tests use it directly)


def write_latent_cache(root: str | os.PathLike, samples: Iterable[dict], null_text: tuple[torch.Tensor, torch.Tensor] | None = None,
                       shard_size: int = 256, info: dict | None = None) -> Path:
    """Write a latent cache folder from dicts (id, latents (C, F, H, W), text_tokens (L, D), text_mask (L,), caption)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    shard: dict[str, torch.Tensor] = {}
    channels = text_dim = None

    shard_names: list[str] = []
    pending: list[dict] = []

    def write_shard():
        name = f"shard-{len(shard_names):05d}.safetensors"
        with atomic_path(root / name) as tmp:
            save_file(dict(shard), str(tmp))
        for e in pending:
            e["shard"] = name
        shard_names.append(name)
        entries.extend(pending)
        shard.clear()
        pending.clear()

    seen: set[str] = set()
    for s in samples:
        sid = str(s["id"])
        if sid in seen:
            raise ValueError(f"duplicate sample id {sid!r}")
        seen.add(sid)
        latents, tokens = s["latents"].detach().cpu().contiguous(), s["text_tokens"].detach().cpu().contiguous()
        if latents.ndim != 4 or tokens.ndim != 2:
            raise ValueError(f"sample {sid!r}: latents must be (C, F, H, W) and text_tokens (L, D), "
                             f"got {tuple(latents.shape)} and {tuple(tokens.shape)}")
        channels, text_dim = channels or latents.shape[0], text_dim or tokens.shape[1]
        if latents.shape[0] != channels or tokens.shape[1] != text_dim:
            raise ValueError(f"sample {sid!r}: every sample needs {channels} latent channels and {text_dim}-dim tokens")
        shard[f"{sid}.latents"] = latents
        shard[f"{sid}.text_tokens"] = tokens
        shard[f"{sid}.text_mask"] = s["text_mask"].detach().cpu().bool().contiguous()
        pending.append({"id": sid, "shape": list(latents.shape), "caption": s.get("caption", "")})
        if len(pending) >= shard_size:
            write_shard()
    if pending:
        write_shard()
    if not entries:
        raise ValueError("write_latent_cache got no samples")
    null_name = None
    if null_text is not None:
        null_name = "null.safetensors"
        with atomic_path(root / null_name) as tmp:
            save_file({"text_tokens": null_text[0].detach().cpu().contiguous(),
                       "text_mask": null_text[1].detach().cpu().bool().contiguous()}, str(tmp))
    manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "latent_channels": channels, "text_dim": text_dim,
                "null_text": null_name, "info": info or {},
                "samples": [{"id": e["id"], "shard": e["shard"], "shape": e["shape"], "caption": e["caption"]} for e in entries]}
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    return root
