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
