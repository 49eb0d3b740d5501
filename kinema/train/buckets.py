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
from kinema.train.config import BucketConfig, SampleConfig, TrainError

Grid = tuple[int, int, int]  # latent (frames, height, width)


def latent_grid(bucket: BucketConfig, model_cfg: ModelConfig) -> Grid:
    """The latent (frames, height, width) of a bucket's pixel size (checked with ``check_bucket``)."""
    vae = model_cfg.vae
    return (bucket.frames - 1) // vae.temporal_factor + 1, bucket.height // vae.spatial_factor, bucket.width // vae.spatial_factor


def _nearest_multiples(value: int, multiple: int) -> str:
    low = value // multiple * multiple
    return f"{low + multiple}" if low == 0 else f"{low} or {low + multiple}"


def size_problem(frames: int, height: int, width: int, model_cfg: ModelConfig) -> tuple[str, str] | None:
    """Why a pixel size (frames x height x width) does not fit the model's patch grid, as (field, the rule with
    the value and the nearest that fit); None when it fits."""
    tf = model_cfg.vae.temporal_factor
    pixel = model_cfg.pixel_multiple
    pt = model_cfg.dit.patch_size[0]
    if (frames - 1) % tf:
        k = (frames - 1) // tf
        return "frames", (f"must be {tf}k+1 (the VAE's {tf}x temporal compression), got {frames}; "
                          f"nearest: {tf * k + 1} or {tf * (k + 1) + 1}")
    for name, size in (("height", height), ("width", width)):
        if size % pixel:
            return name, (f"must be a multiple of {pixel} (VAE {model_cfg.vae.spatial_factor}x times DiT patch), "
                          f"got {size}; nearest: {_nearest_multiples(size, pixel)}")
    latent_frames = (frames - 1) // tf + 1
    if latent_frames % pt:
        return "frames", (f"{frames} makes {latent_frames} latent frames, which must be a multiple of the DiT's "
                          f"temporal patch {pt}")
    return None


def check_bucket(bucket: BucketConfig, model_cfg: ModelConfig) -> Grid:
    """The bucket's latent grid, or a ConfigError saying which size does not fit the model's patch grid."""
    problem = size_problem(bucket.frames, bucket.height, bucket.width, model_cfg)
    if problem is not None:
        name, rule = problem
        raise ConfigError(f"bucket {bucket.name} (frames x height x width) cannot fit the model's patch grid: "
                          f"{name} {rule}")
    return latent_grid(bucket, model_cfg)


def check_sample_size(sample: SampleConfig, model_cfg: ModelConfig) -> None:
    """A ConfigError when the previews' size (``sample.frames/height/width``; unset: the model's sampling
    defaults) does not fit the model's patch grid, which the preview would otherwise round to another size."""
    defaults = model_cfg.sampling
    frames, height, width = sample.frames or defaults.frames, sample.height or defaults.height, sample.width or defaults.width
    problem = size_problem(frames, height, width, model_cfg)
    if problem is not None:
        name, rule = problem
        given = getattr(sample, name) is not None
        raise ConfigError(f"sample.{name} cannot fit the model's patch grid: {name} {rule}"
                          + ("" if given else f" (the model's sampling default; set sample.{name})"))


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


class GridKeys(Sequence):
    """A dataset's latent grid per sample, stored compactly: ``grids[codes[i]]`` is sample i's grid.

    A list of one tuple per sample costs seconds and hundreds of MB at millions of samples (the world's
    epochs are 10M clips); this is one small integer per sample, and ``BucketSampler`` groups it in numpy.
    """

    def __init__(self, grids: Sequence[Grid], codes: np.ndarray):
        self.grids = [tuple(g) for g in grids]
        self.codes = np.asarray(codes)
        if len(set(self.grids)) != len(self.grids):
            raise ValueError(f"grids must be distinct, got {self.grids}")
        if self.codes.ndim != 1 or (len(self.codes) and not 0 <= self.codes.min() <= self.codes.max() < len(self.grids)):
            raise ValueError(f"codes must be a 1-D array of indices into {len(self.grids)} grid(s)")

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return GridKeys(self.grids, self.codes[index])
        return self.grids[self.codes[index]]


