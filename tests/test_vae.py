"""VAE: parity with diffusers' AutoencoderKLWan (encode, decode, multi-chunk clips), causality, streaming, shapes."""

import pytest
import torch
import torch.nn.functional as F

from kinema.config import ConfigError, VAEConfig
from kinema.vae import VAE

diffusers = pytest.importorskip("diffusers")

TINY = dict(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1)


def _random_vae(chunk=2, **kw):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(**TINY, latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4, chunk_latent_frames=chunk, **kw)).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.uniform_(0.5, 1.5) if "gamma" in name else p.normal_(0, 0.1)
    return vae


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """diffusers' VAE with random weights, saved, and kinema's VAE loaded from that folder."""
    from kinema.weights import load_vae

    torch.manual_seed(0)
    ref = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                     latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0]).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.uniform_(0.5, 1.5) if "gamma" in name else p.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("vae") / "vae"
    ref.save_pretrained(path)
    ours = load_vae(path)
    return ref, ours


@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_encode_matches_diffusers(pair, chunk):
    ref, ours = pair
    ours = VAE(ours.cfg.replace(chunk_latent_frames=chunk)).eval()
    ours.load_state_dict(pair[1].state_dict())
    x = torch.rand(1, 3, 21, 32, 48) * 2 - 1  # 6 latent frames: several chunks unless chunk=8
    with torch.no_grad():
        want = ref.encode(x).latent_dist
        mean, logvar = ours.encode_moments(x)
    assert (mean - want.mean).abs().max() <= 1e-4
    assert (logvar - want.logvar).abs().max() <= 1e-4


@pytest.mark.parametrize("chunk", [1, 4])
def test_decode_matches_diffusers(pair, chunk):
    ref, ours = pair
    ours = VAE(ours.cfg.replace(chunk_latent_frames=chunk)).eval()
    ours.load_state_dict(pair[1].state_dict())
    z = torch.randn(1, 4, 6, 4, 6)
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours.decode(z, normalized=False)
    assert got.shape == want.shape == (1, 3, 21, 32, 48)
    assert (got - want).abs().max() <= 1e-4


def test_latent_normalisation_follows_config(pair):
    _, vae = pair
    z = torch.randn(1, 4, 2, 3, 3)
    assert torch.allclose(vae.denormalize(vae.normalize(z)), z, atol=1e-6)
    assert torch.allclose(vae.normalize(z)[:, 1], (z[:, 1] + 0.2) / 0.5, atol=1e-6)


@pytest.mark.parametrize("norm", ["rms", "frame"])
def test_first_frame_is_encoded_on_its_own(norm):
    vae = _random_vae(norm=norm)
    x = torch.rand(1, 3, 17, 16, 16) * 2 - 1
    with torch.no_grad():
        whole = vae.encode(x)
        first = vae.encode(x[:, :, :1])
        prefix = vae.encode(x[:, :, :9])
    assert first.shape[2] == 1 and whole.shape[2] == 5
    assert torch.allclose(first, whole[:, :, :1], atol=1e-5)
    assert torch.allclose(prefix, whole[:, :, :3], atol=1e-5)  # causal: the future never changes the past


@pytest.mark.parametrize("norm", ["rms", "frame"])
def test_decode_is_causal_and_streams(norm):
    vae = _random_vae(chunk=2, norm=norm)
    z = torch.randn(1, 4, 5, 2, 2)
    with torch.no_grad():
        whole = vae.decode(z)
        head = vae.decode(z[:, :, :2])
        chunks = list(vae.decode_chunks(z))
    assert whole.shape[2] == 17 and head.shape[2] == 5
    assert torch.allclose(head, whole[:, :, :5], atol=1e-5)
    assert [c.shape[2] for c in chunks] == [5, 8, 4]  # 2 latent frames, 2, then 1
    assert torch.equal(torch.cat(chunks, dim=2), whole)


def test_a_first_frame_convolves_only_with_the_last_temporal_tap_and_streams_on():
    from kinema.vae.model import CausalConv3d

    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 5, 6, 7)
    with torch.no_grad():
        padded = torch.nn.functional.conv3d(torch.cat([torch.zeros(1, 3, 2, 6, 7), x], dim=2), conv.weight,
                                            conv.bias, padding=(0, 1, 1))  # the causal zeros written out
        stream: dict = {}
        first, rest = conv(x[:, :, :1], stream), conv(x[:, :, 1:], stream)  # 1 frame, then 4 more
        assert torch.allclose(first, padded[:, :, :1], atol=1e-6)
        assert torch.allclose(torch.cat([first, rest], dim=2), padded, atol=1e-6)
        assert torch.allclose(conv(x[:, :, :1]), padded[:, :, :1], atol=1e-6)  # no stream: the same


