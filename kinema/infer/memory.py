"""How much memory a request needs: ``estimate_memory`` predicts the peak of each memory mode from the
configs (no weights read), ``check_memory`` refuses a request that cannot fit, naming the mode that would.
The modes themselves are ``kinema.infer.offload``."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from kinema.common.precision import dtype_name
from kinema.infer.offload import MEMORY_MODES, QUANTIZE, MemoryFitError, MemoryPlan
from kinema.nn.linear import plain_linear

GB = 1024**3
_DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
# google/umt5-xxl's encoder as Wan 2.1 ships it (text_encoder/config.json), for configs without a folder.
UMT5_XXL = {"params": 5_680_000_000, "d_model": 4096, "d_ff": 10240, "num_layers": 24, "vocab_size": 256384}
# Fixed cost of a CUDA process outside the allocator (context, cuBLAS/cuDNN workspaces): typically 0.3-0.6 GB.
CUDA_OVERHEAD = int(0.6 * GB)


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of one request in one mode: weights resident at the peak plus activations."""

    mode: str
    weights: int
    activations: int
    stage: str  # "text" | "dit" | "vae": where the peak falls

    @property
    def total(self) -> int:
        return self.weights + self.activations


def safetensors_numel(path: str | os.PathLike) -> int:
    """Number of tensor elements in a safetensors file or sharded ``*.index.json`` (header only, no data read)."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        shards = set(json.loads(path.read_text())["weight_map"].values())
        return sum(safetensors_numel(path.parent / s) for s in shards)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))  # the format: an 8-byte header length, then a JSON header
        header = json.loads(f.read(n))
    return sum(math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__")


def _text_shape(cfg) -> dict:
    """Parameters, width, FFN width, layers and vocabulary of the text encoder ``cfg.text`` names."""
    if cfg.text.kind == "t5" and cfg.text.path:
        root = Path(cfg.text.path)
        folder = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if (folder / name).is_file() and (folder / "config.json").is_file():
                conf = json.loads((folder / "config.json").read_text())
                return {"params": safetensors_numel(folder / name), "d_model": conf["d_model"], "d_ff": conf["d_ff"],
                        "num_layers": conf["num_layers"], "vocab_size": conf["vocab_size"]}
    if cfg.text.kind == "t5" and cfg.text.dim == UMT5_XXL["d_model"]:  # no folder at hand: Wan's umT5-XXL
        return UMT5_XXL
    # the bundled MiniLM-L6: moved whole, never streamed by layer
    return {"params": 23_000_000, "d_model": cfg.text.dim, "d_ff": 4 * cfg.text.dim, "num_layers": 0, "vocab_size": 0}


@functools.lru_cache(maxsize=16)
def _parameter_counts(dit_cfg, vae_cfg) -> tuple[int, int, int, int]:
    """(DiT parameters, parameters per block, linear weights per block, VAE parameters), counted on the meta device."""
    from ..dit import DiT
    from ..vae import VAE
    with torch.device("meta"):
        block = DiT(dit_cfg.replace(num_layers=1)).blocks[0]
        block_params = sum(p.numel() for p in block.parameters())
        shell = sum(p.numel() for p in DiT(dit_cfg.replace(num_layers=1)).parameters()) - block_params
        block_linear = sum(m.weight.numel() for m in block.modules() if plain_linear(m))  # what int8 stores
        vae = sum(p.numel() for p in VAE(vae_cfg).parameters())
    return shell + dit_cfg.num_layers * block_params, block_params, block_linear, vae


def estimate_memory(cfg, width: int, height: int, frames: int, dtype: torch.dtype = torch.bfloat16,
                    plan: MemoryPlan = MemoryPlan(), guidance: float = 5.0, sequence_parallel: int = 1,
                    cfg_parallel: int = 1) -> MemoryEstimate:
    """Predicted peak bytes on the compute device for one request under ``plan`` (configs only, no weights read).

    Activations follow the tensors alive inside one DiT block (fp32 residual stream, q/k/v, the fp32 RoPE
    copies, the FFN hidden layer; within 10% of measured CPU peaks) and inside the VAE decoder's
    full-resolution stage (fit to measured peaks); ``benchmarks/memory.py`` prints estimate and measurement.
    """
    b = _DTYPE_BYTES[dtype]
    dit_cfg, vae_cfg = cfg.dit, cfg.vae
    dit_params, block_params, block_linear, vae_params = _parameter_counts(dit_cfg, vae_cfg)
    blocks_bytes = dit_cfg.num_layers * (block_params * b if plan.quantize == "none"
                                         else block_linear + (block_params - block_linear) * b)
    dit_bytes = blocks_bytes + (dit_params - dit_cfg.num_layers * block_params) * b
    vb = 4 if dtype == torch.float16 else b  # the VAE runs fp32 under fp16 (see Pipeline.from_pretrained)
    vae_bytes = vae_params * vb
    text = _text_shape(cfg)
    tb = 4 if cfg.text.kind != "t5" or dtype == torch.float32 else 2
    text_bytes = text["params"] * tb

    # activations
    sf, tf = vae_cfg.spatial_factor, vae_cfg.temporal_factor
    pt, ph, pw = dit_cfg.patch_size
    latent_frames = (frames - 1) // tf + 1
    tokens = -(-latent_frames // pt) * (height // sf // ph) * (width // sf // pw)
    tokens = -(-tokens // sequence_parallel)
    batch = 1 if guidance == 1 else 2
    batch = -(-batch // cfg_parallel)
    if plan.offload == "block":
        batch = 1
    d, ffn = dit_cfg.dim, dit_cfg.ffn_dim
    dit_act = batch * tokens * (d * (3 * 4 + 4 * b + 2 * 4) + 2 * ffn * b)
    text_act = 2 * cfg.text.max_length * (6 * text["d_model"] + 2 * text["d_ff"]) * tb
    chunk = plan.vae_chunk or vae_cfg.chunk_latent_frames
    px_frames = chunk * tf
    tile_px = (height * width) if plan.vae_tile is None else min(height * width, (plan.vae_tile * sf) ** 2)
    c_full = (vae_cfg.decoder_base_dim or vae_cfg.base_dim) * vae_cfg.dim_mult[0]
    # Fit to measured decode peaks of the Wan-layout VAE: ~17 full-resolution tensors per frame in flight on a
    # GPU (H200: 23.5 GiB of activations decoding 81x480x832 in chunks of 4 latent frames, bf16; CPU RSS peaks
    # fit 12, and these estimates gate GPU requests), plus ~60 frames' worth for the carried causal-conv caches
    # and the upsampling stages.
    vae_act = (17 * px_frames + 60) * tile_px * c_full * vb
    out_video = 3 * frames * height * width * 4 if plan.vae_tile is None else 0  # tiles stitch on the host

    if plan.offload == "none":
        weights = text_bytes + dit_bytes + vae_bytes
        stages = {"text": text_act, "dit": dit_act, "vae": vae_act + out_video}
        stage = max(stages, key=stages.get)
        return MemoryEstimate(plan.offload, weights, stages[stage], stage)
    if plan.offload == "model":
        stages = {"text": (text_bytes, text_act), "dit": (dit_bytes, dit_act), "vae": (vae_bytes, vae_act + out_video)}
    else:
        text_shell = text["vocab_size"] * text["d_model"] * tb if text["num_layers"] else text_bytes  # + embeddings
        text_block = (text_bytes - text_shell) / max(text["num_layers"], 1)
        dit_shell = dit_bytes - blocks_bytes
        dit_block = blocks_bytes / dit_cfg.num_layers
        stages = {"text": (int(text_shell + 2 * text_block), text_act),
                  "dit": (int(dit_shell + 2 * dit_block), dit_act),
                  "vae": (vae_bytes, vae_act + out_video)}
    stage = max(stages, key=lambda k: sum(stages[k]))
    return MemoryEstimate(plan.offload, int(stages[stage][0]), int(stages[stage][1]), stage)


def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on CUDA, MemAvailable (or psutil) for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return psutil.virtual_memory().available
    except ImportError:
        return 1 << 62  # unknown: do not refuse


def check_memory(cfg, width: int, height: int, frames: int, dtype: torch.dtype, plan: MemoryPlan,
                 device: torch.device | str, guidance: float = 5.0, available: int | None = None,
                 smaller: str = "a smaller --size or fewer --frames", gpus: str | None = "kinema generate --gpus N",
                 **parallel) -> MemoryEstimate:
    """The estimate for ``plan``, or MemoryFitError when it exceeds the free memory, naming the mode that fits.

    ``smaller`` and ``gpus`` are the caller's own ways out when no mode fits (its flags; ``gpus`` None: none).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    free = available_memory(device) if available is None else available
    overhead = CUDA_OVERHEAD if cuda else 0
    # On the CPU the "device" is host memory: offloading keeps every weight resident, only storage shrinks.
    est = estimate_memory(cfg, width, height, frames, dtype, plan if cuda else dataclasses.replace(plan, offload="none"),
                          guidance, **parallel)
    if est.total + overhead <= free:
        return est
    options = [(o, q) for q in QUANTIZE for o in (MEMORY_MODES if cuda else ("none",))]
    what = f"{cfg.name} at {width}x{height}x{frames} in {dtype_name(dtype)}"
    need = f"needs about {est.total / GB:.1f} GB ({est.weights / GB:.1f} GB weights + {est.activations / GB:.1f} GB " \
           f"activations at the {est.stage} stage) with --offload {plan.offload}" + \
           (f" --quantize {plan.quantize}" if plan.quantize != "none" else "")
    have = f"but {device} has {free / GB:.1f} GB free"
    for offload, quantize in options:
        alt = estimate_memory(cfg, width, height, frames, dtype, MemoryPlan.for_mode(offload, quantize), guidance,
                              **parallel)
        if alt.total + overhead <= free and (offload, quantize) != (plan.offload, plan.quantize):
            flags = f"--offload {offload}" + (f" --quantize {quantize}" if quantize != "none" else "")
            raise MemoryFitError(f"{what} {need}, {have}; {flags} needs about {alt.total / GB:.1f} GB and fits")
    if not cuda and dtype == torch.float32:
        smaller = "--dtype bf16, " + smaller
    raise MemoryFitError(f"{what} {need}, {have}; no memory mode fits: try {smaller}"
                         + (f", or several GPUs ({gpus})" if cuda and gpus else ""))
