"""Training data: the procedural world, a folder of raw clips, or a latent cache, as ``Item``s per index.

Every dataset knows each sample's latent grid up front (``keys``), so the bucket sampler can group
them without loading anything, and loads one sample per ``__getitem__``. A sample that fails to load
never stops training: it comes back as an ``Item`` with ``error`` set, and the loop skips and records it.

Sources (``data.kind``):

* ``world``   clips of the procedural world rendered on the fly at the bucket sizes (weighted by
              ``bucket.weight``), captioned by the world itself; VAE-encoded by the loop.
* ``clips``   a folder (searched recursively) of videos (``VIDEO_EXTS``: .mp4 .mov .mkv .webm .gif and
              the other containers FFmpeg reads, as ``kinema data ingest`` finds them) and images (.png .jpg
              .jpeg .webp .bmp), each with an optional caption sidecar of the same stem (``a.mp4`` +
              ``a.txt``). A clip goes to the bucket of nearest aspect ratio among those it has enough
              frames for (images only to 1-frame buckets), is centre-cropped to that size and read from
              its start at ``data.fps``; VAE-encoded by the loop.
* ``latents`` a latent cache (VAE latents + text tokens; format and writer in ``kinema.data.cache``,
              made by ``kinema data encode``); nothing is encoded during training.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kinema.common.video import IMAGE_EXTS, VIDEO_EXTS, channels_first, probe_video, read_video, resize_video
from kinema.config import ConfigError, ModelConfig
from kinema.train.buckets import Grid, GridKeys, bucket_grids
from kinema.train.config import BucketConfig, DataConfig, TrainError

@dataclass
class Item:
    """One loaded sample: pixels + caption (world, clips) or latents + text tokens (cache), or an error."""

    index: int
    key: Grid
    source: str
    video: torch.Tensor | None = None  # (3, F, H, W) uint8; ``pixels_to_model`` makes it float in [-1, 1]
    caption: str | None = None
    latents: torch.Tensor | None = None  # (C, F, H, W)
    text_tokens: torch.Tensor | None = None  # (L, D)
    text_mask: torch.Tensor | None = None  # (L,) bool
    object_mask: torch.Tensor | None = None  # (1, F, H, W) bool: where the world drew objects (object_weight)
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

    def __init__(self, buckets: dict[Grid, BucketConfig], num_clips: int, seed: int, fps: float,
                 object_masks: bool = False, captioned: bool = True, span: float = 1.0,
                 span_except: tuple[str, ...] = (), scene_changes: float = 0.0):
        grids = list(buckets)
        weights = np.asarray([buckets[g].weight for g in grids], dtype=np.float64)
        if weights.sum() <= 0:
            raise ConfigError("data.buckets: every weight is 0; the world needs at least one size to draw")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5A11])))
        choice = rng.choice(len(grids), size=num_clips, p=weights / weights.sum())
        self.keys = GridKeys(grids, choice.astype(np.int32))
        self.buckets, self.seed, self.fps, self.skipped = buckets, seed, fps, []
        self.object_masks = object_masks  # items carry where the objects are (vae_loss.object_weight)
        self.captioned = captioned  # False (VAE runs): skip checking that motions read back as captioned
        self.span = span  # data.world_span: clips are windows of scenes up to this many times longer
        self.span_except = span_except  # data.world_span_except: ... except scenes with these motions
        self.scene_changes = scene_changes  # data.world_scene_changes: share of clips joining two scenes

    def source(self, index: int) -> str:
        return f"world:{self.seed}:{index}"

    def load(self, index: int) -> Item:
        bucket = self.buckets[self.keys[index]]
        s = bucket.crop_scale
        frames, caption, *rest = render_world(_seed(self.seed, index), bucket.width * s, bucket.height * s,
                                              bucket.frames, self.fps, with_mask=self.object_masks,
                                              motion_check=self.captioned, span=self.span,
                                              span_except=self.span_except)
        mask = rest[0] if rest else None
        if self.scene_changes and bucket.frames > 1:
            change = np.random.default_rng(_seed(self.seed, index, 2))
            if change.random() < self.scene_changes:
                second, _, *second_mask = render_world(_seed(self.seed, index, 3), bucket.width * s,
                                                       bucket.height * s, bucket.frames, self.fps,
                                                       with_mask=self.object_masks, motion_check=self.captioned)
                frames, mask = scene_change(frames, second, change, mask, second_mask[0] if second_mask else None)
        if s > 1:  # a random crop of the bucket's size (VAE runs only: the caption no longer describes it)
            rows, cols = _crop(frames, bucket, np.random.default_rng(_seed(self.seed, index, 1)))
            frames = np.ascontiguousarray(frames[:, rows, cols])
            mask = None if mask is None else mask[:, rows, cols]
        return Item(index, self.keys[index], self.source(index), video=channels_first(frames), caption=caption,
                    object_mask=None if mask is None else torch.from_numpy(np.ascontiguousarray(mask))[None])


DISSOLVE_FRAMES = (2, 8)  # a scene change that is not a cut cross-dissolves over this many frames (inclusive)


def scene_change(first: np.ndarray, second: np.ndarray, rng: np.random.Generator, first_mask: np.ndarray | None = None,
                 second_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Two uint8 clips of one shape (F >= 2, H, W, 3) joined into one that changes scene at a random frame
    ``c`` in 1..F-1: a hard cut (first[:c] then second[c:]), or, half the time, a cross-dissolve from the first
    to the second over ``DISSOLVE_FRAMES`` frames starting at ``c`` (cut short by the clip's end). Object masks
    (F, H, W) follow the frames: during a dissolve, where either clip has an object."""
    n = len(first)
    start = int(rng.integers(1, n))
    weights = np.zeros(n, np.float32)  # the second scene's share in each frame
    if rng.random() < 0.5:
        weights[start:] = 1.0
    else:
        length = int(rng.integers(DISSOLVE_FRAMES[0], DISSOLVE_FRAMES[1] + 1))
        weights[start:] = np.minimum(np.arange(1, n - start + 1, dtype=np.float32) / (length + 1), 1.0)
    w = weights[:, None, None, None]
    frames = np.round(first * (1.0 - w) + second * w).astype(np.uint8)
    mask = None
    if first_mask is not None and second_mask is not None:
        mask = np.where(weights[:, None, None] == 0, first_mask,
                        np.where(weights[:, None, None] == 1, second_mask, first_mask | second_mask))
    return frames, mask


