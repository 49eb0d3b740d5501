"""Model folders: round trips, diffusers folders, and clear errors for missing/truncated/mis-shaped weights."""

import json

import pytest
import torch

from kinema.config import preset
from kinema.dit import DiT
from kinema.vae import VAE
from kinema.weights import WeightsError, folder_kind, load_dit, load_vae, read_config, save_diffusers_component, save_model


def test_kinema_folder_round_trip(tiny_model_dir):
    cfg = read_config(tiny_model_dir)
    assert cfg == preset("tiny")
    dit, vae = load_dit(tiny_model_dir), load_vae(tiny_model_dir)
    assert not dit.training and not vae.training
    x = torch.randn(1, 4, 2, 4, 4)
    assert dit(x, torch.tensor([1.0]), torch.randn(1, 3, 384)).shape == x.shape


def test_save_is_complete_and_loads_identically(tmp_path):
    cfg = preset("tiny")
    torch.manual_seed(1)
    dit = DiT(cfg.dit)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_()
    save_model(tmp_path / "m", cfg, dit, VAE(cfg.vae))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["kinema.json", "transformer.safetensors", "vae.safetensors"]
    loaded = load_dit(tmp_path / "m")
    for (k, a), (_, b) in zip(dit.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_diffusers_component_folders_load(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    cfg = preset("tiny")
    ref = diffusers.WanTransformer3DModel(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                                          text_dim=384, freq_dim=32, ffn_dim=48, num_layers=2)
    ref.save_pretrained(tmp_path / "pipe" / "transformer")
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    assert folder_kind(tmp_path / "pipe") == "diffusers"
    assert folder_kind(tmp_path / "pipe" / "transformer") == "diffusers-transformer"
    assert load_dit(tmp_path / "pipe").cfg == cfg.dit.replace(rope_max_seq_len=1024)
    assert load_vae(tmp_path / "pipe" / "vae").cfg.z_dim == 4
    # and the other way: kinema -> diffusers component folder -> diffusers loads it
    save_diffusers_component(tmp_path / "out", load_dit(tmp_path / "pipe"))
    again = diffusers.WanTransformer3DModel.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), ref.state_dict().values()))


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_dit(tmp_path / "nope")


def test_not_a_model_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(WeightsError, match="is not a model folder"):
        read_config(tmp_path)


def test_truncated_weights(tmp_path, tiny_model_dir):
    import shutil
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    f = tmp_path / "m" / "transformer.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_dit(tmp_path / "m")


def test_wrong_shape_names_the_key(tmp_path, tiny_model_dir):
    import shutil
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "kinema.json").read_text())
    cfg["dit"]["ffn_dim"] = 64
    (tmp_path / "m" / "kinema.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"shape mismatch.*ffn"):
        load_dit(tmp_path / "m")


def test_missing_weights_file(tmp_path, tiny_model_dir):
    import shutil
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "vae.safetensors").unlink()
    with pytest.raises(WeightsError, match="not found"):
        load_vae(tmp_path / "m")


def test_unknown_config_key_is_named(tmp_path, tiny_model_dir):
    import shutil
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "kinema.json").read_text())
    cfg["dit"]["num_layerz"] = 3
    (tmp_path / "m" / "kinema.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="num_layerz"):
        read_config(tmp_path / "m")


def test_diffusers_folder_takes_its_preset_and_scheduler_shift(tmp_path):
    """Sampling defaults come from the matching Wan preset (matched on depth, width and image input), and a
    scheduler_config.json flow_shift overrides the preset's shift."""
    from kinema.config import preset
    from kinema.weights.folder import dit_config_to_diffusers, vae_config_to_diffusers

    root = tmp_path / "wan"
    for name, cfg in (("transformer", dit_config_to_diffusers(preset("wan2.1-i2v-14b-480p").dit)),
                      ("vae", vae_config_to_diffusers(preset("wan2.1-i2v-14b-480p").vae))):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps(cfg))
    (root / "model_index.json").write_text("{}")
    got = read_config(root).sampling
    assert (got.width, got.height, got.shift) == (832, 480, 3.0)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"flow_shift": 5.0}))
    assert read_config(root).sampling.shift == 5.0


# -- diffusers Wan folders: only Wan 2.1, text encoder checked before any weights, shards and variants --------

