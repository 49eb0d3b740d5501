"""Typed configs for every component, and the named presets.

A config is data: it is checked in ``__post_init__`` (naming the bad value) and round-trips
through JSON (``to_dict`` / ``from_dict``), which is how model folders store it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

# Wan 2.1 VAE latent statistics (per channel); latents are normalised as (z - mean) / std.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


class ConfigError(ValueError):
    """A config value is out of range, of the wrong type, or unknown."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


class _Config:
    """Mixin: JSON round trip with unknown-key detection."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, _Config) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a dict; unknown keys are an error that lists the accepted ones."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        _check(not unknown, f"{cls.__name__}: unknown key(s) {unknown}; accepted: {sorted(names)}")
        kwargs = {}
        for k, v in d.items():
            sub = _SUBCONFIGS.get((cls.__name__, k))
            if sub is not None and isinstance(v, dict):
                v = sub.from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[k] = v
        return cls(**kwargs)

    def replace(self, **changes):
        """A copy with some fields changed (re-validated)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class VAEConfig(_Config):
    """Causal video VAE in the Wan 2.1 layout (diffusers ``AutoencoderKLWan``)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    in_channels: int = 3
    out_channels: int = 3
    # Streaming: latent frames per temporal chunk (memory is bounded by the chunk, not the clip).
    chunk_latent_frames: int = 4
    # "rms": Wan's per-pixel RMS norm over channels (loads Wan weights) | "frame": per-frame layer norm, which
    # trains far faster from scratch at a few channels (the bundled model) but makes tiled decode approximate.
    norm: str = "rms"

    def __post_init__(self):
        _check(self.base_dim > 0, f"VAEConfig.base_dim must be > 0, got {self.base_dim}")
        _check(self.z_dim > 0, f"VAEConfig.z_dim must be > 0, got {self.z_dim}")
        _check(len(self.dim_mult) >= 1, f"VAEConfig.dim_mult must be non-empty, got {self.dim_mult}")
        _check(
            len(self.temporal_downsample) == len(self.dim_mult) - 1,
            f"VAEConfig.temporal_downsample needs {len(self.dim_mult) - 1} entries (one per downsample), "
            f"got {len(self.temporal_downsample)}",
        )
        _check(
            len(self.latents_mean) == self.z_dim and len(self.latents_std) == self.z_dim,
            f"VAEConfig.latents_mean/std need z_dim={self.z_dim} entries, "
            f"got {len(self.latents_mean)}/{len(self.latents_std)}",
        )
        _check(all(s > 0 for s in self.latents_std), f"VAEConfig.latents_std must be > 0, got {self.latents_std}")
        _check(self.chunk_latent_frames >= 1, f"VAEConfig.chunk_latent_frames must be >= 1, got {self.chunk_latent_frames}")
        _check(self.norm in ("rms", "frame"), f"VAEConfig.norm must be 'rms' or 'frame', got {self.norm!r}")

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)


@dataclass(frozen=True)
class DiTConfig(_Config):
    """Spacetime-patch Diffusion Transformer in the Wan 2.1 layout (diffusers ``WanTransformer3DModel``)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    # Wan 2.1 I2V: CLIP image tokens enter cross-attention through extra key/value projections.
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None

    def __post_init__(self):
        _check(len(self.patch_size) == 3 and all(p >= 1 for p in self.patch_size),
               f"DiTConfig.patch_size must be three positive ints (t, h, w), got {self.patch_size}")
        _check(self.num_attention_heads >= 1, f"DiTConfig.num_attention_heads must be >= 1, got {self.num_attention_heads}")
        _check(self.attention_head_dim % 2 == 0 and self.attention_head_dim >= 6,
               f"DiTConfig.attention_head_dim must be even and >= 6 (3D RoPE), got {self.attention_head_dim}")
        _check(self.num_layers >= 1, f"DiTConfig.num_layers must be >= 1, got {self.num_layers}")
        _check(self.qk_norm in (None, "rms_norm_across_heads"),
               f"DiTConfig.qk_norm must be None or 'rms_norm_across_heads', got {self.qk_norm!r}")
        _check(self.ffn_dim >= 1 and self.text_dim >= 1 and self.freq_dim % 2 == 0,
               f"DiTConfig: ffn_dim/text_dim must be >= 1 and freq_dim even, got {self.ffn_dim}/{self.text_dim}/{self.freq_dim}")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


