"""Convert original Wan 2.1 checkpoints (the ``Wan-AI/Wan2.1-*`` repos' own layout) into kinema's layout.

kinema's parameter names are diffusers' (``WanTransformer3DModel``, ``AutoencoderKLWan``), so a converted
checkpoint is a diffusers component folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``.

Read top-down: the name tables (original <-> kinema, both directions from one table), the DiT and VAE key
renames, layout detection, config inference from tensor shapes, then ``convert_checkpoint``, which reads
lazily (safetensors headers / mmapped ``.pth``), checks every name and shape against the model before
writing, and streams tensors one at a time into a temporary folder that is renamed into place at the end.
Loading never executes code: ``.pth`` files go through ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..common.io import atomic_write_text
from ..config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, ConfigError, DiTConfig, VAEConfig
from ..dit import DiT
from ..vae import VAE
from .folder import WeightsError, dit_config_to_diffusers, vae_config_to_diffusers

WAN_HEAD_DIM = 128  # every Wan 2.1 DiT (1.3B: 1536 / 12 heads, 14B: 5120 / 40 heads)
WEIGHTS_NAME, CONFIG_NAME = "diffusion_pytorch_model.safetensors", "config.json"
KINDS = ("dit", "vae")
_PREFIX = "model.diffusion_model."  # single-file (ComfyUI-style) DiT checkpoints prefix every key with this


class ConversionError(WeightsError):
    """A checkpoint cannot be converted: missing file, unknown key, wrong shape, unsafe pickle."""


# -- name tables: original module path -> kinema module path (parameter leaf kept) --------------------------

_DIT_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    # I2V: CLIP tokens -> LayerNorm, Linear, GELU, Linear, LayerNorm
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
_DIT_BLOCK = {
    # Wan's norm3 is the (affine) cross-attention norm, kinema's norm2; the FFN norm has no weights in either.
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    **{f"{wan}.{a}": f"{ours}.{b}"
       for wan, ours in (("self_attn", "attn1"), ("cross_attn", "attn2"))
       for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"),
                    ("norm_q", "norm_q"), ("norm_k", "norm_k"))},
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
}
_DIT_TOP_PARAMS = {"head.modulation": "scale_shift_table"}
_DIT_BLOCK_PARAMS = {"modulation": "scale_shift_table"}

# VAE, inside encoder/decoder: a residual block's Sequential indices, the attention block, the resampler.
_VAE_EDGE = {"conv1": "conv_in", "head.0": "norm_out", "head.2": "conv_out"}
_RESNET = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
           "shortcut": "conv_shortcut"}
_ATTN = {"norm": "norm", "to_qkv": "to_qkv", "proj": "proj"}
_RESAMPLE = {"resample.1": "resample.1", "time_conv": "time_conv"}
_MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}  # Wan's middle Sequential(res, attn, res)
_LEAVES = ("weight", "bias", "gamma")


def _inverse(table: dict[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _rename(key: str, modules: Mapping[str, str], params: Mapping[str, str] | None = None) -> str | None:
    """Rename ``module.leaf`` through a module table (or a whole-name table); None if nothing matches."""
    if params and key in params:
        return params[key]
    module, _, leaf = key.rpartition(".")
    return f"{modules[module]}.{leaf}" if leaf in _LEAVES and module in modules else None


def _rename_all(keys, name_of: Callable[[str], str | None], what: str, target: str) -> dict[str, str]:
    """{source key: target key}; raises listing the keys that map to nothing, or that collide."""
    mapping = {k: name_of(k) for k in keys}
    unknown = sorted(k for k, v in mapping.items() if v is None)
    if unknown:
        raise ConversionError(f"{len(unknown)} key(s) of this {what} have no {target} counterpart, e.g. "
                              f"{unknown[:5]}")
    if len(set(mapping.values())) != len(mapping):
        raise ConversionError(f"two keys of this {what} map to the same {target} name (duplicate prefixed keys?)")
    return mapping


def _join(*parts: str | None) -> str | None:
    """Parts joined with dots, or None if any part is None (a name that maps to nothing)."""
    return None if any(p is None for p in parts) else ".".join(parts)


# -- DiT ------------------------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


def _dit_name(key: str, to_wan: bool = False) -> str | None:
    top, top_params, block, block_params = _DIT_TOP, _DIT_TOP_PARAMS, _DIT_BLOCK, _DIT_BLOCK_PARAMS
    if to_wan:
        top, top_params, block, block_params = map(_inverse, (top, top_params, block, block_params))
    if m := _BLOCK_KEY.fullmatch(key):
        return _join("blocks", m[1], _rename(m[2], block, block_params))
    return _rename(key, top, top_params)


def _strip_prefix(key: str) -> str:
    return key[len(_PREFIX):] if key.startswith(_PREFIX) else key


def _dit_rename_map(keys) -> dict[str, str]:
    return _rename_all(keys, lambda k: _dit_name(_strip_prefix(k)), "Wan DiT checkpoint", "kinema")


def convert_wan_dit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout Wan DiT state dict renamed to kinema/diffusers names (same tensors, not copied)."""
    return {new: state_dict[old] for old, new in _dit_rename_map(state_dict).items()}


