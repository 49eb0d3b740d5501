"""Memory modes: each gives the no-offload output (fp32, CPU), moves what it says when it says, int8 stays
within its tolerance, tiled decode stitches exactly, and requests too large for a mode are refused helpfully."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kinema.config import preset
from kinema.dit import DiT
from kinema.infer import Pipeline
from kinema.infer.memory import GB, check_memory, estimate_memory
from kinema.infer.offload import BlockStreamer, Int8Linear, MemoryFitError, MemoryPlan, quantize_int8
from kinema.infer.tiling import decode_tiled, tile_starts
from kinema.nn import Linear
from kinema.vae import VAE

@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    from test_wan_pipeline import build_wan_folder
    return build_wan_folder(tmp_path_factory.mktemp("wan") / "wan")


REQUEST = dict(prompt="a red ball bounces", seed=2, steps=3, width=48, height=32, frames=9)


def _generate(pipe: Pipeline):
    kw = dict(REQUEST)
    return pipe.generate(kw.pop("prompt"), **kw)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return _generate(Pipeline.from_pretrained(tiny_model_dir))


@pytest.mark.parametrize("mode", ["model", "block"])
def test_offload_mode_gives_the_no_offload_output(tiny_model_dir, reference, mode):
    pipe = Pipeline.from_pretrained(tiny_model_dir, memory=mode)
    video = _generate(pipe)
    torch.testing.assert_close(video.latents, reference.latents, rtol=0, atol=1e-5)
    # decode runs one latent frame at a time in these modes: float rounding may move a pixel by one level
    diff = np.abs(video.frames.astype(int) - reference.frames.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01
    off = pipe.offloader
    assert off.loads == {"text": 1, "dit": 1, "vae": 1} and off.active == "vae"  # one hand-over per stage
    sizes = {name: c[2] for name, c in off.components.items()}
    dit_bytes = sum(p.numel() * 4 for p in pipe.dit.parameters())
    if mode == "model":  # only one component is ever resident
        assert off.peak_bytes == max(sizes.values()) and sizes["dit"] == dit_bytes
    else:  # the DiT's shell plus one block at a time (no side-stream prefetch on the CPU)
        block = sum(p.numel() * 4 for p in pipe.dit.blocks[0].parameters())
        assert sizes["dit"] == dit_bytes - len(pipe.dit.blocks) * block
        assert off.peak_bytes <= max(sizes["text"], sizes["dit"] + block, sizes["vae"])
        # 3 steps x (cond, uncond) one sample at a time x 2 blocks
        assert off.streamers[0].loads == 3 * 2 * len(pipe.dit.blocks)


def test_block_streamer_swaps_weights_in_and_back():
    torch.manual_seed(0)
    blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
    x0 = torch.randn(2, 4)
    with torch.no_grad():
        expected = blocks[2](blocks[1](blocks[0](x0)))
    seen = []
    for b in blocks:
        b.register_forward_hook(lambda m, a, o: seen.append(m.weight.data_ptr()))
    streamer = BlockStreamer(list(blocks), torch.device("cpu"))
    with torch.no_grad():
        got = blocks[2](blocks[1](blocks[0](x0)))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    host = [b.weight.data_ptr() for b in blocks]
    assert not set(seen) & set(host)  # each block ran on a fresh device copy...
    assert host == [t[0].data_ptr() for t in streamer.stored] and streamer.loads == 3  # ...and is back on the host
    assert all(isinstance(b.weight, nn.Parameter) for b in blocks)


def test_text_encoder_layers_stream_by_block(wan_folder):
    """A T5 text encoder in block mode: its layers are streamed, its output is unchanged."""
    reference = Pipeline.from_pretrained(wan_folder)
    pipe = Pipeline.from_pretrained(wan_folder, memory="block")
    prompts = ["a red fox runs", "blurry low quality"]
    torch.testing.assert_close(pipe.encode_prompts(prompts)[0], reference.encode_prompts(prompts)[0], rtol=0, atol=1e-6)
    text_streamer = pipe.offloader.streamers[1]
    assert text_streamer.loads == len(pipe.text_encoder.model.encoder.block)
    assert all(p.device.type == "cpu" for p in pipe.text_encoder.model.parameters())


# -- int8 ---------------------------------------------------------------------------------------------------

def test_int8_linear_error_is_bounded_per_channel():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    with torch.no_grad():
        linear.weight.mul_(torch.logspace(-2, 1, 32)[:, None])  # rows of very different scales
    q = Int8Linear(linear)
    assert q.weight_int8.dtype == torch.int8 and q.weight_scale.shape == (32,)
    weight = q.weight_int8.float() * q.weight_scale[:, None]
    row_max = linear.weight.abs().amax(1, keepdim=True)
    assert ((weight - linear.weight).abs() <= row_max / 254 + 1e-7).all()  # half a step of each row's scale
    x = torch.randn(5, 64)
    torch.testing.assert_close(q(x), x @ weight.T + linear.bias, rtol=1e-5, atol=1e-5)


def test_int8_dit_stays_close_and_stores_a_quarter():
    torch.manual_seed(0)
    cfg = preset("tiny").dit
    dit = DiT(cfg)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.05)
    latents, t, text = torch.randn(1, 4, 3, 8, 8), torch.tensor([600.0]), torch.randn(1, 5, cfg.text_dim)
    with torch.no_grad():
        expected = dit(latents, t, text)
        linears = [m for m in dit.blocks.modules() if type(m) in (nn.Linear, Linear)]
        saved = quantize_int8(dit.blocks)
        got = dit(latents, t, text)
    assert saved == sum(3 * m.weight.numel() - 4 * m.out_features for m in linears)  # 1 byte a weight + fp32 scales
    assert linears and not any(type(m) in (nn.Linear, Linear) for m in dit.blocks.modules())
    # stated tolerance: 2% of the output's scale (measured ~0.3%)
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()


def test_int8_pipeline_output_stays_close(tiny_model_dir, reference):
    video = _generate(Pipeline.from_pretrained(tiny_model_dir, memory=MemoryPlan(quantize="int8")))
    assert (video.latents - reference.latents).abs().max() < 0.02 * reference.latents.abs().max()


def test_int8_leaves_lora_layers_whole():
    from kinema.train.lora import LoRALinear
    module = nn.Sequential(LoRALinear(nn.Linear(4, 4)), nn.Linear(4, 4))
    quantize_int8(module)
    assert isinstance(module[0], LoRALinear) and isinstance(module[1], Int8Linear)


# -- tiled decode -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size,tile,overlap", [(8, 8, 2), (8, 32, 8), (20, 8, 2), (21, 8, 3), (9, 4, 1)])
def test_tiles_cover_with_the_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, size) == size  # from the first pixel to the last
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours share >= overlap


class PixelVAE:
    """A VAE stand-in whose decoder is pointwise (nearest 8x upsampling): tiling must reproduce it exactly."""

    class cfg:
        spatial_factor, temporal_factor = 8, 4

    def decode_chunks(self, latents, normalized=True):
        z = latents[:, :3]
        first = z[:, :, :1].repeat_interleave(8, 3).repeat_interleave(8, 4)
        yield first
        if z.shape[2] > 1:
            yield z[:, :, 1:].repeat_interleave(4, 2).repeat_interleave(8, 3).repeat_interleave(8, 4)


@pytest.mark.parametrize("tile,overlap", [(4, 1), (6, 2), (5, 2)])
def test_tiled_decode_stitches_exactly(tile, overlap):
    latents = torch.randn(1, 4, 3, 11, 9)
    full = torch.cat(list(PixelVAE().decode_chunks(latents)), dim=2)
    torch.testing.assert_close(decode_tiled(PixelVAE(), latents, tile, overlap), full, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    vae = VAE(preset("tiny").vae).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.normal_(0, 0.05)
    return vae


def test_tiled_decode_is_the_plain_decode_when_one_tile_covers_the_frame(tiny_vae):
    latents = torch.randn(1, 4, 3, 6, 8)
    with torch.no_grad():
        full = tiny_vae.decode(latents)
    got = decode_tiled(tiny_vae, latents, tile=8, overlap=2)
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, full, rtol=0, atol=1e-6)


def test_tiled_decode_of_a_real_decoder_is_close_and_better_with_more_overlap(tiny_vae):
    latents = torch.randn(1, 4, 1, 16, 16)
    with torch.no_grad():
        full = tiny_vae.decode(latents)
    errors = [(decode_tiled(tiny_vae, latents, tile=8, overlap=o) - full).abs().mean() for o in (0, 3)]
    assert errors[1] < errors[0] and errors[1] < 0.1 * full.abs().mean()


@pytest.mark.parametrize("kwargs,match", [(dict(vae_tile=8, vae_overlap=4), "vae_overlap"),
                                          (dict(offload="gpu"), "offload must be one of"),
                                          (dict(quantize="int4"), "quantize must be one of"),
                                          (dict(vae_chunk=0), "vae_chunk")])
def test_bad_plans_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MemoryPlan(**kwargs)


# -- how much memory, and refusing what cannot fit ----------------------------------------------------------

def test_estimating_memory_counts_parameters_without_importing_torch_dynamo():
    """Every `kinema generate` estimates memory before it loads; counting the DiT's parameters on the meta
    device once ran its initialisers there, whose torch._refs path imports torch._dynamo (1.3 s a command)."""
    import subprocess
    import sys

    code = ("import sys, torch; from kinema.config import preset; from kinema.infer.memory import estimate_memory; "
            "from kinema.dit import DiT; cfg = preset('wan2.1-t2v-1.3b'); "
            "est = estimate_memory(cfg, 832, 480, 81, torch.bfloat16); "
            "dit = DiT(cfg.dit.replace(num_layers=1)).to('meta'); "
            "print(est.weights > 0, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
    with torch.device("meta"):
        dit = DiT(preset("world-small").dit)
    assert all(p.is_meta for p in dit.parameters())  # shapes only, nothing filled
    assert sum(p.numel() for p in dit.parameters()) == sum(p.numel() for p in DiT(preset("world-small").dit).parameters())


def test_estimates_shrink_with_each_mode():
    cfg = preset("wan2.1-t2v-1.3b")
    s = cfg.sampling
    est = {m: estimate_memory(cfg, s.width, s.height, s.frames, torch.bfloat16, MemoryPlan.for_mode(m)).total
           for m in ("none", "model", "block")}
    assert est["none"] > est["model"] > est["block"]
    assert est["block"] < 6 * GB  # the 1.3B model's 8 GB target, with room for the CUDA context
    plain = estimate_memory(cfg, s.width, s.height, s.frames, torch.bfloat16)
    int8 = estimate_memory(cfg, s.width, s.height, s.frames, torch.bfloat16, MemoryPlan(quantize="int8"))
    assert int8.weights < plain.weights and int8.activations == plain.activations
    big = preset("wan2.1-t2v-14b")  # the DiT's activations dominate: parallel ranks each hold a quarter
    model = MemoryPlan.for_mode("model")
    one = estimate_memory(big, 1280, 720, 81, torch.bfloat16, model)
    four = estimate_memory(big, 1280, 720, 81, torch.bfloat16, model, sequence_parallel=2, cfg_parallel=2)
    assert one.stage == four.stage == "dit" and four.weights == one.weights
    assert four.activations == pytest.approx(one.activations / 4, rel=0.01)


def test_too_large_for_the_mode_names_the_mode_that_fits():
    cfg = preset("wan2.1-t2v-1.3b")
    with pytest.raises(MemoryFitError, match=r"wan2.1-t2v-1.3b at 832x480x81 in bfloat16 needs about .* GB .* with "
                                             r"--offload none, but cuda has 8.0 GB free; --offload block needs about"):
        check_memory(cfg, 832, 480, 81, torch.bfloat16, MemoryPlan(), "cuda", available=8 * GB)
    est = check_memory(cfg, 832, 480, 81, torch.bfloat16, MemoryPlan.for_mode("block"), "cuda", available=8 * GB)
    assert est.mode == "block"
    with pytest.raises(MemoryFitError, match="no memory mode fits: try a smaller --size.*several GPUs"):
        check_memory(preset("wan2.1-t2v-14b"), 1280, 720, 81, torch.bfloat16, MemoryPlan(), "cuda", available=2 * GB)


def test_cli_refuses_a_request_too_large_for_this_machine(tiny_model_dir, monkeypatch, capsys, tmp_path):
    from kinema.cli import main
    monkeypatch.setattr("kinema.infer.memory.available_memory", lambda device: 1 << 20)
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "0.0 GB free" in err and "no memory mode fits" in err
    assert not list(tmp_path.iterdir())