@dataclass(frozen=True)
class TextConfig(_Config):
    """Which text encoder turns prompts into ``(tokens, mask)``."""

    kind: str = "minilm"  # "minilm" (bundled, offline) | "t5" (umT5 / T5 encoder from a local folder)
    path: str | None = None  # folder for "t5"; None for "minilm" = the packaged model
    max_length: int = 64
    dim: int = 384
    # True: cross-attention ignores padding tokens (kinema's own models). Wan was trained attending to
    # zero-padded umT5 tokens, so its presets set False to reproduce its outputs.
    use_mask: bool = True

    def __post_init__(self):
        _check(self.kind in TEXT_KINDS, f"TextConfig.kind must be one of {TEXT_KINDS}, got {self.kind!r}")
        _check(self.max_length >= 1, f"TextConfig.max_length must be >= 1, got {self.max_length}")


TEXT_KINDS = ("minilm", "t5")
SAMPLERS = ("euler", "heun", "unipc")


def check_interval(interval) -> tuple[float, float]:
    """A guidance interval (a pair of numbers, or text "LO,HI") as a ``(lo, hi)`` pair of floats with
    0 <= lo < hi <= 1; ValueError naming it otherwise."""
    try:
        lo, hi = (float(v) for v in (interval.split(",") if isinstance(interval, str) else interval))
        ok = isinstance(interval, str) or not any(isinstance(v, bool) for v in interval)
        ok = ok and math.isfinite(lo) and math.isfinite(hi)
    except (TypeError, ValueError):
        ok = False
    if not ok or not 0 <= lo < hi <= 1:
        raise ValueError(f"guidance interval must be two noise levels LO,HI with 0 <= LO < HI <= 1 (1 = pure noise; "
                         f"0,1 = guidance at every step), got {interval!r}")
    return lo, hi