def to_wan_original_dit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kinema/diffusers DiT state dict renamed to the original Wan 2.1 layout (for export and tests)."""
    names = _rename_all(state_dict, lambda k: _dit_name(k, to_wan=True), "kinema DiT state dict", "Wan 2.1")
    return {new: state_dict[old] for old, new in names.items()}


# -- VAE ------------------------------------------------------------------------------------------------
# Encoder blocks keep their flat index (kinema's down_blocks is flat like Wan's downsamples). The decoder's
# flat upsamples list is grouped: each level holds num_res_blocks + 1 residual blocks then one resampler,
# so flat index n sits at level n // stride, slot n % stride, with stride = num_res_blocks + 2.

_CODER_KEY = re.compile(r"(encoder|decoder)\.(.+)")


def _coder_to_kinema(part: str, key: str, stride: int) -> str | None:
    if (new := _rename(key, _VAE_EDGE)) is not None:
        return new
    if m := re.fullmatch(r"middle\.(\d)\.(.+)", key):
        return _join("mid_block", _MIDDLE.get(m[1]), _rename(m[2], _ATTN if m[1] == "1" else _RESNET))
    if part == "encoder" and (m := re.fullmatch(r"downsamples\.(\d+)\.(.+)", key)):
        return _join("down_blocks", m[1], _rename(m[2], _RESNET | _ATTN | _RESAMPLE))
    if part == "decoder" and (m := re.fullmatch(r"upsamples\.(\d+)\.(.+)", key)):
        level, slot = divmod(int(m[1]), stride)
        if slot < stride - 1:
            return _join("up_blocks", str(level), "resnets", str(slot), _rename(m[2], _RESNET))
        return _join("up_blocks", str(level), "upsamplers.0", _rename(m[2], _RESAMPLE))
    return None


def _coder_to_wan(part: str, key: str, stride: int) -> str | None:
    if (new := _rename(key, _inverse(_VAE_EDGE))) is not None:
        return new
    if m := re.fullmatch(r"mid_block\.(resnets\.\d|attentions\.0)\.(.+)", key):
        table = _ATTN if m[1] == "attentions.0" else _RESNET
        return _join("middle", _inverse(_MIDDLE).get(m[1]), _rename(m[2], _inverse(table)))
    if part == "encoder" and (m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", key)):
        return _join("downsamples", m[1], _rename(m[2], _inverse(_RESNET | _ATTN | _RESAMPLE)))
    if part == "decoder" and (m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)):
        level, slot = int(m[1]), int(m[2])
        if slot < stride - 1:
            return _join("upsamples", str(level * stride + slot), _rename(m[3], _inverse(_RESNET)))
    if part == "decoder" and (m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key)):
        return _join("upsamples", str(int(m[1]) * stride + stride - 1), _rename(m[2], _RESAMPLE))
    return None


def _vae_name(key: str, stride: int, to_wan: bool = False) -> str | None:
    quant = {"conv1": "quant_conv", "conv2": "post_quant_conv"}
    if (new := _rename(key, _inverse(quant) if to_wan else quant)) is not None:
        return new
    if m := _CODER_KEY.fullmatch(key):
        return _join(m[1], (_coder_to_wan if to_wan else _coder_to_kinema)(m[1], m[2], stride))
    return None


def _indices(keys, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over ``keys``."""
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in keys if (m := rx.fullmatch(k))})


