"""Model folders: kinema's own (``kinema.json`` + safetensors) and diffusers-format Wan 2.1 folders.

kinema folder::

    kinema.json               ModelConfig (vae, dit, text, sampling defaults) + format version
    transformer.safetensors   DiT weights (diffusers WanTransformer3DModel names)
    vae.safetensors           VAE weights (diffusers AutoencoderKLWan names)
    student.safetensors       optional few-step student of the DiT, with student.json (``kinema.weights.student``)

diffusers folder (``WanPipeline.save_pretrained``): ``model_index.json``, ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``; components may also be given alone (``.../transformer``).
Loading reads safetensors only, so it never runs pickled code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..common.io import atomic_path, atomic_write_text
from ..config import ConfigError, DiTConfig, ModelConfig, SamplingDefaults, TextConfig, VAEConfig
from ..dit import DiT
from ..dit.model import keeps_fp32
from ..vae import VAE

FORMAT_VERSION = 1
KINEMA_CONFIG = "kinema.json"
DIT_FILE, VAE_FILE = "transformer.safetensors", "vae.safetensors"


class WeightsError(ValueError):
    """A weights folder is missing, incomplete, truncated or of the wrong shape."""


# -- reading tensors -------------------------------------------------------------------------------------

def read_safetensors(path: Path, dtype: torch.dtype | None = None,
                     keep_fp32: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, or of a sharded set named by a ``*.safetensors.index.json``.

    With ``dtype``, floating-point tensors are cast one at a time as they are read, so peak memory is the
    weights in ``dtype`` plus one tensor (a 14B fp32 checkpoint loads into bf16 without 56 GB of RAM);
    those whose name ``keep_fp32`` accepts are read as fp32 instead.
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(read_safetensors(path.parent / shard, dtype, keep_fp32))
        return state
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if dtype is None:
            return load_file(str(path))
        out = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                want = torch.float32 if keep_fp32 is not None and keep_fp32(key) else dtype
                out[key] = t.to(want) if t.is_floating_point() else t
        return out
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read {path}: {e} (truncated or not a safetensors file?)") from e


def _component_weights(folder: Path) -> Path:
    """The weights file (or shard index) inside a diffusers component folder."""
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                 "model.safetensors", "model.safetensors.index.json"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise WeightsError(f"no safetensors weights in {folder} (expected diffusion_pytorch_model.safetensors "
                       f"or a sharded .index.json; found {found}). .bin/.pth files are not loaded: convert them "
                       f"with `kinema convert`.")


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load ``state`` strictly, naming missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        if wrong:
            k, got, want = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: file has {got}, model expects {want}")
        raise WeightsError(f"weights in {source} do not fit the model config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=assign)


# -- diffusers configs -----------------------------------------------------------------------------------

def dit_config_from_diffusers(d: dict) -> DiTConfig:
    """DiTConfig from a diffusers ``WanTransformer3DModel`` config.json dict."""
    keys = {f: d[f] for f in ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                             "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps",
                             "image_dim", "added_kv_proj_dim", "rope_max_seq_len") if f in d}
    keys["patch_size"] = tuple(keys.get("patch_size", (1, 2, 2)))
    return DiTConfig(**keys)


def dit_config_to_diffusers(cfg: DiTConfig) -> dict:
    d = cfg.to_dict()
    return {"_class_name": "WanTransformer3DModel", **d, "patch_size": list(cfg.patch_size)}


def vae_config_from_diffusers(d: dict) -> VAEConfig:
    """VAEConfig from a diffusers ``AutoencoderKLWan`` config.json dict."""
    if d.get("is_residual") or d.get("patch_size"):
        raise WeightsError("this is a Wan 2.2 VAE (residual / patchified); kinema loads the Wan 2.1 VAE")
    keys = {"base_dim": d.get("base_dim", 96), "decoder_base_dim": d.get("decoder_base_dim"), "z_dim": d.get("z_dim", 16),
            "dim_mult": tuple(d.get("dim_mult", (1, 2, 4, 4))), "num_res_blocks": d.get("num_res_blocks", 2),
            "attn_scales": tuple(d.get("attn_scales", ())),
            "temporal_downsample": tuple(d.get("temperal_downsample", (False, True, True)))}
    if "latents_mean" in d:
        keys["latents_mean"], keys["latents_std"] = tuple(d["latents_mean"]), tuple(d["latents_std"])
    return VAEConfig(**keys)


def vae_config_to_diffusers(cfg: VAEConfig) -> dict:
    return {"_class_name": "AutoencoderKLWan", "base_dim": cfg.base_dim, "decoder_base_dim": cfg.decoder_base_dim,
            "z_dim": cfg.z_dim, "dim_mult": list(cfg.dim_mult), "num_res_blocks": cfg.num_res_blocks,
            "attn_scales": list(cfg.attn_scales), "temperal_downsample": list(cfg.temporal_downsample),
            "latents_mean": list(cfg.latents_mean), "latents_std": list(cfg.latents_std)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsError(f"missing {path.name} in {path.parent}") from e
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON: {e}") from e


# -- folder kinds --------------------------------------------------------------------------------------

def folder_kind(path: str | os.PathLike) -> str:
    """"kinema" | "diffusers" (a whole pipeline) | "diffusers-transformer" | "diffusers-vae"; raises otherwise."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"model path does not exist: {p}")
    if not p.is_dir():
        raise WeightsError(f"model path must be a folder, got a file: {p}")
    if (p / KINEMA_CONFIG).is_file():
        return "kinema"
    if (p / "model_index.json").is_file() or (p / "transformer" / "config.json").is_file():
        return "diffusers"
    if (p / "config.json").is_file():
        cls = _read_json(p / "config.json").get("_class_name", "")
        if cls == "WanTransformer3DModel":
            return "diffusers-transformer"
        if cls == "AutoencoderKLWan":
            return "diffusers-vae"
    raise WeightsError(f"{p} is not a model folder: expected {KINEMA_CONFIG} (kinema), model_index.json (diffusers "
                       f"Wan pipeline), or a component folder whose config.json names WanTransformer3DModel / "
                       f"AutoencoderKLWan")


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a kinema or diffusers folder (no weights are read)."""
    p = Path(path)
    kind = folder_kind(p)
    if kind == "kinema":
        d = _read_json(p / KINEMA_CONFIG)
        d.pop("format_version", None)
        try:
            return ModelConfig.from_dict(d)
        except (ConfigError, TypeError) as e:
            raise WeightsError(f"{p / KINEMA_CONFIG}: {e}") from e
    if kind != "diffusers":
        raise WeightsError(f"{p} holds a single component ({kind}); give the whole model folder")
    dit = dit_config_from_diffusers(_read_json(p / "transformer" / "config.json"))
    vae = vae_config_from_diffusers(_read_json(p / "vae" / "config.json"))
    text = TextConfig(kind="t5", path=str(p), max_length=512, dim=dit.text_dim, use_mask=False)
    from ..config import PRESETS  # sampling defaults of the matching Wan preset, if any
    sampling = SamplingDefaults(schedule="wan")  # a diffusers Wan folder samples on Wan's grid and timesteps
    for pre in PRESETS.values():
        if (pre.text.kind == "t5" and pre.dit.num_layers == dit.num_layers and pre.dit.dim == dit.dim
                and pre.dit.image_dim == dit.image_dim):
            sampling = pre.sampling
    scheduler = p / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():  # the folder's own recommended shift wins over the preset's
        shift = _read_json(scheduler).get("flow_shift") or _read_json(scheduler).get("shift")
        if isinstance(shift, (int, float)) and shift > 0:
            sampling = sampling.replace(shift=float(shift))
    return ModelConfig(name=p.name, vae=vae, dit=dit, text=text, sampling=sampling)


def load_dit(path: str | os.PathLike, dtype: torch.dtype = torch.float32, weights: str = DIT_FILE) -> DiT:
    """A DiT from a kinema folder, a diffusers pipeline folder, or a diffusers ``transformer/`` folder."""
    p = Path(path)
    kind = folder_kind(p)
    if kind == "kinema":
        cfg, src = read_config(p).dit, p / weights
    else:
        comp = p / "transformer" if kind == "diffusers" else p
        if kind == "diffusers-vae":
            raise WeightsError(f"{p} is a VAE folder, not a transformer")
        cfg = dit_config_from_diffusers(_read_json(comp / "config.json"))
        src = _component_weights(comp)
    with torch.device("meta"):  # no memory until the weights arrive, already in their final dtype
        model = DiT(cfg)
    load_into(model, read_safetensors(src, dtype, keeps_fp32), str(src), assign=True)
    return model.to_precision(dtype).eval()


def load_vae(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> VAE:
    """A VAE from a kinema folder, a diffusers pipeline folder, or a diffusers ``vae/`` folder."""
    p = Path(path)
    kind = folder_kind(p)
    if kind == "kinema":
        cfg, src = read_config(p).vae, p / VAE_FILE
    else:
        if kind == "diffusers-transformer":
            raise WeightsError(f"{p} is a transformer folder, not a VAE")
        comp = p / "vae" if kind == "diffusers" else p
        cfg, src = vae_config_from_diffusers(_read_json(comp / "config.json")), _component_weights(comp)
    model = VAE(cfg)
    load_into(model, read_safetensors(src, dtype), str(src))
    return model.to(dtype).eval()


def save_model(path: str | os.PathLike, cfg: ModelConfig, dit: DiT | None = None, vae: VAE | None = None,
               extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write a kinema model folder; each file atomically, the config last (so a folder with a config is whole)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    meta = {"format": "kinema", "format_version": str(FORMAT_VERSION)}
    parts = {DIT_FILE: dit, VAE_FILE: vae}
    for name, module in parts.items():
        if module is not None:
            _save_tensors(p / name, module.state_dict(), meta)
    for name, tensors in (extra or {}).items():
        _save_tensors(p / name, tensors, meta)
    atomic_write_text(p / KINEMA_CONFIG, json.dumps({"format_version": FORMAT_VERSION, **cfg.to_dict()}, indent=2))
    return p


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)


def save_diffusers_component(path: str | os.PathLike, module: DiT | VAE) -> Path:
    """Write a diffusers-style component folder (config.json + diffusion_pytorch_model.safetensors)."""
    p = Path(path)
    cfg = dit_config_to_diffusers(module.cfg) if isinstance(module, DiT) else vae_config_to_diffusers(module.cfg)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent if p.parent.exists() else None))
    try:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / "diffusion_pytorch_model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        if p.exists():
            shutil.rmtree(p)
        os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p
