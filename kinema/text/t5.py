"""T5 / umT5 encoder (Wan 2.1 uses umT5-XXL, 4096 dims) from a local folder through ``transformers``.

Accepted layouts: a diffusers Wan folder (``text_encoder/`` + ``tokenizer/``), or one folder that
holds both the model and the tokenizer files. Nothing is ever downloaded (``local_files_only``),
and weights load from safetensors only. ``transformers`` is imported when an encoder is built, so
``import kinema.text`` stays light.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import torch

from kinema.text.encoder import TextEncoder, check_prompts, pad_to_length, split_device_dtype

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_TOKENIZER = ("tokenizer.json", "spiece.model")
_MODEL_TYPES = ("t5", "umt5")


def _weights_file(model_dir: Path) -> tuple[Path, str | None] | None:
    """(the weights file or shard index in ``model_dir``, its save_pretrained variant or None); the plain names
    are preferred (``kinema.weights.folder.weights_names``, as for the DiT and VAE)."""
    from kinema.weights.folder import WEIGHTS_VARIANTS, weights_names
    for name in weights_names("model"):
        if (model_dir / name).is_file():
            return model_dir / name, next((v for v in WEIGHTS_VARIANTS if f".{v}." in name), None)
    return None


def resolve_t5_folders(path: str | Path) -> tuple[Path, Path]:
    """(model folder, tokenizer folder) inside ``path``; a missing file raises naming what was expected."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"T5 text encoder folder {path} does not exist; expected a diffusers Wan folder "
                                "(text_encoder/ + tokenizer/) or one folder with config.json, weights and tokenizer")
    pipeline = (path / "model_index.json").is_file() or (path / "transformer").is_dir()
    if (path / "text_encoder").is_dir():
        model_dir = path / "text_encoder"
        tokenizer_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else model_dir
    elif pipeline:  # a diffusers pipeline folder keeps its text encoder in text_encoder/, never at its root
        raise FileNotFoundError(f"missing text_encoder/ in {path}: a diffusers Wan folder holds its umT5 text encoder "
                                f"there (config.json + model.safetensors), with tokenizer/ beside it; download the "
                                f"whole folder")
    else:
        model_dir = tokenizer_dir = path
    problems = []
    if not (model_dir / "config.json").is_file():
        problems.append(f"{model_dir / 'config.json'}")
    if _weights_file(model_dir) is None:
        pickles = sorted(p.name for p in model_dir.glob("*") if p.suffix in (".bin", ".pth", ".pt"))
        problems.append(f"{model_dir}/{' or '.join(_WEIGHTS)}" + (
            f" ({', '.join(pickles)} not loaded: weights load from safetensors only, which run no code)"
            if pickles else ""))
    if not any((tokenizer_dir / name).is_file() for name in _TOKENIZER):
        where = tokenizer_dir if tokenizer_dir != model_dir or not pipeline else path / "tokenizer"
        problems.append(f"{where}/{' or '.join(_TOKENIZER)}")
    if problems:
        raise FileNotFoundError(f"T5 text encoder folder {path} is incomplete; missing: {'; '.join(problems)}")
    return model_dir, tokenizer_dir


def read_t5_config(path: str | Path) -> tuple[Path, dict]:
    """(config.json path, its contents) of the T5/umT5 encoder in ``path`` (layouts as ``resolve_t5_folders``),
    checked without loading weights: every file present (FileNotFoundError naming what is missing), the config
    a T5 or umT5 model with an integer d_model (WeightsError naming the file)."""
    from kinema.weights.folder import WeightsError
    model_dir, _ = resolve_t5_folders(path)
    config_path = model_dir / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{config_path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise WeightsError(f"{config_path} must hold a JSON object, got a {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise WeightsError(f"{config_path}: model_type is {model_type!r}; the text encoder must be a T5 or umT5 "
                           f"encoder (model_type one of {_MODEL_TYPES}; Wan 2.1 uses umt5)")
    d_model = config.get("d_model")
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < 1:
        raise WeightsError(f"{config_path}: d_model must be a positive integer, got {d_model!r}")
    return config_path, config


def clean_prompt(prompt: str) -> str:
    """The prompt with HTML entities decoded and whitespace collapsed (Wan's prompt_clean, minus ftfy)."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(prompt))).strip()


class T5Encoder(TextEncoder):
    """T5/umT5 encoder last hidden states: (B, max_length, d_model), zeros past each prompt's length."""

    def __init__(self, path: str | Path, max_length: int = 512, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if max_length < 1:
            raise ValueError(f"T5 max_length must be >= 1, got {max_length}")
        model_dir, tokenizer_dir = resolve_t5_folders(path)
        _, config = read_t5_config(path)
        from safetensors import SafetensorError
        from transformers import AutoTokenizer, T5EncoderModel, UMT5EncoderModel

        from kinema.weights.folder import WeightsError

        model_class = UMT5EncoderModel if config["model_type"] == "umt5" else T5EncoderModel
        self.path = Path(path)
        weights, variant = _weights_file(model_dir)
        try:
            self.model = model_class.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                     dtype=dtype, variant=variant)
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"cannot read the text encoder weights {weights}: {e} (truncated or not a "
                               f"safetensors file?)") from e
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        self.tokenizer.padding_side = "right"  # real tokens first: the zero tail below relies on it
        self.max_length = max_length
        self.dim = self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, device=None, dtype=None) -> T5Encoder:
        device, dtype = split_device_dtype(device, dtype)
        self.model = self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()  # not inference_mode: its tensors cannot be saved for backward by a DiT being trained
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, max_length, d_model), mask (B, max_length)); padding positions are zeros."""
        prompts = [clean_prompt(p) for p in check_prompts(prompts)]
        # Pad to the longest prompt only: with the key mask, real tokens do not see padding, and the
        # zero-extension to max_length below gives Wan's layout without running 512 positions.
        batch = self.tokenizer(prompts, padding="longest", max_length=self.max_length, truncation=True,
                               add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, longest, d_model)
        return pad_to_length(hidden, mask, self.max_length)