class RankBatches(Sequence):
    """One rank's batches of an epoch, each a list of sample indices, made when asked for (an epoch of
    millions of samples as Python lists would cost seconds and hundreds of MB up front).

    ``orders[b]`` is bucket b's samples in the epoch's shuffled order; row i of ``units`` (bucket, start,
    stop) is step i's unit, ``orders[bucket][start:stop]``, of which this rank takes slice ``rank``.
    """

    def __init__(self, orders: list[np.ndarray], units: np.ndarray, rank: int, world_size: int):
        self.orders, self.units, self.rank, self.world_size = orders, units, rank, world_size

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return RankBatches(self.orders, self.units[index], self.rank, self.world_size)
        bucket, start, stop = (int(v) for v in self.units[index])
        per_rank = (stop - start) // self.world_size
        first = start + self.rank * per_rank
        return self.orders[bucket][first:first + per_rank].tolist()

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))


def _group(keys: Sequence[Grid]) -> dict[Grid, np.ndarray]:
    """Latent grid -> the ascending indices of its samples."""
    if isinstance(keys, GridKeys):
        return {keys.grids[code]: np.flatnonzero(keys.codes == code) for code in np.unique(keys.codes)}
    lists: dict[Grid, list[int]] = {}
    for index, key in enumerate(keys):
        lists.setdefault(tuple(key), []).append(index)
    return {g: np.asarray(v, dtype=np.int64) for g, v in lists.items()}


class BucketSampler:
    """This rank's batches of sample indices, one latent grid per batch, deterministic for a seed."""

    def __init__(self, keys: Sequence[Grid], batch_sizes: dict[Grid, int], seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.members = dict(sorted(_group(keys).items()))
        missing = sorted(set(self.members) - set(batch_sizes))
        if missing:
            raise ValueError(f"no batch size for latent grid(s) {missing[:5]}; known: {sorted(batch_sizes)}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batch_sizes = dict(batch_sizes)
        self.units_per_epoch = 0  # full units, plus a tail unit where the tail has a sample for every rank
        for key, members in self.members.items():
            full, tail = divmod(len(members), self.batch_sizes[key] * world_size)
            self.units_per_epoch += full + (tail >= world_size)
        if self.units_per_epoch == 0:
            raise TrainError(f"{len(keys)} sample(s) cannot fill one batch over {world_size} rank(s): every bucket "
                             f"needs at least {world_size} samples (sizes: "
                             f"{ {k: len(v) for k, v in self.members.items()} })")

    def __len__(self) -> int:
        """Steps (units) per epoch; the same on every rank."""
        return self.units_per_epoch

    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Each bucket's samples in ``epoch``'s order, and the epoch's units in step order, as rows (bucket,
        start, stop) into those: full units of ``batch_size * world_size``, then a short tail split evenly
        over the ranks (the rest of it waits for a later epoch)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        orders, tables = [], []
        for b, (key, members) in enumerate(self.members.items()):
            orders.append(members[rng.permutation(len(members))])
            size = self.batch_sizes[key] * self.world_size
            full, tail = divmod(len(members), size)
            starts = np.arange(full, dtype=np.int64) * size
            rows = [np.stack([np.full(full, b), starts, starts + size], axis=1)]
            if tail >= self.world_size:
                end = full * size + tail // self.world_size * self.world_size
                rows.append(np.array([[b, full * size, end]]))
            tables.append(np.concatenate(rows).reshape(-1, 3))
        units = np.concatenate(tables) if tables else np.zeros((0, 3), dtype=np.int64)
        return orders, units[rng.permutation(len(units))]

    def global_units(self, epoch: int) -> list[np.ndarray]:
        """Every unit of ``epoch`` in order, each the indices of all ranks' batches (rank r's slice is its own)."""
        orders, units = self._epoch(epoch)
        return [orders[b][start:stop] for b, start, stop in units.tolist()]

    def rank_batches(self, epoch: int) -> RankBatches:
        """This rank's batches for ``epoch``, in order (a sequence of lists of sample indices)."""
        return RankBatches(*self._epoch(epoch), self.rank, self.world_size)

    def iterate(self, state: SamplerState = SamplerState()) -> Iterator[tuple[SamplerState, list[int]]]:
        """Endless (state after the batch, batch indices), starting at ``state``, across epochs."""
        epoch, position = state.epoch, state.position
        while True:
            batches = self.rank_batches(epoch)
            for i in range(position, len(batches)):
                yield SamplerState(epoch, i + 1), batches[i]
            epoch, position = epoch + 1, 0
