"""The spacetime-patch Diffusion Transformer, parameter-compatible with Wan 2.1 (diffusers ``WanTransformer3DModel``).

Read top-down: attention, the block (self-attention with 3D RoPE, cross-attention to text, FFN, all
modulated by the timestep through adaLN), then the model (patch embedding, condition embedding, blocks,
modulated output head), then initialisation.
"""

from __future__ import annotations

import contextlib
import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..common.threads import fixed_threads
from ..config import DiTConfig
from ..nn import (FP32LayerNorm, Linear, RMSNorm, apply_rope, attention, gelu_tanh, linear_gelu_tanh, rope_3d,
                  timestep_features)
from .patchify import patch_grid, patchify, unpatchify


HALF = (torch.bfloat16, torch.float16)
FP32_MODULES = ("time_embedder", "scale_shift_table", "norm2")  # diffusers' _keep_in_fp32_modules, less its norms
                                                                # without weights and the rope with no parameters


def keeps_fp32(name: str) -> bool:
    """Whether the parameter ``name`` stays fp32 when the DiT runs in half precision."""
    return any(part in FP32_MODULES for part in name.split("."))


class TensorMemo:
    """Values kept per tensor object (its identity, not its contents), a few at a time: for inputs a caller
    passes again unchanged, step after step (``DiT.reusing_text``). A tensor freed and another made at the same
    address is not mistaken for it (a weak reference tells them apart)."""

    def __init__(self, size: int = 4):
        self.size, self._items = size, {}

    def get(self, t: torch.Tensor):
        hit = self._items.get(id(t))
        return hit[1] if hit is not None and hit[0]() is t else None

    def put(self, t: torch.Tensor, value):
        if len(self._items) >= self.size:
            self._items.clear()
        self._items[id(t)] = (weakref.ref(t), value)
        return value


class Attention(nn.Module):
    """Multi-head attention with q/k RMS-normed across heads; self-attention gets RoPE, cross-attention a key mask."""

    def __init__(self, dim: int, heads: int, eps: float, qk_norm: bool = True, image_kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.to_q = Linear(dim, dim)
        self.to_k = Linear(dim, dim)
        self.to_v = Linear(dim, dim)
        self.to_out = nn.ModuleList([Linear(dim, dim), nn.Dropout(0.0)])
        self.norm_q = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        if image_kv_dim is not None:  # Wan I2V: CLIP image tokens get their own keys and values
            self.add_k_proj = Linear(image_kv_dim, dim)
            self.add_v_proj = Linear(image_kv_dim, dim)
            self.norm_added_k = RMSNorm(dim, eps=eps)
        self.context_memo: TensorMemo | None = None  # set by DiT.reusing_text(): keys and values per context

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, N, D) -> (B, heads, N, d)

    def _rotated(self, x: torch.Tensor, norm: nn.Module, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``apply_rope(heads(norm(x)))``; at inference with an RMS norm, in one fp32 pass: a half-precision q/k
        is rounded once, after both (bf16 DiT step 1-2% faster on a CPU, and nearer the fp32 answer)."""
        if isinstance(norm, RMSNorm) and not torch.is_grad_enabled():
            return apply_rope(self._heads(norm.fp32(x)), *rope, dtype=x.dtype)
        return apply_rope(self._heads(norm(x)), *rope)

    def _context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a cross-attention ``context``, reused while ``context_memo`` holds them for this
        very tensor (the same object: DiT.reusing_text() vouches that it is not modified in place)."""
        memo = None if torch.compiler.is_compiling() or torch.is_grad_enabled() else self.context_memo
        kv = None if memo is None else memo.get(context)
        if kv is None:
            kv = self._heads(self.norm_k(self.to_k(context))), self._heads(self.to_v(context))
            if memo is not None and context.device.type == "cpu":  # on an accelerator: little work, real memory
                memo.put(context, kv)
        return kv

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, image_context: torch.Tensor | None = None):
        """``x`` (B, N, D); ``context`` (B, L, D) for cross-attention (None = self-attention) -> (B, N, D)."""
        if context is not None:
            q, (k, v) = self._heads(self.norm_q(self.to_q(x))), self._context_kv(context)
        else:
            q, k, v = self.to_q(x), self.to_k(x), self._heads(self.to_v(x))
            if rope is not None:
                q, k = self._rotated(q, self.norm_q, rope), self._rotated(k, self.norm_k, rope)
            else:
                q, k = self._heads(self.norm_q(q)), self._heads(self.norm_k(k))
        out = attention(q, k, v, context_mask)
        if image_context is not None:
            k_img = self._heads(self.norm_added_k(self.add_k_proj(image_context)))
            v_img = self._heads(self.add_v_proj(image_context))
            out = out + attention(q, k_img, v_img)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """Two-layer MLP with GELU; names follow diffusers (``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, hidden: int, dim_out: int | None = None, approximate: str = "tanh"):
        super().__init__()
        proj = nn.Module()
        proj.proj = Linear(dim, hidden)
        self.net = nn.ModuleList([proj, nn.Dropout(0.0), Linear(hidden, dim_out or dim)])
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.approximate == "tanh":
            return self.net[2](linear_gelu_tanh(x, self.net[0].proj))
        return self.net[2](F.gelu(self.net[0].proj(x), approximate=self.approximate))


class TwoLayer(nn.Module):
    """``linear_2(act(linear_1(x)))``: the timestep and text projections."""

    def __init__(self, d_in: int, d_out: int, act: str):
        super().__init__()
        self.linear_1 = Linear(d_in, d_out)
        self.linear_2 = Linear(d_out, d_out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear_1(x)
        h = F.silu(h) if self.act == "silu" else gelu_tanh(h)
        return self.linear_2(h)


class ImageEmbedder(nn.Module):
    """CLIP image tokens (B, 257, image_dim) -> (B, 257, D) for Wan I2V."""

    def __init__(self, image_dim: int, dim: int):
        super().__init__()
        self.norm1 = FP32LayerNorm(image_dim)
        self.ff = FeedForward(image_dim, image_dim, dim, approximate="none")
        self.norm2 = FP32LayerNorm(dim)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.ff(self.norm1(image_tokens)))


def _modulate(norm_x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``norm_x * (1 + scale) + shift`` in fp32; shift/scale are (B, 1, D) or per frame (B, f, 1, D)."""
    if shift.ndim == 4:  # per-frame modulation: view tokens as (B, f, h*w, D)
        f = shift.shape[1]
        return torch.addcmul(shift, norm_x.unflatten(1, (f, -1)), 1 + scale).flatten(1, 2)
    return torch.addcmul(shift, norm_x, 1 + scale)  # one pass instead of two


