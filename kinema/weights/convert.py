"""Convert original Wan 2.1 checkpoints (the ``Wan-AI/Wan2.1-*`` repos' own layout) into kinema's layout.

kinema's parameter names are diffusers' (``WanTransformer3DModel``, ``AutoencoderKLWan``), so a converted
checkpoint is a diffusers component folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``.

Read top-down (the name tables and key renames are ``kinema.weights.wan_names``): layout detection,
config inference from tensor shapes, then ``convert_checkpoint``, which reads lazily (safetensors headers /
mmapped ``.pth``), checks every name and shape against the model before writing, and streams tensors one at a time into a temporary folder that is renamed into place at the end.
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
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..common.io import atomic_write_text
from ..config import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, ConfigError, DiTConfig, VAEConfig
from ..dit import DiT
from ..vae import VAE
from .folder import KINEMA_CONFIG, dit_config_to_diffusers, vae_config_to_diffusers
from .wan_names import (ConversionError, _dit_rename_map, _indices, _strip_prefix, _vae_rename_map, convert_wan_dit,
                        convert_wan_vae, to_wan_original_dit, to_wan_original_vae)

__all__ = ["ConversionError", "convert_checkpoint", "convert_wan_dit", "convert_wan_vae", "detect_kind", "detect_layout",
           "infer_dit_config", "infer_vae_config", "to_wan_original_dit", "to_wan_original_vae"]

WAN_HEAD_DIM = 128  # every Wan 2.1 DiT (1.3B: 1536 / 12 heads, 14B: 5120 / 40 heads)
WEIGHTS_NAME, CONFIG_NAME = "diffusion_pytorch_model.safetensors", "config.json"
KINDS = ("dit", "vae")


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
                              f"pass the head size this model was trained with (`kinema convert "
                              f"--attention-head-dim N`, attention_head_dim=N in Python), or put the model's "
                              f"config.json (with num_heads) beside the checkpoint")
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


# -- a config.json beside the checkpoint ---------------------------------------------------------------------

# Widths of the released Wan DiTs, all with 128-wide heads (2.1 1.3B, 2.2 TI2V-5B, 2.1 14B): no need to ask.
_WAN_WIDTHS = (1536, 3072, 5120)
# config.json key -> the DiTConfig field it gives: an original Wan config ("_class_name": "WanModel") and a
# diffusers one ("WanTransformer3DModel").
_ORIGINAL_KEYS = {"dim": "dim", "num_layers": "num_layers", "ffn_dim": "ffn_dim", "in_dim": "in_channels",
                  "out_dim": "out_channels", "freq_dim": "freq_dim", "text_dim": "text_dim"}
_DIFFUSERS_KEYS = {"num_layers": "num_layers", "ffn_dim": "ffn_dim", "in_channels": "in_channels",
                   "out_channels": "out_channels", "freq_dim": "freq_dim", "text_dim": "text_dim"}
_CONFIG_CLASSES = ("WanModel", "WanTransformer3DModel")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def dit_config_beside(src: Path) -> tuple[Path, dict] | None:
    """(path, contents) of the DiT config.json beside checkpoint ``src`` (in the folder, or next to the file):
    an original Wan config (dim, num_heads, ffn_dim, num_layers, in_dim, out_dim, ...) or a diffusers one
    (num_attention_heads, attention_head_dim, ...). None without one, or when it describes something else (a
    ``_class_name`` other than WanModel / WanTransformer3DModel, no head keys)."""
    path = (src if src.is_dir() else src.parent) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path} (the config.json beside the checkpoint, read for its head count) is not "
                              f"valid JSON: {e}; fix or remove it") from e
    if not isinstance(d, dict) or d.get("_class_name", _CONFIG_CLASSES[0]) not in _CONFIG_CLASSES:
        return None
    if not any(k in d for k in ("num_heads", "dim", "num_attention_heads", "attention_head_dim")):
        return None
    return path, d


def _config_head_dim(path: Path, d: dict) -> int | None:
    """The attention head width a DiT config.json gives (dim / num_heads, or attention_head_dim); None if it
    gives none; a ConversionError naming the file when its values do not make one."""
    if "attention_head_dim" in d or "num_attention_heads" in d:  # diffusers
        head_dim = d.get("attention_head_dim", WAN_HEAD_DIM)  # diffusers' default, as from_pretrained reads it
        if not _positive_int(head_dim) or not _positive_int(d.get("num_attention_heads", 1)):
            raise ConversionError(f"{path}: attention_head_dim {head_dim!r} / num_attention_heads "
                                  f"{d.get('num_attention_heads')!r} must be positive integers")
        return head_dim
    heads, dim = d.get("num_heads"), d.get("dim")
    if heads is None:
        return None
    if not _positive_int(heads) or not _positive_int(dim) or dim % heads:
        raise ConversionError(f"{path}: num_heads {heads!r} must be a positive integer that divides dim {dim!r}")
    return dim // heads


def _check_config_beside(cfg: DiTConfig, path: Path, d: dict, src: Path) -> None:
    """A ConversionError when the config.json beside ``src`` describes another model than its tensors."""
    diffusers = "attention_head_dim" in d or "num_attention_heads" in d
    facts = dict(_DIFFUSERS_KEYS if diffusers else _ORIGINAL_KEYS)
    if diffusers:
        facts["num_attention_heads"] = "num_attention_heads"
    else:
        facts["num_heads"] = "num_attention_heads"
    wrong = [f"{key} {d[key]!r} there, {getattr(cfg, field)} in the checkpoint" for key, field in facts.items()
             if key in d and d[key] != getattr(cfg, field)]
    model_type = d.get("model_type")  # original configs: "t2v", "i2v", "flf2v"; image inputs come with i2v only
    if model_type in ("t2v", "i2v", "flf2v") and (model_type == "t2v") != (cfg.image_dim is None):
        wrong.append(f"model_type {model_type!r} there, "
                     f"{'image inputs (i2v)' if cfg.image_dim else 'no image inputs (t2v)'} in the checkpoint")
    if wrong:
        raise ConversionError(f"{path} describes another model than {src}: {'; '.join(wrong)}; fix or remove that "
                              f"config.json")


# -- reading checkpoints lazily ---------------------------------------------------------------------------

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_TORCH_EXTS, _ST_EXT = (".pth", ".pt", ".bin"), ".safetensors"


def _checkpoint_files(src: Path) -> list[Path]:
    if not src.exists():
        raise ConversionError(f"checkpoint not found: {src}")
    if src.is_dir():
        _refuse_model_folder(src)
    if src.is_file():
        if src.suffix not in (_ST_EXT, *_TORCH_EXTS):
            raise ConversionError(f"unsupported checkpoint file {src.name}: expected {_ST_EXT} or "
                                  f"{'/'.join(_TORCH_EXTS)}")
        return [src]
    shards = sorted(src.glob(f"*{_ST_EXT}")) or sorted(p for p in src.iterdir() if p.suffix in _TORCH_EXTS)
    if not shards:
        raise ConversionError(f"no {_ST_EXT} or {'/'.join(_TORCH_EXTS)} files in folder {src}")
    return shards


def _refuse_model_folder(src: Path) -> None:
    """A ConversionError when ``src`` is a model folder kinema loads as it is (kinema's own, or a diffusers Wan
    pipeline): there is nothing to convert, and its shards would only be reported as clashing."""
    if (src / KINEMA_CONFIG).is_file():
        raise ConversionError(f"{src} is already a kinema model folder (it has {KINEMA_CONFIG}); nothing to convert "
                              f"(load it directly with --model {src})")
    if (src / "model_index.json").is_file():
        raise ConversionError(f"{src} is a diffusers pipeline folder (it has model_index.json), which kinema loads as "
                              f"it is; nothing to convert (load it directly with --model {src})")


_ZIP_MAGIC = b"PK\x03\x04"  # a local file header: how every zip archive, so torch.save's, starts


def _load_torch(path: Path) -> Mapping[str, torch.Tensor]:
    """A ``.pth`` state dict, memory-mapped when the file allows; never unpickles anything but tensors."""
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):  # the central directory at the end is missing
        raise ConversionError(f"cannot read {path} as a torch checkpoint: it starts as a zip archive (torch.save) but "
                              f"is truncated or damaged (its end, the archive's index, is missing; "
                              f"{path.stat().st_size} bytes): download or copy it again")
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":  # neither torch.save's zip nor a (legacy) pickle
        raise ConversionError(f"cannot read {path} as a torch checkpoint: it is neither a zip archive (torch.save) "
                              f"nor a pickle")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise ConversionError(f"refusing {path}: it is not a plain tensor checkpoint, and loading it would need "
                              f"unpickling arbitrary objects, which can execute code ({str(e).splitlines()[0]}). "
                              f"Re-save its state dict as safetensors where you trust the file.") from e
    except Exception as e:  # garbage makes the tensor-only unpickler fail any which way (KeyError, IndexError, ...)
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__  # a bare KeyError says only '105'
        raise ConversionError(f"cannot read {path} as a torch checkpoint: it is truncated or not one ({detail})") from e
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


# What a conversion writes into its folder: all that --overwrite may replace.
_OUTPUT_NAMES = {WEIGHTS_NAME, CONFIG_NAME}


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """A ConversionError when ``dst`` exists and may not be replaced: without ``overwrite``; with it, when ``dst``
    is not a folder, holds the source, or holds anything a conversion does not write (replacing it deletes it)."""
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite:
        raise ConversionError(f"destination {dst} already exists; choose another folder, or replace it with "
                              f"--overwrite (overwrite=True in Python)")
    if dst.is_symlink() or not dst.is_dir():
        raise ConversionError(f"destination {dst} is {'a link' if dst.is_symlink() else 'a file'}, not a folder; "
                              f"--overwrite replaces only a folder a conversion wrote: choose another destination")
    src_real, dst_real = src.resolve(), dst.resolve()
    if src_real == dst_real or dst_real in src_real.parents:
        raise ConversionError(f"destination {dst} holds the checkpoint being converted ({src}); --overwrite would "
                              f"delete it: choose another destination")
    others = sorted(p.name for p in dst.iterdir() if p.name not in _OUTPUT_NAMES)
    if others:
        raise ConversionError(f"destination {dst} holds {len(others)} entr{'y' if len(others) == 1 else 'ies'} a "
                              f"conversion does not write ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
                              f"--overwrite replaces only a folder of {CONFIG_NAME} and {WEIGHTS_NAME} (a previous "
                              f"conversion): remove them yourself or choose another destination")


@contextlib.contextmanager
def _temporary_folder(dst: Path, overwrite: bool):
    """Yield a fresh folder beside ``dst``; it is renamed onto ``dst`` on success and removed on error.

    With ``overwrite`` an existing ``dst`` steps aside (renamed) only once the new folder is complete, and comes
    back if the new one cannot take its place: ``dst`` is never left half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if dst.exists() and overwrite:
            old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
            os.replace(dst, old)  # onto the empty folder just made: a fresh name no other run holds
        os.replace(tmp, dst)
    except BaseException:
        if old is not None and not dst.exists():
            os.replace(old, dst)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _head_dim(src: Path, state: Mapping[str, torch.Tensor], given: int | None,
              beside: tuple[Path, dict] | None) -> int:
    """The DiT's attention head width: ``given``, or that of ``beside`` (the config.json beside ``src``; the two
    must agree), or Wan 2.1's 128 (warned about when the width is not one of the released Wan models')."""
    from_config = _config_head_dim(*beside) if beside is not None else None
    width = _shape(state, "patch_embedding.weight", "DiT")[0]
    if given is not None and from_config is not None and given != from_config:
        path, d = beside
        said = (f"attention_head_dim {from_config}" if "attention_head_dim" in d or "num_attention_heads" in d
                else f"dim {d['dim']} / num_heads {d['num_heads']} = {from_config}")
        raise ConversionError(f"attention_head_dim={given} contradicts {path} ({said}); leave out "
                              f"--attention-head-dim (attention_head_dim= in Python) to use that config's, or fix "
                              f"the config.json")
    if given is not None:
        return given
    if from_config is not None:
        if width % from_config:
            raise ConversionError(f"{beside[0]} gives attention heads {from_config} wide, which do not divide the "
                                  f"checkpoint's width {width}: that config.json describes another model than "
                                  f"{src}; fix or remove it")
        return from_config
    if width not in _WAN_WIDTHS and width % WAN_HEAD_DIM == 0:
        heads = width // WAN_HEAD_DIM
        warnings.warn(f"no config.json with num_heads beside {src}: assuming Wan's {WAN_HEAD_DIM}-wide attention "
                      f"heads ({heads} head{'s' if heads > 1 else ''} for width {width}); if this model was trained "
                      f"with another head size, convert again with --attention-head-dim N", stacklevel=3)
    return WAN_HEAD_DIM


