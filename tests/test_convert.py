"""Original Wan 2.1 checkpoints -> kinema: parity with diffusers' own converters, round trips, model outputs,
config inference from shapes, the on-disk converter, and its refusals."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kinema.config import DiTConfig, VAEConfig, preset
from kinema.dit import DiT
from kinema.vae import VAE
from kinema.weights.convert import (ConversionError, convert_checkpoint, convert_wan_dit, convert_wan_vae,
                                    detect_kind, detect_layout, infer_dit_config, infer_vae_config,
                                    to_wan_original_dit, to_wan_original_vae)

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.single_file_utils import (convert_wan_transformer_to_diffusers,  # noqa: E402
                                                 convert_wan_vae_to_diffusers)

DIT_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=32, ffn_dim=48, num_layers=2)
DIT_I2V = dict(DIT_TINY, in_channels=8, image_dim=20, added_kv_proj_dim=24)
# Wan 2.1's VAE structure at 1/24 width: diffusers' single-file converter hard-codes this block layout.
VAE_WAN = dict(base_dim=4, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2, temporal_downsample=(False, True, True))
# Another structure (kinema's tiny preset shape, one res block): exercises the general mapping.
VAE_ODD = dict(base_dim=4, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1, temporal_downsample=(True, False, True))
# Encoder attention (attn_scales); diffusers' encoder cannot run these blocks, so this one is checked by names only.
VAE_ATTN = dict(VAE_ODD, attn_scales=(0.5,))


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values everywhere, so that zero-initialised parameters cannot hide a wrong mapping."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module.eval()


def _ref_dit(**cfg) -> torch.nn.Module:
    return _randomize(diffusers.WanTransformer3DModel(**cfg))


def _ref_vae(**cfg) -> torch.nn.Module:
    kw = {("temperal_downsample" if k == "temporal_downsample" else k): list(v) if isinstance(v, tuple) else v
          for k, v in cfg.items()}
    z = cfg["z_dim"]
    return _randomize(diffusers.AutoencoderKLWan(latents_mean=[0.0] * z, latents_std=[1.0] * z, **kw))


def _vae_config(**cfg) -> VAEConfig:
    z = cfg["z_dim"]
    return VAEConfig(latents_mean=(0.0,) * z, latents_std=(1.0,) * z, **cfg)


def _assert_same_tensors(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    bad = [k for k in want if got[k].shape != want[k].shape or not torch.equal(got[k], want[k])]
    assert not bad, bad[:5]


@pytest.fixture(scope="module", params=["t2v", "i2v"])
def dit_pair(request):
    """(diffusers model, its state dict in the original Wan layout, its kinema config)."""
    cfg = DIT_TINY if request.param == "t2v" else DIT_I2V
    ref = _ref_dit(**cfg)
    return ref, to_wan_original_dit(ref.state_dict()), DiTConfig(**cfg)


@pytest.fixture(scope="module", params=["wan", "odd"])
def vae_pair(request):
    cfg = VAE_WAN if request.param == "wan" else VAE_ODD
    ref = _ref_vae(**cfg)
    return ref, to_wan_original_vae(ref.state_dict()), _vae_config(**cfg)


# -- the original layout, as Wan 2.1's own modules name it ---------------------------------------------------

def test_exported_dit_keys_are_wan_module_names():
    """Names written out from Wan's WanModel / WanAttentionBlock / Head / MLPProj definitions."""
    orig = to_wan_original_dit(_ref_dit(**DIT_I2V).state_dict())
    wb = ("weight", "bias")
    top = {f"{m}.{p}" for m in ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                                "time_embedding.2", "time_projection.1", "head.head", "img_emb.proj.0",
                                "img_emb.proj.1", "img_emb.proj.3", "img_emb.proj.4") for p in wb} | {"head.modulation"}
    block = {f"{a}.{m}.{p}" for a in ("self_attn", "cross_attn") for m in "qkvo" for p in wb}
    block |= {f"{a}.{n}.weight" for a in ("self_attn", "cross_attn") for n in ("norm_q", "norm_k")}
    block |= {f"cross_attn.{m}.{p}" for m in ("k_img", "v_img") for p in wb} | {"cross_attn.norm_k_img.weight"}
    block |= {"norm3.weight", "norm3.bias", "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias", "modulation"}
    want = top | {f"blocks.{i}.{k}" for i in range(2) for k in block}
    assert set(orig) == want


