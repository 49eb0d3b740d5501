"""Wan 2.1 image-to-video (``Wan2.1-I2V-14B-480P/720P-Diffusers``): the image enters twice, from outside the DiT.

Wan's I2V DiT reads 36 input channels per latent: the 16 noisy channels, a 4-channel mask (ones on the
first latent frame, which holds the given image, one channel per video frame it covers) and the 16
channels of the VAE encoding of "the image, then black frames". It also cross-attends to the CLIP
ViT-H/14 penultimate-layer tokens of the image (257 x 1280) through its extra key/value projections.
Both are attached to the DiT with a forward pre-hook for one generation, so the pipeline's sampler,
guidance, memory modes and parallelism run unchanged (cond and uncond see the same image).
"""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import torch

from .pipeline import InputError, Pipeline, Video


class CLIPImageEncoder:
    """CLIP vision tower from a diffusers I2V folder (``image_encoder/`` + ``image_processor/``): image -> tokens."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        import transformers
        root = Path(path)
        model_dir, processor_dir = root / "image_encoder", root / "image_processor"
        missing = [str(p) for p in (model_dir / "config.json", processor_dir) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"{root} has no CLIP image encoder (missing {', '.join(missing)}); a Wan I2V "
                                    f"folder holds image_encoder/ and image_processor/")
        processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        self.processor = processor_cls.from_pretrained(processor_dir, local_files_only=True)
        self.model = transformers.CLIPVisionModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True,
                                                                  dtype=dtype).to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(self, image: np.ndarray) -> torch.Tensor:
        """Penultimate-layer tokens (1, 1 + patches, hidden) of a uint8 (H, W, 3) image, as Wan I2V reads them."""
        from PIL import Image
        device = next(self.model.parameters()).device
        pixels = self.processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
        hidden = self.model(pixel_values=pixels.to(device, self.model.dtype), output_hidden_states=True).hidden_states
        return hidden[-2]


def is_wan_i2v(cfg) -> bool:
    """Whether a model config is a Wan 2.1 I2V DiT (image tokens + mask and image latents as extra channels)."""
    return cfg.dit.image_dim is not None and cfg.dit.in_channels == 2 * cfg.vae.z_dim + cfg.vae.temporal_factor


def image_condition(pipe: Pipeline, image: np.ndarray, frames: int) -> torch.Tensor:
    """(1, tf + z, f, h, w): the first-frame mask and the latents of the image followed by black frames."""
    h, w = image.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    video = torch.cat([pixels[None, :, None], pixels.new_zeros(1, 3, frames - 1, h, w)], dim=2)  # (1, 3, F, H, W)
    vae_dtype = next(pipe.vae.parameters()).dtype
    with torch.inference_mode():
        latents = pipe.vae.encode(video.to(pipe.device, vae_dtype)).float()  # (1, z, f, h, w), normalised
    tf = pipe.cfg.vae.temporal_factor
    mask = torch.zeros(1, tf, *latents.shape[2:], device=latents.device)
    mask[:, :, 0] = 1  # the first latent frame covers one given video frame, counted tf times (Wan's layout)
    return torch.cat([mask, latents], dim=1)


def attach_image(dit, condition: torch.Tensor, image_tokens: torch.Tensor):
    """Feed ``condition`` channels and CLIP ``image_tokens`` to every DiT call; returns the hook handle to remove."""

    def hook(module, args, kwargs):
        latents, *rest = args
        b = latents.shape[0]
        extra = condition.to(latents.device, latents.dtype).expand(b, -1, -1, -1, -1)
        kwargs["image_tokens"] = image_tokens.to(latents.device).expand(b, -1, -1)
        return (torch.cat([latents, extra], dim=1), *rest[:3]), kwargs  # (B, 16 + tf + 16, f, h, w)

    hook.feeds_image = True  # what Pipeline.check_samples_alone looks for
    return dit.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)


def image_to_video(pipe: Pipeline, image: np.ndarray, prompt: str, image_encoder: CLIPImageEncoder | None = None,
                   progress: bool = False, **settings) -> Video:
    """A video that starts from ``image`` (uint8 (H, W, 3) at the request's size) with a Wan 2.1 I2V model."""
    if not is_wan_i2v(pipe.cfg):
        raise InputError(f"{pipe.name} is not a Wan 2.1 image-to-video model (its DiT takes {pipe.cfg.dit.in_channels} "
                         f"channels and no image tokens); use kinema's --image conditioning instead")
    s = pipe.settings(prompt, **settings)
    if image.dtype != np.uint8 or image.shape != (s.height, s.width, 3):
        raise InputError(f"image must be uint8 ({s.height}, {s.width}, 3) for a {s.width}x{s.height} video, got "
                         f"{image.dtype} {image.shape}")
    if image_encoder is None:
        half = torch.bfloat16 if pipe.dtype != torch.float32 else torch.float32
        image_encoder = CLIPImageEncoder(pipe.cfg.text.path, device=pipe.device, dtype=half)
    tokens = image_encoder.encode(image)  # (1, 257, 1280) for ViT-H/14
    if pipe.offloader is not None:  # a low-memory mode: the encoder leaves the accelerator once it has run
        image_encoder.model.to("cpu")
    condition = image_condition(pipe, image, s.frames)
    handle = attach_image(pipe.dit, condition, tokens)
    try:
        video = pipe.run(s, progress=progress)
    finally:
        handle.remove()
    video.notes["task"] = json.dumps({"task": "image_to_video", "frames": len(video.frames),
                                      "conditioning": "Wan 2.1 I2V (image latents as channels, CLIP image tokens)"})
    return video

