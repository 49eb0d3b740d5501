"""kinema train on the tiny preset: LoRA, data sources, objectives, and bad input (where batches come from:
test_train_data.py; stopping and resuming: test_train_resume.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from kinema.common.video import pixels_to_model
from kinema.config import ConfigError, preset
from kinema.train import TrainError, apply_lora, load_config, remove_lora, train
from kinema.train.config import BucketConfig
from kinema.data.cache import write_latent_cache
from kinema.nn import Linear

BUCKETS = [dict(frames=9, height=64, width=64, batch_size=2),  # latent (3, 8, 8)
           dict(frames=9, height=48, width=80, batch_size=2),  # latent (3, 6, 10)
           dict(frames=1, height=64, width=64, batch_size=4)]  # latent (1, 8, 8): images
GRIDS = [(3, 8, 8), (3, 6, 10), (1, 8, 8)]


def make_cache(path, n: int = 16, nan_ids: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(n):
        length = 4 + i % 3  # variable text lengths, padded per batch
        latents = torch.randn(4, *GRIDS[i % 3], generator=g)
        if i in nan_ids:
            latents[0, 0, 0, 0] = float("nan")
        samples.append(dict(id=f"clip{i:03d}", latents=latents, text_tokens=torch.randn(length, 384, generator=g),
                            text_mask=torch.ones(length, dtype=torch.bool), caption=f"caption {i}"))
    null = (torch.zeros(2, 384), torch.ones(2, dtype=torch.bool))
    return write_latent_cache(path, samples, null_text=null, shard_size=6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("cache"))


def recipe(out, cache_path, **changes) -> dict:
    cfg = dict(preset="tiny", out_dir=str(out), max_steps=6, seed=3,
               data=dict(kind="latents", path=str(cache_path), buckets=BUCKETS),
               optim=dict(lr=2e-3, warmup_steps=2), log=dict(every=1, progress=False, tensorboard=False),
               sample=dict(every=0), checkpoint=dict(every=100))
    for key, value in changes.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg.get(key, {}), **value}
        else:
            cfg[key] = value
    return cfg


def losses(result) -> list[float]:
    return [json.loads(line)["loss"] for line in result.metrics.read_text().splitlines()]


def test_trainer_adamw_is_fused_on_a_cpu_and_updates_as_pytorchs_reference_adamw():
    from kinema.dit import DiT
    from kinema.train.config import OptimConfig
    from kinema.train.loop import adamw

    torch.manual_seed(0)
    model, reference = DiT(preset("tiny").dit), DiT(preset("tiny").dit)
    reference.load_state_dict(model.state_dict())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for net in (model, reference):
        net.proj_out.bias.requires_grad_(False)  # frozen: no optimizer touches it
    ours = adamw(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    assert all(group["fused"] for group in ours.param_groups)
    assert [group["weight_decay"] for group in ours.param_groups] == [0.1, 0.0]  # matrices; the rest
    trainable = [p for p in reference.parameters() if p.requires_grad]
    theirs = torch.optim.AdamW([{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": 0.1},
                                {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}],
                               lr=1e-2, foreach=False)  # PyTorch's one-tensor-at-a-time update
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in model.parameters()]
        for net in (model, reference):
            for p, grad in zip(net.parameters(), grads):
                p.grad = grad.clone() if p.requires_grad else None
        ours.step()
        theirs.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(a, start[name]) == (name == "proj_out.bias"), name  # every trainable one moved


def test_data_echo_loads_one_batch_in_n_and_trains_on_new_draws_in_between(tmp_path, cache, monkeypatch):
    from kinema.train.feed import Feed

    loaded = []  # the batches the data loader handed over, as sample indices
    real = Feed.load
    monkeypatch.setattr(Feed, "load", lambda self, items, step: loaded.append([it.index for it in items])
                        or real(self, items, step))
    plain = train(recipe(tmp_path / "plain", cache, max_steps=6))
    assert len(loaded) == 6
    loaded.clear()
    echoed = train(recipe(tmp_path / "echo", cache, max_steps=6, data=dict(echo=3, echo_buffer=2)))
    assert len(loaded) == 2  # steps 1 and 4 load; 2, 3, 5 and 6 train on a batch from the buffer
    curve = losses(echoed)
    assert len(curve) == 6 and all(math.isfinite(v) for v in curve)
    assert len(set(curve[:3])) == 3  # a replayed batch gets new noise, times and masks: not the same loss again
    assert losses(plain)[0] == curve[0]  # the first step loads in both runs and draws the same


def test_data_echo_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match=r"data.echo must be an integer >= 1.*got 0"):
        load_config({"preset": "tiny", "data": {"echo": 0}})


# -- bad input --------------------------------------------------------------------------------------


def test_unknown_config_key_names_the_key_and_lists_the_accepted_ones(tmp_path):
    recipe_file = tmp_path / "run.toml"
    recipe_file.write_text('preset = "tiny"\n[optim]\nlr = 1e-3\nlearning_rate = 1e-3\n')
    with pytest.raises(ConfigError, match=r"unknown key optim\.learning_rate; accepted in optim: .*\blr\b"):
        load_config(recipe_file)
    with pytest.raises(ConfigError, match=r"unknown key stepz; accepted: .*max_steps"):
        load_config(None, ["--stepz", "3"])
    with pytest.raises(ConfigError, match=r"optim\.lr must be a number, got 'fast'"):
        load_config(None, ["--optim.lr", "fast"])
    with pytest.raises(ConfigError, match=r"stop_after_minutes must be > 0 or null, got -5"):
        load_config(None, ["--stop_after_minutes", "-5"])
    cfg = load_config(None, ["--optim.lr=3e-4", "--data.buckets", '[{"frames": 1, "height": 64, "width": 64}]', "--log.progress"])
    assert cfg.optim.lr == 3e-4 and cfg.data.buckets == (BucketConfig(1, 64, 64),) and cfg.log.progress is True


def test_an_override_of_a_text_field_is_taken_as_given_and_others_are_parsed():
    # `--out_dir 2024` is the folder "2024", not the number 2024 (refused as "must be a string")
    cfg = load_config({"preset": "tiny"}, ["--out_dir", "2024", "--data.kind", "clips", "--data.path", "2024",
                                           "--log.wandb_project=007", "--init_from", "true", "--distill.teacher", "1e3",
                                           "--max_steps", "2024", "--optim.lr", "1e-3", "--sample.prompts", '["2024"]'])
    assert (cfg.out_dir, cfg.data.path, cfg.log.wandb_project, cfg.init_from, cfg.distill.teacher) == \
        ("2024", "2024", "007", "true", "1e3")
    assert cfg.max_steps == 2024 and cfg.optim.lr == 1e-3 and cfg.sample.prompts == ("2024",)
    assert load_config(None, ["--log.wandb_project", "null", "--init_from=none"]).log.wandb_project is None
    assert load_config(None, ["--model_config.dit.num_layers", "3"]).model_config == {"dit": {"num_layers": 3}}
    with pytest.raises(ConfigError, match=r"override --out_dir needs a value \(text\): --out_dir VALUE or --out_dir=VALUE"):
        load_config(None, ["--out_dir", "--max_steps", "3"])
    with pytest.raises(ConfigError, match=r"max_steps must be an integer, got '2024x'"):
        load_config(None, ["--max_steps", "2024x"])


def test_preview_sizes_must_fit_the_models_patch_grid_as_buckets_do(tmp_path, cache):
    for sample, want in ((dict(frames=10), r"sample\.frames cannot fit the model's patch grid: frames must be 4k\+1 "
                                           r"\(the VAE's 4x temporal compression\), got 10; nearest: 9 or 13"),
                         (dict(height=50), r"sample\.height cannot fit the model's patch grid: height must be a "
                                           r"multiple of 16 .*got 50; nearest: 48 or 64"),
                         (dict(width=8, frames=9), r"sample\.width .*multiple of 16 .*got 8; nearest: 16")):
        with pytest.raises(ConfigError, match=want):  # refused before any set-up, as a bad bucket is
            train(recipe(tmp_path / "run", cache, sample=dict(every=3, **sample)))
        assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"sample\.height must be >= 1 or null \(the model's default\), got 0"):
        load_config(None, ["--sample.height", "0"])


def test_every_shipped_recipe_loads():
    recipes = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))
    assert len(recipes) >= 6
    for path in recipes:
        cfg = load_config(path)
        assert cfg.model in ("dit", "vae") and cfg.max_steps >= 1, path


def test_empty_or_missing_dataset_paths_are_clear_errors(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match="holds no clips"):
        train(recipe(tmp_path / "a", cache, data=dict(kind="clips", path=str(tmp_path / "empty"))))
    with pytest.raises(TrainError, match="is not a latent cache"):
        train(recipe(tmp_path / "b", cache, data=dict(path=str(tmp_path / "nowhere"))))
    with pytest.raises(TrainError, match="matches a bucket"):
        train(recipe(tmp_path / "c", cache, data=dict(buckets=[dict(frames=5, height=64, width=64)])))


def test_nan_losses_are_skipped_counted_and_stop_training_with_a_clear_message(tmp_path, cache):
    # lr = 1e30 blows the weights up after the first step; every later loss is inf/nan
    cfg = recipe(tmp_path / "run", cache, max_steps=20, max_nan_steps=3, optim=dict(lr=1e30, warmup_steps=0, grad_clip=0.0))
    with pytest.raises(TrainError, match=r"3 steps in a row had a non-finite loss.*max_nan_steps=3.*optim\.lr"):
        train(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["skipped_steps"] == 0 and all(line["skipped_steps"] == 1 for line in lines[-2:])


def test_a_bad_sample_is_skipped_and_recorded_while_training_goes_on(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12, nan_ids=(0, 3))
    result = train(recipe(tmp_path / "run", cache, max_steps=4))
    assert result.step == 4
    lines = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert all(math.isfinite(line["loss"]) for line in lines)
    assert sum(line["bad_samples"] for line in lines) >= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "bad_samples.jsonl").read_text().splitlines()]
    assert {r["source"].rsplit(":", 1)[1] for r in records} <= {"clip000", "clip003"}
    assert all("non-finite" in r["error"] for r in records)


def test_a_cache_of_unloadable_samples_stops_with_the_reason_and_exports_nothing(tmp_path, capsys):
    cache = make_cache(tmp_path / "cache", n=12, nan_ids=tuple(range(12)))
    with pytest.raises(TrainError, match=r"in 2 steps in a row no sample could be loaded; the reasons are in .*"
                                         r"bad_samples.jsonl"):
        train(recipe(tmp_path / "a", cache, max_steps=6, max_nan_steps=2))
    assert "no sample of its batch could be loaded" in capsys.readouterr().out
    with pytest.raises(TrainError, match=r"not exported: every one of the run's 2 steps was skipped"):
        train(recipe(tmp_path / "b", cache, max_steps=2, max_nan_steps=5))
    assert not (tmp_path / "b" / "model").exists()


def test_samples_no_bucket_takes_are_named_with_the_size_that_would(tmp_path, cache, capsys):
    train(recipe(tmp_path / "run", cache, max_steps=1, data=dict(buckets=BUCKETS[:1])))
    out = capsys.readouterr().out
    assert ("note: 10 of 16 samples fit no bucket and are left out (latent grid (3, 6, 10) (clips of 9x48x80) "
            "matches no bucket: 5; latent grid (1, 8, 8) (clips of 1x64x64) matches no bucket: 5); all of them: ") in out


def test_an_image_to_video_dit_is_refused_before_set_up(tmp_path, cache, tiny_model_dir):
    import shutil
    i2v = tmp_path / "i2v"  # the config of a DiT whose image enters as extra input channels (Wan 2.1 I2V's layout)
    shutil.copytree(tiny_model_dir, i2v)
    config = json.loads((i2v / "kinema.json").read_text())
    config["dit"]["in_channels"] = 12
    (i2v / "kinema.json").write_text(json.dumps(config))
    with pytest.raises(TrainError, match=r"its DiT takes 12 input channels, not the VAE's 4 .*image-to-video"):
        train(recipe(tmp_path / "run", cache, init_from=str(i2v)))
    assert not (tmp_path / "run").exists()


def test_a_truncated_cache_shard_is_refused_before_training(tmp_path):
    cache = make_cache(tmp_path / "cache", n=12)
    for name in ("shard-00001.safetensors", "null.safetensors"):
        whole = (cache / name).read_bytes()
        (cache / name).write_bytes(whole[: len(whole) // 2])
        with pytest.raises(TrainError, match=rf"{name} of .* cannot be read .*truncated"):
            train(recipe(tmp_path / name, cache))
        assert not (tmp_path / name / "metrics.jsonl").exists()
        (cache / name).write_bytes(whole)


# -- LoRA -------------------------------------------------------------------------------------------


def _dit_output(dit):
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 5, 384, generator=g)
    with torch.no_grad():
        return dit(x, torch.tensor([500.0]), text)


def test_trained_lora_changes_the_output_and_removing_it_restores_the_base_bit_for_bit(tmp_path, cache, tiny_model_dir):
    from kinema.weights import load_dit

    result = train(recipe(tmp_path / "lora", cache, init_from=str(tiny_model_dir), max_steps=3,
                          lora=dict(rank=4, alpha=8), optim=dict(lr=1e-2, warmup_steps=0)))
    assert result.exported.name == "lora.safetensors" and result.exported.stat().st_size < 100_000
    dit = load_dit(tiny_model_dir)
    base = _dit_output(dit)
    apply_lora(dit, result.exported, scale=1.0)
    adapted = _dit_output(dit)
    assert not torch.allclose(adapted, base)
    assert remove_lora(dit) == 20  # 10 target patterns x 2 blocks
    assert torch.equal(_dit_output(dit), base)
    assert all(type(m) is Linear for m in dit.modules() if isinstance(m, torch.nn.Linear))  # no LoRA layer left


def test_wan_lora_key_formats_load_to_the_same_adapter(tmp_path, tiny_model_dir):
    from safetensors.torch import save_file

    from kinema.weights import load_dit

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 24, generator=g), torch.randn(24, 2, generator=g)
    formats = {
        "diffusers": {"transformer.blocks.1.attn1.to_q.lora_A.weight": a, "transformer.blocks.1.attn1.to_q.lora_B.weight": b,
                      "transformer.blocks.0.ffn.net.2.lora_A.weight": torch.randn(2, 48, generator=g) * 0,
                      "transformer.blocks.0.ffn.net.2.lora_B.weight": torch.randn(24, 2, generator=g)},
        # original Wan names, kohya-style down/up with alpha = 4 on rank 2: scale 2, so B is halved here
        "wan": {"diffusion_model.blocks.1.self_attn.q.lora_down.weight": a,
                "diffusion_model.blocks.1.self_attn.q.lora_up.weight": b / 2,
                "diffusion_model.blocks.1.self_attn.q.alpha": torch.tensor(4.0)},
        # kohya / musubi-tuner: "lora_unet_" + the original name with underscores, on the same layers
        "musubi": {"lora_unet_blocks_1_self_attn_q.lora_down.weight": a,
                   "lora_unet_blocks_1_self_attn_q.lora_up.weight": b / 2,
                   "lora_unet_blocks_1_self_attn_q.alpha": torch.tensor(4.0),
                   "lora_unet_blocks_0_ffn_2.lora_down.weight": torch.zeros(2, 48),
                   "lora_unet_blocks_0_ffn_2.lora_up.weight": torch.zeros(24, 2)},
    }
    outputs = {}
    for name, tensors in formats.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        dit = load_dit(tiny_model_dir)
        base = _dit_output(dit)
        apply_lora(dit, tmp_path / f"{name}.safetensors", scale=0.5)
        outputs[name] = _dit_output(dit)
        remove_lora(dit)
        assert torch.equal(_dit_output(dit), base)
    assert torch.allclose(outputs["diffusers"], outputs["wan"], atol=1e-6)
    assert torch.allclose(outputs["musubi"], outputs["wan"], atol=1e-6)
    assert not torch.allclose(outputs["diffusers"], base)
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 7),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(24, 2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"blocks\.0\.attn1\.to_q.*A \(2, 7\).*24 -> 24"):
        apply_lora(load_dit(tiny_model_dir), tmp_path / "bad.safetensors")


# -- pixel data, the VAE objective, previews, export ----------------------------------------------


def test_object_weight_weighs_the_pixels_the_world_drew_objects_on():
    from kinema.data.world.render import camera_at, render, render_background, simulate
    from kinema.data.world.sample import sample_scene
    from kinema.train.config import VAELossConfig
    from kinema.train.data import WorldDataset
    from kinema.train.objective import vae_losses

    scene = sample_scene(np.random.default_rng(4), 64, 48, 5, 8.0)
    frames, mask = render(scene, with_mask=True)
    np.testing.assert_array_equal(frames, render(scene))  # the mask costs nothing in the frames
    assert 0 < mask.mean() < 0.5
    # the mask is where the objects changed the picture: the frames against the background alone
    for seed in range(4):
        scene = sample_scene(np.random.default_rng(seed), 64, 48, 9, 8.0)
        frames, mask = render(scene, with_mask=True)
        pan, scale = camera_at(scene.camera, scene.camera_rate, simulate(scene).times)
        background = (np.clip(render_background(scene, pan, scale), 0, 1) * 255 + 0.5).astype(np.uint8)
        assert (mask == (frames != background).any(-1)).mean() > 0.999  # rounding to 8 bits aside
    # crops carry the mask of their window
    data = WorldDataset({(2, 4, 6): BucketConfig(5, 32, 48, crop_scale=2)}, num_clips=4, seed=3, fps=8.0, object_masks=True)
    item = data[0]
    assert item.object_mask.shape == (1, 5, 32, 48) and item.object_mask.dtype == torch.bool
    assert WorldDataset({(2, 4, 6): BucketConfig(5, 32, 48)}, num_clips=1, seed=3, fps=8.0)[0].object_mask is None

    # the weighted mean: an error of 0.5 on the object pixels (a fraction p of them) only
    video = torch.zeros(2, 3, 5, 8, 8)
    obj = torch.zeros(2, 1, 5, 8, 8, dtype=torch.bool)
    obj[..., :2, :4] = True
    recon = video + 0.5 * obj.float()

    class Fixed(torch.nn.Module):
        def forward(self, x, generator=None):
            return recon, torch.zeros(2, 4, 2, 1, 1), torch.zeros(2, 4, 2, 1, 1)

    p = obj.float().mean().item()
    _, plain = vae_losses(Fixed(), video, None, VAELossConfig(object_weight=1.0), obj)
    _, weighted = vae_losses(Fixed(), video, None, VAELossConfig(object_weight=10.0), obj)
    assert torch.allclose(plain["l1"], torch.full((2,), 0.5 * p))
    assert torch.allclose(weighted["l1"], torch.full((2,), 0.5 * 10 * p / (10 * p + 1 - p)))
    assert torch.allclose(weighted["mse"], torch.full((2,), 0.25 * 10 * p / (10 * p + 1 - p)))
    with pytest.raises(ConfigError, match=r"object_weight=10.0 needs model: vae and data.kind 'world'.*'clips'"):
        load_config({"model": "vae", "preset": "tiny", "data": {"kind": "clips", "path": "x"}, "vae_loss": {"object_weight": 10}})
    with pytest.raises(ConfigError, match=r"object_weight must be > 0, got 0"):
        VAELossConfig(object_weight=0)


def test_temporal_weight_scores_flicker_not_motion():
    """The temporal term compares frame-to-frame steps: a reconstruction that moves as the clip does scores 0
    whatever its per-frame error, one that flickers scores its flicker; a single frame has no steps."""
    from kinema.train.config import VAELossConfig
    from kinema.train.objective import vae_losses

    torch.manual_seed(0)
    video = torch.linspace(-1, 1, 5).view(1, 1, 5, 1, 1).expand(2, 3, 5, 8, 8).contiguous()  # a steady fade
    flicker = torch.tensor([0.0, 0.2, 0.0, 0.2, 0.0]).view(1, 1, 5, 1, 1)
    cases = {"offset": video + 0.3, "flicker": video + flicker}

    def losses(recon, weight):
        class Fixed(torch.nn.Module):
            def forward(self, x, generator=None):
                return recon, torch.zeros(2, 4, 2, 1, 1), torch.zeros(2, 4, 2, 1, 1)
        return vae_losses(Fixed(), video, None, VAELossConfig(temporal_weight=weight))

    total_off, parts = losses(cases["offset"], 1.0)
    assert torch.allclose(parts["temporal"], torch.zeros(2), atol=1e-6)  # the same error every frame: no flicker
    total_fl, parts = losses(cases["flicker"], 1.0)
    assert torch.allclose(parts["temporal"], torch.full((2,), 0.2), atol=1e-6)  # every step off by 0.2
    plain, no_term = losses(cases["flicker"], 0.0)
    assert "temporal" not in no_term and torch.allclose(total_fl - plain, torch.full((2,), 0.2), atol=1e-6)
    image = video[:, :, :1]
    class One(torch.nn.Module):
        def forward(self, x, generator=None):
            return image + 0.1, torch.zeros(2, 4, 1, 1, 1), torch.zeros(2, 4, 1, 1, 1)
    _, parts = vae_losses(One(), image, None, VAELossConfig(temporal_weight=1.0))
    assert torch.equal(parts["temporal"], torch.zeros(2))
    with pytest.raises(ConfigError, match=r"temporal=-1"):
        VAELossConfig(temporal_weight=-1)
    with pytest.raises(ConfigError, match=r"temporal_across_weight must be > 0, got 0"):
        VAELossConfig(temporal_across_weight=0)
    # steps across latent frames (0 -> 1 and 4 -> 5 of 9 frames, temporal factor 4) weighted: a jump there only
    clip = torch.zeros(2, 3, 9, 4, 4)
    jump = clip.clone()
    jump[:, :, 1:] = 0.4  # the first latent frame's (4-frame) group starts 0.4 higher: steps 0 -> 1 off by 0.4

    class Jump(torch.nn.Module):
        def forward(self, x, generator=None):
            return jump, torch.zeros(2, 4, 3, 1, 1), torch.zeros(2, 4, 3, 1, 1)
    for across, expect in ((1.0, 0.4 / 8), (3.0, 3 * 0.4 / (2 * 3 + 6))):  # 8 steps, 2 of them across
        _, parts = vae_losses(Jump(), clip, None, VAELossConfig(temporal_weight=1.0, temporal_across_weight=across))
        assert torch.allclose(parts["temporal"], torch.full((2,), expect), atol=1e-6)


def test_vae_trains_on_the_world_with_object_weight(tmp_path):
    result = train(dict(model="vae", preset="tiny", out_dir=str(tmp_path / "vae"), max_steps=2,
                        data=dict(kind="world", num_clips=8, buckets=[dict(frames=5, height=32, width=32, crop_scale=2)]),
                        vae_loss=dict(object_weight=10.0), log=dict(every=1, progress=False, tensorboard=False),
                        sample=dict(every=0)))
    assert result.step == 2 and result.exported is not None
    assert all(math.isfinite(json.loads(line)["l1"]) for line in result.metrics.read_text().splitlines())


def test_vae_trains_on_a_clip_folder_and_exports_a_loadable_vae(tmp_path):
    from kinema.common.video_write import write_video
    from kinema.weights import load_vae

    clips = tmp_path / "clips"
    rng = np.random.default_rng(0)
    write_video(clips / "wide.mp4", rng.integers(0, 255, (6, 34, 50, 3), dtype=np.uint8), fps=8)
    write_video(clips / "square.mp4", rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8), fps=8)
    write_video(clips / "still.png", rng.integers(0, 255, (1, 40, 36, 3), dtype=np.uint8), fps=1)
    (clips / "wide.txt").write_text("a wide clip")
    (clips / "broken.mp4").write_bytes(b"not a video")
    buckets = [dict(frames=5, height=32, width=32), dict(frames=5, height=32, width=48), dict(frames=1, height=32, width=32)]
    result = train(dict(model="vae", preset="tiny", out_dir=str(tmp_path / "vae"), max_steps=2,
                        data=dict(kind="clips", path=str(clips), buckets=buckets),
                        log=dict(every=1, progress=False, tensorboard=False), sample=dict(every=2)))
    line = json.loads(result.metrics.read_text().splitlines()[-1])
    assert {"l1", "kl", "edge", "mse"} <= set(line) and math.isfinite(line["loss"])
    assert (tmp_path / "vae" / "samples" / "step-00000002" / "recon.mp4").is_file()
    assert "broken.mp4" in (tmp_path / "vae" / "bad_samples.jsonl").read_text()
    vae = load_vae(result.exported)
    assert vae.cfg.replace(latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4) == preset("tiny").vae.replace(
        latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
    # the export measured the latent statistics of the run's clips: normalised, they have mean 0 and std 1
    from kinema.train import load_config
    from kinema.train.data import build_dataset

    cfg = load_config(json.loads((tmp_path / "vae" / "train_config.json").read_text()))
    data = build_dataset(cfg.data, preset("tiny"), cfg.seed + 1)
    with torch.no_grad():
        z = torch.cat([vae.encode(pixels_to_model(data[i].video[None])).flatten(2) for i in range(len(data))
                       if data[i].video is not None], 2)
    assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(4), atol=1e-3)
    assert torch.allclose(z.std(dim=(0, 2), correction=0), torch.ones(4), atol=1e-3)
    assert vae.cfg.latents_std != (1.0,) * 4


def test_decoder_only_vae_run_keeps_the_encoder_and_so_the_latents(tmp_path):
    from kinema.weights import load_vae

    world = dict(kind="world", num_clips=8, buckets=[dict(frames=5, height=32, width=32, batch_size=2)])
    common = dict(model="vae", max_steps=2, data=world, optim=dict(lr=1e-2, warmup_steps=0),
                  log=dict(every=1, progress=False, tensorboard=False), sample=dict(every=0))
    first = train(dict(common, preset="tiny", out_dir=str(tmp_path / "a")))
    tuned = train(dict(common, init_from=str(first.exported), out_dir=str(tmp_path / "b"),
                       vae_loss=dict(decoder_only=True)))
    before, after = load_vae(first.exported).state_dict(), load_vae(tuned.exported).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    # the latents did not change, so neither do the statistics a DiT trained on them normalises with
    first_cfg, tuned_cfg = load_vae(first.exported).cfg, load_vae(tuned.exported).cfg
    assert tuned_cfg.latents_mean == first_cfg.latents_mean and tuned_cfg.latents_std == first_cfg.latents_std
    assert first_cfg.latents_std != (1.0,) * 4
    with pytest.raises(ConfigError, match=r"decoder_only .* needs model: vae and init_from"):
        load_config(dict(common, preset="tiny", vae_loss=dict(decoder_only=True)))


def test_flow_object_weight_lands_on_the_latent_tokens_that_encode_object_pixels():
    from kinema.train.config import FlowConfig
    from kinema.train.objective import flow_matching_losses, latent_object_weight

    mask = torch.zeros(1, 1, 9, 16, 24, dtype=torch.bool)
    mask[0, 0, 0, 3, 3] = True  # frame 0 is its own latent frame
    mask[0, 0, 5, 9, 17] = True  # frames 5..8 are latent frame 2; pixel (9, 17) is token (1, 2)
    w = latent_object_weight(mask, 5.0)
    expected = torch.ones(1, 1, 3, 2, 3)
    expected[0, 0, 0, 0, 0] = expected[0, 0, 2, 1, 2] = 5.0
    assert torch.equal(w, expected)
    with pytest.raises(ValueError, match=r"does not fit a 4k\+1"):
        latent_object_weight(mask[:, :, :8], 5.0)

    latents, noise = torch.randn(2, 4, 3, 2, 3), torch.randn(2, 4, 3, 2, 3)
    frame_mask = torch.tensor([[False, False, False], [True, False, False]])

    def zero_dit(x, t, tokens, mask):
        return torch.zeros_like(x)

    args = (zero_dit, latents, noise, torch.tensor([0.3, 0.7]), frame_mask, torch.zeros(2, 1, 8), None)
    plain = flow_matching_losses(*args)
    assert torch.allclose(flow_matching_losses(*args, torch.ones(2, 1, 3, 2, 3)), plain)
    weighted = flow_matching_losses(*args, w.expand(2, -1, -1, -1, -1))
    sq = (noise - latents).square()  # the target velocity, against a prediction of 0
    wt = w.expand(2, 4, -1, -1, -1).clone()
    wt[1, :, 0] = 0  # sample 1's latent frame 0 is given, so not scored
    assert torch.allclose(weighted, (sq * wt).flatten(1).sum(1) / wt.flatten(1).sum(1))
    assert not torch.allclose(weighted, plain)

    with pytest.raises(ConfigError, match=r"flow.object_weight must be > 0, got -1"):
        FlowConfig(object_weight=-1)
    with pytest.raises(ConfigError, match=r"flow.object_weight=4.0 needs model: dit, data.kind 'world'.*'latents'"):
        load_config({"preset": "tiny", "data": {"kind": "latents", "path": "x"}, "flow": {"object_weight": 4}})


def test_dit_trains_on_the_world_with_object_weight(tmp_path):
    losses = {}
    for weight in (1.0, 50.0):
        buckets = [dict(frames=5, height=32, width=32, batch_size=2)]
        result = train(dict(preset="tiny", out_dir=str(tmp_path / f"w{weight}"), max_steps=1,
                            data=dict(kind="world", num_clips=4, buckets=buckets),
                            flow=dict(object_weight=weight), log=dict(every=1, progress=False, tensorboard=False),
                            sample=dict(every=0)))
        losses[weight] = json.loads(result.metrics.read_text().splitlines()[0])["loss"]
    # same clips, noise and times: only the weighting differs, and it reaches the loss
    assert all(math.isfinite(v) for v in losses.values()) and losses[1.0] != losses[50.0]


def test_dit_on_the_procedural_world_writes_previews_and_a_model_folder(tmp_path):
    from kinema.weights import load_dit, load_vae

    buckets = [dict(frames=5, height=32, width=32, batch_size=2), dict(frames=1, height=32, width=48, batch_size=2)]
    result = train(dict(preset="tiny", out_dir=str(tmp_path / "world"), max_steps=2,
                        data=dict(kind="world", num_clips=4, buckets=buckets),
                        log=dict(every=1, progress=False, tensorboard=False),
                        sample=dict(every=2, steps=2, prompts=["a red ball"], frames=5, height=32, width=32)))
    assert (tmp_path / "world" / "samples" / "step-00000002" / "0.mp4").is_file()
    dit, vae = load_dit(result.exported), load_vae(result.exported)
    assert dit.cfg == preset("tiny").dit and vae.cfg.z_dim == 4