def test_exported_vae_keys_are_wan_module_names():
    orig = to_wan_original_vae(_ref_vae(**VAE_WAN).state_dict())
    for key in ("conv1.weight", "conv2.bias", "encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma",
                "encoder.downsamples.2.resample.1.weight", "encoder.downsamples.3.shortcut.weight",
                "encoder.downsamples.4.residual.6.weight",
                "encoder.downsamples.5.time_conv.weight", "encoder.middle.1.to_qkv.weight",
                "encoder.middle.2.residual.3.gamma", "encoder.head.0.gamma", "decoder.conv1.bias",
                "decoder.middle.0.residual.2.weight", "decoder.upsamples.3.resample.1.weight",
                "decoder.upsamples.3.time_conv.weight", "decoder.upsamples.4.shortcut.weight",
                "decoder.upsamples.14.residual.6.bias", "decoder.head.2.weight"):
        assert key in orig, key
    assert not any(k.startswith(("quant_conv", "decoder.up_blocks", "encoder.down_blocks")) for k in orig)
    assert "encoder.downsamples.2.time_conv.weight" not in orig  # level 0 downsamples only in space
    assert not any("upsamples.15." in k for k in orig)  # 3 levels x (3 resnets + 1 resampler) + 3 resnets


# -- (a) parity with diffusers' single-file converters -------------------------------------------------------

def test_dit_matches_diffusers_converter(dit_pair):
    ref, orig, _ = dit_pair
    ours = convert_wan_dit(orig)
    theirs = convert_wan_transformer_to_diffusers(dict(orig))  # it pops from its argument
    _assert_same_tensors(ours, theirs)
    _assert_same_tensors(ours, ref.state_dict())


def test_dit_single_file_prefix_is_stripped(dit_pair):
    _, orig, _ = dit_pair
    prefixed = {f"model.diffusion_model.{k}": v for k, v in orig.items()}
    assert detect_layout(prefixed) == "wan-original" and detect_kind(prefixed) == "dit"
    _assert_same_tensors(convert_wan_dit(prefixed), convert_wan_dit(orig))


def test_vae_matches_diffusers_converter():
    ref = _ref_vae(**VAE_WAN)
    orig = to_wan_original_vae(ref.state_dict())
    ours = convert_wan_vae(orig)
    _assert_same_tensors(ours, convert_wan_vae_to_diffusers(dict(orig)))
    _assert_same_tensors(ours, ref.state_dict())


# -- (b) round trips ---------------------------------------------------------------------------------------

def test_dit_round_trip(dit_pair):
    ref, orig, _ = dit_pair
    _assert_same_tensors(to_wan_original_dit(convert_wan_dit(orig)), orig)
    _assert_same_tensors(convert_wan_dit(to_wan_original_dit(ref.state_dict())), ref.state_dict())


def test_vae_round_trip(vae_pair):
    ref, orig, _ = vae_pair
    _assert_same_tensors(to_wan_original_vae(convert_wan_vae(orig)), orig)
    _assert_same_tensors(convert_wan_vae(orig), ref.state_dict())


# -- (c) kinema's models load the converted weights and compute what diffusers computes -------------------

def test_kinema_dit_matches_diffusers_outputs(dit_pair):
    ref, orig, cfg = dit_pair
    ours = DiT(cfg).eval()
    ours.load_state_dict(convert_wan_dit(orig), strict=True)
    torch.manual_seed(1)
    x, t = torch.randn(1, cfg.in_channels, 2, 4, 6), torch.tensor([300.0])
    text = torch.randn(1, 512, cfg.text_dim)  # diffusers' I2V attention assumes 512 text tokens
    image = torch.randn(1, 5, cfg.image_dim) if cfg.image_dim else None
    with torch.no_grad():
        want = ref(x, t, text, encoder_hidden_states_image=image, return_dict=False)[0]
        got = ours(x, t, text, image_tokens=image)
    assert got.shape == want.shape == (1, cfg.out_channels, 2, 4, 6)
    assert (got - want).abs().max() <= 1e-4


def test_kinema_vae_matches_diffusers_outputs(vae_pair):
    ref, orig, cfg = vae_pair
    ours = VAE(cfg).eval()
    ours.load_state_dict(convert_wan_vae(orig), strict=True)
    torch.manual_seed(1)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        want_mean = ref.encode(video).latent_dist.mean
        got_mean, _ = ours.encode_moments(video)
        want = ref.decode(want_mean).sample
        got = ours.decode(want_mean, normalized=False)
    assert got_mean.shape == want_mean.shape
    assert (got_mean - want_mean).abs().max() <= 1e-4
    assert (got - want).abs().max() <= 1e-4


# -- config inference from shapes -----------------------------------------------------------------------