def _gate(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Residual ``x + y * gate`` in fp32, cast back to x's dtype (the fp32 gate promotes x and y inside the
    one kernel, so a bf16 stream is not copied to fp32 first)."""
    if gate.ndim == 4:
        f = gate.shape[1]
        return torch.addcmul(x.unflatten(1, (f, -1)), y.unflatten(1, (f, -1)), gate).flatten(1, 2).type_as(x)
    return torch.addcmul(x, y, gate).type_as(x)


class Block(nn.Module):
    """Self-attention (3D RoPE) -> cross-attention to text -> FFN, with adaLN shift/scale/gate from the timestep."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.attn1 = Attention(dim, cfg.num_attention_heads, cfg.eps, qk_norm=cfg.qk_norm is not None)
        self.attn2 = Attention(dim, cfg.num_attention_heads, cfg.eps, qk_norm=cfg.qk_norm is not None,
                               image_kv_dim=cfg.added_kv_proj_dim)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.ffn = FeedForward(dim, cfg.ffn_dim)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                modulation: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                image_context: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, N, D); ``modulation`` (B, 6, D) or per frame (B, f, 6, D) -> (B, N, D)."""
        mod = (self.scale_shift_table + modulation.float()).unsqueeze(-2)  # (..., 6, 1, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(-3)
        h = _modulate(self.norm1.fp32(x), shift1, scale1).type_as(x)
        x = _gate(x, self.attn1(h, rope=rope), gate1)
        x = x + self.attn2(self.norm2(x), text, text_mask, image_context=image_context)
        h = _modulate(self.norm3.fp32(x), shift2, scale2).type_as(x)
        return _gate(x, self.ffn(h), gate2)


class ConditionEmbedder(nn.Module):
    """Timestep -> (embedding, 6-way block modulation); text tokens -> model width; optional CLIP image tokens."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TwoLayer(cfg.freq_dim, dim, "silu")
        self.time_proj = Linear(dim, 6 * dim)
        self.text_embedder = TwoLayer(cfg.text_dim, dim, "gelu_tanh")
        self.image_embedder = ImageEmbedder(cfg.image_dim, dim) if cfg.image_dim is not None else None

    def time(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``timestep`` (B,) or (B, f) in [0, 1000] -> temb (.., D) in ``dtype``, modulation (.., 6, D). The text
        and image tokens go through ``text_embedder`` / ``image_embedder`` (the DiT keeps the text's per call)."""
        feats = timestep_features(timestep, self.freq_dim)
        temb = self.time_embedder(feats.to(self.time_embedder.linear_1.weight.dtype)).to(dtype)
        return temb, self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))