@dataclass(frozen=True)
class SamplingDefaults(_Config):
    """What a model recommends at inference; every field can be overridden per request."""

    width: int = 128
    height: int = 128
    frames: int = 17
    fps: int = 8
    steps: int = 20
    guidance: float = 5.0
    # noise levels (t: 1 = pure noise) at whose steps guidance applies; outside, the conditional prediction
    # alone (one network row instead of two): Kynkaanniemi et al. 2024, kinema.flow.guidance
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    shift: float = 3.0
    sampler: str = "unipc"
    negative_prompt: str = ""
    # "kinema": the shifted even grid from t = 1 to 0, the DiT sees t * 1000; "wan": Wan's and diffusers'
    # flow-UniPC grid (from 1 to 1/1000, then 0) and integer timesteps int(t * 1000), as Wan was sampled.
    schedule: str = "kinema"

    def __post_init__(self):
        _check(self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        _check(self.schedule in ("kinema", "wan"), f"schedule must be 'kinema' or 'wan', got {self.schedule!r}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.fps >= 1, f"fps must be >= 1, got {self.fps}")
        _check(self.shift > 0, f"shift must be > 0, got {self.shift}")
        try:
            object.__setattr__(self, "guidance_interval", check_interval(self.guidance_interval))
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass(frozen=True)
class ModelConfig(_Config):
    """A whole text-to-video model: VAE + DiT + text encoder + sampling defaults."""

    name: str = "custom"
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    def __post_init__(self):
        # Wan I2V feeds 36 channels: 16 noisy latents + 4 mask + 16 image latents.
        _check(self.dit.in_channels >= self.vae.z_dim,
               f"DiT in_channels ({self.dit.in_channels}) must be >= VAE z_dim ({self.vae.z_dim})")
        _check(self.dit.out_channels == self.vae.z_dim,
               f"DiT out_channels ({self.dit.out_channels}) must equal VAE z_dim ({self.vae.z_dim})")
        _check(self.dit.text_dim == self.text.dim,
               f"DiT text_dim ({self.dit.text_dim}) must equal the text encoder dim ({self.text.dim})")

    @property
    def pixel_multiple(self) -> int:
        """Height and width must be multiples of this (VAE downsampling x DiT patch)."""
        return self.vae.spatial_factor * math.lcm(self.dit.patch_size[1], self.dit.patch_size[2])


_SUBCONFIGS = {
    ("ModelConfig", "vae"): VAEConfig,
    ("ModelConfig", "dit"): DiTConfig,
    ("ModelConfig", "text"): TextConfig,
    ("ModelConfig", "sampling"): SamplingDefaults,
}

_WAN_NEGATIVE = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, "
    "messy background, three legs, many people in the background, walking backwards"
)


def _tiny_vae(**kw) -> VAEConfig:
    z = kw.pop("z_dim", 4)
    return VAEConfig(base_dim=kw.pop("base_dim", 8), z_dim=z, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                     latents_mean=(0.0,) * z, latents_std=(1.0,) * z, **kw)


PRESETS: dict[str, ModelConfig] = {
    # Random-weight size for tests: a 2-layer DiT and an 8-channel VAE.
    "tiny": ModelConfig(
        name="tiny",
        vae=_tiny_vae(),
        dit=DiTConfig(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                      text_dim=384, freq_dim=32, ffn_dim=48, num_layers=2),
        text=TextConfig(kind="minilm", dim=384),
        sampling=SamplingDefaults(width=64, height=64, frames=9, steps=4, guidance=3.0, shift=1.0, sampler="euler"),
    ),
    # The bundled model's shape (issue 5): dim 256 / 6 layers / 4 heads / ffn 1024, 16-channel latents.
    "world-small": ModelConfig(
        name="world-small",
        # A small VAE: the world is flat colours and sharp edges; 16 channels at full resolution keep decode
        # of 17x128x128 under a second on 2 cores (benchmarks/engine.py measures the Wan-sized base_dim 32).
        # Per-frame layer norm: Wan's per-pixel RMS norm at 16 channels trains slowly and unstably from scratch.
        # Chunks of 5 latent frames: the default 17-frame clip decodes in one pass instead of 4 + 1 (the lone
        # last latent frame convolved with its carried history: 145 -> 132 ms in bf16, x1.08 in fp32), a
        # decode peak 38 MB higher at 128x128 in fp32 (216 against 178 MB).
        vae=VAEConfig(base_dim=16, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1, norm="frame",
                      latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16, chunk_latent_frames=5),
        # 7M parameters: what a 2-core CPU trains in hours and samples in about a second (issues 5 and 9).
        dit=DiTConfig(num_attention_heads=4, attention_head_dim=64, in_channels=16, out_channels=16,
                      text_dim=384, freq_dim=256, ffn_dim=1024, num_layers=6),
        text=TextConfig(kind="minilm", dim=384),
        # 12 UniPC steps: the world benchmark scores them as 20 (within noise), and a clip takes 1.8 s on
        # 2 cores in benchmarks/generate.py (1.9 s as the CLI's first clip, median; 20 steps took 2.6 s before
        # kinema.common.malloc); steps.py measures how far fewer steps move a video.
        sampling=SamplingDefaults(width=128, height=128, frames=17, fps=8, steps=12, guidance=4.0, shift=2.0),
    ),
    "wan2.1-t2v-1.3b": ModelConfig(
        name="wan2.1-t2v-1.3b",
        vae=VAEConfig(),
        dit=DiTConfig(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096),
        text=TextConfig(kind="t5", max_length=512, dim=4096, use_mask=False),
        sampling=SamplingDefaults(width=832, height=480, frames=81, fps=16, steps=50, guidance=5.0, shift=3.0,
                                  negative_prompt=_WAN_NEGATIVE, schedule="wan"),
    ),
    # Image-to-video at 480p: CLIP ViT-H image tokens (1280-d) enter cross-attention; 36 input channels.
    "wan2.1-i2v-14b-480p": ModelConfig(
        name="wan2.1-i2v-14b-480p",
        vae=VAEConfig(),
        dit=DiTConfig(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096,
                      in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
        text=TextConfig(kind="t5", max_length=512, dim=4096, use_mask=False),
        sampling=SamplingDefaults(width=832, height=480, frames=81, fps=16, steps=40, guidance=5.0, shift=3.0,
                                  negative_prompt=_WAN_NEGATIVE, schedule="wan"),
    ),
    "wan2.1-t2v-14b": ModelConfig(
        name="wan2.1-t2v-14b",
        vae=VAEConfig(),
        dit=DiTConfig(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40, text_dim=4096),
        text=TextConfig(kind="t5", max_length=512, dim=4096, use_mask=False),
        sampling=SamplingDefaults(width=1280, height=720, frames=81, fps=16, steps=50, guidance=5.0, shift=5.0,
                                  negative_prompt=_WAN_NEGATIVE, schedule="wan"),
    ),
}


def preset(name: str) -> ModelConfig:
    """The named preset; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
