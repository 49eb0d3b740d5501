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
pipeline's components, so the model files stay unaware of it. ``kinema.infer.memory`` predicts the
peak of each mode and refuses a request that cannot fit.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.linear import plain_linear

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

    @property
    def weights_as_loaded(self) -> bool:
        """Whether the weights stay where they were loaded, in their stored precision (no offloading, no int8):
        what a compiled graph, which holds them, needs."""
        return (self.offload, self.quantize) == ("none", "none")

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
        if plain_linear(child):
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
