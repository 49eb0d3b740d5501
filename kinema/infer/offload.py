"""Memory modes: where the weights live while a video is generated, and what that costs.

    none    every component stays on the accelerator.
    model   text encoder, DiT and VAE each sit on the accelerator only while they run; the one that
            ran before goes back to host memory (diffusers' "model CPU offload").
    block   the DiT's blocks and the text encoder's layers stream through the accelerator one at a
            time, the next one copied on a side CUDA stream while the current one computes; the
            conditional and unconditional passes run one after another (half the activations), and
            the VAE decodes one latent frame at a time in spatial tiles (``tiling.decode_tiled``).

Orthogonal to the mode, ``quantize="int8"`` stores the DiT blocks' linear weights as int8 with one
scale per output channel, dequantised per call (a quarter of fp32, half of bf16).

Everything is applied from outside the models: forward hooks and wrapped instance methods on the
pipeline's components, so the model files stay unaware of it. ``estimate_memory`` predicts the peak of
each mode from the configs (no weights read) and ``check_memory`` refuses a request that cannot fit,
naming the mode that would.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEMORY_MODES = ("none", "model", "block")
QUANTIZE = ("none", "int8")


class MemoryFitError(ValueError):
    """The chosen memory mode cannot fit the request; the message names a mode that would."""


@dataclass(frozen=True)
class MemoryPlan:
    """How a pipeline uses memory: offload mode, weight storage, and the VAE's decode granularity."""

    offload: str = "none"  # "none" | "model" | "block"
    quantize: str = "none"  # "none" | "int8"
    vae_chunk: int | None = None  # latent frames per decode chunk (None: the VAE config's)
    vae_tile: int | None = None  # latent pixels per square decode tile (None: whole frames)
    vae_overlap: int = 8  # latent pixels shared by neighbouring tiles (64 px for Wan's 8x VAE)

    def __post_init__(self):
        if self.offload not in MEMORY_MODES:
            raise ValueError(f"offload must be one of {MEMORY_MODES}, got {self.offload!r}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"quantize must be one of {QUANTIZE}, got {self.quantize!r}")
        if self.vae_chunk is not None and self.vae_chunk < 1:
            raise ValueError(f"vae_chunk must be >= 1 latent frame, got {self.vae_chunk}")
        if self.vae_tile is not None and not 0 <= self.vae_overlap < self.vae_tile / 2:
            raise ValueError(f"vae_overlap must be in [0, vae_tile/2) = [0, {self.vae_tile / 2}), got {self.vae_overlap}")

    @classmethod
    def for_mode(cls, offload: str = "none", quantize: str = "none") -> MemoryPlan:
        """The plan a mode implies: ``model`` decodes frame by frame, ``block`` also in 256-px tiles."""
        if offload == "model":
            return cls(offload, quantize, vae_chunk=1)
        if offload == "block":
            return cls(offload, quantize, vae_chunk=1, vae_tile=32, vae_overlap=8)
        return cls(offload, quantize)

    def note_on(self, device: torch.device | str) -> str | None:
        """Why this plan's offloading saves nothing on ``device`` when that is the CPU; None where it helps."""
        if self.offload == "none" or torch.device(device).type != "cpu":
            return None
        return (f"--offload {self.offload} keeps weights in host memory and moves them to the accelerator only while "
                f"used; on the CPU that saves nothing (--quantize int8 and --dtype bf16 do)")


# -- 8-bit weights ------------------------------------------------------------------------------------------

class Int8Linear(nn.Module):
    """``nn.Linear`` with the weight stored as int8 and one scale per output channel, dequantised per call."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()  # (out, in)
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # symmetric: max |w| of each row -> 127
        self.register_buffer("weight_int8", (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
        return F.linear(x, weight, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(module: nn.Module) -> int:
    """Replace every plain ``nn.Linear`` under ``module`` by an ``Int8Linear``; returns the bytes saved.

    Subclasses of ``nn.Linear`` (LoRA layers) are left whole: their adapters would be lost.
    """
    saved = 0
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            q = Int8Linear(child)
            saved += child.weight.numel() * child.weight.element_size() - q.weight_int8.numel() - 4 * q.out_features
            setattr(module, name, q)
        elif not isinstance(child, nn.Linear):
            saved += quantize_int8(child)
    return saved


# -- moving tensors ------------------------------------------------------------------------------------------

def _slots(modules: list[nn.Module], skip: set[int] = frozenset()) -> list[tuple[nn.Module, str, str]]:
    """(owner, "p" | "b", name) of every parameter and buffer under ``modules``, each tensor once."""
    seen, slots = set(skip), []
    for module in modules:
        for owner in module.modules():
            for kind, table in (("p", owner._parameters), ("b", owner._buffers)):
                for name, t in table.items():
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        slots.append((owner, kind, name))
    return slots


def _get(slot) -> torch.Tensor:
    owner, kind, name = slot
    return (owner._parameters if kind == "p" else owner._buffers)[name]


def _set(slot, value: torch.Tensor) -> None:
    owner, kind, name = slot
    if kind == "p":
        owner._parameters[name].data = value  # same Parameter object: tied weights and references stay valid
    else:
        owner._buffers[name] = value


def _nbytes(slots) -> int:
    return sum(_get(s).numel() * _get(s).element_size() for s in slots)


class Offloader:
    """Moves pipeline components between host memory and the compute device, one component at a time.

    It also keeps a ledger of the weight bytes resident on the compute device (``peak_bytes``), which is
    what an accelerator would hold; on a CPU-only machine that ledger is the measurement.
    """

    def __init__(self, device: torch.device | str, host: torch.device | str = "cpu"):
        self.device, self.host = torch.device(device), torch.device(host)
        self.active: str | None = None
        self.components: dict[str, tuple] = {}
        self.resident_bytes = self.peak_bytes = 0
        self.loads: dict[str, int] = {}

    def _account(self, delta: int) -> None:
        self.resident_bytes += delta
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)

    def add(self, name: str, load, unload, nbytes: int) -> None:
        """Register a component by its load/unload callables and its weight bytes."""
        self.components[name] = (load, unload, nbytes)

    def add_module(self, name: str, modules: list[nn.Module], skip: set[int] = frozenset()) -> None:
        """Register the tensors under ``modules`` (minus those in ``skip``) as one component."""
        slots = _slots(modules, skip)
        host, device = self.host, self.device

        def move(to):
            for slot in slots:
                _set(slot, _get(slot).to(to))

        self.add(name, lambda: move(device), lambda: move(host), _nbytes(slots))

    def activate(self, name: str) -> None:
        """Put component ``name`` on the device, first sending the previously active one back to the host."""
        if self.active == name:
            return
        if self.active is not None:
            _, unload, nbytes = self.components[self.active]
            unload()
            self._account(-nbytes)
        load, _, nbytes = self.components[name]
        load()
        self._account(nbytes)
        self.active = name
        self.loads[name] = self.loads.get(name, 0) + 1

    def before(self, name: str, fn):
        """``fn`` wrapped so that component ``name`` is activated first (generators: at their first step)."""
        if inspect.isgeneratorfunction(getattr(fn, "__func__", fn)):
            @functools.wraps(fn)
            def gen(*args, **kwargs):
                self.activate(name)
                yield from fn(*args, **kwargs)
            return gen

        @functools.wraps(fn)
        def call(*args, **kwargs):
            self.activate(name)
            return fn(*args, **kwargs)
        return call


class BlockStreamer:
    """Streams an ordered list of modules through the device: each is copied in just before it runs and
    dropped right after; on CUDA the next module is copied on a side stream while the current one computes.

    Host copies are kept (pinned on CUDA), so dropping a module is a pointer swap, never a copy back.
    """

    def __init__(self, units: list[nn.Module], device: torch.device, ledger: Offloader | None = None):
        self.units, self.device, self.ledger = units, torch.device(device), ledger
        self.slots = [_slots([u]) for u in units]
        self.unit_bytes = [_nbytes(s) for s in self.slots]
        cuda = self.device.type == "cuda"
        for slots in self.slots:
            for slot in slots:
                t = _get(slot).detach().to("cpu")
                _set(slot, t.pin_memory() if cuda else t)
        self.stored = [[_get(s).detach() for s in slots] for slots in self.slots]  # plain tensors, not the Parameters
        self.side = torch.cuda.Stream(self.device) if cuda else None
        self.pending: dict[int, tuple[list[torch.Tensor], object]] = {}
        self.loads = 0
        self.handles = []
        for i, unit in enumerate(units):
            self.handles.append(unit.register_forward_pre_hook(functools.partial(self._before, i)))
            self.handles.append(unit.register_forward_hook(functools.partial(self._after, i)))

    def _copy(self, i: int):
        """Start copying unit ``i`` to the device: (device tensors, CUDA event or None)."""
        if self.ledger is not None:
            self.ledger._account(self.unit_bytes[i])
        if self.side is None:
            return [t.to(self.device, copy=True) for t in self.stored[i]], None
        with torch.cuda.stream(self.side):
            copies = [t.to(self.device, non_blocking=True) for t in self.stored[i]]
            event = torch.cuda.Event()
            event.record(self.side)
        return copies, event

    def _before(self, i: int, module, args):
        copies, event = self.pending.pop(i, None) or self._copy(i)
        if event is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(event)
            for t in copies:
                t.record_stream(main)  # allocated on the side stream, used on the main one
        for slot, t in zip(self.slots[i], copies):
            _set(slot, t)
        self.loads += 1
        if i + 1 < len(self.units) and self.side is not None:  # no wrap-around: nothing stays behind after a pass
            self.pending[i + 1] = self._copy(i + 1)

    def _after(self, i: int, module, args, output):
        for slot, t in zip(self.slots[i], self.stored[i]):
            _set(slot, t)
        if self.ledger is not None:
            self.ledger._account(-self.unit_bytes[i])
        return output

    def remove(self) -> None:
        """Detach the hooks (the modules keep their host copies)."""
        for h in self.handles:
            h.remove()


# -- batches one sample at a time ----------------------------------------------------------------------------

DIT_ARGS = ("latents", "timestep", "text", "text_mask", "image_tokens")


def bind_dit_args(args: tuple, kwargs: dict) -> dict:
    """The DiT's forward arguments by name (``DiT.forward(latents, timestep, text, text_mask, image_tokens)``)."""
    bound = dict(zip(DIT_ARGS, args))
    bound.update(kwargs)
    return bound


def slice_batch(bound: dict, start: int, stop: int) -> dict:
    """Rows ``start:stop`` of every batched DiT argument (None stays None)."""
    return {k: (None if v is None else v[start:stop]) for k, v in bound.items()}


def one_sample_at_a_time(forward):
    """A DiT forward that runs a batch row by row (CFG's cond and uncond in turn: half the activations)."""
    @functools.wraps(forward)
    def run(*args, **kwargs):
        bound = bind_dit_args(args, kwargs)
        b = bound["latents"].shape[0]
        if b == 1:
            return forward(**bound)
        return torch.cat([forward(**slice_batch(bound, i, i + 1)) for i in range(b)])
    return run


# -- applying a plan to a pipeline ---------------------------------------------------------------------------

def _text_module(text_encoder) -> nn.Module | None:
    """The transformers model inside a T5 encoder (streamable by layer), or None."""
    model = getattr(text_encoder, "model", None)
    if isinstance(model, nn.Module) and hasattr(getattr(model, "encoder", None), "block"):
        return model
    return None


def apply_memory_plan(pipe, plan: MemoryPlan) -> Offloader | None:
    """Quantise, offload and set the VAE's decode granularity on ``pipe`` as ``plan`` says; returns the offloader.

    Components should be on the host (CPU) when an offloading plan is applied; they move on first use.
    """
    if plan.quantize == "int8":
        quantize_int8(pipe.dit.blocks)
    if plan.vae_chunk is not None:
        pipe.vae.cfg = pipe.vae.cfg.replace(chunk_latent_frames=plan.vae_chunk)
    pipe.vae_tiles = None if plan.vae_tile is None else (plan.vae_tile, plan.vae_overlap)
    if plan.offload == "none":
        pipe.dit.to(pipe.device)
        pipe.vae.to(pipe.device)
        pipe.text_encoder.to(pipe.device)
        return None

    off = Offloader(pipe.device)
    te, dit, vae = pipe.text_encoder, pipe.dit, pipe.vae
    text_model = _text_module(te)
    streamers = []
    if plan.offload == "block":
        dit_units = list(dit.blocks)
        off.add_module("dit", [dit], skip={id(t) for u in dit_units for t in (*u.parameters(), *u.buffers())})
        streamers.append(BlockStreamer(dit_units, pipe.device, off))
        dit.forward = one_sample_at_a_time(dit.forward)
    else:
        off.add_module("dit", [dit])
    if text_model is not None:
        text_units = list(text_model.encoder.block) if plan.offload == "block" else []
        skip = {id(t) for u in text_units for t in (*u.parameters(), *u.buffers())}
        off.add_module("text", [text_model], skip=skip)
        if text_units:  # the embedding table stays with the shell: the encoder reads its device from it
            streamers.append(BlockStreamer(text_units, pipe.device, off))
    else:  # an encoder that moves itself (the bundled MiniLM): whole-component only
        size = sum(p.numel() * p.element_size() for p in getattr(te, "_model", nn.Module()).parameters())
        off.add("text", lambda: te.to(pipe.device), lambda: te.to(off.host), size)
    off.add_module("vae", [vae])

    dit.register_forward_pre_hook(lambda module, args: off.activate("dit"))
    te.encode = off.before("text", te.encode)
    for method in ("encode_moments", "decode_chunks", "forward"):
        setattr(vae, method, off.before("vae", getattr(vae, method)))
    off.streamers = streamers
    return off


# -- how much memory a request needs -------------------------------------------------------------------------

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
        block_linear = sum(m.weight.numel() for m in block.modules() if type(m) is nn.Linear)  # what int8 stores
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
    # Fit to measured decode peaks (CPU RSS, Wan-layout VAE): ~12 full-resolution tensors per frame in flight,
    # plus ~60 frames' worth for the carried causal-conv caches and the upsampling stages.
    vae_act = (12 * px_frames + 60) * tile_px * c_full * vb
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
    what = f"{cfg.name} at {width}x{height}x{frames} in {str(dtype).removeprefix('torch.')}"
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