def _wan_decoder_stride(keys) -> int:
    """num_res_blocks + 2, read off the original decoder (where its first resampler sits)."""
    if any(re.fullmatch(r"decoder\.upsamples\.\d+\.to_qkv\.weight", k) for k in keys):
        raise ConversionError("this VAE has attention blocks in its decoder (attn_scales); kinema's VAE, like "
                              "diffusers' AutoencoderKLWan, supports the Wan 2.1 decoder without them")
    resamplers = _indices(keys, r"decoder\.upsamples\.(\d+)\.resample\.1\.weight")
    blocks = _indices(keys, r"decoder\.upsamples\.(\d+)\..+")
    return resamplers[0] + 1 if resamplers else len(blocks) + 1


def _vae_rename_map(keys) -> dict[str, str]:
    keys = list(keys)
    stride = _wan_decoder_stride(keys)
    return _rename_all(keys, lambda k: _vae_name(k, stride), "Wan VAE checkpoint", "kinema")


def convert_wan_vae(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout Wan VAE state dict (``Wan2.1_VAE.pth``) renamed to kinema/diffusers names."""
    return {new: state_dict[old] for old, new in _vae_rename_map(state_dict).items()}


def to_wan_original_vae(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A kinema/diffusers VAE state dict renamed to the original Wan 2.1 layout (for export and tests)."""
    stride = len(_indices(state_dict, r"decoder\.up_blocks\.0\.resnets\.(\d+)\..+")) + 1
    names = _rename_all(state_dict, lambda k: _vae_name(k, stride, to_wan=True), "kinema VAE state dict", "Wan 2.1")
    return {new: state_dict[old] for old, new in names.items()}


# -- what a state dict is -------------------------------------------------------------------------------

_MARKERS = {
    "wan-original": re.compile(r"(head|text_embedding|time_embedding|(encoder|decoder)\.(middle|head)|"
                               r"encoder\.downsamples|decoder\.upsamples|blocks\.\d+\.(self|cross)_attn)\..+"),
    "diffusers": re.compile(r"(condition_embedder|proj_out|scale_shift_table|quant_conv|post_quant_conv|"
                            r"(encoder|decoder)\.(mid_block|conv_in|conv_out)|blocks\.\d+\.attn[12])(\..+)?"),
}


def detect_layout(state_dict: Mapping[str, object]) -> str:
    """"wan-original" or "diffusers" (kinema's own names), from the keys; raises if neither or both."""
    found = [name for name, rx in _MARKERS.items() if any(rx.fullmatch(_strip_prefix(k)) for k in state_dict)]
    if len(found) != 1:
        raise ConversionError(f"cannot tell the layout of this checkpoint ({len(state_dict)} keys, e.g. "
                              f"{sorted(state_dict)[:4]}): expected original Wan 2.1 keys "
                              f"(blocks.0.self_attn.q.weight, encoder.downsamples.0.residual.0.gamma) or diffusers "
                              f"keys (condition_embedder..., encoder.down_blocks...), found markers of "
                              f"{found or 'neither'}")
    return found[0]


def detect_kind(state_dict: Mapping[str, object]) -> str:
    """"dit" or "vae", from the keys; raises if it is neither."""
    keys = [_strip_prefix(k) for k in state_dict]
    if "patch_embedding.weight" in keys:
        return "dit"
    if any(k.startswith(("encoder.", "decoder.")) for k in keys):
        return "vae"
    raise ConversionError(f"this checkpoint is neither a Wan DiT (no patch_embedding.weight) nor a Wan VAE "
                          f"(no encoder./decoder. keys); keys start with {sorted(keys)[:4]}")


def _in_kinema_names(state_dict: Mapping[str, torch.Tensor], kind: str) -> Mapping[str, torch.Tensor]:
    if detect_layout(state_dict) == "diffusers":
        return {_strip_prefix(k): v for k, v in state_dict.items()}
    return convert_wan_dit(state_dict) if kind == "dit" else convert_wan_vae(state_dict)


# -- configs from tensor shapes --------------------------------------------------------------------------

def _shape(state: Mapping[str, torch.Tensor], key: str, what: str) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"not a complete Wan {what}: missing {key!r}")
    return tuple(state[key].shape)


