"""What a run trains and with what: the model config, the network, the frozen VAE, the text encoder.

Fresh weights come from a preset (with ``model_config`` overrides); fine-tuning starts from any model
folder ``kinema.weights`` loads (kinema or diffusers Wan 2.1). The VAE that encodes clips (DiT runs)
comes from ``vae_from``, else ``init_from``, else the preset, freshly initialised (useful for tests
only; the trainer says so).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kinema.config import ConfigError, ModelConfig, preset
from kinema.dit.model import DiT
from kinema.train.config import TrainConfig
from kinema.vae.model import VAE


def _merge(base: dict, changes: dict, where: str = "model_config") -> dict:
    out = dict(base)
    for key, value in changes.items():
        if key not in base:
            raise ConfigError(f"unknown key {where}.{key}; accepted: {', '.join(sorted(base))}")
        out[key] = _merge(base[key], value, f"{where}.{key}") if isinstance(value, dict) and isinstance(base[key], dict) else value
    return out


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The ModelConfig of the run: its start folder's (``init_from`` / teacher), or the preset's with overrides."""
    if cfg.init_source:
        from kinema.weights import read_config

        return read_config(cfg.init_source)
    base = preset(cfg.preset)
    if not cfg.model_config:
        return base
    return ModelConfig.from_dict(_merge(base.to_dict(), cfg.model_config))


@dataclass
class Models:
    """The trained network plus what feeds it."""

    model_cfg: ModelConfig
    network: nn.Module  # the DiT or the VAE, whichever ``cfg.model`` names
    vae: VAE | None  # frozen encoder/decoder for DiT runs (None when nothing needs pixels)
    blocks: nn.ModuleList | None  # repeated layers for per-block checkpointing / sharding
    random_vae: bool = False  # the VAE is freshly initialised (no vae_from / init_from): fine for tests only


def build_models(cfg: TrainConfig, device: torch.device, needs_vae: bool) -> Models:
    """Networks on ``device`` in fp32 (master weights); fresh ones initialised from the global torch seed."""
    model_cfg = model_config(cfg)
    if cfg.model == "vae":
        if cfg.init_from:
            from kinema.weights import load_vae

            vae = load_vae(cfg.init_from)
        else:
            vae = VAE(model_cfg.vae)
        if cfg.vae_loss.decoder_only:  # the latents stay fixed: no gradient (nor backward pass) for the encoder
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
        return Models(model_cfg, vae.to(device).train(), None, None)

    if cfg.distill is not None and cfg.distill.continue_student:
        from kinema.train.distill import start_student

        dit = start_student(cfg)
    elif cfg.init_source:
        from kinema.weights import load_dit

        dit = load_dit(cfg.init_source)
    else:
        dit = DiT(model_cfg.dit)
    vae, random_vae = None, False
    source = cfg.vae_from or cfg.init_source
    if source:  # loaded when clips need encoding or samples decoding; its config describes the latents either way
        from kinema.weights import load_vae, read_config

        vae = load_vae(source) if needs_vae else None
        vae_cfg = vae.cfg if vae is not None else read_config(source).vae
        if vae_cfg.z_dim != model_cfg.vae.z_dim:
            raise ConfigError(f"vae_from {source!r} has z_dim {vae_cfg.z_dim}; the DiT needs {model_cfg.vae.z_dim}: "
                              f"fine-tune the model that VAE belongs to (--init_from {source}), or pick a preset whose "
                              f"VAE has z_dim {vae_cfg.z_dim}")
        model_cfg = model_cfg.replace(vae=vae_cfg)
    elif needs_vae:
        vae, random_vae = VAE(model_cfg.vae), True
    if vae is not None:
        vae = vae.to(device).eval().requires_grad_(False)
    return Models(model_cfg, dit.to(device).train(), vae, dit.blocks, random_vae)
