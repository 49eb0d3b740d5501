"""Preview videos during training: a few fixed prompts, a few Euler steps, decoded and written to disk.

Every rank runs the network (a sharded model needs all of them); rank 0 decodes and writes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kinema.common.video import from_model
from kinema.common.video_write import write_video
from kinema.config import ModelConfig
from kinema.flow import euler, guided, sampling_schedule
from kinema.train.config import SampleConfig


@torch.no_grad()
def render_previews(dit, vae, text_encoder, model_cfg: ModelConfig, cfg: SampleConfig, device: torch.device,
                    out_dir: Path, step: int, write: bool) -> list[Path]:
    """Sample one clip per prompt with ``dit`` and write ``out_dir/step-N/i.mp4`` (when ``write``); returns the paths."""
    defaults = model_cfg.sampling
    frames, height, width = cfg.frames or defaults.frames, cfg.height or defaults.height, cfg.width or defaults.width
    s = model_cfg.vae.spatial_factor
    grid = ((frames - 1) // model_cfg.vae.temporal_factor + 1, height // s, width // s)
    ts = sampling_schedule(cfg.steps, shift=defaults.shift)
    null_tokens, null_mask = text_encoder.null(1, defaults.negative_prompt)
    use_mask = model_cfg.text.use_mask
    paths = []
    for i, prompt in enumerate(cfg.prompts):
        tokens, mask = text_encoder.encode([prompt])
        text = torch.cat([tokens, null_tokens]).to(device)
        text_mask = torch.cat([mask, null_mask]).to(device) if use_mask else None

        def both(x, t, need_uncond):
            if not need_uncond:
                return dit(x, t * 1000.0, text[:1], None if text_mask is None else text_mask[:1]), None
            v = dit(torch.cat([x, x]), torch.cat([t, t]) * 1000.0, text, text_mask)
            return v[:1], v[1:]

        g = torch.Generator().manual_seed(cfg.seed + i)
        x = torch.randn((1, model_cfg.vae.z_dim, *grid), generator=g).to(device)
        latents = euler(guided(both, cfg.guidance), x, ts)
        if write:
            video = vae.decode(latents.float())
            path = out_dir / f"step-{step:08d}" / f"{i}.mp4"
            write_video(path, from_model(video), fps=defaults.fps, metadata={"prompt": prompt, "step": step})
            paths.append(path)
    return paths


@torch.no_grad()
def render_reconstruction(vae, video: torch.Tensor, fps: float, out_dir: Path, step: int, write: bool) -> list[Path]:
    """VAE runs: one clip (3, F, H, W) next to its reconstruction, written as ``step-N/recon.mp4``."""
    recon = vae.decode(vae.encode(video[None].to(next(vae.parameters()).device)))
    if not write:
        return []
    side_by_side = torch.cat([video[None].to(recon.device).float(), recon.float()], dim=-1)
    path = out_dir / f"step-{step:08d}" / "recon.mp4"
    write_video(path, from_model(side_by_side), fps=fps, metadata={"step": step})
    return [path]
