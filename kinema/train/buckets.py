"""Native-size batches: clips are grouped by latent grid (frames, height, width), one grid per batch.

Sora trains every clip at its own duration, resolution and aspect ratio; a batch only needs its clips to
share a latent grid. Each bucket (a pixel size from the config) maps to one grid and carries its own
per-rank batch size, so short or small clips (images are 1-frame clips) come in larger batches.

One epoch, for a seed: every bucket's sample indices are shuffled and cut into *units* of
``batch_size * world_size`` samples; the units of all buckets are shuffled together; rank ``r`` takes
slice ``r`` of every unit. So every rank takes the same number of steps, shares are disjoint, and the
global batch of a step does not depend on how many ranks split it. A bucket's last, short unit is split
evenly over the ranks; at most ``world_size - 1`` samples of a bucket wait for the next epoch (whose
shuffle differs). The position in an epoch (units consumed) is all that resume needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kinema.config import ConfigError, ModelConfig
from kinema.train.config import BucketConfig, TrainError

Grid = tuple[int, int, int]  # latent (frames, height, width)


def latent_grid(bucket: BucketConfig, model_cfg: ModelConfig) -> Grid:
    """The latent (frames, height, width) of a bucket's pixel size (checked with ``check_bucket``)."""
    vae = model_cfg.vae
    return (bucket.frames - 1) // vae.temporal_factor + 1, bucket.height // vae.spatial_factor, bucket.width // vae.spatial_factor


def _nearest_multiples(value: int, multiple: int) -> str:
    low = value // multiple * multiple
    return f"{low + multiple}" if low == 0 else f"{low} or {low + multiple}"


def check_bucket(bucket: BucketConfig, model_cfg: ModelConfig) -> Grid:
    """The bucket's latent grid, or a ConfigError saying which size does not fit the model's patch grid."""
    tf = model_cfg.vae.temporal_factor
    pixel = model_cfg.pixel_multiple
    pt = model_cfg.dit.patch_size[0]
    where = f"bucket {bucket.name} (frames x height x width)"
    if (bucket.frames - 1) % tf:
        k = (bucket.frames - 1) // tf
        raise ConfigError(f"{where} cannot fit the model: frames must be {tf}k+1 (the VAE's {tf}x temporal "
                          f"compression), got {bucket.frames}; nearest: {tf * k + 1} or {tf * (k + 1) + 1}")
    for name, size in (("height", bucket.height), ("width", bucket.width)):
        if size % pixel:
            raise ConfigError(f"{where} cannot fit the model's patch grid: {name} must be a multiple of {pixel} "
                              f"(VAE {model_cfg.vae.spatial_factor}x times DiT patch), got {size}; "
                              f"nearest: {_nearest_multiples(size, pixel)}")
    grid = latent_grid(bucket, model_cfg)
    if grid[0] % pt:
        raise ConfigError(f"{where} cannot fit the model's patch grid: {grid[0]} latent frames are not a multiple "
                          f"of the DiT's temporal patch {pt}")
    return grid


def bucket_grids(buckets: Sequence[BucketConfig], model_cfg: ModelConfig) -> dict[Grid, BucketConfig]:
    """Latent grid -> bucket, every bucket checked against the model."""
    out: dict[Grid, BucketConfig] = {}
    for bucket in buckets:
        grid = check_bucket(bucket, model_cfg)
        if grid in out:
            raise ConfigError(f"buckets {out[grid].name} and {bucket.name} map to the same latent grid {grid}")
        out[grid] = bucket
    return out


@dataclass(frozen=True)
class SamplerState:
    """Where the data stream is: ``position`` units consumed of epoch ``epoch``."""

    epoch: int = 0
    position: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}


class BucketSampler:
    """This rank's batches of sample indices, one latent grid per batch, deterministic for a seed."""

    def __init__(self, keys: Sequence[Grid], batch_sizes: dict[Grid, int], seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        missing = sorted({k for k in keys} - set(batch_sizes))
        if missing:
            raise ValueError(f"no batch size for latent grid(s) {missing[:5]}; known: {sorted(batch_sizes)}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batch_sizes = dict(batch_sizes)
        self.members: dict[Grid, np.ndarray] = {}
        for index, key in enumerate(keys):
            self.members.setdefault(tuple(key), []).append(index)
        self.members = {k: np.asarray(v, dtype=np.int64) for k, v in sorted(self.members.items())}
        self.units_per_epoch = len(self.global_units(0))
        if self.units_per_epoch == 0:
            raise TrainError(f"{len(keys)} sample(s) cannot fill one batch over {world_size} rank(s): every bucket "
                             f"needs at least {world_size} samples (sizes: "
                             f"{ {k: len(v) for k, v in self.members.items()} })")

    def __len__(self) -> int:
        """Steps (units) per epoch; the same on every rank."""
        return self.units_per_epoch

    def global_units(self, epoch: int) -> list[np.ndarray]:
        """Every unit of ``epoch`` in order, each the indices of all ranks' batches (rank r's slice is its own)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        units: list[np.ndarray] = []
        for key, members in self.members.items():
            order = members[rng.permutation(len(members))]
            size = self.batch_sizes[key] * self.world_size
            for start in range(0, len(order), size):
                unit = order[start:start + size]
                per_rank = len(unit) // self.world_size  # a short tail is split evenly; the rest waits
                if per_rank:
                    units.append(unit[:per_rank * self.world_size])
        return [units[i] for i in rng.permutation(len(units))]

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches for ``epoch``, in order."""
        out = []
        for unit in self.global_units(epoch):
            per_rank = len(unit) // self.world_size
            out.append(unit[self.rank * per_rank:(self.rank + 1) * per_rank].tolist())
        return out

    def iterate(self, state: SamplerState = SamplerState()) -> Iterator[tuple[SamplerState, list[int]]]:
        """Endless (state after the batch, batch indices), starting at ``state``, across epochs."""
        epoch, position = state.epoch, state.position
        while True:
            batches = self.rank_batches(epoch)
            for i in range(position, len(batches)):
                yield SamplerState(epoch, i + 1), batches[i]
            epoch, position = epoch + 1, 0