def test_infer_configs_from_either_layout(dit_pair, vae_pair):
    ref, orig, cfg = dit_pair
    assert infer_dit_config(orig, attention_head_dim=12) == cfg
    assert infer_dit_config(ref.state_dict(), attention_head_dim=12) == cfg
    ref, orig, cfg = vae_pair
    assert infer_vae_config(orig) == cfg == infer_vae_config(ref.state_dict())


def test_encoder_attention_blocks_convert_and_infer():
    ref = _ref_vae(**VAE_ATTN)
    orig = to_wan_original_vae(ref.state_dict())
    assert "encoder.downsamples.3.to_qkv.weight" in orig  # level 1 (scale 0.5): res, attn, resample
    _assert_same_tensors(convert_wan_vae(orig), ref.state_dict())
    cfg = infer_vae_config(orig)
    assert cfg == _vae_config(**VAE_ATTN)
    VAE(cfg).load_state_dict(convert_wan_vae(orig), strict=True)


@pytest.mark.parametrize("name", ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
def test_infer_real_wan_sizes_on_meta_tensors(name):
    """Full-size shapes (no memory: meta tensors); Wan's 128-wide heads are the default."""
    want = preset(name).dit
    kw = {k: v for k, v in want.to_dict().items() if k != "patch_size"}
    with torch.device("meta"):
        ref = diffusers.WanTransformer3DModel(patch_size=want.patch_size, **kw)
    assert infer_dit_config(to_wan_original_dit(ref.state_dict())) == want


def test_infer_real_wan_i2v_and_vae_on_meta_tensors():
    want = DiTConfig(num_attention_heads=40, in_channels=36, ffn_dim=13824, num_layers=40, image_dim=1280,
                     added_kv_proj_dim=5120)
    kw = {k: v for k, v in want.to_dict().items() if k != "patch_size"}
    with torch.device("meta"):
        dit = diffusers.WanTransformer3DModel(patch_size=want.patch_size, **kw)
        vae = diffusers.AutoencoderKLWan()
    assert infer_dit_config(to_wan_original_dit(dit.state_dict())) == want
    assert infer_vae_config(to_wan_original_vae(vae.state_dict())) == VAEConfig()  # Wan 2.1's VAE, latent stats too


# -- (d) the on-disk converter ------------------------------------------------------------------------------

def test_convert_dit_safetensors_file_loads_in_diffusers_and_kinema(tmp_path, dit_pair):
    from kinema.weights import load_dit

    ref, orig, cfg = dit_pair
    src = tmp_path / "wan.safetensors"
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in orig.items()}, str(src))
    out = convert_checkpoint(src, tmp_path / "transformer", kind="auto", attention_head_dim=12)
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel" and config["num_layers"] == cfg.num_layers
    loaded = diffusers.WanTransformer3DModel.from_pretrained(out)
    _assert_same_tensors(loaded.state_dict(), ref.state_dict())
    _assert_same_tensors(load_dit(out).state_dict(), ref.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transformer", "wan.safetensors"]  # no temporaries left


def test_convert_sharded_folder_with_dtype_cast(tmp_path):
    ref = _ref_dit(**DIT_TINY)
    orig = to_wan_original_dit(ref.state_dict())
    keys = sorted(orig)
    shards = tmp_path / "wan"
    shards.mkdir()
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:])):
        shard = shards / f"diffusion_pytorch_model-{i:05d}-of-00002.safetensors"
        save_file({k: orig[k].contiguous() for k in part}, str(shard))
    (shards / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")  # ignored: shards are globbed
    out = convert_checkpoint(shards, tmp_path / "out", kind="dit", attention_head_dim=12, dtype=torch.bfloat16)
    loaded = diffusers.WanTransformer3DModel.from_pretrained(out, torch_dtype=torch.bfloat16)
    want = {k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()}
    _assert_same_tensors(loaded.state_dict(), want)


def test_convert_vae_pth_loads_in_diffusers(tmp_path, vae_pair):
    ref, orig, cfg = vae_pair
    src = tmp_path / "Wan2.1_VAE.pth"
    torch.save(orig, src)
    out = convert_checkpoint(src, tmp_path / "vae")
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLWan" and config["dim_mult"] == list(cfg.dim_mult)
    loaded = diffusers.AutoencoderKLWan.from_pretrained(out)
    _assert_same_tensors(loaded.state_dict(), ref.state_dict())


def test_diffusers_layout_is_repackaged_and_overwrite_replaces(tmp_path):
    ref = _ref_vae(**VAE_WAN)
    src = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    dst = tmp_path / "vae"
    dst.mkdir()
    (dst / "config.json").write_text("{}")  # a previous conversion's output, stale
    (dst / "diffusion_pytorch_model.safetensors").write_bytes(b"old")
    with pytest.raises(ConversionError, match=r"already exists; choose another folder, or replace it with "
                                              r"--overwrite \(overwrite=True in Python\)"):
        convert_checkpoint(src, dst, kind="vae")
    convert_checkpoint(src, dst, kind="vae", overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    _assert_same_tensors(diffusers.AutoencoderKLWan.from_pretrained(dst).state_dict(), ref.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae", "vae.safetensors"]  # no temporaries left


def test_cli_overwrite_swaps_in_a_complete_folder_and_keeps_the_old_one_on_failure(tmp_path, monkeypatch, capsys):
    import kinema.weights.convert as convert
    from kinema.cli import main

    ref = _ref_vae(**VAE_WAN)
    src = tmp_path / "Wan2.1_VAE.pth"
    torch.save(to_wan_original_vae(ref.state_dict()), src)
    dst = tmp_path / "vae"
    assert main(["convert", str(src), str(dst)]) == 0
    assert main(["convert", str(src), str(dst)]) == 2
    assert "already exists; choose another folder, or replace it with --overwrite" in capsys.readouterr().err
    before = {p.name: p.read_bytes() for p in dst.iterdir()}

    def dies_half_way(path, layout, load):  # a crash (or a full disk) in the middle of writing the weights
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(convert, "_write_safetensors", dies_half_way)
        assert main(["convert", str(src), str(dst), "--overwrite"]) == 1
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == before  # the old folder, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Wan2.1_VAE.pth", "vae"]
    (dst / "config.json").write_text("{}")
    assert main(["convert", str(src), str(dst), "--overwrite"]) == 0
    assert json.loads((dst / "config.json").read_text())["_class_name"] == "AutoencoderKLWan"
    _assert_same_tensors(diffusers.AutoencoderKLWan.from_pretrained(dst).state_dict(), ref.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Wan2.1_VAE.pth", "vae"]


def test_overwrite_replaces_only_a_previous_conversion(tmp_path):
    ref = _ref_vae(**VAE_WAN)
    src = tmp_path / "ckpt" / "vae.safetensors"
    src.parent.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    mine = tmp_path / "mine"
    (mine / "videos").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConversionError, match=r"mine holds 2 entries a conversion does not write \(notes.txt, "
                                              r"videos\); --overwrite replaces only a folder of config.json"):
        convert_checkpoint(src, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    for dst in (src.parent, tmp_path):  # the folder holding the checkpoint, or one above it
        with pytest.raises(ConversionError, match="holds the checkpoint being converted .*would delete it"):
            convert_checkpoint(src, dst, overwrite=True)
    with pytest.raises(ConversionError, match="holds the checkpoint being converted"):
        convert_checkpoint(src.parent, src.parent, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConversionError, match=r"file is a file, not a folder; --overwrite replaces only a folder"):
        convert_checkpoint(src, tmp_path / "file", overwrite=True)
    assert src.is_file() and (tmp_path / "file").read_text() == "x"


def test_a_model_folder_is_not_converted_but_named(tmp_path):
    import kinema

    bundled = Path(kinema.__file__).parent / "assets" / "world-small"
    with pytest.raises(ConversionError, match=r"world-small is already a kinema model folder \(it has kinema.json\); "
                                              r"nothing to convert \(load it directly with --model .*world-small\)"):
        convert_checkpoint(bundled, tmp_path / "out")
    pipeline = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    (pipeline / "transformer").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    with pytest.raises(ConversionError, match=r"is a diffusers pipeline folder .*nothing to convert \(load it "
                                              r"directly with --model"):
        convert_checkpoint(pipeline, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- (e) refusals --------------------------------------------------------------------------------------------

def test_missing_source_and_bad_kind(tmp_path):
    with pytest.raises(ConversionError, match="not found.*nowhere.safetensors"):
        convert_checkpoint(tmp_path / "nowhere.safetensors", tmp_path / "out")
    with pytest.raises(ConversionError, match="no .safetensors"):
        convert_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(ConversionError, match="kind must be one of.*'transformer'"):
        convert_checkpoint(tmp_path, tmp_path / "out", kind="transformer")


def test_a_pth_that_is_not_a_checkpoint_is_named(tmp_path):
    for name, data in (("text.pth", b"bogus text"), ("x.pth", b"x\n"), ("empty.pth", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConversionError, match=f"cannot read .*{name} as a torch checkpoint: it is neither a zip "
                                                  r"archive \(torch.save\) nor a pickle"):
            convert_checkpoint(tmp_path / name, tmp_path / "out")
    (tmp_path / "cut.pth").write_bytes(b"\x80\x02}q\x00(X")  # a pickle that ends early
    with pytest.raises(ConversionError, match=r"cannot read .*cut.pth as a torch checkpoint: it is truncated or "
                                              r"not one \(\w+"):
        convert_checkpoint(tmp_path / "cut.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_truncated_torch_save_is_named_truncated(tmp_path):
    torch.save(to_wan_original_vae(_ref_vae(**VAE_WAN).state_dict()), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    for keep in (0.5, 0.99):  # a download that stopped part-way, or just before the archive's index
        (tmp_path / "cut.pth").write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ConversionError, match=r"cannot read .*cut.pth as a torch checkpoint: it starts as a zip "
                                                  r"archive \(torch.save\) but is truncated or damaged"):
            convert_checkpoint(tmp_path / "cut.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_keys_are_listed(tmp_path, dit_pair):
    _, orig, _ = dit_pair
    bad = {**orig, "blocks.0.self_attn.lora_A.weight": torch.zeros(2), "vace_blocks.0.after_proj.bias": torch.zeros(2)}
    with pytest.raises(ConversionError, match=r"2 key\(s\).*blocks\.0\.self_attn\.lora_A\.weight.*vace_blocks"):
        convert_wan_dit(bad)
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConversionError, match="lora_A"):
        convert_checkpoint(tmp_path / "bad.safetensors", tmp_path / "out", attention_head_dim=12)
    assert not (tmp_path / "out").exists()


def test_wrong_shape_and_missing_key_are_named(tmp_path):
    orig = to_wan_original_dit(_ref_dit(**DIT_TINY).state_dict())
    wrong = {**orig, "blocks.1.ffn.0.weight": torch.zeros(40, 24)}
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(tmp_path / "wrong.safetensors"))
    want = r"blocks\.1\.ffn\.net\.0\.proj\.weight: checkpoint \(40, 24\), model \(48, 24\)"
    with pytest.raises(ConversionError, match=want):
        convert_checkpoint(tmp_path / "wrong.safetensors", tmp_path / "out", attention_head_dim=12)
    missing = {k: v.contiguous() for k, v in orig.items() if k != "blocks.1.cross_attn.o.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConversionError, match=r"1 missing.*blocks\.1\.attn2\.to_out\.0\.bias"):
        convert_checkpoint(tmp_path / "missing.safetensors", tmp_path / "out", attention_head_dim=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["missing.safetensors", "wrong.safetensors"]


def test_head_dim_that_does_not_divide_is_refused():
    orig = to_wan_original_dit(_ref_dit(**DIT_TINY).state_dict())
    with pytest.raises(ConversionError, match="width 24 is not a multiple of attention_head_dim=128"):
        infer_dit_config(orig)


def test_kind_mismatch_and_unknown_layout(tmp_path):
    orig = to_wan_original_vae(_ref_vae(**VAE_WAN).state_dict())
    torch.save(orig, tmp_path / "vae.pth")
    with pytest.raises(ConversionError, match="asked to convert a dit.*holds a vae"):
        convert_checkpoint(tmp_path / "vae.pth", tmp_path / "out", kind="dit")
    with pytest.raises(ConversionError, match="cannot tell the layout"):
        detect_layout({"encoder.weird.weight": torch.zeros(1)})
    with pytest.raises(ConversionError, match="neither a Wan DiT"):
        detect_kind({"text_model.embeddings.weight": torch.zeros(1)})


class _Trap:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_needs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"encoder.conv1.weight": torch.zeros(1), "x": _Trap(marker)}, f, protocol=2)
    torch.save({"w": torch.zeros(1), "x": _Trap(marker)}, tmp_path / "evil2.pth")
    for name in ("evil.pth", "evil2.pth"):
        with pytest.raises(ConversionError, match="refusing.*unpickling arbitrary objects"):
            convert_checkpoint(tmp_path / name, tmp_path / "out")
    assert not marker.exists()


def test_truncated_safetensors_is_refused(tmp_path):
    orig = to_wan_original_dit(_ref_dit(**DIT_TINY).state_dict())
    save_file({k: v.contiguous() for k, v in orig.items()}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cannot read .*cut.safetensors"):
        convert_checkpoint(tmp_path / "cut.safetensors", tmp_path / "out")


def test_decoder_attention_is_refused():
    orig = to_wan_original_vae(_ref_vae(**VAE_WAN).state_dict())
    orig["decoder.upsamples.1.to_qkv.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="attention blocks in its decoder"):
        convert_wan_vae(orig)
