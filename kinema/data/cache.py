"""The latent cache: VAE latents + text tokens, precomputed, so training never runs the VAE or text encoder.

Format version 1, a folder::

    manifest.json            {"format": "kinema-latent-cache", "version": 1,
                              "latent_channels": C, "text_dim": D, "null_text": "null.safetensors" | null,
                              "info": {...free-form: the VAE / text encoder that made it...},
                              "samples": [{"id": str, "shard": "shard-00000.safetensors",
                                           "shape": [C, F, H, W], "caption": str}, ...]}
    shard-*.safetensors      per sample id: "<id>.latents" float (C, F, H, W) normalised VAE latents,
                             "<id>.text_tokens" float (L, D), "<id>.text_mask" bool (L,)  (L may vary)
    null.safetensors         optional: "text_tokens" (L, D), "text_mask" (L,) of the empty prompt ""
                             (caption dropout uses it; without it the text encoder is built once)

Shard file names are free (the manifest names each sample's shard). Every file is written to a
temporary name and renamed, the manifest last: a folder with a manifest is a whole cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kinema.common.io import atomic_path, atomic_write_text

CACHE_FORMAT, CACHE_VERSION, MANIFEST, NULL_TEXT = "kinema-latent-cache", 1, "manifest.json", "null.safetensors"


class CacheError(ValueError):
    """A latent cache is missing, of another format, or does not fit the model; the message says which."""


# ---------------------------------------------------------------------------------------------
# Writing


def write_shard(path: str | os.PathLike, samples: Iterable[dict]) -> list[dict]:
    """Write samples (id, latents (C, F, H, W), text_tokens (L, D), text_mask (L,), caption) to one shard file;
    returns their manifest entries."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for s in samples:
        sid = str(s["id"])
        if f"{sid}.latents" in tensors:
            raise CacheError(f"duplicate sample id {sid!r}")
        latents, tokens = s["latents"].detach().cpu().contiguous(), s["text_tokens"].detach().cpu().contiguous()
        mask = s["text_mask"].detach().cpu().bool().contiguous()
        if latents.ndim != 4 or tokens.ndim != 2 or mask.shape != tokens.shape[:1]:
            raise CacheError(f"sample {sid!r}: latents must be (C, F, H, W), text_tokens (L, D) and text_mask (L,), "
                             f"got {tuple(latents.shape)}, {tuple(tokens.shape)}, {tuple(mask.shape)}")
        tensors[f"{sid}.latents"], tensors[f"{sid}.text_tokens"], tensors[f"{sid}.text_mask"] = latents, tokens, mask
        entries.append({"id": sid, "shard": path.name, "shape": list(latents.shape), "caption": s.get("caption", ""),
                        "text_dim": tokens.shape[1]})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return entries


def write_null_text(root: str | os.PathLike, tokens: torch.Tensor, mask: torch.Tensor) -> str:
    """Write the empty prompt's (tokens (L, D), mask (L,)); returns the file name for the manifest."""
    with atomic_path(Path(root) / NULL_TEXT) as tmp:
        save_file({"text_tokens": tokens.detach().cpu().contiguous(),
                   "text_mask": mask.detach().cpu().bool().contiguous()}, str(tmp))
    return NULL_TEXT


def write_manifest(root: str | os.PathLike, entries: list[dict], null_text: str | None = None,
                   info: dict | None = None) -> Path:
    """Write manifest.json for shard entries (from ``write_shard``), checking ids are unique and sizes agree."""
    if not entries:
        raise CacheError("a latent cache needs at least one sample")
    channels, text_dim = entries[0]["shape"][0], entries[0]["text_dim"]
    seen: set[str] = set()
    for e in entries:
        if e["id"] in seen:
            raise CacheError(f"duplicate sample id {e['id']!r}")
        seen.add(e["id"])
        if e["shape"][0] != channels or e["text_dim"] != text_dim:
            raise CacheError(f"sample {e['id']!r}: every sample needs {channels} latent channels and {text_dim}-dim "
                             f"tokens, got {e['shape'][0]} and {e['text_dim']}")
    manifest = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "latent_channels": channels, "text_dim": text_dim,
                "null_text": null_text, "info": info or {},
                "samples": [{"id": e["id"], "shard": e["shard"], "shape": e["shape"], "caption": e["caption"]}
                            for e in entries]}
    path = Path(root) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=1))
    return path