def convert_checkpoint(src: str | os.PathLike, dst_folder: str | os.PathLike, kind: str = "auto",
                       attention_head_dim: int | None = None, dtype: torch.dtype | None = None,
                       overwrite: bool = False) -> Path:
    """Convert a Wan 2.1 checkpoint (file, or folder of shards) into a diffusers component folder; returns it.

    ``kind`` is "dit", "vae" or "auto"; ``dtype`` casts floating tensors (e.g. ``torch.bfloat16``); an
    existing ``dst_folder`` is replaced only with ``overwrite``, and only when it holds nothing but a
    conversion's output (it is swapped for the new folder once that is complete, never left half-written).
    Diffusers-layout input is repackaged as is; a kinema or diffusers pipeline folder is refused (load it as is).

    A DiT's head count is not in its tensors: it comes from ``attention_head_dim``, else from the config.json
    beside ``src`` (the original repos' ``dim`` / ``num_heads``, or a diffusers ``attention_head_dim``), else
    Wan 2.1's 128 (with a warning when the width is not a released Wan model's). A config.json that contradicts
    ``attention_head_dim`` or the tensors is refused.
    """
    if kind not in (*KINDS, "auto"):
        raise ConversionError(f"kind must be one of {(*KINDS, 'auto')}, got {kind!r}")
    if attention_head_dim is not None and not _positive_int(attention_head_dim):
        raise ConversionError(f"attention_head_dim must be a positive integer, got {attention_head_dim!r}")
    src, dst = Path(src), Path(dst_folder)
    files = _checkpoint_files(src)
    _check_destination(src, dst, overwrite)
    metas, load = _open_lazy(files)
    found = detect_kind(metas)
    if kind not in ("auto", found):
        raise ConversionError(f"asked to convert a {kind}, but {src} holds a {found}")
    if detect_layout(metas) == "wan-original":
        names = _dit_rename_map(metas) if found == "dit" else _vae_rename_map(metas)
    else:
        names = {k: _strip_prefix(k) for k in metas}
    state = {new: metas[old] for old, new in names.items()}  # meta tensors: shapes only, nothing read yet
    if found == "dit":
        beside = dit_config_beside(src)
        cfg = infer_dit_config(state, _head_dim(src, state, attention_head_dim, beside))
        if beside is not None:
            _check_config_beside(cfg, *beside, src)
        config = dit_config_to_diffusers(cfg)
        with torch.device("meta"):
            model = DiT(cfg)
    else:
        if attention_head_dim is not None:
            raise ConversionError(f"attention_head_dim applies to a DiT, but {src} holds a VAE; leave it out")
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
