"""Text encoders behind one interface: prompts -> (tokens (B, L, D), mask (B, L)); null() for CFG."""

from __future__ import annotations

from pathlib import Path

import torch

from kinema.config import TEXT_KINDS, TextConfig
from kinema.text.encoder import TextEncoder, check_prompts, pad_to_length
from kinema.text.minilm import MiniLMEncoder
from kinema.text.t5 import T5Encoder

__all__ = ["TextEncoder", "MiniLMEncoder", "T5Encoder", "build_text_encoder", "check_prompts", "pad_to_length"]


def build_text_encoder(
    cfg: TextConfig,
    path_override: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextEncoder:
    """The encoder ``cfg.kind`` names ("minilm" | "t5"), checked to give ``cfg.dim`` features."""
    path = path_override if path_override is not None else cfg.path
    if cfg.kind == "minilm":
        encoder: TextEncoder = MiniLMEncoder(cfg.max_length, device=device, dtype=dtype, model_dir=path)
    elif cfg.kind == "t5":
        if path is None:
            raise ValueError("TextConfig.kind='t5' needs a folder: set TextConfig.path or pass path_override "
                             "(a diffusers Wan folder with text_encoder/ + tokenizer/)")
        encoder = T5Encoder(path, cfg.max_length, device=device, dtype=dtype)
    else:  # TextConfig already refuses this; kept for configs built without validation
        raise ValueError(f"unknown text encoder kind {cfg.kind!r}; accepted: {TEXT_KINDS}")
    if encoder.dim != cfg.dim:
        from kinema.weights.folder import WeightsError  # a ValueError: a text encoder that does not fit its model
        raise WeightsError(f"TextConfig.dim={cfg.dim} (the text width the model's DiT takes) but the {cfg.kind} "
                           f"encoder at {path or 'the bundled model'} gives {encoder.dim}-dim tokens: that encoder "
                           f"belongs to another model; use the one this model was trained with (for a TextConfig "
                           f"built by hand: set dim={encoder.dim})")
    return encoder