def test_frame_norm_normalises_each_frame_alone_and_keeps_the_parameter_layout():
    from kinema.nn import FrameNorm

    norm = FrameNorm(4)
    x = torch.randn(2, 4, 3, 5, 6) * torch.tensor([1.0, 3.0, 10.0]).view(1, 1, 3, 1, 1) + 7.0
    y = norm(x)
    assert torch.allclose(y.mean(dim=(1, 3, 4)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(y.var(dim=(1, 3, 4), correction=0), torch.ones(2, 3), atol=1e-4)
    assert torch.allclose(norm(x[:, :, 1:2]), y[:, :, 1:2], atol=1e-6)  # a frame's output ignores the others
    frames = x.transpose(1, 2).reshape(6, 4, 5, 6)  # the attention block's (B*T, C, H, W) view
    assert torch.allclose(FrameNorm(4, spatial_dims=2)(frames), y.transpose(1, 2).reshape(6, 4, 5, 6), atol=1e-5)
    rms, frame = _random_vae(norm="rms"), _random_vae(norm="frame")
    assert {k: v.shape for k, v in rms.state_dict().items()} == {k: v.shape for k, v in frame.state_dict().items()}
    with pytest.raises(ConfigError, match=r"norm must be 'rms' or 'frame', got 'group'"):
        VAEConfig(norm="group")


def test_streaming_bounds_memory_by_the_chunk():
    """Peak activation size per chunk does not grow with clip length."""
    vae = _random_vae(chunk=2)
    seen = []
    # the last up block's frames per chunk (at inference its norm writes straight into conv_out's buffer, which
    # the convolution then reads without a module call)
    hook = vae.decoder.up_blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape[2]))
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 11, 2, 2))
    hook.remove()
    assert max(seen) <= 8 and sum(seen) == 41


@pytest.mark.parametrize("frames", [0, 2, 8, 16])
def test_rejects_bad_frame_counts(frames):
    vae = _random_vae()
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.encode(torch.zeros(1, 3, frames, 16, 16))


def test_rejects_bad_sizes():
    vae = _random_vae()
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 12, 16))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 3, 2, 2, 2))


def test_training_pass_has_gradients():
    vae = _random_vae()
    recon, mean, logvar = vae(torch.rand(1, 3, 5, 16, 16) * 2 - 1)
    assert recon.shape == (1, 3, 5, 16, 16) and mean.shape == (1, 4, 2, 2, 2)
    (recon.square().mean() + mean.square().mean()).backward()
    assert vae.encoder.conv_in.weight.grad is not None and vae.decoder.conv_out.weight.grad is not None


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("norm", ["rms", "frame"])
def test_norm_inference_path_equals_the_autograd_path(norm, layout, silu):
    """The inference path (and its SiLU applied in fp32 before the one rounding) equals the autograd path,
    leaves its input as it was, and normalises a bf16 map in fp32 (closer to the fp32 answer than bf16 steps)."""
    from kinema.nn import ChannelRMSNorm, FrameNorm

    layer = {"rms": ChannelRMSNorm, "frame": FrameNorm}[norm](6)
    with torch.no_grad():
        layer.gamma.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 3, 5, 7) * 3 + 2
    x[1, :, 2] = 4.0  # a flat frame: zero variance (frame) / a constant vector (rms)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    original = x.clone()
    trained = layer(x.clone().requires_grad_(), silu=silu)
    expected = (F.silu(layer(x.clone().requires_grad_())) if silu else trained).detach()
    assert torch.allclose(trained.detach(), expected, atol=1e-6)
    with torch.no_grad():
        fast = layer(x, silu=silu)
        bf16 = layer(x.bfloat16(), silu=silu)
    assert torch.allclose(fast, expected, atol=1e-5) and torch.equal(x, original)  # input untouched
    assert fast.is_contiguous(memory_format=torch.channels_last_3d) == (layout == "channels_last")
    assert bf16.dtype == torch.bfloat16 and torch.allclose(bf16.float(), expected, atol=0.05, rtol=0.02)
    if silu:  # normalised, scaled and activated in fp32, rounded once: as close as bf16 can hold the fp32 answer
        with torch.no_grad():
            exact = F.silu(layer(x.bfloat16().float()))
        assert (bf16.float() - exact).abs().max() <= (exact.bfloat16().float() - exact).abs().max() + 1e-6
    assert torch.equal(x.bfloat16(), original.bfloat16())