def _make(cls, **fields):
    """``cls(**fields)``, with a config check failure reported as a conversion error."""
    try:
        return cls(**fields)
    except ConfigError as e:
        raise ConversionError(f"the checkpoint's shapes describe an invalid {cls.__name__}: {e}") from e


def infer_dit_config(state_dict: Mapping[str, torch.Tensor], attention_head_dim: int = WAN_HEAD_DIM) -> DiTConfig:
    """The DiTConfig that fits a DiT state dict (either layout); heads = width / ``attention_head_dim``."""
    s = _in_kinema_names(state_dict, "dit")
    dim, in_channels, *patch = _shape(s, "patch_embedding.weight", "DiT")
    if dim % attention_head_dim:
        raise ConversionError(f"DiT width {dim} is not a multiple of attention_head_dim={attention_head_dim}; "
                              f"pass the head size this model was trained with")
    layers = _indices(s, r"blocks\.(\d+)\..+")
    if layers != list(range(len(layers))) or not layers:
        raise ConversionError(f"DiT blocks must be numbered 0..n-1, found {layers[:8]}"
                              f"{'...' if len(layers) > 8 else ''}")
    has_image = "condition_embedder.image_embedder.norm1.weight" in s
    return _make(
        DiTConfig,
        patch_size=tuple(patch),
        num_attention_heads=dim // attention_head_dim,
        attention_head_dim=attention_head_dim,
        in_channels=in_channels,
        out_channels=_shape(s, "proj_out.weight", "DiT")[0] // math.prod(patch),
        text_dim=_shape(s, "condition_embedder.text_embedder.linear_1.weight", "DiT")[1],
        freq_dim=_shape(s, "condition_embedder.time_embedder.linear_1.weight", "DiT")[1],
        ffn_dim=_shape(s, "blocks.0.ffn.net.0.proj.weight", "DiT")[0],
        num_layers=len(layers),
        cross_attn_norm="blocks.0.norm2.weight" in s,
        qk_norm="rms_norm_across_heads" if "blocks.0.attn1.norm_q.weight" in s else None,
        image_dim=_shape(s, "condition_embedder.image_embedder.norm1.weight", "DiT")[0] if has_image else None,
        added_kv_proj_dim=_shape(s, "blocks.0.attn2.add_k_proj.weight", "DiT")[1] if has_image else None,
    )