class DiT(nn.Module):
    """Text-conditioned velocity predictor over spacetime patches of a video latent."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        dim, patch = cfg.dim, tuple(cfg.patch_size)
        self.patch_embedding = nn.Conv3d(cfg.in_channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = ConditionEmbedder(cfg)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.proj_out = Linear(dim, cfg.out_channels * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, dim))
        self._rope_cache: dict = {}
        self._text_memo: TensorMemo | None = None  # inside reusing_text(): embedded text per input text tensor
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier for linears, zero for what should start as identity (adaLN modulation, output head)."""
        if self.scale_shift_table.is_meta:  # shapes only (memory estimates): nothing to fill, and on the meta
            return  # device normal_ goes through torch._refs, whose import of torch._dynamo takes over a second
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embedding.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for lin in (self.condition_embedder.time_embedder.linear_1, self.condition_embedder.time_embedder.linear_2):
            nn.init.normal_(lin.weight, std=0.02)
        dim = self.cfg.dim
        for block in self.blocks:
            nn.init.normal_(block.scale_shift_table, std=dim**-0.5)
        nn.init.normal_(self.scale_shift_table, std=dim**-0.5)
        nn.init.zeros_(self.condition_embedder.time_proj.weight)  # adaLN starts as plain LayerNorm, gates closed
        nn.init.zeros_(self.condition_embedder.time_proj.bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (that of the patch embedding and the blocks; see ``to_precision``)."""
        return self.patch_embedding.weight.dtype

    def to_precision(self, dtype: torch.dtype) -> DiT:
        """Cast to ``dtype``; in half precision the timestep embedder, the adaLN tables and the cross-attention
        norm stay fp32, as Wan and diffusers keep them (they are tiny; the timestep's features need the bits)."""
        for name, p in self.named_parameters():
            want = torch.float32 if dtype in HALF and keeps_fp32(name) else dtype
            if p.dtype != want:
                p.data = p.data.to(want)
        return self

    def rope(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables for a token grid, cached per (grid, device)."""
        key = (grid, str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) > 16:
                self._rope_cache.clear()
            with torch.inference_mode(False):  # cached tables must stay usable when autograd is on later
                self._rope_cache[key] = rope_3d(grid, self.cfg.attention_head_dim, device=device)
        return self._rope_cache[key]

    @contextlib.contextmanager
    def reusing_text(self):
        """Within this context, calls with the same text tensor (the same object, which the caller promises not
        to modify in place) embed it once and, on a CPU, project its cross-attention keys and values once per
        block: what a sampling loop does, one prompt pair for every step. Outputs are bit-identical; the
        bundled DiT's bf16 step on 2 CPU cores is ~4% faster (its 64 text tokens cost 13 of a block's
        matmul rows per 100 video tokens' 160). Inference only (autograd and torch.compile recompute);
        nested uses share the outer memo."""
        if self._text_memo is not None:
            yield self
            return
        self._text_memo = TensorMemo()
        for block in self.blocks:
            block.attn2.context_memo = TensorMemo()
        try:
            yield self
        finally:
            self._text_memo = None
            for block in self.blocks:
                block.attn2.context_memo = None

    def _embedded_text(self, text: torch.Tensor) -> torch.Tensor:
        """The text tokens at model width, memoised per tensor inside ``reusing_text()``."""
        if torch.compiler.is_compiling() or torch.is_grad_enabled() or self._text_memo is None:
            # (compiling: checked first, so that a compiled graph never reads, nor guards on, the memo)
            return self.condition_embedder.text_embedder(text.to(self.dtype))
        embedded = self._text_memo.get(text)
        if embedded is None:
            embedded = self._text_memo.put(text, self.condition_embedder.text_embedder(text.to(self.dtype)))
        return embedded

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None = None, image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity for ``latents`` (B, C, F, H, W) at ``timestep`` -> (B, C_out, F, H, W).

        ``timestep`` is (B,) in [0, 1000], or (B, F) per latent frame (conditioning frames sit at 0);
        ``text`` (B, L, text_dim) with ``text_mask`` (B, L) True for real tokens (None = attend to all).
        """
        cfg = self.cfg
        patch = tuple(cfg.patch_size)
        grid = patch_grid(latents.shape, patch)  # (f, h, w)
        w = self.patch_embedding.weight
        x = F.linear(patchify(latents.to(w.dtype), patch), w.flatten(1), self.patch_embedding.bias)  # (B, N, D)

        if timestep.ndim == 2:  # per latent frame -> per token frame
            if timestep.shape[1] != latents.shape[2]:
                raise ValueError(f"per-frame timestep has {timestep.shape[1]} frames, latents have {latents.shape[2]}")
            timestep = timestep[:, :: patch[0]]
        # a few rows of fp32 matmuls, whose rounding depends on the CPU thread count (MKL): on one thread, so that
        # the same seed gives the same bf16 clip on any thread count (kinema.common.threads.fixed_threads)
        with contextlib.nullcontext() if torch.compiler.is_compiling() else fixed_threads(1, latents.device):
            temb, modulation = self.condition_embedder.time(timestep, w.dtype)
            text = self._embedded_text(text)
        image_context = None if image_tokens is None else self.condition_embedder.image_embedder(image_tokens.to(w.dtype))
        rope = self.rope(grid, x.device)

        for block in self.blocks:
            x = block(x, text, text_mask, modulation, rope, image_context)

        shift, scale = (self.scale_shift_table + temb.float().unsqueeze(-2)).unsqueeze(-2).unbind(-3)
        x = _modulate(self.norm_out.fp32(x), shift, scale).type_as(x)
        return unpatchify(self.proj_out(x), grid, patch)
