"""Distribution, applied from outside the model: the only file that imports FSDP or DDP.

One process is world size 1; under ``torchrun`` the env vars RANK / WORLD_SIZE / LOCAL_RANK say where
this process sits (gloo on CPU, nccl on GPU). ``parallelize`` follows torchtitan's order: activation
checkpointing per block, then ``fully_shard`` per block, then the root (FSDP2, bf16 parameters with fp32
reductions on GPU), or plain DDP, or nothing. Every helper here is a no-op at world size 1, so the loop
never checks ranks itself.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kinema.config import ConfigError
from kinema.train.config import ParallelConfig


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, local rank, its device and the parallel mode in use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mode: str  # "fsdp" | "ddp" | "none"
    precision: str  # "bf16" | "fp32"
    owns_group: bool = False  # this call created the process group (and so destroys it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str, cfg: ParallelConfig) -> Dist:
    """Join the process group torchrun describes (if any) and pick this rank's device and mode."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for, but torch sees no CUDA device")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns_group = world_size > 1 and not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                **({"device_id": dev} if use_cuda else {}))
    if world_size == 1:
        mode = "none"
    elif cfg.mode == "none":
        raise ConfigError(f"parallel.mode 'none' cannot train on {world_size} ranks; use 'fsdp', 'ddp' or 'auto'")
    else:
        mode = "fsdp" if cfg.mode == "auto" else cfg.mode
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if use_cuda else "fp32")
    return Dist(rank, world_size, local_rank, dev, mode, precision, owns_group)


def shutdown(d: Dist) -> None:
    """Leave the process group if ``init_distributed`` created it (a caller's own group stays up for its next use)."""
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, blocks: nn.ModuleList | None, d: Dist, activation_checkpointing: bool,
                forward_methods: tuple[str, ...] = ()) -> nn.Module:
    """The module to call for training: ``model`` checkpointed/sharded in place (FSDP2) or DDP-wrapped.

    ``blocks`` are the repeated layers that get their own activation checkpoint and FSDP unit (the
    DiT's transformer blocks); parameter names never change, so state dicts and LoRA keys stay clean.
    ``forward_methods`` are other entry points (the VAE's encode/decode) that must gather shards too.
    """
    if activation_checkpointing and blocks is not None:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)
    if d.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if d.precision == "bf16" else MixedPrecisionPolicy()
        # A block's per-frame gated residual comes back as a flattened view of its fp32 result; FSDP2 warns that an
        # in-place op on such a view could corrupt gradients. Nothing writes into a block's output in place
        # (2 ranks train bit for bit as 1, tests/test_train_dist.py), so the warning, printed every step on every
        # rank, would only alarm.
        warnings.filterwarnings("ignore", r"FSDP2-wrapped module .* returned a view tensor", UserWarning)
        for block in blocks if blocks is not None else ():
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        for name in forward_methods:
            register_fsdp_forward_method(model, name)
        return model
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return model


def autocast(d: Dist):
    """bf16 autocast where the model is not already cast by FSDP's policy; nothing in fp32."""
    if d.precision == "bf16" and d.mode != "fsdp":
        return torch.autocast(d.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def gradient_sync(train_model: nn.Module, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if enabled:
        yield
        return
    if hasattr(train_model, "no_sync"):  # DDP
        with train_model.no_sync():
            yield
    elif hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            train_model.set_requires_gradient_sync(True)
    else:
        yield


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a (possibly sharded) DTensor; every rank must call it for sharded ones."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """The global gradient norm (before clipping), clipped to ``max_norm`` when it is > 0."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    return float(full_tensor(norm))


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over ranks (a copy; the input at world size 1)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    """Wait for every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj
