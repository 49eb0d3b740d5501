"""A diffusers-format Wan 2.1 folder (``WanPipeline.save_pretrained``, tiny random umT5/DiT/VAE built here):
it loads with its preset's defaults, generates through the Python API and the CLI, and the whole pipeline
(text encoding, guidance, UniPC, decode) matches diffusers' own ``WanPipeline`` from the same noise."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from kinema.config import preset
from kinema.infer import Pipeline
from kinema.weights import read_config
from kinema.weights.folder import dit_config_to_diffusers, vae_config_to_diffusers

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

WORDS = ["a red fox runs through deep snow at dawn", "the camera pans over a city at night", "blurry low quality"]
Z = 4


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(WORDS, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")


def _randomize(module, std: float, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module.eval()


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return build_wan_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-tiny-Diffusers")


def build_wan_folder(root):
    """``WanPipeline(...).save_pretrained(root)`` with tiny random components and the Wan 2.1 flow-UniPC scheduler."""
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1)).eval()
    transformer = _randomize(diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=Z, out_channels=Z, text_dim=32,
        freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=64), 0.08, seed=1)
    g = torch.Generator().manual_seed(2)
    vae = _randomize(diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True], latents_mean=torch.randn(Z, generator=g).tolist(),
        latents_std=(torch.rand(Z, generator=g) + 0.5).tolist()), 0.1, seed=3)
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=3.0)
    pipe = diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                 transformer=transformer)
    pipe.save_pretrained(root)
    return root


def test_folder_loads_as_a_wan_model(wan_folder):
    cfg = read_config(wan_folder)
    assert (cfg.text.kind, cfg.text.path, cfg.text.max_length, cfg.text.dim) == ("t5", str(wan_folder), 512, 32)
    assert not cfg.text.use_mask  # Wan attends to the zero padding of its 512 text tokens
    assert (cfg.dit.num_layers, cfg.dit.dim, cfg.vae.z_dim) == (2, 24, Z)
    pipe = Pipeline.from_pretrained(wan_folder)
    video = pipe.generate("a red fox runs", width=32, height=32, frames=5, steps=2, seed=1)
    assert video.frames.shape == (5, 32, 32, 3) and video.frames.std() > 0


@pytest.mark.parametrize("name", ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
def test_real_wan_folders_get_their_preset_defaults(tmp_path, name):
    """A folder shaped like the released checkpoint (configs only) gets the preset's size, frames, shift, guidance."""
    pre = preset(name)
    root = tmp_path / name
    for part, config in (("transformer", dit_config_to_diffusers(pre.dit)), ("vae", vae_config_to_diffusers(pre.vae))):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(config))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    cfg = read_config(root)
    assert cfg.sampling == pre.sampling
    s = cfg.sampling
    assert (s.width, s.height, s.frames, s.fps, s.guidance) == (pre.sampling.width, pre.sampling.height, 81, 16, 5.0)
    assert s.negative_prompt.startswith("Bright tones, overexposed")
    assert cfg.text == pre.text.replace(path=str(root))


@pytest.mark.parametrize("name,size", [("Wan2.1-I2V-14B-720P-Diffusers", (1280, 720)),
                                       ("Wan2.1-I2V-14B-480P-Diffusers", (832, 480))])
def test_the_i2v_releases_sizes_come_from_their_names(tmp_path, name, size):
    """The 480P and 720P image-to-video releases have the same tensors: the folder's name tells them apart."""
    pre = preset("wan2.1-i2v-14b-480p")
    root = tmp_path / name
    for part, config in (("transformer", dit_config_to_diffusers(pre.dit)), ("vae", vae_config_to_diffusers(pre.vae))):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(json.dumps(config))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    s = read_config(root).sampling
    assert (s.width, s.height) == size and (s.frames, s.fps) == (pre.sampling.frames, pre.sampling.fps)


def test_whole_pipeline_matches_diffusers_wan_pipeline(wan_folder):
    """Same noise: same latents and frames. The folder samples on Wan's schedule (diffusers' flow-UniPC
    sigmas, integer timesteps) without any help from the test."""
    ref = diffusers.WanPipeline.from_pretrained(wan_folder)
    ref.set_progress_bar_config(disable=True)
    steps, guidance = 4, 4.0
    prompt, negative = "a red fox runs through deep snow", "blurry low quality"
    ref.scheduler.set_timesteps(steps)
    seen = []

    pipe = Pipeline.from_pretrained(wan_folder)
    assert pipe.cfg.sampling.schedule == "wan"
    s = pipe.settings(prompt, negative_prompt=negative, width=32, height=48, frames=9, steps=steps, guidance=guidance,
                      shift=3.0, sampler="unipc", seed=5)
    pipe.dit.register_forward_pre_hook(lambda module, args: seen.append(args[1].flatten()[0].item()))
    video = pipe.run(s)

    noise = torch.randn(pipe.latent_shape(s), generator=torch.Generator("cpu").manual_seed(s.seed))
    final = {}
    out = ref(prompt=prompt, negative_prompt=negative, height=48, width=32, num_frames=9, num_inference_steps=steps,
              guidance_scale=guidance, latents=noise.clone(), output_type="np",
              callback_on_step_end=lambda p, i, t, kw: final.update(latents=kw["latents"]) or {})
    assert sorted(set(seen), reverse=True) == ref.scheduler.timesteps.tolist()  # int(sigma * 1000), as diffusers
    torch.testing.assert_close(video.latents, final["latents"], rtol=0, atol=2e-5)
    assert (video.latents - noise).abs().mean() > 0.1  # the sampler moved far from the noise
    expected = np.round(out.frames[0] * 255).astype(np.int16)
    assert video.frames.shape == expected.shape == (9, 48, 32, 3)
    assert np.abs(video.frames.astype(np.int16) - expected).max() <= 1
    assert expected.std() > 5  # a real picture, not a flat one


def test_cli_generates_from_the_folder(wan_folder, tmp_path):
    from kinema.cli import main
    from kinema.common.video import probe_video, read_video_metadata
    out = tmp_path / "fox.mp4"
    assert main(["generate", "a red fox runs", "--model", str(wan_folder), "--size", "32x32", "--frames", "5",
                 "--steps", "2", "--offload", "block", "-o", str(out), "-q"]) == 0
    assert probe_video(out)["frames"] == 5
    assert read_video_metadata(out)["model"] == wan_folder.name


@pytest.mark.parametrize("make,match", [
    (lambda p: p.mkdir(), "is not a model folder"),
    (lambda p: (p.mkdir(), (p / "model_index.json").write_text("{}")), "missing config.json"),
])
def test_cli_refuses_a_folder_that_is_not_a_model(tmp_path, capsys, make, match):
    from kinema.cli import main
    folder = tmp_path / "not-a-model"
    make(folder)
    assert main(["generate", "a fox", "--model", str(folder)]) == 2
    assert match in capsys.readouterr().err


# -- Wan 2.1 image-to-video (CLIP image tokens + mask and image latents as extra DiT channels) ----------------

@pytest.fixture(scope="module")
def wan_i2v_folder(tmp_path_factory):
    return build_wan_i2v_folder(tmp_path_factory.mktemp("wan-i2v") / "Wan2.1-I2V-tiny-Diffusers")


def build_wan_i2v_folder(root):
    """``WanImageToVideoPipeline.save_pretrained`` with tiny random components, a tiny CLIP vision tower included."""
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0, eos_token_id=1)).eval()
    image_encoder = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=32,
        patch_size=8)).eval()
    processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    image_processor = processor_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    transformer = _randomize(diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * Z + 4, out_channels=Z,
        text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, image_dim=16, added_kv_proj_dim=24, rope_max_seq_len=64),
        0.08, seed=1)
    vae = _randomize(diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True], latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 1.0]),
        0.1, seed=3)
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=3.0)
    pipe = diffusers.WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                             scheduler=scheduler, image_processor=image_processor,
                                             image_encoder=image_encoder, transformer=transformer)
    pipe.save_pretrained(root)
    return root


def _picture(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 64 * 4], axis=-1).astype(np.uint8)


def test_i2v_matches_diffusers_wan_image_to_video_pipeline(wan_i2v_folder, monkeypatch):
    from PIL import Image

    from kinema.infer.i2v_wan import image_to_video, is_wan_i2v
    import diffusers.pipelines.wan.pipeline_wan_i2v as reference_module
    if not hasattr(reference_module, "ftfy"):  # it calls ftfy.fix_text unconditionally: the identity on ASCII
        monkeypatch.setattr(reference_module, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
    ref = diffusers.WanImageToVideoPipeline.from_pretrained(wan_i2v_folder)
    ref.set_progress_bar_config(disable=True)
    steps, guidance, image = 3, 4.0, _picture(48, 32)
    ref.scheduler.set_timesteps(steps)
    seen = []

    pipe = Pipeline.from_pretrained(wan_i2v_folder)
    assert is_wan_i2v(pipe.cfg) and pipe.cfg.sampling.schedule == "wan"  # Wan's grid and integer timesteps, unaided
    spy = pipe.dit.register_forward_pre_hook(lambda m, args: seen.append(args[1].flatten()[0].item()))
    settings = dict(negative_prompt="blurry low quality", width=32, height=48, frames=9, steps=steps,
                    guidance=guidance, shift=3.0, sampler="unipc", seed=4)
    video = image_to_video(pipe, image, "a red fox runs", **settings)
    noise = torch.randn(pipe.latent_shape(pipe.settings("x", **settings)), generator=torch.Generator().manual_seed(4))
    final = {}
    out = ref(image=Image.fromarray(image), prompt="a red fox runs", negative_prompt="blurry low quality", height=48,
              width=32, num_frames=9, num_inference_steps=steps, guidance_scale=guidance, latents=noise.clone(),
              output_type="np", callback_on_step_end=lambda p, i, t, kw: final.update(latents=kw["latents"]) or {})
    assert sorted(set(seen), reverse=True) == ref.scheduler.timesteps.tolist()  # int(sigma * 1000), as diffusers
    spy.remove()
    torch.testing.assert_close(video.latents, final["latents"], rtol=0, atol=2e-5)
    expected = np.round(out.frames[0] * 255).astype(np.int16)
    assert np.abs(video.frames.astype(np.int16) - expected).max() <= 1
    # the image matters: another picture, another video; and the hooks are gone afterwards
    other = image_to_video(pipe, 255 - image, "a red fox runs", **settings)
    assert (other.latents - video.latents).abs().max() > 1e-3
    assert not pipe.dit._forward_pre_hooks_with_kwargs


def test_cli_i2v_needs_an_image_and_generates_from_one(wan_i2v_folder, tmp_path, capsys):
    from PIL import Image

    from kinema.cli import main
    assert main(["generate", "a fox", "--model", str(wan_i2v_folder), "-o", str(tmp_path / "x.mp4")]) == 2
    assert "image-to-video model: give the first frame with --image" in capsys.readouterr().err
    Image.fromarray(_picture(64, 64)).save(tmp_path / "first.png")
    out = tmp_path / "fox.mp4"
    assert main(["generate", "a fox", "--model", str(wan_i2v_folder), "--image", str(tmp_path / "first.png"),
                 "--size", "32x32", "--frames", "5", "--steps", "2", "-o", str(out), "-q"]) == 0
    from kinema.common.video import probe_video
    assert probe_video(out)["frames"] == 5


def test_i2v_model_refuses_to_sample_without_its_image(wan_i2v_folder, tmp_path):
    """Text-to-video and kinema's own image tasks would feed its DiT 16 channels where it reads 36 (and no image
    tokens): a clear refusal naming the way in, before the prompt is encoded or any input read."""
    import re

    from PIL import Image

    from kinema.infer import InputError, tasks
    from kinema.infer.i2v_wan import image_to_video
    pipe = Pipeline.from_pretrained(wan_i2v_folder, dtype="fp32")
    calls = []
    for part in (pipe.dit, pipe.vae, pipe.text_encoder):
        if isinstance(part, torch.nn.Module):
            part.register_forward_pre_hook(lambda m, args: calls.append(type(m).__name__))
    encode = pipe.text_encoder.encode
    pipe.text_encoder.encode = lambda prompts: calls.append("text") or encode(prompts)
    said = re.escape(f"{pipe.name} is a Wan 2.1 image-to-video model: it makes video from an image: "
                     f"kinema.infer.i2v_wan.image_to_video(pipe, image, prompt)")
    small = dict(width=32, height=32, steps=1)
    Image.fromarray(_picture(32, 32)).save(tmp_path / "first.png")
    clip = np.zeros((5, 32, 32, 3), np.uint8)
    with pytest.raises(InputError, match=said + r".*text-to-video is not available"):
        pipe.generate("a red fox runs", frames=5, **small)
    with pytest.raises(InputError, match=said):
        pipe.run(pipe.settings("a red fox runs", frames=5, **small))
    with pytest.raises(InputError, match=said):
        pipe.sample(pipe.settings("a red fox runs", frames=5, **small))
    for name, run in (("image_to_video", lambda: tasks.image_to_video(pipe, "a fox", tmp_path / "first.png", **small)),
                      ("keyframes", lambda: tasks.keyframes(pipe, "a fox", [(0.0, tmp_path / "first.png")], **small)),
                      ("extend", lambda: tasks.extend(pipe, "a fox", clip, 1.0, **small)),
                      ("connect", lambda: tasks.connect(pipe, "a fox", clip, clip, 1.0, **small)),
                      ("loop", lambda: tasks.loop(pipe, "a fox", frames=9, **small)),
                      ("edit", lambda: tasks.edit(pipe, "a fox", clip, 0.5, **small)),
                      ("image", lambda: tasks.image(pipe, "a fox", **small))):
        with pytest.raises(InputError, match=said + rf".*kinema.infer.tasks.{name} is not available"):
            run()
    assert calls == []  # nothing ran: no text encoding, no VAE, no DiT
    video = image_to_video(pipe, _picture(32, 32), "a red fox runs", frames=5, **small)  # its own way in still works
    assert video.frames.shape == (5, 32, 32, 3)
