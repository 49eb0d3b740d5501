"""Model folders: kinema's own (``kinema.json`` + safetensors) and diffusers-format Wan 2.1 folders.

kinema folder::

    kinema.json               ModelConfig (vae, dit, text, sampling defaults) + format version
    transformer.safetensors   DiT weights (diffusers WanTransformer3DModel names)
    vae.safetensors           VAE weights (diffusers AutoencoderKLWan names)
    student.safetensors       optional few-step student of the DiT, with student.json (``kinema.weights.student``)

diffusers folder (``WanPipeline.save_pretrained``): ``model_index.json``, ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``; components may also be given alone (``.../transformer``). Only Wan 2.1 is
taken: ``WanPipeline`` / ``WanImageToVideoPipeline``, ``WanTransformer3DModel``, ``AutoencoderKLWan`` (a config
without ``_class_name`` is taken as it is); a Wan 2.2 folder (``transformer_2/``, ``boundary_ratio``) is refused,
and ``read_config`` checks the text encoder's config against the DiT before any weights are read.
Weights: ``diffusion_pytorch_model.safetensors``, a sharded ``.index.json``, or their ``fp16``/``bf16`` variants.
Loading reads safetensors only, so it never runs pickled code.
"""

from __future__ import annotations

import json
import os
import re
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
    if path.name.endswith(".json"):  # a shard index: name.safetensors.index.json, or a variant's .index.fp16.json
        state: dict[str, torch.Tensor] = {}
        for shard in _shards(path):
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


def _shards(index: Path) -> list[str]:
    """The shard file names a ``*.safetensors.index.json`` maps weights to; WeightsError naming it if malformed."""
    if not index.is_file():
        raise WeightsError(f"weights index not found: {index}")
    try:
        weight_map = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{index} is not valid JSON ({e}): a sharded weights index must be a JSON object with "
                           f'"weight_map" (tensor name -> shard file); download it again') from e
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()):
        raise WeightsError(f'{index} has no usable "weight_map" (expected a JSON object mapping each tensor name to '
                           f"a shard file beside it); download it again")
    return sorted(set(weight_map.values()))


# diffusers' names for the weights of a component: the plain ones first, then their save_pretrained(variant=...)
# names (``diffusion_pytorch_model.fp16.safetensors``, ``diffusion_pytorch_model.safetensors.index.fp16.json``).
WEIGHTS_VARIANTS = ("fp16", "bf16")


def weights_names(stem: str) -> tuple[str, ...]:
    """Weights file names of a component whose files are ``stem.safetensors``, in order of preference."""
    names = [f"{stem}.safetensors", f"{stem}.safetensors.index.json"]
    for variant in WEIGHTS_VARIANTS:
        names += [f"{stem}.{variant}.safetensors", f"{stem}.safetensors.index.{variant}.json"]
    return tuple(names)