def _crop(frames: np.ndarray, bucket: BucketConfig, rng: np.random.Generator) -> tuple[slice, slice]:
    """A (height, width) window of (F, H, W, 3) frames: random, or the busiest of ``bucket.crop_tries``;
    as (rows, columns) slices."""
    h, w = bucket.height, bucket.width
    tops = rng.integers(0, frames.shape[1] - h + 1, size=bucket.crop_tries)
    lefts = rng.integers(0, frames.shape[2] - w + 1, size=bucket.crop_tries)
    best = 0
    if bucket.crop_tries > 1:  # colour variance of each window, on every other frame and pixel
        variances = [frames[::2, top:top + h:2, left:left + w:2].reshape(-1, 3).astype(np.float32).var(0).sum()
                     for top, left in zip(tops, lefts)]
        best = int(np.argmax(variances))
    return slice(tops[best], tops[best] + h), slice(lefts[best], lefts[best] + w)


def render_world(seed: int, width: int, height: int, frames: int, fps: float, with_mask: bool = False,
                 motion_check: bool = True, span: float = 1.0, span_except: tuple[str, ...] = ()
                 ) -> tuple[np.ndarray, str] | tuple[np.ndarray, str, np.ndarray]:
    """(uint8 frames (F, H, W, 3), caption) of one procedural-world clip, the same as ``make_clip``'s; with
    ``with_mask``, also where its objects are (F, H, W) bool. Without ``motion_check`` the motions need not
    read back as captioned (``sample_scene``): for runs that drop the caption. ``span`` > 1: a window of a
    longer scene (``world_window``), unless it has a motion in ``span_except``."""
    from kinema.data.world.dataset import sample_clip
    from kinema.data.world.render import render

    scene, caption, start = world_window(seed, width, height, frames, fps, span, span_except) if motion_check else (
        *sample_clip(seed, width, height, frames, fps, motion_check=False), 0)
    window = slice(start, start + frames)
    if not with_mask:
        return render(scene, window=window), caption
    video, mask = render(scene, with_mask=True, window=window)
    return video, caption, mask


WINDOW_TRIES = 4  # windows of a longer scene tried before falling back to a scene that fits the clip


def world_window(seed: int, width: int, height: int, frames: int, fps: float, span: float = 1.0,
                 span_except: tuple[str, ...] = ()):
    """(scene, caption, start): a scene whose frames ``start .. start + frames - 1`` are the clip.

    With ``span`` > 1 the scene is set up for up to ``span`` times the clip's length (drawn from the seed) and
    the window starts at a random frame where every motion still reads back as captioned
    (``window_reads_back``; up to ``WINDOW_TRIES`` starts). Otherwise, if none does or an object's motion is
    in ``span_except``, it is ``make_clip``'s scene, set up for the clip itself, from frame 0.
    """
    from kinema.data.world.dataset import sample_clip
    from kinema.data.world.sample import window_reads_back

    if span > 1 and frames > 1:
        rng = np.random.default_rng(_seed(seed, 0x5BA9))
        longer = frames + int(rng.integers(0, int(round((span - 1) * (frames - 1))) + 1))
        if longer > frames:
            scene, caption = sample_clip(seed, width, height, longer, fps)
            starts = [] if any(o.motion in span_except for o in scene.objects) else rng.permutation(longer - frames + 1)
            for start in starts[:WINDOW_TRIES]:
                if window_reads_back(scene, int(start), frames):
                    return scene, caption, int(start)
    return (*sample_clip(seed, width, height, frames, fps), 0)


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
        self.keys, self.skipped, self.captions = [], [], []
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
            sidecar = path.with_suffix(".txt")
            try:  # read once, now: an unreadable caption is a skipped clip named at the start, not every epoch
                caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
            except UnicodeDecodeError as err:
                self.skipped.append((str(path), f"caption sidecar {sidecar.name}: not valid UTF-8 (byte "
                                                f"0x{err.object[err.start]:02x} at offset {err.start}); save it as UTF-8"))
                continue
            self.files.append(path)
            self.keys.append(grid)
            self.captions.append(caption)
        self.uncaptioned = [p for p, c in zip(self.files, self.captions) if not c]  # train as the empty prompt

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
        return Item(index, self.keys[index], str(path), video=channels_first(frames), caption=self.captions[index])


