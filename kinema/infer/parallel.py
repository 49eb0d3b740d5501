"""Multi-GPU inference under ``torchrun``: sequence parallelism over patch tokens and CFG parallelism.

The ``world_size`` ranks form a ``cfg x sequence`` grid, rank = cfg_index * sequence + sequence_index.

CFG parallelism: the pipeline asks the DiT for the conditional and unconditional velocities in one
batch of two; each CFG group computes one half and the halves are all-gathered, so every rank holds
the same guided velocity and the sampler stays in lock-step everywhere without further talk.

Sequence parallelism (DeepSpeed-Ulysses, Jacobs et al. 2023): inside a group each rank keeps 1/P of
the patch tokens through every block. Everything in a block is per token except self-attention; there
an all-to-all trades "my tokens, all heads" for "all tokens, my heads" (heads must divide by P), the
attention runs on the whole sequence for H/P heads, and a second all-to-all trades back. Token counts
that do not divide by P are padded, and the padding is masked out of every key set. Cross-attention
needs no communication (each rank has all text tokens); the output head runs after one all-gather.

All of it is applied from outside the model: forward hooks on the DiT and its blocks, and each block's
self-attention ``forward`` replaced. ``kinema.dit`` never imports ``torch.distributed``.
"""

from __future__ import annotations

import datetime
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..nn import apply_rope, attention
from .offload import bind_dit_args, slice_batch


class ParallelError(ValueError):
    """A world size or layout that cannot run this model; the message lists what would."""


@dataclass(frozen=True)
class ParallelPlan:
    """How ``sequence * cfg`` ranks share one generation."""

    sequence: int = 1
    cfg: int = 1

    def __post_init__(self):
        if self.sequence < 1 or self.cfg not in (1, 2):
            raise ParallelError(f"sequence must be >= 1 and cfg 1 or 2, got sequence={self.sequence}, cfg={self.cfg}")

    @property
    def world_size(self) -> int:
        return self.sequence * self.cfg


def plan_parallel(world_size: int, heads: int, guidance: float = 5.0, cfg_parallel: bool = True) -> ParallelPlan:
    """The layout for ``world_size`` ranks: CFG over 2 when it helps, the rest over the sequence (dividing ``heads``)."""
    cfg = 2 if cfg_parallel and guidance != 1 and world_size % 2 == 0 else 1
    sequence = world_size // cfg
    if heads % sequence:
        sizes = sorted({c * s for s in range(1, heads + 1) if heads % s == 0 for c in ((1, 2) if cfg_parallel else (1,))})
        raise ParallelError(
            f"{world_size} ranks split the sequence over {sequence}, but the model's {heads} attention heads do not "
            f"divide by {sequence} (Ulysses sequence parallelism gives each rank heads/{sequence} heads); "
            f"use a world size in {[n for n in sizes if n <= 4 * heads][:12]}")
    return ParallelPlan(sequence=sequence, cfg=cfg)


@dataclass
class Mesh:
    """This rank's place in a ParallelPlan and its two process groups (None where a group is this rank alone)."""

    plan: ParallelPlan
    rank: int
    sequence_rank: int
    cfg_rank: int
    sequence_group: object
    cfg_group: object