def _component_weights(folder: Path) -> Path:
    """The weights file (or shard index) inside a diffusers component folder; the plain name is preferred to an
    fp16/bf16 variant's."""
    for name in (*weights_names("diffusion_pytorch_model"), *weights_names("model")):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise WeightsError(f"no safetensors weights in {folder} (expected diffusion_pytorch_model.safetensors, a sharded "
                       f".safetensors.index.json, or their fp16/bf16 variants; found {found}). .bin/.pth files are "
                       f"not loaded: convert them with `kinema convert`.")


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
        d = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightsError(f"missing {path.name} in {path.parent}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise WeightsError(f"{path} must hold a JSON object, got a {type(d).__name__}")
    return d


WAN_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
WAN_TRANSFORMER, WAN_VAE = "WanTransformer3DModel", "AutoencoderKLWan"


def _check_class(path: Path, d: dict, want: str, what: str) -> None:
    """A WeightsError unless the config's ``_class_name`` is ``want`` (a config without one is taken as it is)."""
    cls = d.get("_class_name")
    if cls is not None and cls != want:
        raise WeightsError(f"{path}: _class_name is {cls!r}, not {want}; kinema loads the Wan 2.1 {what} "
                           f"({want}) only")


def _component_config(folder: Path, kind: str) -> DiTConfig | VAEConfig:
    """The DiTConfig ("transformer") or VAEConfig ("vae") of a diffusers component folder's config.json, checked
    to be Wan 2.1's class; a value the config cannot take is a WeightsError naming the file."""
    path = folder / "config.json"
    d = _read_json(path)
    if kind == "transformer":
        _check_class(path, d, WAN_TRANSFORMER, "transformer")
    else:
        _check_class(path, d, WAN_VAE, "VAE")
    try:
        return dit_config_from_diffusers(d) if kind == "transformer" else vae_config_from_diffusers(d)
    except (ConfigError, WeightsError, TypeError, ValueError) as e:  # e.g. "patch_size": 2, "num_layers": "30"
        raise WeightsError(f"{path}: {e}") from e


def _names_component(index: dict, name: str) -> bool:
    """Whether model_index.json lists component ``name`` (diffusers writes ``[null, null]`` for an absent one)."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and any(x is not None for x in entry)


def _check_pipeline(p: Path) -> dict:
    """The model_index.json of diffusers pipeline folder ``p`` ({} without one), refused unless it is a Wan 2.1
    pipeline: another ``_class_name``, or a Wan 2.2 folder (two experts, or expanded timesteps)."""
    path = p / "model_index.json"
    index = _read_json(path) if path.is_file() else {}
    cls = index.get("_class_name")
    if cls is not None and cls not in WAN_PIPELINES:
        raise WeightsError(f"{path}: _class_name is {cls!r}, not a Wan 2.1 pipeline; kinema loads diffusers folders "
                           f"of {' / '.join(WAN_PIPELINES)}")
    signs = [s for s, found in (("a transformer_2/ folder", (p / "transformer_2").is_dir()),
                                (f"transformer_2 {index.get('transformer_2')} in model_index.json",
                                 _names_component(index, "transformer_2")),
                                (f"boundary_ratio {index.get('boundary_ratio')} in model_index.json",
                                 index.get("boundary_ratio") is not None)) if found]
    if signs:
        raise WeightsError(f"{p} is a Wan 2.2 two-expert (A14B) folder ({'; '.join(signs)}): kinema loads Wan 2.1 "
                           f"(one transformer)")
    if index.get("expand_timesteps"):
        raise WeightsError(f"{p} is a Wan 2.2 TI2V folder (expand_timesteps true in model_index.json): kinema loads "
                           f"Wan 2.1")
    return index


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
        _check_pipeline(p)
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
            cfg = ModelConfig.from_dict(d)
        except (ConfigError, TypeError) as e:
            raise WeightsError(f"{p / KINEMA_CONFIG}: {e}") from e
        if cfg.text.path and not Path(cfg.text.path).is_absolute():
            cfg = cfg.replace(text=cfg.text.replace(path=_text_path_in(p, cfg.text.path)))
        return cfg
    if kind != "diffusers":
        raise WeightsError(f"{p} holds a single component ({kind}); give the whole model folder")
    index = _check_pipeline(p)
    dit = _component_config(p / "transformer", "transformer")
    vae = _component_config(p / "vae", "vae")
    _check_text_encoder(p, index, dit)
    # absolute: a kinema folder exported from this config (a fine-tune) must find the text encoder from anywhere
    text = TextConfig(kind="t5", path=str(p.resolve()), max_length=512, dim=dit.text_dim, use_mask=False)
    from ..config import PRESETS  # sampling defaults of the matching Wan preset, if any
    sampling = SamplingDefaults(schedule="wan")  # a diffusers Wan folder samples on Wan's grid and timesteps
    for pre in PRESETS.values():
        if (pre.text.kind == "t5" and pre.dit.num_layers == dit.num_layers and pre.dit.dim == dit.dim
                and pre.dit.image_dim == dit.image_dim):
            sampling = pre.sampling
    resolution = re.search(r"(480|720)p", p.name.lower())  # the I2V 480P and 720P releases share their tensors
    if resolution:
        sampling = sampling.replace(**({"width": 1280, "height": 720} if resolution[1] == "720" else
                                       {"width": 832, "height": 480}))
    scheduler = p / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():  # the folder's own recommended shift wins over the preset's
        shift = _read_json(scheduler).get("flow_shift") or _read_json(scheduler).get("shift")
        if isinstance(shift, (int, float)) and shift > 0:
            sampling = sampling.replace(shift=float(shift))
    try:
        return ModelConfig(name=p.name, vae=vae, dit=dit, text=text, sampling=sampling)
    except ConfigError as e:  # the components do not fit each other (e.g. the DiT's channels and the VAE's z_dim)
        raise WeightsError(f"{p}: {e}") from e


def _text_path_in(folder: Path, path: str) -> str:
    """A kinema folder's relative text-encoder path, made absolute: relative to the model folder; a path that
    exists only relative to the working directory (what exports wrote before paths were stored absolute: a
    fine-tune from ``--init_from wan-t2v``) is taken from there."""
    inside = folder / path
    if not inside.exists() and Path(path).exists():
        return str(Path(path).resolve())
    return str(inside.resolve())


def _check_text_encoder(p: Path, index: dict, dit: DiTConfig) -> None:
    """A WeightsError unless pipeline folder ``p`` holds a usable umT5 text encoder for its DiT: text_encoder/
    (config.json of a t5/umt5 model whose d_model is the DiT's text_dim, safetensors weights) and a tokenizer.

    A folder of configs only (no transformer weights, no text_encoder/, not listed in model_index.json) is not
    checked: it describes a model (sizes, defaults) without being one to run."""
    from ..text.t5 import read_t5_config
    if not ((p / "text_encoder").exists() or _names_component(index, "text_encoder")
            or any((p / "transformer" / n).is_file() for n in (*weights_names("diffusion_pytorch_model"),
                                                               *weights_names("model")))):
        return
    try:
        path, config = read_t5_config(p)
    except FileNotFoundError as e:
        raise WeightsError(str(e)) from e
    d_model = config.get("d_model")
    if d_model != dit.text_dim:
        raise WeightsError(f"{path}: d_model {d_model} does not match the transformer's text_dim {dit.text_dim} "
                           f"({p / 'transformer' / 'config.json'}): the text encoder belongs to another model; "
                           f"use the text_encoder/ released with this one (Wan 2.1: umT5-XXL, d_model 4096)")


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
        cfg = _component_config(comp, "transformer")
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
        cfg, src = _component_config(comp, "vae"), _component_weights(comp)
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
