"""Causal video VAE in the Wan 2.1 layout (diffusers ``AutoencoderKLWan`` parameter names).

4x temporal and 8x spatial compression; frame counts are 4k+1 and the first frame is encoded on its
own, so an image is a one-frame video. Every temporal convolution is causal, which makes the network
streamable: a clip is processed in chunks of several latent frames, each causal convolution carrying the
last two frames it saw into the next chunk. The result equals processing the whole clip at once, and
memory is bounded by the chunk, not the clip.

Why it is fast on a CPU: the reference implementation streams one latent frame (4 video frames) at a
time, so every 3D convolution runs on a temporal extent of 1-4 frames, where PyTorch falls back to a slow
path. Here a chunk spans several latent frames (16+ video frames) and each convolution is one large
``conv3d`` call on the whole chunk. Inference on a CPU also keeps activations channels-last
(``channels_last_3d``: each pixel's channels adjacent in memory), the layout oneDNN's convolutions run
fastest on: the bundled decode 14-16% faster in fp32 and bf16, its encode 8-15% (``channels_last``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VAEConfig
from ..nn import ChannelRMSNorm, FrameNorm

Stream = dict  # per-module carried state for one encode/decode pass: {id(module): tensor}

_MKLDNN = torch.backends.mkldnn.is_available()
CHANNELS_LAST = torch.channels_last_3d


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout a pass should run in: channels-last for CPU inference (without autograd), as it is
    otherwise. Every layer keeps the layout it is given (convolutions, norms, the causal carry, resampling)."""
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        return x.contiguous(memory_format=CHANNELS_LAST)
    return x


NORMS = {"rms": ChannelRMSNorm, "frame": FrameNorm}  # VAEConfig.norm: Wan's per-pixel RMS norm | per-frame layer norm


FEW_OUTPUTS = 4  # output channels up to which ``_conv3d_by_taps`` runs a CPU inference convolution


def _conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding) -> torch.Tensor:
    """conv3d with symmetric ``padding`` (t, h, w). On CPU, oneDNN directly: PyTorch's dispatcher sends batch-1
    inputs with few channels x frames to a slow reference kernel (2x slower, measured), most of a small VAE."""
    if (weight.shape[0] <= FEW_OUTPUTS and weight.shape[2] > 1 and stride[0] == 1 and padding[0] == 0
            and x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and x.is_contiguous(memory_format=CHANNELS_LAST)):
        return _conv3d_by_taps(x, weight, bias, stride, padding)
    if (_MKLDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == x.dtype
            and not torch.compiler.is_compiling()):
        return torch.mkldnn_convolution(x, weight, bias, list(padding), list(stride), [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, stride, padding)


def _conv3d_by_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding) -> torch.Tensor:
    """A conv3d with few output channels (the decoder's RGB output) as one 2D convolution over all frames
    whose output channels are the temporal taps' (kt x C_out), then each output frame the sum of its taps'
    shifted results (in fp32, rounded once). oneDNN's CPU kernels work on blocks of 16 output channels, so
    3 of them leave most of every vector idle; 9 fill more of it: the bundled model's last convolution
    (16 -> 3 channels, 19 frames of 128x128) 11.6 -> 6.8 ms in bf16, 21.8 -> 11.9 in fp32, the whole bf16
    decode x1.10 (its error against the fp32 decode unchanged: mean 0.0026 both). Channels-last in, time
    stride 1 and no time padding (the causal convolutions pad before); the result is (B, C_out, T - kt + 1,
    H', W'), a view of a frame-major tensor."""
    b, c, t, h, w = x.shape
    outputs, _, kt = weight.shape[:3]
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # a view: channels-last 2D frames
    per_tap = weight.permute(2, 0, 1, 3, 4).reshape(kt * outputs, c, *weight.shape[3:])
    y = F.conv2d(frames, per_tap, None, tuple(stride[1:]), tuple(padding[1:]))
    y = y.to(torch.float32, memory_format=torch.contiguous_format)  # (B T, kt C_out, H', W')
    y = y.view(b, t, kt, outputs, *y.shape[2:])
    n = t - kt + 1
    out = y[:, :n, 0].clone()
    for k in range(1, kt):
        out += y[:, k:k + n, k]
    if bias is not None:
        out += bias.float().view(1, 1, -1, 1, 1)
    return out.to(x.dtype).transpose(1, 2)


def _zeros_before(x: torch.Tensor, frames: int) -> torch.Tensor:
    """``frames`` frames of zeros shaped like ``x``'s, in its layout: the causal history of a first chunk."""
    layout = CHANNELS_LAST if x.is_contiguous(memory_format=CHANNELS_LAST) else torch.contiguous_format
    return torch.empty(x.shape[0], x.shape[1], frames, *x.shape[3:], dtype=x.dtype, device=x.device,
                       memory_format=layout).zero_()


