"""Parameter names: the original Wan 2.1 layout <-> kinema's (diffusers') layout, for the DiT and the VAE.

One table per part serves both directions. ``convert_wan_dit`` / ``convert_wan_vae`` rename an original
state dict to kinema's names, ``to_wan_original_dit`` / ``to_wan_original_vae`` go back; an unknown key is a
``ConversionError`` naming it. ``kinema.weights.convert`` reads and writes the checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from .folder import WeightsError

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
