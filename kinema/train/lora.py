"""LoRA: low-rank adapters on a model's ``nn.Linear`` layers, for fine-tuning and at inference.

A targeted layer becomes a ``LoRALinear``: the same weight and bias Parameters (never modified) plus
named adapters, ``y = x W^T + b + sum_a scale_a * B_a(A_a(x))``. Removing every adapter puts back a
plain ``nn.Linear`` holding the very same Parameters, so the base model returns bit for bit.

File format (what ``save_lora`` writes and ``kinema generate --lora FILE[:scale]`` reads): safetensors
in the diffusers/peft layout for Wan, ``transformer.<module>.lora_A.weight`` (rank, in) and
``transformer.<module>.lora_B.weight`` (out, rank), with alpha / rank already folded into lora_B (so the
file's own scale is 1, as diffusers assumes); rank, alpha and targets are in the header metadata.
``load_lora_state`` also reads peft keys with an adapter name (``lora_A.default.weight``), kohya-style
``lora_down`` / ``lora_up`` + ``.alpha``, ``diff_b`` bias deltas, and original-Wan module names
(``diffusion_model.blocks.0.self_attn.q``).
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from kinema.common.io import atomic_path
from kinema.nn import Linear


class LoRALinear(nn.Linear):
    """``nn.Linear`` sharing a base layer's Parameters, plus named low-rank adapters."""

    def __init__(self, base: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.scales: dict[str, float] = {}

    def add_adapter(self, name: str, rank: int, scale: float, bias: bool = False) -> None:
        """A new adapter: A (rank, in) like nn.Linear's init, B zero, so the layer starts unchanged."""
        w = self.weight
        self.lora_A[name] = nn.Linear(self.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B[name] = nn.Linear(rank, self.out_features, bias=bias, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.lora_B[name].weight)
        if bias:
            nn.init.zeros_(self.lora_B[name].bias)
        self.scales[name] = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        for name, down in self.lora_A.items():
            y = y + self.lora_B[name](down(x)) * self.scales[name]
        return y


def _plain(layer: LoRALinear) -> nn.Linear:
    """A plain linear layer (kinema's ``Linear``: nn.Linear with a faster CPU path) holding ``layer``'s own weight
    and bias Parameters."""
    plain = Linear.__new__(Linear)
    nn.Module.__init__(plain)
    plain.in_features, plain.out_features = layer.in_features, layer.out_features
    plain.weight = layer.weight
    plain.bias = layer.bias
    return plain


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _wrap(model: nn.Module, name: str) -> LoRALinear:
    layer = model.get_submodule(name)
    if isinstance(layer, LoRALinear):
        return layer
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"LoRA target {name!r} is a {type(layer).__name__}, not nn.Linear")
    wrapped = LoRALinear(layer)
    _set_module(model, name, wrapped)
    return wrapped


def match_targets(model: nn.Module, patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the nn.Linear modules matching any fnmatch pattern; a pattern that matches none is an error."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in n]
    out: list[str] = []
    for pattern in patterns:
        hits = [n for n in linears if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            examples = ", ".join(linears[:6])
            raise ValueError(f"lora.targets pattern {pattern!r} matches no nn.Linear; names look like: {examples}, ...")
        out.extend(h for h in hits if h not in out)
    return out


def add_lora(model: nn.Module, rank: int, alpha: float | None, targets: tuple[str, ...] | list[str],
             name: str = "default", generator: torch.Generator | None = None) -> list[str]:
    """Wrap the matching linears with a fresh trainable adapter; returns the wrapped module names."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    names = match_targets(model, targets)
    scale = (alpha if alpha is not None else rank) / rank
    for module_name in names:
        layer = _wrap(model, module_name)
        layer.add_adapter(name, rank, scale)
        w = layer.lora_A[name].weight
        bound = 1 / math.sqrt(layer.in_features)  # nn.Linear's default (kaiming-uniform, a = sqrt(5))
        with torch.no_grad():
            w.copy_(torch.rand(w.shape, generator=generator, dtype=torch.float32).mul_(2 * bound).sub_(bound).to(w))
    return names


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter parameters by name (what LoRA training optimizes)."""
    return {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def remove_lora(model: nn.Module, name: str | None = None) -> int:
    """Drop adapter ``name`` (None = all); layers left without adapters become plain nn.Linear. Returns layers touched."""
    touched = 0
    for module_name, layer in list(model.named_modules()):
        if not isinstance(layer, LoRALinear):
            continue
        names = list(layer.lora_A) if name is None else [n for n in layer.lora_A if n == name]
        for n in names:
            del layer.lora_A[n], layer.lora_B[n]
            del layer.scales[n]
        touched += bool(names)
        if not layer.lora_A:
            _set_module(model, module_name, _plain(layer))
    return touched


# ---------------------------------------------------------------------------------------------
# Files


def file_tensors(adapters: dict[str, torch.Tensor], scale: float, prefix: str = "transformer.") -> dict[str, torch.Tensor]:
    """Adapter tensors named ``<module>.lora_A.<name>.weight`` -> file keys, with ``scale`` folded into lora_B."""
    out = {}
    pattern = re.compile(r"^(.*)\.lora_([AB])\.[^.]+\.(weight|bias)$")
    for key, t in adapters.items():
        m = pattern.match(key)
        if not m:
            raise ValueError(f"not an adapter parameter name: {key!r}")
        module, which, kind = m.groups()
        t = t.detach().float().cpu()
        out[f"{prefix}{module}.lora_{which}.{kind}"] = (t * scale if which == "B" else t).contiguous()
    return out


def save_lora(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write file tensors (see ``file_tensors``) as a LoRA safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "kinema-lora", **(metadata or {})})
    return path


# original Wan module names -> kinema (= diffusers) names
_WAN_MODULES = [
    (r"blocks\.(\d+)\.self_attn\.([qkv])$", lambda m: f"blocks.{m[1]}.attn1.to_{m[2]}"),
    (r"blocks\.(\d+)\.self_attn\.o$", lambda m: f"blocks.{m[1]}.attn1.to_out.0"),
    (r"blocks\.(\d+)\.cross_attn\.([qkv])$", lambda m: f"blocks.{m[1]}.attn2.to_{m[2]}"),
    (r"blocks\.(\d+)\.cross_attn\.o$", lambda m: f"blocks.{m[1]}.attn2.to_out.0"),
    (r"blocks\.(\d+)\.cross_attn\.(k|v)_img$", lambda m: f"blocks.{m[1]}.attn2.add_{m[2]}_proj"),
    (r"blocks\.(\d+)\.ffn\.0$", lambda m: f"blocks.{m[1]}.ffn.net.0.proj"),
    (r"blocks\.(\d+)\.ffn\.2$", lambda m: f"blocks.{m[1]}.ffn.net.2"),
    (r"text_embedding\.0$", lambda m: "condition_embedder.text_embedder.linear_1"),
    (r"text_embedding\.2$", lambda m: "condition_embedder.text_embedder.linear_2"),
    (r"time_embedding\.0$", lambda m: "condition_embedder.time_embedder.linear_1"),
    (r"time_embedding\.2$", lambda m: "condition_embedder.time_embedder.linear_2"),
    (r"time_projection\.1$", lambda m: "condition_embedder.time_proj"),
    (r"head\.head$", lambda m: "proj_out"),
    (r"img_emb\.proj\.1$", lambda m: "condition_embedder.image_embedder.ff.net.0.proj"),
    (r"img_emb\.proj\.3$", lambda m: "condition_embedder.image_embedder.ff.net.2"),
]
_PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.", "model.")
_PARTS = [  # (suffix regex, part)
    (re.compile(r"\.(?:lora_A|lora_down)(?:\.[^.]+)?\.weight$"), "A"),
    (re.compile(r"\.(?:lora_B|lora_up)(?:\.[^.]+)?\.weight$"), "B"),
    (re.compile(r"\.(?:lora_B(?:\.[^.]+)?\.bias|diff_b)$"), "bias"),
    (re.compile(r"\.alpha$"), "alpha"),
]


# kohya / musubi-tuner names: "lora_unet_" + the original Wan module name with its dots as underscores
_KOHYA_MODULES = [
    (r"blocks_(\d+)_(self_attn|cross_attn)_(q|k|v|o|k_img|v_img)$", lambda m: f"blocks.{m[1]}.{m[2]}.{m[3]}"),
    (r"blocks_(\d+)_ffn_(\d+)$", lambda m: f"blocks.{m[1]}.ffn.{m[2]}"),
    (r"(text_embedding|time_embedding|time_projection)_(\d+)$", lambda m: f"{m[1]}.{m[2]}"),
    (r"head_head$", lambda m: "head.head"),
    (r"img_emb_proj_(\d+)$", lambda m: f"img_emb.proj.{m[1]}"),
]


def _module_name(raw: str) -> str:
    if raw.startswith("lora_unet_"):
        raw = raw[len("lora_unet_"):]
        for pattern, to_wan in _KOHYA_MODULES:
            m = re.match(pattern, raw)
            if m:
                raw = to_wan(m)
                break
    for prefix in _PREFIXES:
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
            break
    for pattern, to_ours in _WAN_MODULES:
        m = re.match(pattern, raw)
        if m:
            return to_ours(m)
    return raw


def load_lora_state(path: str | Path) -> dict[str, dict[str, torch.Tensor | float]]:
    """Module name -> {"A": (r, in), "B": (out, r), "bias": (out,) | absent, "scale": alpha / r} from any supported file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error type: a truncated, corrupt or non-safetensors file
        raise ValueError(f"cannot read {path} as a safetensors LoRA file ({e})") from None
    modules: dict[str, dict] = {}
    unknown = []
    for key, t in tensors.items():
        for pattern, part in _PARTS:
            m = pattern.search(key)
            if m:
                modules.setdefault(_module_name(key[:m.start()]), {})[part] = t
                break
        else:
            if not (key.endswith((".diff", ".diff_b")) and "norm" in key):  # norm diffs are zeros in practice
                unknown.append(key)
    if unknown:
        raise ValueError(f"{path}: keys that are not LoRA weights: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    for name, parts in modules.items():
        if "A" not in parts or "B" not in parts:
            raise ValueError(f"{path}: module {name!r} has {sorted(parts)}, needs both lora_A/down and lora_B/up")
        rank = parts["A"].shape[0]
        alpha = parts.pop("alpha", None)
        parts["scale"] = float(alpha) / rank if alpha is not None else 1.0
    if not modules:
        raise ValueError(f"{path} holds no LoRA weights")
    return modules


def check_lora_fits(model: nn.Module, path: str | Path, state: dict | None = None) -> None:
    """ValueError unless every layer the LoRA in ``path`` adapts is a linear layer of ``model`` of its shape (a model
    on the meta device will do: only names and shapes are read)."""
    state = load_lora_state(path) if state is None else state
    modules = dict(model.named_modules())
    for module_name, parts in state.items():
        layer = modules.get(module_name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"{path}: LoRA for {module_name!r}, which the model "
                             f"{'does not have' if layer is None else 'has as ' + type(layer).__name__}")
        a, b = parts["A"], parts["B"]
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or b.shape[1] != a.shape[0]:
            raise ValueError(f"{path}: LoRA for {module_name!r} has A {tuple(a.shape)} / B {tuple(b.shape)}; the layer "
                             f"is {layer.in_features} -> {layer.out_features}")


def apply_lora(model: nn.Module, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
    """Add the LoRA in ``path`` to ``model`` at ``scale`` (unmerged); returns the adapter name."""
    state = load_lora_state(path)
    existing = {n for m in model.modules() if isinstance(m, LoRALinear) for n in m.lora_A}
    name = name or next(f"lora{i}" for i in range(len(existing) + 1) if f"lora{i}" not in existing)
    check_lora_fits(model, path, state)
    for module_name, parts in state.items():
        layer = _wrap(model, module_name)
        layer.add_adapter(name, parts["A"].shape[0], parts["scale"] * scale, bias="bias" in parts)
        with torch.no_grad():
            layer.lora_A[name].weight.copy_(parts["A"])
            layer.lora_B[name].weight.copy_(parts["B"])
            if "bias" in parts:
                layer.lora_B[name].bias.copy_(parts["bias"])
        layer.lora_A[name].requires_grad_(False)
        layer.lora_B[name].requires_grad_(False)
    return name