def init_mesh(plan: ParallelPlan) -> Mesh:
    """Create the sequence and CFG groups of ``plan`` (every rank must call this, in the same order)."""
    if not dist.is_initialized():
        raise ParallelError("torch.distributed is not initialised: run under torchrun and call init_distributed first")
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != plan.world_size:
        raise ParallelError(f"plan needs {plan.world_size} ranks (sequence {plan.sequence} x cfg {plan.cfg}), "
                            f"the process group has {world}")
    s = plan.sequence
    sequence_group = cfg_group = None
    for c in range(plan.cfg):  # new_group is collective: every rank creates every group
        ranks = [c * s + i for i in range(s)]
        group = dist.new_group(ranks) if s > 1 else None
        if rank in ranks:
            sequence_group = group
    for i in range(s):
        ranks = [c * s + i for c in range(plan.cfg)]
        group = dist.new_group(ranks) if plan.cfg > 1 else None
        if rank in ranks:
            cfg_group = group
    return Mesh(plan, rank, rank % s, rank // s, sequence_group, cfg_group)


def init_distributed(device: str = "cpu") -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes: (rank, world size, this rank's device). World size 1: no group."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=30),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
    return rank, world, dev


# -- collectives -----------------------------------------------------------------------------------------

def _all_gather(t: torch.Tensor, group, dim: int) -> torch.Tensor:
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t, group=group)
    return torch.cat(parts, dim=dim)


def _all_to_all(t: torch.Tensor, group) -> torch.Tensor:
    """Exchange the P slices of dim 0: slice p goes to rank p; slice p of the result came from rank p."""
    t = t.contiguous()  # before empty_like, which would copy a permuted layout
    out = torch.empty_like(t)
    dist.all_to_all_single(out, t, group=group)
    return out


def tokens_to_heads(qkv: torch.Tensor, group, p: int) -> torch.Tensor:
    """(3, B, H, n, d) local tokens, all heads -> (3, B, H/p, p*n, d) all tokens, this rank's heads."""
    three, b, h, n, d = qkv.shape
    x = qkv.reshape(three, b, p, h // p, n, d).permute(2, 0, 1, 3, 4, 5)  # (p: head group, 3, B, H/p, n, d)
    x = _all_to_all(x, group)  # (p: token chunk, 3, B, H/p, n, d)
    return x.permute(1, 2, 3, 0, 4, 5).reshape(three, b, h // p, p * n, d)


def heads_to_tokens(out: torch.Tensor, group, p: int) -> torch.Tensor:
    """(B, H/p, p*n, d) all tokens, this rank's heads -> (B, H, n, d) local tokens, all heads."""
    b, hp, pn, d = out.shape
    x = out.reshape(b, hp, p, pn // p, d).permute(2, 0, 1, 3, 4)  # (p: token chunk, B, H/p, n, d)
    x = _all_to_all(x, group)  # (p: head group, B, H/p, n, d)
    return x.permute(1, 0, 2, 3, 4).reshape(b, hp * p, pn // p, d)


# -- sequence parallelism ----------------------------------------------------------------------------------

class _Shard:
    """Per-forward facts shared by the hooks: where this rank's tokens sit, and their RoPE/modulation/key mask."""

    def __init__(self, group, rank: int, p: int):
        self.group, self.rank, self.p = group, rank, p
        self.tokens = self.per_rank = self.start = 0
        self.key_mask = self.rope = self.modulation = None

    def begin(self, x: torch.Tensor, modulation: torch.Tensor, rope) -> torch.Tensor:
        """This rank's slice of the full token sequence ``x`` (B, N, D); prepares the shared slices."""
        b, n, _ = x.shape
        per = -(-n // self.p)
        pad = per * self.p - n
        self.tokens, self.per_rank, self.start = n, per, self.rank * per
        local = slice(self.start, self.start + per)
        self.key_mask = None if pad == 0 else (torch.arange(n + pad, device=x.device) < n).expand(b, -1)
        cos, sin = rope
        if pad:  # padded tokens get the identity rotation
            cos = torch.cat([cos, cos.new_ones(pad, cos.shape[1])])
            sin = torch.cat([sin, sin.new_zeros(pad, sin.shape[1])])
        self.rope = (cos[local], sin[local])
        self.modulation = self._local_modulation(modulation, n)
        return torch.nn.functional.pad(x, (0, 0, 0, pad))[:, local]

    def _local_modulation(self, modulation: torch.Tensor, n: int) -> torch.Tensor:
        """(B, 6, D) stays; per-frame (B, f, 6, D) becomes this shard's frames, or per token (B, n_local, 6, D)."""
        if modulation.ndim != 4:
            return modulation
        f = modulation.shape[1]
        per_frame = n // f
        start, per = self.start, self.per_rank
        if start % per_frame == 0 and per % per_frame == 0 and start + per <= n:
            return modulation[:, start // per_frame:(start + per) // per_frame]
        frame = ((start + torch.arange(per, device=modulation.device)) // per_frame).clamp(max=f - 1)
        return modulation[:, frame]  # one "frame" per token: the block's per-frame path handles it as is

    def end(self, x: torch.Tensor) -> torch.Tensor:
        """The full sequence (B, N, D) from every rank's slice."""
        return _all_gather(x, self.group, dim=1)[:, :self.tokens]


def _first_block(shard: _Shard, module, args, kwargs):
    x, text, text_mask, modulation, rope, *rest = args
    x = shard.begin(x, modulation, rope)
    return (x, text, text_mask, shard.modulation, shard.rope, *rest), kwargs


def _other_block(shard: _Shard, module, args, kwargs):
    x, text, text_mask, _modulation, _rope, *rest = args
    return (x, text, text_mask, shard.modulation, shard.rope, *rest), kwargs


def _ulysses_self_attention(attn, shard: _Shard, x: torch.Tensor, context=None, context_mask=None, rope=None,
                            image_context=None) -> torch.Tensor:
    """``Attention.forward`` for self-attention over a token shard: (B, n_local, D) -> (B, n_local, D)."""
    q = attn._heads(attn.norm_q(attn.to_q(x)))  # (B, H, n, d)
    k = attn._heads(attn.norm_k(attn.to_k(x)))
    v = attn._heads(attn.to_v(x))
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q, k, v = tokens_to_heads(torch.stack([q, k, v]), shard.group, shard.p)  # (B, H/p, N, d) each
    out = heads_to_tokens(attention(q, k, v, shard.key_mask), shard.group, shard.p)  # (B, H, n, d)
    return attn.to_out[0](out.transpose(1, 2).flatten(2))


class Handle:
    """Undoes what a ``parallelize`` call installed."""

    def __init__(self):
        self.hooks, self.restore = [], []

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        for fn in self.restore:
            fn()
        self.hooks, self.restore = [], []


def _replace_forward(module, fn, handle: Handle) -> None:
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = fn
    handle.restore.append(lambda: setattr(module, "forward", previous) if had else module.__dict__.pop("forward", None))


def sequence_parallel(dit, group, rank: int, p: int, handle: Handle | None = None) -> Handle:
    """Shard ``dit``'s tokens over the ``p`` ranks of ``group`` (Ulysses); returns a handle to undo it."""
    handle = handle or Handle()
    heads = dit.cfg.num_attention_heads
    if heads % p:
        raise ParallelError(f"the model's {heads} attention heads do not divide by {p} sequence-parallel ranks")
    shard = _Shard(group, rank, p)
    blocks = list(dit.blocks)
    for i, block in enumerate(blocks):
        hook = _first_block if i == 0 else _other_block
        handle.hooks.append(block.register_forward_pre_hook(functools.partial(hook, shard), with_kwargs=True))
        _replace_forward(block.attn1, functools.partial(_ulysses_self_attention, block.attn1, shard), handle)
    handle.hooks.append(blocks[-1].register_forward_hook(lambda module, args, out: shard.end(out)))
    return handle


# -- CFG parallelism ---------------------------------------------------------------------------------------

def batch_parallel(dit, group, rank: int, p: int, handle: Handle | None = None) -> Handle:
    """Split each DiT batch over the ``p`` ranks of ``group`` and all-gather the outputs (CFG: cond | uncond)."""
    handle = handle or Handle()
    split = {"on": False}

    def before(module, args, kwargs):
        bound = bind_dit_args(args, kwargs)
        b = bound["latents"].shape[0]
        split["on"] = b % p == 0
        if not split["on"]:  # e.g. guidance 1: one row; every rank computes it
            return None
        per = b // p
        return (), slice_batch(bound, rank * per, (rank + 1) * per)

    def after(module, args, kwargs, out):
        return _all_gather(out, group, dim=0) if split["on"] else out

    handle.hooks.append(dit.register_forward_pre_hook(before, with_kwargs=True))
    handle.hooks.append(dit.register_forward_hook(after, with_kwargs=True))
    return handle


def parallelize(dit, mesh: Mesh) -> Handle:
    """Apply ``mesh``'s plan to ``dit``: CFG batch split across groups, Ulysses inside each; returns the handle."""
    handle = Handle()
    if mesh.plan.cfg > 1:
        batch_parallel(dit, mesh.cfg_group, mesh.cfg_rank, mesh.plan.cfg, handle)
    if mesh.plan.sequence > 1:
        sequence_parallel(dit, mesh.sequence_group, mesh.sequence_rank, mesh.plan.sequence, handle)
    return handle