def write_latent_cache(root: str | os.PathLike, samples: Iterable[dict],
                       null_text: tuple[torch.Tensor, torch.Tensor] | None = None, shard_size: int = 256,
                       info: dict | None = None) -> Path:
    """Write a latent cache folder from dicts (id, latents (C, F, H, W), text_tokens (L, D), text_mask (L,), caption)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    batch: list[dict] = []
    for s in samples:
        batch.append(s)
        if len(batch) == shard_size:
            entries += write_shard(root / f"shard-{len(entries) // shard_size:05d}.safetensors", batch)
            batch = []
    if batch:  # every shard before this one is full
        entries += write_shard(root / f"shard-{len(entries) // shard_size:05d}.safetensors", batch)
    null_name = write_null_text(root, *null_text) if null_text is not None else None
    write_manifest(root, entries, null_name, info)
    return root


# ---------------------------------------------------------------------------------------------
# Reading


def read_manifest(root: str | os.PathLike, latent_channels: int | None = None, text_dim: int | None = None) -> dict:
    """The checked manifest of the cache at ``root`` (optionally checked against the model's sizes)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        hint = "it does not exist" if not root.exists() else f"no {MANIFEST} in it"
        raise CacheError(f"{str(root)!r} is not a latent cache: {hint} (make one with `kinema data encode`)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
        raise CacheError(f"{path}: format {manifest.get('format')!r} v{manifest.get('version')!r}; "
                         f"expected {CACHE_FORMAT!r} v{CACHE_VERSION}")
    for name, want in (("latent_channels", latent_channels), ("text_dim", text_dim)):
        if want is not None and manifest.get(name) != want:
            raise CacheError(f"{path}: {name} is {manifest.get(name)}, the model needs {want}")
    if not manifest.get("samples"):
        raise CacheError(f"latent cache {str(root)!r} holds no samples")
    return manifest


class LatentCacheReader:
    """The samples of a latent cache, loaded one at a time: ``cache[i]`` is a dict of tensors."""

    def __init__(self, root: str | os.PathLike, latent_channels: int | None = None, text_dim: int | None = None):
        self.root = Path(root)
        self.manifest = read_manifest(self.root, latent_channels, text_dim)
        self.samples: list[dict] = self.manifest["samples"]
        files = {s["shard"] for s in self.samples} | ({self.manifest["null_text"]} if self.manifest.get("null_text") else set())
        for shard in sorted(files):  # headers only: a truncated file fails here, not as every sample of it fails
            try:
                with safe_open(str(self.root / shard), framework="pt"):
                    pass
            except Exception as err:  # noqa: BLE001 -- safetensors' own error type, or the OS's
                raise CacheError(f"{shard} of {str(self.root)!r} cannot be read ({err}): it is missing, "
                                 f"truncated or damaged; make the cache again (delete its folder, then run `kinema "
                                 f"data encode` or `kinema data world` again)") from None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        """{"id", "caption", "latents" float (C, F, H, W), "text_tokens" float (L, D), "text_mask" bool (L,)}."""
        s = self.samples[index]
        with safe_open(str(self.root / s["shard"]), framework="pt") as f:
            latents = f.get_tensor(f"{s['id']}.latents")
            tokens, mask = f.get_tensor(f"{s['id']}.text_tokens"), f.get_tensor(f"{s['id']}.text_mask").bool()
        if tuple(latents.shape) != tuple(s["shape"]):
            raise CacheError(f"sample {s['id']!r}: latents have shape {tuple(latents.shape)}, "
                             f"the manifest says {tuple(s['shape'])}")
        if not (torch.isfinite(latents).all() and torch.isfinite(tokens).all()):
            raise CacheError(f"sample {s['id']!r}: non-finite values in latents or text tokens")
        return {"id": s["id"], "caption": s.get("caption", ""), "latents": latents.float(),
                "text_tokens": tokens.float(), "text_mask": mask}

    def null_text(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(tokens (L, D), mask (L,)) of the empty prompt, if the cache stores them."""
        name = self.manifest.get("null_text")
        if not name:
            return None
        with safe_open(str(self.root / name), framework="pt") as f:
            return f.get_tensor("text_tokens"), f.get_tensor("text_mask").bool()