@pytest.mark.parametrize("norm", ["rms", "frame"])
def test_cpu_inference_runs_channels_last_and_equals_the_autograd_layout(norm):
    """Without autograd a CPU pass runs channels-last (oneDNN's fast layout); with it, contiguous. The two agree,
    and what comes back is contiguous either way."""
    vae = _random_vae(chunk=2, norm=norm)
    x = torch.rand(1, 3, 13, 32, 32) * 2 - 1
    layouts = []
    hook = vae.decoder.up_blocks[-1].register_forward_hook(  # what the last norm and convolution take
        lambda m, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last_3d)))
    mean, _ = vae.encode_moments(x)  # autograd on: the training layout
    video = vae.decode(mean)
    with torch.no_grad():
        fast_mean, _ = vae.encode_moments(x)
        fast_video = vae.decode(fast_mean)
    hook.remove()
    assert layouts == [False, False, True, True]  # two chunks each
    assert fast_mean.is_contiguous() and fast_video.is_contiguous()
    assert (fast_mean - mean.detach()).abs().max() <= 1e-4 and (fast_video - video.detach()).abs().max() <= 1e-4


@pytest.mark.parametrize("norm", ["frame", "rms"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_write_into_the_causal_convolutions_buffer_exactly(dtype, norm, monkeypatch):
    """At inference the norm (per frame, or Wan's per pixel) writes its frames after the causal history in the
    buffer the convolution reads (no concatenation): bit-identical to norm, then concatenate, then convolve,
    across chunks, for a batch of two."""
    from kinema.vae.model import NORMS

    layer = NORMS[norm]
    vae = _random_vae(chunk=2, norm=norm).to(dtype)
    x = (torch.rand(2, 3, 13, 32, 32) * 2 - 1).to(dtype)
    calls = []
    real = layer.norm_into
    monkeypatch.setattr(layer, "norm_into", lambda self, x, out: calls.append(1) or real(self, x, out))
    with torch.no_grad():
        z = vae.encode(x)
        video = vae.decode(z)
    assert calls
    monkeypatch.delattr(layer, "norm_into")
    with torch.no_grad():
        assert torch.equal(vae.encode(x), z) and torch.equal(vae.decode(z), video)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(4, 4), (5, 7)])
def test_upsampling_as_one_small_convolution_equals_upsample_then_convolve(dtype, size, monkeypatch):
    """At CPU inference the decoder's spatial upsampling (nearest 2x, then a 3x3 convolution) runs as one 2x2
    convolution on the small map with the four output phases as channels: the reference's values (fp32 to
    1e-5; bf16 within its rounding), channels-last; the autograd layout keeps the two steps."""
    from kinema.vae import model

    torch.manual_seed(0)
    up = model.Resample(16, "upsample2d").to(dtype)
    x = torch.randn(2, 16, 3, *size).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    calls = []
    real = model.upsample_conv
    monkeypatch.setattr(model, "upsample_conv", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        got = up(x)
        frames = x.float().transpose(1, 2).reshape(6, 16, *size)
        want = up.float().resample(frames).reshape(2, 3, 8, 2 * size[0], 2 * size[1]).transpose(1, 2)
        up.to(dtype)
    assert calls == [1]
    assert got.shape == (2, 8, 3, 2 * size[0], 2 * size[1]) and got.dtype == dtype
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05 * want.abs().max().item()
    assert (got.float() - want).abs().max() <= tolerance
    with torch.no_grad():  # a contiguous map (the autograd layout) takes the two steps
        stepwise = up(x.contiguous())
    assert calls == [1] and (stepwise.float() - got.float()).abs().max() <= tolerance


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stride, padding", [((1, 1, 1), (0, 1, 1)), ((1, 2, 2), (0, 0, 1))])
def test_few_output_convolution_by_temporal_taps_equals_conv3d(dtype, stride, padding, monkeypatch):
    """A CPU inference convolution to <= FEW_OUTPUTS channels runs as one 2D convolution with the temporal
    taps as output channels, summed per frame: conv3d's values (fp32 to 1e-5, bf16 within a few roundings of
    its partial sums), and the decoder's RGB output takes that path."""
    from kinema.vae import model

    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 10, 12).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    weight, bias = (torch.randn(3, 8, 3, 3, 3) * 0.2).to(dtype), torch.randn(3).to(dtype)
    with torch.no_grad():
        got = model._conv3d(x, weight, bias, stride, padding)
    want = F.conv3d(x.float(), weight.float(), bias.float(), stride, padding)
    assert got.shape == want.shape and got.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 0.02 * want.abs().max().item()
    assert (got.float() - want).abs().max() <= tolerance
    calls = []
    real = model._conv3d_by_taps
    monkeypatch.setattr(model, "_conv3d_by_taps", lambda *a: calls.append(a[1].shape) or real(*a))
    vae = _random_vae(chunk=2)
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 3, 4, 4))
    assert calls and all(shape[0] == 3 for shape in calls)  # only the RGB output, once per chunk
