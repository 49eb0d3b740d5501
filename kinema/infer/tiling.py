"""Spatially tiled VAE decode: big frames in overlapping tiles, blended linearly, stitched in host memory.

Each tile is decoded through the whole clip by the VAE's own temporal streaming (``decode_chunks``), so
the device holds one tile's activations for one chunk of frames, never the whole video. Neighbouring
tiles share ``overlap`` latent pixels; across a shared band each tile's weight ramps linearly from the
far edge to its interior and the two are normalised to sum to one, which hides the seams the decoder's
limited view of each tile would otherwise leave. A tile as large as the frame is the plain decode.
"""

from __future__ import annotations

import warnings

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)``, neighbours sharing >= ``overlap``."""
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"tile must be >= 1 and overlap in [0, tile), got tile={tile}, overlap={overlap}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]  # the last tile ends exactly at the edge


def ramp(length: int, lead: int, trail: int) -> torch.Tensor:
    """(length,) weights: rising over the first ``lead`` entries, falling over the last ``trail``, 1 between; all > 0."""
    w = torch.ones(length)
    if lead:
        w[:lead] = torch.arange(1, lead + 1) / (lead + 1)
    if trail:
        w[length - trail:] = torch.minimum(w[length - trail:], torch.arange(trail, 0, -1) / (trail + 1))
    return w


def _axis(size: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, lead, trail) per tile along one axis, in latent pixels; lead/trail = overlap with neighbours."""
    starts = tile_starts(size, tile, overlap)
    stops = [min(s + tile, size) for s in starts]
    out = []
    for i, (s, e) in enumerate(zip(starts, stops)):
        lead = stops[i - 1] - s if i > 0 else 0
        trail = e - starts[i + 1] if i + 1 < len(starts) else 0
        out.append((s, e, lead, trail))
    return out


@torch.inference_mode()
def decode_tiled(vae, latents: torch.Tensor, tile: int = 32, overlap: int = 8, normalized: bool = True) -> torch.Tensor:
    """Video (B, 3, 4k+1, H, W) in [-1, 1], float32 on the CPU, decoded tile by tile from latents (B, z, k+1, h, w).

    ``tile`` and ``overlap`` are in latent pixels (x8 in pixels for Wan's VAE): 32/8 is 256-px tiles sharing 64 px.
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, F, H, W), got {tuple(latents.shape)}")
    b, _, f, h, w = latents.shape
    sf, tf = vae.cfg.spatial_factor, vae.cfg.temporal_factor
    frames = (f - 1) * tf + 1
    if getattr(vae.cfg, "norm", "rms") == "frame" and (h > tile or w > tile):
        warnings.warn("this VAE normalises whole frames (VAEConfig.norm='frame'): each tile sees its own statistics, "
                      "so a tiled decode can differ in tone from tile to tile; decode without tiling if memory allows")
    canvas = torch.zeros(b, 3, frames, h * sf, w * sf)
    weight_sum = torch.zeros(1, 1, 1, h * sf, w * sf)
    for y0, y1, y_lead, y_trail in _axis(h, tile, overlap):
        for x0, x1, x_lead, x_trail in _axis(w, tile, overlap):
            weight = (ramp((y1 - y0) * sf, y_lead * sf, y_trail * sf)[:, None]
                      * ramp((x1 - x0) * sf, x_lead * sf, x_trail * sf)[None, :])  # (tile_h px, tile_w px)
            ys, xs = slice(y0 * sf, y1 * sf), slice(x0 * sf, x1 * sf)
            start = 0
            for chunk in vae.decode_chunks(latents[:, :, :, y0:y1, x0:x1], normalized):  # (B, 3, n, th, tw)
                n = chunk.shape[2]
                canvas[:, :, start:start + n, ys, xs] += chunk.float().cpu() * weight
                start += n
            weight_sum[..., ys, xs] += weight
    return canvas / weight_sum
