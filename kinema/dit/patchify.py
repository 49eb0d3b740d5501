"""Spacetime patches: latents ``(B, C, F, H, W)`` <-> tokens ``(B, N, D)``, N = f * h * w in frame-major order."""

from __future__ import annotations

import torch


def patch_grid(latent_shape: tuple[int, ...], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """The token grid ``(f, h, w)`` of a latent ``(.., F, H, W)``; raises if a side does not divide its patch."""
    F_, H, W = latent_shape[-3:]
    pt, ph, pw = patch
    if F_ % pt or H % ph or W % pw:
        raise ValueError(f"latent grid (F, H, W)=({F_}, {H}, {W}) is not divisible by the patch size {tuple(patch)}")
    return F_ // pt, H // ph, W // pw


def patchify(latents: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """``(B, C, F, H, W) -> (B, N, C*pt*ph*pw)``; each token is channel-major (the Conv3d weight order)."""
    b, c, _, _, _ = latents.shape
    f, h, w = patch_grid(latents.shape, patch)
    pt, ph, pw = patch
    x = latents.reshape(b, c, f, pt, h, ph, w, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, f, h, w, C, pt, ph, pw)
    return x.reshape(b, f * h * w, c * pt * ph * pw)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    """``(B, N, pt*ph*pw*C) -> (B, C, F, H, W)``; each token is patch-major (the Wan output-projection order)."""
    b, n, d = tokens.shape
    f, h, w = grid
    pt, ph, pw = patch
    c = d // (pt * ph * pw)
    x = tokens.reshape(b, f, h, w, pt, ph, pw, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, f, pt, h, ph, w, pw)
    return x.reshape(b, c, f * pt, h * ph, w * pw)