@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """``WanPipeline.save_pretrained`` with tiny random components (umT5 d_model 32 = the DiT's text_dim)."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a red fox runs"], trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>")
    torch.manual_seed(0)
    text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1)).eval()
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32,
        freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=64)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                                     latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=3.0)
    root = tmp_path_factory.mktemp("wan") / "wan-t2v"
    diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                          transformer=transformer).save_pretrained(root)
    return root


def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, **changes):
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def test_wan_folder_loads_and_its_text_path_is_absolute(wan_folder, tmp_path, monkeypatch):
    """A relative model path gives an absolute, resolved text path: a fine-tune exported from it works from anywhere."""
    assert read_config(wan_folder).text.path == str(wan_folder.resolve())
    monkeypatch.chdir(wan_folder.parent)
    cfg = read_config("wan-t2v")
    assert cfg.text.path == str(wan_folder.resolve())
    save_model(tmp_path / "finetune", cfg)
    monkeypatch.chdir(tmp_path)
    assert json.loads((tmp_path / "finetune" / "kinema.json").read_text())["text"]["path"] == str(wan_folder.resolve())
    assert read_config(tmp_path / "finetune").text == cfg.text


def test_kinema_folder_relative_text_path(wan_folder, tmp_path, monkeypatch):
    """A relative text.path is taken relative to the model folder; one written by an older export (relative to
    the training directory) still works from there."""
    cfg = read_config(wan_folder)
    model = tmp_path / "model"
    save_model(model, cfg.replace(text=cfg.text.replace(path="encoder")))
    _copy(wan_folder, model / "encoder")
    monkeypatch.chdir(tmp_path.parent)
    assert read_config(model).text.path == str((model / "encoder").resolve())
    assert read_config(tmp_path.name + "/model").text.path == str((model / "encoder").resolve())
    legacy = tmp_path / "legacy"
    save_model(legacy, cfg.replace(text=cfg.text.replace(path="wan-t2v")))  # exported from a run in wan_folder.parent
    monkeypatch.chdir(wan_folder.parent)
    assert read_config(legacy).text.path == str(wan_folder.resolve())


@pytest.mark.parametrize("change,match", [
    (lambda p: _copy(p / "transformer", p / "transformer_2"), r"a transformer_2/ folder"),
    (lambda p: _edit_json(p / "model_index.json", boundary_ratio=0.875), r"boundary_ratio 0\.875"),
    (lambda p: _edit_json(p / "model_index.json", transformer_2=["diffusers", "WanTransformer3DModel"]),
     r"transformer_2 \['diffusers', 'WanTransformer3DModel'\]"),
])
def test_wan22_two_expert_folder_is_refused(wan_folder, tmp_path, change, match):
    root = _copy(wan_folder, tmp_path / "wan22")
    change(root)
    want = rf"wan22 is a Wan 2\.2 two-expert \(A14B\) folder \(.*{match}.*\): kinema loads Wan 2\.1 \(one transformer\)"
    with pytest.raises(WeightsError, match=want):
        read_config(root)
    with pytest.raises(WeightsError, match=want):
        load_dit(root)


@pytest.mark.parametrize("part,name,match", [
    ("model_index.json", "StableDiffusion3Pipeline",
     r"model_index.json: _class_name is 'StableDiffusion3Pipeline', not a Wan 2\.1 pipeline; kinema loads diffusers "
     r"folders of WanPipeline / WanImageToVideoPipeline"),
    ("transformer/config.json", "SkyReelsV2Transformer3DModel",
     r"transformer/config.json: _class_name is 'SkyReelsV2Transformer3DModel', not WanTransformer3DModel"),
    ("vae/config.json", "AutoencoderKL", r"vae/config.json: _class_name is 'AutoencoderKL', not AutoencoderKLWan"),
])
def test_other_model_classes_are_refused(wan_folder, tmp_path, part, name, match):
    root = _copy(wan_folder, tmp_path / "other")
    _edit_json(root / part, _class_name=name)
    with pytest.raises(WeightsError, match=match):
        read_config(root)
    with pytest.raises(WeightsError, match=match):
        (load_vae if part.startswith("vae") else load_dit)(root)


def test_configs_without_class_names_load(wan_folder, tmp_path):
    root = _copy(wan_folder, tmp_path / "plain")
    for part in ("model_index.json", "transformer/config.json", "vae/config.json"):
        d = json.loads((root / part).read_text())
        del d["_class_name"]
        (root / part).write_text(json.dumps(d))
    assert read_config(root).dit == read_config(wan_folder).dit
    assert load_dit(root).cfg == load_dit(wan_folder).cfg


def test_a_config_value_of_the_wrong_type_names_the_file(wan_folder, tmp_path):
    """An SD3-style ``"patch_size": 2`` (or a transformer config without _class_name from another family)."""
    root = _copy(wan_folder, tmp_path / "odd")
    _edit_json(root / "transformer" / "config.json", patch_size=2)
    with pytest.raises(WeightsError, match=r"odd/transformer/config.json: .*not iterable"):
        read_config(root)
    _edit_json(root / "transformer" / "config.json", patch_size=[1, 2, 2], num_layers="2")
    with pytest.raises(WeightsError, match=r"odd/transformer/config.json: "):
        read_config(root)


@pytest.mark.parametrize("change,match", [
    (lambda p: __import__("shutil").rmtree(p / "text_encoder"), r"missing text_encoder/ in .*broken"),
    (lambda p: __import__("shutil").rmtree(p / "tokenizer"), r"broken/tokenizer/tokenizer\.json or spiece\.model"),
    (lambda p: (p / "text_encoder" / "model.safetensors").unlink(), r"broken/text_encoder/model\.safetensors"),
    (lambda p: _edit_json(p / "text_encoder" / "config.json", model_type="bert"),
     r"text_encoder/config.json: model_type is 'bert'; the text encoder must be a T5 or umT5 encoder "
     r"\(model_type one of \('t5', 'umt5'\)"),
    (lambda p: _edit_json(p / "text_encoder" / "config.json", d_model=48),
     r"text_encoder/config.json: d_model 48 does not match the transformer's text_dim 32 "
     r"\(.*transformer/config.json\)"),
])
def test_text_encoder_is_checked_with_the_config(wan_folder, tmp_path, change, match):
    """Before any weights load (read_config is what generate, serve and train call first), as a WeightsError."""
    root = _copy(wan_folder, tmp_path / "broken")
    change(root)
    with pytest.raises(WeightsError, match=match):
        read_config(root)


def test_cli_reports_a_text_encoder_problem_cleanly(wan_folder, tmp_path, capsys, monkeypatch):
    import kinema.weights
    from kinema.cli import main
    root = _copy(wan_folder, tmp_path / "bert")
    _edit_json(root / "text_encoder" / "config.json", model_type="bert")
    monkeypatch.setattr(kinema.weights, "load_dit", lambda *a, **k: pytest.fail("weights loaded before the check"))
    assert main(["generate", "a fox", "--model", str(root), "--size", "32x32", "--frames", "5", "--steps", "1",
                 "-o", str(tmp_path / "x.mp4"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "model_type is 'bert'" in err and "Traceback" not in err


@pytest.mark.parametrize("text,match", [("{oops", "is not valid JSON"),
                                        (json.dumps({"metadata": {}}), 'has no usable "weight_map"'),
                                        ("[1, 2]", 'has no usable "weight_map"')])
def test_malformed_shard_index_is_named(wan_folder, tmp_path, text, match):
    root = _copy(wan_folder, tmp_path / "sharded")
    (root / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    index = root / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(text)
    index_name = r"sharded/transformer/diffusion_pytorch_model\.safetensors\.index\.json"
    with pytest.raises(WeightsError, match=rf"{index_name} {match}"):
        load_dit(root)


def test_fp16_and_bf16_variant_files_load(wan_folder, tmp_path):
    """diffusers' ``save_pretrained(variant=...)`` names, single file and sharded; the plain file wins over a variant."""
    diffusers = pytest.importorskip("diffusers")
    want = load_dit(wan_folder).state_dict()
    ref = diffusers.WanTransformer3DModel.from_pretrained(wan_folder / "transformer")
    root = _copy(wan_folder, tmp_path / "variant")
    t = root / "transformer"
    (t / "diffusion_pytorch_model.safetensors").rename(t / "diffusion_pytorch_model.fp16.safetensors")
    assert all(torch.equal(a, want[k]) for k, a in load_dit(root).state_dict().items())
    (t / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"not read: the plain file is preferred")
    ref.save_pretrained(t)
    assert all(torch.equal(a, want[k]) for k, a in load_dit(root).state_dict().items())
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded, variant="bf16", max_shard_size="20KB")
    assert (sharded / "diffusion_pytorch_model.safetensors.index.bf16.json").is_file()
    loaded = load_dit(sharded, dtype=torch.bfloat16)
    assert all(torch.equal(a, want[k].to(a.dtype)) for k, a in loaded.state_dict().items())
    vae = root / "vae"
    (vae / "diffusion_pytorch_model.safetensors").rename(vae / "diffusion_pytorch_model.bf16.safetensors")
    assert load_vae(root).cfg == load_vae(wan_folder).cfg