class LatentCache(TrainDataset):
    """Precomputed latents + text tokens, read through ``kinema.data.cache``."""

    pixels = False

    def __init__(self, root: str | os.PathLike, grids: set[Grid], latent_channels: int, text_dim: int,
                 factors: tuple[int, int] = (4, 8)):
        from kinema.data.cache import CacheError, LatentCacheReader

        try:
            self.reader = LatentCacheReader(root, latent_channels, text_dim)
        except CacheError as err:
            raise TrainError(f"data.path: {err}") from None
        self.keys, self.index, self.skipped = [], [], []
        for i, s in enumerate(self.reader.samples):
            grid = tuple(s["shape"][1:])
            if grid in grids:
                self.keys.append(grid)
                self.index.append(i)
            else:
                tf, sf = factors  # the pixel size a bucket would need to take it
                pixels = f"{(grid[0] - 1) * tf + 1}x{grid[1] * sf}x{grid[2] * sf}"
                self.skipped.append((self.source_of(s), f"latent grid {grid} (clips of {pixels}) matches no bucket"))
        if not self.keys:
            known = sorted({tuple(s["shape"][1:]) for s in self.reader.samples})
            raise TrainError(f"no sample of latent cache {str(root)!r} matches a bucket: the cache has latent grids "
                             f"{known[:8]}, the buckets give {sorted(grids)}")

    @property
    def encoded_fps(self) -> float | None:
        """The frame rate the cache's clips were resampled to, if its manifest records one."""
        fps = (self.reader.manifest.get("info") or {}).get("fps")
        return float(fps) if fps else None

    def check_vae(self, vae_cfg, source: str) -> None:
        """TrainError unless the cache's latents were encoded with ``vae_cfg``'s latent statistics (the VAE of
        ``source``, which the exported model will decode with); caches that do not record theirs pass."""
        info = self.reader.manifest.get("info") or {}
        made = info.get("vae") or {}
        for key in ("latents_mean", "latents_std"):
            theirs, ours = made.get(key), getattr(vae_cfg, key)
            if theirs is None or ours is None:
                continue
            if len(theirs) != len(ours) or any(abs(a - b) > 1e-4 * max(1.0, abs(b)) for a, b in zip(theirs, ours)):
                encoder = info.get("model", "another model")
                raise TrainError(f"data.path {str(self.reader.root)!r} was encoded by the VAE of {encoder}, whose "
                                 f"latent statistics ({key}) differ from those of {source} (this run's VAE): its "
                                 f"model would decode the DiT's latents with the wrong colours; pass --vae_from "
                                 f"{encoder} (or a decoder-only fine-tune of it)")

    def source_of(self, sample: dict) -> str:
        return f"{self.reader.root}:{sample['id']}"

    def source(self, index: int) -> str:
        return self.source_of(self.reader.samples[self.index[index]])

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tokens (L, D), mask (L,)) of the empty prompt, if the cache stores them."""
        return self.reader.null_text()

    def load(self, index: int) -> Item:
        s = self.reader[self.index[index]]
        return Item(index, self.keys[index], self.source(index), latents=s["latents"], caption=s["caption"],
                    text_tokens=s["text_tokens"], text_mask=s["text_mask"])


def build_dataset(cfg: DataConfig, model_cfg: ModelConfig, seed: int, object_masks: bool = False,
                  captioned: bool = True) -> TrainDataset:
    """The dataset ``cfg.kind`` names, with every bucket checked against the model; world items also say
    where their objects are (``object_masks``), and skip the caption check when not ``captioned``."""
    buckets = bucket_grids(cfg.buckets, model_cfg)
    if cfg.kind == "world":
        return WorldDataset(buckets, cfg.num_clips, seed, cfg.fps or 8.0, object_masks, captioned, cfg.world_span,
                            tuple(cfg.world_span_except), cfg.world_scene_changes)
    if cfg.kind == "clips":
        return ClipFolder(cfg.path, buckets, cfg.fps)
    return LatentCache(cfg.path, set(buckets), model_cfg.vae.z_dim, model_cfg.text.dim,
                       (model_cfg.vae.temporal_factor, model_cfg.vae.spatial_factor))