def infer_vae_config(state_dict: Mapping[str, torch.Tensor]) -> VAEConfig:
    """The VAEConfig that fits a VAE state dict (either layout).

    Latent statistics are not stored in the weights: a 16-channel latent gets Wan 2.1's, any other the identity.
    """
    s = _in_kinema_names(state_dict, "vae")
    base_dim, in_channels = _shape(s, "encoder.conv_in.weight", "VAE")[:2]
    z_dim = _shape(s, "post_quant_conv.weight", "VAE")[0]
    out_channels, decoder_width = _shape(s, "decoder.conv_out.weight", "VAE")[:2]
    resamplers = _indices(s, r"encoder\.down_blocks\.(\d+)\.resample\.1\.weight")
    resnets = _indices(s, r"encoder\.down_blocks\.(\d+)\.conv1\.weight")
    attentions = _indices(s, r"encoder\.down_blocks\.(\d+)\.to_qkv\.weight")
    bounds = [*resamplers, 1 + max(resnets + attentions + resamplers, default=-1)]
    levels = [[n for n in resnets if lo < n < hi] for lo, hi in zip([-1, *resamplers], bounds)]
    if not all(levels) or len({len(level) for level in levels}) != 1:
        raise ConversionError(f"VAE encoder levels have uneven residual block counts {[len(x) for x in levels]}")
    widths = [_shape(s, f"encoder.down_blocks.{level[-1]}.conv2.weight", "VAE")[0] for level in levels]
    if any(w % base_dim for w in widths):
        raise ConversionError(f"VAE encoder widths {widths} are not multiples of its base width {base_dim}")
    dim_mult = tuple(w // base_dim for w in widths)
    decoder_base = decoder_width // dim_mult[0]
    return _make(
        VAEConfig,
        base_dim=base_dim,
        decoder_base_dim=None if decoder_base == base_dim else decoder_base,
        z_dim=z_dim,
        dim_mult=dim_mult,
        num_res_blocks=len(levels[0]),
        attn_scales=tuple(sorted({0.5 ** sum(n > r for r in resamplers) for n in attentions}, reverse=True)),
        temporal_downsample=tuple(f"encoder.down_blocks.{n}.time_conv.weight" in s for n in resamplers),
        latents_mean=WAN21_LATENTS_MEAN if z_dim == 16 else (0.0,) * z_dim,
        latents_std=WAN21_LATENTS_STD if z_dim == 16 else (1.0,) * z_dim,
        in_channels=in_channels,
        out_channels=out_channels,
    )


# -- reading checkpoints lazily ---------------------------------------------------------------------------

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_TORCH_EXTS, _ST_EXT = (".pth", ".pt", ".bin"), ".safetensors"


def _checkpoint_files(src: Path) -> list[Path]:
    if not src.exists():
        raise ConversionError(f"checkpoint not found: {src}")
    if src.is_file():
        if src.suffix not in (_ST_EXT, *_TORCH_EXTS):
            raise ConversionError(f"unsupported checkpoint file {src.name}: expected {_ST_EXT} or "
                                  f"{'/'.join(_TORCH_EXTS)}")
        return [src]
    shards = sorted(src.glob(f"*{_ST_EXT}")) or sorted(p for p in src.iterdir() if p.suffix in _TORCH_EXTS)
    if not shards:
        raise ConversionError(f"no {_ST_EXT} or {'/'.join(_TORCH_EXTS)} files in folder {src}")
    return shards


def _load_torch(path: Path) -> Mapping[str, torch.Tensor]:
    """A ``.pth`` state dict, memory-mapped when the file allows; never unpickles anything but tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise ConversionError(f"refusing {path}: it is not a plain tensor checkpoint, and loading it would need "
                              f"unpickling arbitrary objects, which can execute code ({str(e).splitlines()[0]}). "
                              f"Re-save its state dict as safetensors where you trust the file.") from e
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as e:
        raise ConversionError(f"cannot read {path} as a torch checkpoint: {e}") from e
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)] if isinstance(state, Mapping) else ["<root>"]
    if bad:
        raise ConversionError(f"{path} is not a flat state dict of tensors (non-tensor entries: {bad[:5]})")
    return state


def _open_lazy(files: list[Path]) -> tuple[dict[str, torch.Tensor], Callable[[str], torch.Tensor]]:
    """(meta tensors with every key's shape and dtype, a loader for one key's real tensor)."""
    metas: dict[str, torch.Tensor] = {}
    loaders: dict[str, Callable[[], torch.Tensor]] = {}
    for path in files:
        if path.suffix == _ST_EXT:
            try:
                handle = safe_open(str(path), framework="pt")
                entries = {k: (handle.get_slice(k).get_shape(), _ST_DTYPES[handle.get_slice(k).get_dtype()])
                           for k in handle.keys()}
            except (SafetensorError, OSError, KeyError) as e:
                raise ConversionError(f"cannot read {path} as safetensors (truncated or another format?): {e}") from e
            get = lambda k, h=handle: h.get_tensor(k)  # noqa: E731
        else:
            state = _load_torch(path)
            entries = {k: (list(v.shape), v.dtype) for k, v in state.items()}
            get = lambda k, s=state: s[k]  # noqa: E731
        for key, (shape, dtype) in entries.items():
            if key in metas:
                raise ConversionError(f"key {key!r} appears in more than one shard (second: {path.name})")
            metas[key] = torch.empty(shape, dtype=dtype, device="meta")
            loaders[key] = lambda k=key, g=get: g(k)
    return metas, lambda key: loaders[key]()


# -- writing ------------------------------------------------------------------------------------------------

def _write_safetensors(path: Path, layout: dict[str, torch.Tensor], load: Callable[[str], torch.Tensor]) -> None:
    """Write a safetensors file one tensor at a time (peak memory: one tensor). ``layout``: name -> meta tensor."""
    assert sys.byteorder == "little", "safetensors stores little-endian data"
    st_name = {v: k for k, v in _ST_DTYPES.items()}
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, meta in layout.items():
        size = meta.numel() * meta.element_size()
        header[name] = {"dtype": st_name[meta.dtype], "shape": list(meta.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, meta in layout.items():
            tensor = load(name)
            if tensor.shape != meta.shape or tensor.dtype != meta.dtype:
                raise ConversionError(f"{name}: read {tuple(tensor.shape)} {tensor.dtype}, header promised "
                                      f"{tuple(meta.shape)} {meta.dtype}")
            f.write(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())


def _check_against_model(state: Mapping[str, torch.Tensor], model: torch.nn.Module, source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [f"{len(missing)} missing, e.g. {missing[:5]}" if missing else "",
                f"{len(unexpected)} unexpected, e.g. {unexpected[:5]}" if unexpected else "",
                f"{len(wrong)} wrong shape(s), e.g. {wrong[:3]}" if wrong else ""]
    if any(problems):
        raise ConversionError(f"{source} does not fit the model its shapes describe: "
                              + "; ".join(p for p in problems if p))


@contextlib.contextmanager
def _temporary_folder(dst: Path, overwrite: bool):
    """Yield a fresh folder beside ``dst``; it is renamed onto ``dst`` on success and removed on error."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists() and overwrite:  # the old folder steps aside only once the new one is complete
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_checkpoint(src: str | os.PathLike, dst_folder: str | os.PathLike, kind: str = "auto",
                       attention_head_dim: int = WAN_HEAD_DIM, dtype: torch.dtype | None = None,
                       overwrite: bool = False) -> Path:
    """Convert a Wan 2.1 checkpoint (file, or folder of shards) into a diffusers component folder; returns it.

    ``kind`` is "dit", "vae" or "auto"; ``dtype`` casts floating tensors (e.g. ``torch.bfloat16``); an
    existing ``dst_folder`` is replaced only with ``overwrite``. Diffusers-layout input is repackaged as is.
    """
    if kind not in (*KINDS, "auto"):
        raise ConversionError(f"kind must be one of {(*KINDS, 'auto')}, got {kind!r}")
    src, dst = Path(src), Path(dst_folder)
    if dst.exists() and not overwrite:
        raise ConversionError(f"destination {dst} already exists; choose another folder or pass overwrite=True")
    metas, load = _open_lazy(_checkpoint_files(src))
    found = detect_kind(metas)
    if kind not in ("auto", found):
        raise ConversionError(f"asked to convert a {kind}, but {src} holds a {found}")
    if detect_layout(metas) == "wan-original":
        names = _dit_rename_map(metas) if found == "dit" else _vae_rename_map(metas)
    else:
        names = {k: _strip_prefix(k) for k in metas}
    state = {new: metas[old] for old, new in names.items()}  # meta tensors: shapes only, nothing read yet
    if found == "dit":
        cfg = infer_dit_config(state, attention_head_dim)
        config = dit_config_to_diffusers(cfg)
        with torch.device("meta"):
            model = DiT(cfg)
    else:
        cfg = infer_vae_config(state)
        config = {**vae_config_to_diffusers(cfg), "in_channels": cfg.in_channels, "out_channels": cfg.out_channels}
        with torch.device("meta"):
            model = VAE(cfg)
    _check_against_model(state, model, src)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    source_of = {new: old for old, new in names.items()}
    layout = {name: cast(state[name]) for name in model.state_dict()}
    with _temporary_folder(dst, overwrite) as tmp:
        _write_safetensors(tmp / WEIGHTS_NAME, layout, lambda name: cast(load(source_of[name])))
        atomic_write_text(tmp / CONFIG_NAME, json.dumps(config, indent=2))
    return dst
