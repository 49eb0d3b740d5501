"""`kinema convert` and a DiT's head count, which its tensors do not hold: from the config.json beside the
checkpoint (Wan's own or a diffusers one), or --attention-head-dim; never a silent guess."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from test_convert import DIT_TINY, VAE_WAN, _ref_dit, _ref_vae

from kinema.weights.convert import ConversionError, convert_checkpoint, to_wan_original_dit, to_wan_original_vae


# -- the head count: from the config.json beside the checkpoint, or --attention-head-dim ---------------------

DIT_64 = dict(DIT_TINY, num_attention_heads=2, attention_head_dim=64)  # width 128: would pass for 1 head of 128


def _original_config(cfg: dict, **changes) -> dict:
    """The config.json the Wan-AI/Wan2.1-* repos ship beside the DiT (original keys)."""
    d = {"_class_name": "WanModel", "_diffusers_version": "0.30.0",
         "dim": cfg["num_attention_heads"] * cfg["attention_head_dim"],
         "eps": 1e-06, "ffn_dim": cfg["ffn_dim"], "freq_dim": cfg["freq_dim"], "in_dim": cfg["in_channels"],
         "model_type": "t2v", "num_heads": cfg["num_attention_heads"], "num_layers": cfg["num_layers"],
         "out_dim": cfg["out_channels"], "text_len": 512}
    return {**d, **changes}


def _dit_outputs_match(ref, folder):
    from kinema.weights import load_dit
    ours = load_dit(folder)
    torch.manual_seed(1)
    x, t, text = torch.randn(1, 4, 2, 4, 6), torch.tensor([300.0]), torch.randn(1, 512, 16)
    with torch.no_grad():
        assert (ours(x, t, text) - ref(x, t, text, return_dict=False)[0]).abs().max() <= 1e-4


def test_head_count_comes_from_the_original_config_beside_the_checkpoint(tmp_path):
    ref = _ref_dit(**DIT_64)
    src = tmp_path / "Wan2.1-T2V-custom"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in to_wan_original_dit(ref.state_dict()).items()},
              str(src / "diffusion_pytorch_model.safetensors"))
    (src / "config.json").write_text(json.dumps(_original_config(DIT_64)))
    torch.save(to_wan_original_vae(_ref_vae(**VAE_WAN).state_dict()), src / "Wan2.1_VAE.pth")
    out = convert_checkpoint(src, tmp_path / "transformer")  # the folder, and one of its files
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["attention_head_dim"]) == (2, 64)
    _dit_outputs_match(ref, out)
    out = convert_checkpoint(src / "diffusion_pytorch_model.safetensors", tmp_path / "again", attention_head_dim=64)
    _dit_outputs_match(ref, out)
    convert_checkpoint(src / "Wan2.1_VAE.pth", tmp_path / "vae")  # the DiT's config.json beside it does not apply
    with pytest.raises(ConversionError, match=r"attention_head_dim=128 contradicts .*Wan2.1-T2V-custom/config.json "
                                              r"\(dim 128 / num_heads 2 = 64\)"):
        convert_checkpoint(src, tmp_path / "out", attention_head_dim=128)
    with pytest.raises(ConversionError, match=r"attention_head_dim applies to a DiT, but .*Wan2.1_VAE.pth holds a VAE"):
        convert_checkpoint(src / "Wan2.1_VAE.pth", tmp_path / "out", attention_head_dim=64)
    (src / "config.json").write_text(json.dumps(_original_config(DIT_64, num_layers=30, model_type="i2v")))
    with pytest.raises(ConversionError, match=r"config.json describes another model than .*: num_layers 30 there, 2 in "
                                              r"the checkpoint; model_type 'i2v' there, no image inputs"):
        convert_checkpoint(src, tmp_path / "out")
    (src / "config.json").write_text(json.dumps(_original_config(DIT_64, num_heads=3)))
    with pytest.raises(ConversionError, match=r"num_heads 3 must be a positive integer that divides dim 128"):
        convert_checkpoint(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_head_count_from_a_diffusers_config_and_the_cli_flag(tmp_path, capsys):
    from kinema.cli import main

    ref = _ref_dit(**DIT_64)
    comp = tmp_path / "component"  # a diffusers transformer folder: repackaged with its own head count
    ref.save_pretrained(comp)
    out = convert_checkpoint(comp, tmp_path / "repacked")
    assert json.loads((out / "config.json").read_text())["num_attention_heads"] == 2
    src = tmp_path / "bare" / "dit.safetensors"  # no config.json: only the flag tells
    src.parent.mkdir()
    save_file({k: v.contiguous() for k, v in to_wan_original_dit(ref.state_dict()).items()}, str(src))
    assert main(["convert", str(src), str(tmp_path / "flag"), "--attention-head-dim", "64"]) == 0
    _dit_outputs_match(ref, tmp_path / "flag")
    with pytest.warns(UserWarning, match=r"no config.json with num_heads beside .*dit.safetensors: assuming Wan's "
                                         r"128-wide attention heads \(1 head for width 128\).*--attention-head-dim N"):
        convert_checkpoint(src, tmp_path / "guessed")
    with pytest.raises(SystemExit) as exit:
        main(["convert", str(src), str(tmp_path / "x"), "--attention-head-dim", "0"])
    assert exit.value.code == 2 and "--attention-head-dim: must be a whole number >= 1" in capsys.readouterr().err
    narrow = tmp_path / "narrow.safetensors"
    narrow_state = to_wan_original_dit(_ref_dit(**DIT_TINY).state_dict())
    save_file({k: v.contiguous() for k, v in narrow_state.items()}, str(narrow))
    assert main(["convert", str(narrow), str(tmp_path / "y")]) == 2
    assert "not a multiple of attention_head_dim=128; pass the head size this model was trained with (`kinema " \
           "convert --attention-head-dim N`" in capsys.readouterr().err
    assert main(["convert", str(narrow), str(tmp_path / "y"), "--attention-head-dim", "12"]) == 0