class CausalConv3d(nn.Conv3d):
    """3D convolution that only looks back in time; carries its last ``kt - 1`` input frames between chunks."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int, int], padding: int | tuple = 0,
                 stride: int | tuple = 1):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=0)
        pad = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.time_pad = 2 * pad[0]
        self.space_pad = (0, pad[1], pad[2])  # symmetric in space, handed to the convolution itself

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        """``(B, C, T, H, W) -> (B, C_out, T, H, W)``; with ``stream``, continues from the previous chunk."""
        if self.time_pad:
            past = None if stream is None else stream.get(id(self))
            if past is None and x.shape[2] == 1 and self.stride[0] == 1:
                # One frame after no history (an image, a clip's first latent frame): the zeros before it meet
                # every temporal tap but the last, so only that tap is computed (1/kt of the work).
                if stream is not None:
                    stream[id(self)] = torch.cat([_zeros_before(x, self.time_pad - 1), x], dim=2)
                return _conv3d(x, self.weight[:, :, -1:], self.bias, self.stride, self.space_pad)
            if past is None:
                past = _zeros_before(x, self.time_pad)
            x = torch.cat([past, x], dim=2)
            if stream is not None:
                stream[id(self)] = x[:, :, -self.time_pad:]
        return _conv3d(x, self.weight, self.bias, self.stride, self.space_pad)


def norm_conv(norm: nn.Module, conv: CausalConv3d, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
    """``conv(norm(x, silu=True), stream)``. At inference on a channels-last map whose norm can write into a
    given tensor (``FrameNorm.norm_into``), the norm writes its frames straight after the causal history in
    the buffer the convolution reads, instead of into a map that is then concatenated to the history (a copy
    of every normed map, ~7% of a bf16 decode, measured)."""
    into = getattr(norm, "norm_into", None)
    past = None if stream is None else stream.get(id(conv))
    if (into is None or not conv.time_pad or conv.stride[0] != 1 or (past is None and x.shape[2] == 1)
            or x.device.type != "cpu" or not x.is_contiguous(memory_format=CHANNELS_LAST)):
        return conv(norm(x, silu=True), stream)
    pad = conv.time_pad
    b, c, t, h, w = x.shape
    buffer = torch.empty(b, c, pad + t, h, w, dtype=x.dtype, device=x.device, memory_format=CHANNELS_LAST)
    if into(x, buffer[:, :, pad:]) is None:
        return conv(norm(x, silu=True), stream)
    if past is None:
        buffer[:, :, :pad].zero_()
    else:
        buffer[:, :, :pad].copy_(past)
    if stream is not None:
        stream[id(conv)] = buffer[:, :, -pad:]
    return _conv3d(buffer, conv.weight, conv.bias, conv.stride, conv.space_pad)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 conv) shortcut."""

    def __init__(self, c_in: int, c_out: int, norm: str = "rms"):
        super().__init__()
        self.norm1 = NORMS[norm](c_in)
        self.conv1 = CausalConv3d(c_in, c_out, 3, padding=1)
        self.norm2 = NORMS[norm](c_out)
        self.conv2 = CausalConv3d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = CausalConv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        h = norm_conv(self.norm1, self.conv1, x, stream)
        h = norm_conv(self.norm2, self.conv2, h, stream)
        return h + self.conv_shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame (never across time, so causality holds)."""

    def __init__(self, dim: int, norm: str = "rms"):
        super().__init__()
        self.norm = NORMS[norm](dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2)  # (B*T, h*w, 3C)
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        return x + self.proj(out).reshape(b, t, c, h, w).transpose(1, 2)


# Output pixel (2i + a, 2j + b) of a 3x3 convolution (padding 1) over a nearest 2x upsampled map reads only
# rows i - 1 + a .. i + a and columns j - 1 + b .. j + b of the small map: per phase (a, b), a 2x2 kernel
# whose taps sum the 3x3 taps landing on the same small pixel. Row r of this table, for phase a and tap u,
# marks the 3x3 kernel rows summed into it (the same for columns).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv2d(upsample_nearest_2x(x), weight, bias, padding=1)`` for a 3x3 ``weight`` (``phase_kernels``
    made it a 2x2 one with the four phases as output channels): one 2x2 convolution on the small map, 4/9
    of the multiply-adds, and no upsampled copy of the input. Its (H+1)x(W+1) output holds phase (a, b) of
    large pixel (2i + a, 2j + b) at small pixel (i + a, j + b), so the large map is a strided view of it,
    copied once into a channels-last ``(N, C_out, 2H, 2W)``."""
    n, _, h, w = x.shape
    c = weight.shape[0] // 4
    y = F.conv2d(x, weight, bias, 1, 1).contiguous(memory_format=torch.channels_last)  # (N, 4 C_out, H+1, W+1)
    sn, _, sh, sw = y.stride()
    phases = y.as_strided((n, h, 2, w, 2, c), (sn, sh, sh + 2 * c, sw, sw + c, 1), y.storage_offset())
    return phases.contiguous().view(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


def phase_kernels(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``upsample_conv``'s 2x2 weight (4 C_out, C_in, 2, 2), phases outermost, and bias, from a 3x3 ``conv``
    (summed in fp32, rounded once to the weight's dtype)."""
    taps = _PHASE_TAPS.to(conv.weight.device)
    kernels = torch.einsum("aur,ocrs,bvs->abocuv", taps, conv.weight.float(), taps)
    return (kernels.reshape(-1, conv.in_channels, 2, 2).to(conv.weight.dtype), conv.bias.repeat(4))


class Resample(nn.Module):
    """Spatial 2x down/up-sampling per frame, optionally with 2x temporal down/up-sampling (causal)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_time(x, stream)
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        if (self.mode.startswith("up") and frames.device.type == "cpu" and not torch.is_grad_enabled()
                and frames.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling()):
            y = upsample_conv(frames, *phase_kernels(self.resample[1]))  # CPU inference: x1.1-1.7 over the two steps
        else:
            y = self.resample(frames)
        x = y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
        if self.mode == "downsample3d":
            x = self._halve_time(x, stream)
        return x

    def _double_time(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        """Latent frame 0 -> 1 frame; every later frame -> 2 frames (a causal conv emits both)."""
        key = (id(self), "started")
        first = None
        if stream is None or key not in stream:  # the clip's first frame passes through unchanged
            first, x = x[:, :, :1], x[:, :, 1:]
            if stream is not None:
                stream[key] = True
        if x.shape[2]:  # channels [0, c) of the conv's output are each frame's first frame, [c, 2c) its second
            b, c, t, h, w = x.shape
            y = self.time_conv(x, stream)
            if y.is_contiguous(memory_format=CHANNELS_LAST):  # stored (b, t, h, w, 2, c) -> (b, t, 2, h, w, c)
                pairs = y.permute(0, 2, 3, 4, 1).unflatten(-1, (2, c)).permute(0, 1, 4, 2, 3, 5).contiguous()
                x = pairs.view(b, 2 * t, h, w, c).permute(0, 4, 1, 2, 3)
            else:
                pair = y.reshape(b, 2, c, t, h, w)
                x = torch.stack((pair[:, 0], pair[:, 1]), dim=3).reshape(b, c, 2 * t, h, w)
        return x if first is None else torch.cat([first, x], dim=2)

    def _halve_time(self, x: torch.Tensor, stream: Stream | None) -> torch.Tensor:
        """Frames f0, f1..f2m -> f0, conv(f0,f1,f2), conv(f2,f3,f4), ...; later chunks continue from the last frame."""
        key = id(self)
        past = None if stream is None else stream.get(key)
        if stream is not None:
            stream[key] = x[:, :, -1:]
        if past is None:
            first = x[:, :, :1]
            return first if x.shape[2] == 1 else torch.cat([first, self.time_conv(x)], dim=2)
        return self.time_conv(torch.cat([past, x], dim=2))


class MidBlock(nn.Module):
    def __init__(self, dim: int, norm: str = "rms"):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim, norm), ResidualBlock(dim, dim, norm)])
        self.attentions = nn.ModuleList([AttentionBlock(dim, norm)])

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        x = self.resnets[0](x, stream)
        return self.resnets[1](self.attentions[0](x), stream)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        layers, scale = [], 1.0
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(c_in, c_out, cfg.norm))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(c_out, cfg.norm))
                c_in = c_out
            if i != len(cfg.dim_mult) - 1:
                layers.append(Resample(c_out, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.down_blocks = nn.ModuleList(layers)
        self.mid_block = MidBlock(dims[-1], cfg.norm)
        self.norm_out = NORMS[cfg.norm](dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        x = self.conv_in(x, stream)
        for layer in self.down_blocks:
            x = layer(x, stream)
        x = self.mid_block(x, stream)
        return norm_conv(self.norm_out, self.conv_out, x, stream)


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_res_blocks: int, mode: str | None, norm: str = "rms"):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(c_in if i == 0 else c_out, c_out, norm)
                                      for i in range(num_res_blocks + 1)])
        self.upsamplers = nn.ModuleList([Resample(c_out, mode)]) if mode else None

    def forward(self, x: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, stream)
        return x if self.upsamplers is None else self.upsamplers[0](x, stream)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        base = cfg.decoder_base_dim or cfg.base_dim
        dims = [base * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temporal_up = cfg.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0], cfg.norm)
        blocks = []
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            c_in = c_in // 2 if i > 0 else c_in  # the previous upsampler halved the channels
            mode = None if i == len(cfg.dim_mult) - 1 else ("upsample3d" if temporal_up[i] else "upsample2d")
            blocks.append(UpBlock(c_in, c_out, cfg.num_res_blocks, mode, cfg.norm))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = NORMS[cfg.norm](dims[-1])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, stream: Stream | None = None) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z, stream), stream)
        for block in self.up_blocks:
            x = block(x, stream)
        return norm_conv(self.norm_out, self.conv_out, x, stream)


class VAE(nn.Module):
    """Video <-> latent. Pixels are (B, 3, 4k+1, H, W) in [-1, 1]; latents (B, z_dim, k+1, H/8, W/8)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)
        self.register_buffer("latents_mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Start the posterior narrow (log-variance bias -4, std 0.14): with unit variance at init the sampled
        latent is mostly noise, and a fresh VAE trains for hundreds of steps at the constant-colour loss
        before the encoder's means outgrow it (measured on the world). Loaded weights replace this."""
        with torch.no_grad():
            self.quant_conv.bias[self.cfg.z_dim:].fill_(-4.0)

    # -- shapes --------------------------------------------------------------------------------------
    def latent_frames(self, frames: int) -> int:
        """Latent frames for a clip of ``frames`` video frames (which must be 4k+1)."""
        tf = self.cfg.temporal_factor
        if frames < 1 or (frames - 1) % tf:
            raise ValueError(f"frame count must be {tf}k+1 (1, {tf + 1}, {2 * tf + 1}, ...), got {frames}")
        return (frames - 1) // tf + 1

    def _check_pixels(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.cfg.in_channels:
            raise ValueError(f"video must be (B, {self.cfg.in_channels}, F, H, W), got {tuple(video.shape)}")
        s = self.cfg.spatial_factor
        if video.shape[3] % s or video.shape[4] % s:
            raise ValueError(f"video height and width must be multiples of {s}, got {video.shape[3]}x{video.shape[4]}")
        self.latent_frames(video.shape[2])

    # -- encode --------------------------------------------------------------------------------------
    def encode_moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (raw latent space) of ``video`` (B, 3, 4k+1, H, W)."""
        self._check_pixels(video)
        tf, n = self.cfg.temporal_factor, self.cfg.chunk_latent_frames
        stream: Stream = {}
        outs = []
        frames = video.shape[2]
        start, end = 0, 1 + tf * (n - 1)  # first chunk: frame 0 plus n-1 latent frames' worth
        while start < frames:
            chunk = channels_last(video[:, :, start:end].to(self.quant_conv.weight.dtype))
            outs.append(self.encoder(chunk, stream))
            start, end = end, end + tf * n
        moments = self.quant_conv(torch.cat(outs, dim=2))
        mean, logvar = moments.chunk(2, dim=1)
        return mean.contiguous(), logvar.clamp(-30.0, 20.0).contiguous()

    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None,
               normalize: bool = True) -> torch.Tensor:
        """Latents of ``video`` (posterior mean, or a sample), normalised by the latent statistics by default."""
        mean, logvar = self.encode_moments(video)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.normalize(z) if normalize else z

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latents_mean.to(z.dtype)) / self.latents_std.to(z.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latents_std.to(z.dtype) + self.latents_mean.to(z.dtype)

    # -- decode --------------------------------------------------------------------------------------
    def decode_chunks(self, latents: torch.Tensor, normalized: bool = True,
                      stream: Stream | None = None) -> Iterator[torch.Tensor]:
        """Yield decoded pixel chunks (B, 3, frames, H, W) in [-1, 1], streaming over latent frames.

        ``stream``: a dict kept between calls makes them one clip, each call's latents continuing the last
        call's (the first call starts it; ``tf`` pixel frames per latent frame after the first).
        """
        if latents.ndim != 5 or latents.shape[1] != self.cfg.z_dim:
            raise ValueError(f"latents must be (B, {self.cfg.z_dim}, F, H, W), got {tuple(latents.shape)}")
        z = self.denormalize(latents) if normalized else latents
        z = self.post_quant_conv(channels_last(z.to(self.post_quant_conv.weight.dtype)))
        stream = {} if stream is None else stream
        n = self.cfg.chunk_latent_frames
        for start in range(0, z.shape[2], n):
            yield self.decoder(z[:, :, start:start + n], stream).clamp(-1.0, 1.0).contiguous()

    def decode(self, latents: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """Video (B, 3, 4k+1, H, W) in [-1, 1] from latents (B, z_dim, k+1, H/8, W/8)."""
        return torch.cat(list(self.decode_chunks(latents, normalized)), dim=2)

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: (reconstruction, mean, logvar) with a sampled latent (raw latent space)."""
        mean, logvar = self.encode_moments(video)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = self.decoder(self.post_quant_conv(z))
        return recon, mean, logvar
