"""First-block cache: skip a DiT's later blocks on sampling steps where its first block barely changed.

Between neighbouring sampling steps a DiT's output changes about as much as its early features do
(TeaCache, Liu et al. 2024, arXiv:2411.19108). First Block Cache (ParaAttention; diffusers'
``apply_first_block_cache``) takes the residual of block 0 as that early feature. Per batch row:

    r        = block_0(x) - x                               block 0's residual at this evaluation
    change   = mean|r - r_full| / mean|r_full|               against the last *full* evaluation
    change < threshold:  out = block_0(x) + tail_full       tail_full = last block's output - block_0's, then
    otherwise:           run every block, refresh r_full and tail_full

Comparing with the last full evaluation rather than the previous step bounds the drift: a run of
small changes cannot add up past the threshold unnoticed. The first evaluation is always full.

Every batch row keeps its own cache and makes its own decision, so CFG's conditional and
unconditional rows never share a residual; rows that miss run the remaining blocks as a sub-batch.
A row is named by its index in the DiT call's batch (the pipeline always puts the conditional row
first), so a forward that runs the batch row by row (``offload.one_sample_at_a_time``) keeps the
same names. Applied from outside the model, like ``parallel.py``: each block's ``forward`` is replaced
for one generation and a DiT pre-hook marks where each call starts. Not for sequence-parallel runs,
where each rank holds only a shard of a row's tokens and ranks would decide differently.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class CacheStats:
    """How many row evaluations ran every block, and how many reused the cached residual."""

    full: int = 0
    reused: int = 0

    def __str__(self) -> str:
        return f"reused {self.reused} of {self.full + self.reused} row evaluations"


@dataclass
class _RowCache:
    head_residual: Tensor  # (N, D) block 0's residual at the row's last full evaluation
    tail_residual: Tensor  # (N, D) last block's output minus block 0's output there


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float if it is a finite number >= 0; ValueError naming it otherwise."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"cache threshold must be a finite number >= 0 (0 = off; about 0.05-0.2 skips some steps), "
                         f"got {threshold!r}")
    return float(threshold)


class StepCache:
    """First-block cache over ``dit.blocks`` while the context is open; ``stats`` counts what it saved."""

    def __init__(self, dit: nn.Module, threshold: float):
        threshold = check_threshold(threshold)
        if threshold == 0:
            raise ValueError("a StepCache with threshold 0 would never reuse; use step_cache(), which skips it")
        if len(dit.blocks) < 2:
            raise ValueError(f"the step cache needs a DiT with >= 2 blocks, this one has {len(dit.blocks)}")
        self.dit, self.threshold = dit, threshold
        self.stats = CacheStats()
        self._rows: dict[tuple[int, int], _RowCache] = {}  # (call batch size, row index) -> cache
        self._batch = 0  # batch size of the DiT call in progress
        self._next_row = 0  # that call's first row not yet seen by block 0
        self._keys: list[tuple[int, int]] = []  # the rows now passing through the blocks
        self._miss: list[int] = []  # which of those run the remaining blocks
        self._head_out: Tensor | None = None
        self._head_residual: Tensor | None = None
        self._handles: list = []

    # -- attaching -------------------------------------------------------------------------------------------
    def __enter__(self) -> StepCache:
        blocks = list(self.dit.blocks)
        taken = [i for i, b in enumerate(blocks) if "forward" in b.__dict__]
        if taken:
            raise RuntimeError(f"DiT blocks {taken} already have a replaced forward (another cache, or parallel "
                               f"inference); the step cache cannot wrap them")
        self._handles.append(self.dit.register_forward_pre_hook(self._start_call, with_kwargs=True))
        for i, block in enumerate(blocks):
            block.forward = self._wrap(block.forward, i, last=i == len(blocks) - 1)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for block in self.dit.blocks:
            block.__dict__.pop("forward", None)

    def _start_call(self, module, args, kwargs) -> None:
        latents = args[0] if args else kwargs["latents"]
        self._batch, self._next_row = latents.shape[0], 0

    def _wrap(self, forward, index: int, last: bool):
        if index == 0:
            return lambda x, *args: self._head(forward, x, *args)
        return lambda x, *args: self._rest(forward, last, x, *args)

    # -- the decision ----------------------------------------------------------------------------------------
    def _reusable(self, key: tuple[int, int], residual: Tensor) -> bool:
        cached = self._rows.get(key)
        if cached is None:
            return False
        before = cached.head_residual.float()
        change = (residual.float() - before).abs().mean() / before.abs().mean().clamp_min(1e-12)
        return change.item() < self.threshold

    def _head(self, forward, x: Tensor, *args) -> Tensor:
        """Block 0 on every row; rows whose residual barely moved get their cached tail added."""
        b = x.shape[0]  # (b, N, D): the whole call's batch, or one slice of it when run row by row
        first = self._next_row
        self._next_row += b
        self._keys = [(self._batch, first + i) for i in range(b)]
        out = forward(x, *args)
        residual = out - x
        hits = [self._reusable(key, residual[i]) for i, key in enumerate(self._keys)]
        self._miss = [i for i, hit in enumerate(hits) if not hit]
        self._head_out, self._head_residual = out, residual
        self.stats.reused += b - len(self._miss)
        if len(self._miss) == b:
            return out
        tails = [self._rows[key].tail_residual if hit else torch.zeros_like(out[i])
                 for i, (key, hit) in enumerate(zip(self._keys, hits))]
        return out + torch.stack(tails)

    def _rest(self, forward, last: bool, x: Tensor, text: Tensor, text_mask: Tensor | None, modulation: Tensor,
              rope, image_context: Tensor | None = None) -> Tensor:
        """A later block on the rows that missed (a sub-batch when some hit); the last one refreshes their cache."""
        miss, b = self._miss, x.shape[0]
        if not miss:
            return x
        if len(miss) == b:
            out = forward(x, text, text_mask, modulation, rope, image_context)
        else:
            idx = torch.tensor(miss, device=x.device)
            pick = (lambda t: None if t is None else t.index_select(0, idx))
            out = x.index_copy(0, idx, forward(x.index_select(0, idx), pick(text), pick(text_mask),
                                               pick(modulation), rope, pick(image_context)))
        if last:
            for i in miss:
                self._rows[self._keys[i]] = _RowCache(self._head_residual[i], out[i] - self._head_out[i])
            self.stats.full += len(miss)
        return out


def step_cache(dit: nn.Module, threshold: float) -> contextlib.AbstractContextManager[StepCache | None]:
    """A ``StepCache`` over ``dit`` for one generation, or a context yielding None at threshold 0 (off)."""
    return StepCache(dit, threshold) if check_threshold(threshold) > 0 else contextlib.nullcontext()
