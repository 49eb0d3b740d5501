"""scripts/bundle_model.py: the bundled model is stored in fp16, stays within budget, and still generates."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import load_script


@pytest.fixture(scope="module")
def bundler():
    return load_script("bundle_model")


def test_bundle_casts_to_fp16_and_generates_like_the_original(bundler, tiny_model_dir, tmp_path, one_thread):
    from kinema.infer import Pipeline

    out = tmp_path / "assets" / "world-small"
    out.mkdir(parents=True)
    (out / "stale.safetensors").write_bytes(b"old")  # a previous bundle is replaced whole
    assert bundler.main([str(tiny_model_dir), "--out", str(out)]) == 0
    assert torch.is_grad_enabled()  # the script leaves the process as it found it
    assert sorted(p.name for p in out.iterdir()) == ["kinema.json", "transformer.safetensors", "vae.safetensors"]
    for name in ("transformer.safetensors", "vae.safetensors"):
        tensors = load_file(str(out / name))
        assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
        assert (out / name).stat().st_size < 0.6 * (tiny_model_dir / name).stat().st_size
    settings = dict(steps=2, frames=5, width=32, height=32, seed=3)
    a = Pipeline.from_pretrained(tiny_model_dir).generate("a red ball", **settings).frames.astype(np.int16)
    b = Pipeline.from_pretrained(out).generate("a red ball", **settings).frames.astype(np.int16)
    assert np.abs(a - b).max() <= 3  # fp16 rounding of the weights: a few pixel levels at most


def test_bundle_refuses_an_incomplete_folder_or_an_oversized_one(bundler, tiny_model_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "vae.safetensors").unlink()
    with pytest.raises(SystemExit, match=r"needs both transformer.safetensors and vae.safetensors"):
        bundler.bundle(partial, tmp_path / "out")
    with pytest.raises(SystemExit, match=r"over the 0 MB budget"):
        bundler.bundle(tiny_model_dir, tmp_path / "out", budget_mb=0.0)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=r"not a kinema model folder"):
        bundler.bundle(tmp_path, tmp_path / "out")


def test_bundle_takes_a_fine_tuned_decoder_but_not_another_encoder(bundler, tiny_model_dir, tmp_path, one_thread):
    from safetensors.torch import save_file

    tensors = load_file(str(tiny_model_dir / "vae.safetensors"))
    decoder = [k for k in tensors if k.startswith("decoder.")]
    encoder = [k for k in tensors if k.startswith("encoder.")]
    assert decoder and encoder

    def variant(name, keys):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy2(tiny_model_dir / "kinema.json", folder)
        save_file({k: v + 0.5 if k in keys else v for k, v in tensors.items()}, str(folder / "vae.safetensors"))
        return folder

    tuned = variant("tuned", decoder[:2])
    out = tmp_path / "out"
    bundler.bundle(tiny_model_dir, out, vae=tuned)
    shipped = load_file(str(out / "vae.safetensors"))
    assert torch.equal(shipped[decoder[0]], (tensors[decoder[0]] + 0.5).half())  # the tuned decoder is what ships
    dit, shipped_dit = (load_file(str(p / "transformer.safetensors")) for p in (tiny_model_dir, out))
    # the DiT is the model's own
    assert all(torch.equal(shipped_dit[k], v.half()) for k, v in dit.items() if v.is_floating_point())

    with pytest.raises(SystemExit, match=r"different encoder .*1 tensors.*" + encoder[0].replace(".", r"\.")):
        bundler.bundle(tiny_model_dir, tmp_path / "out2", vae=variant("other", encoder[:1]))
    moved = variant("moved", [])
    cfg = json.loads((moved / "kinema.json").read_text())
    cfg["vae"]["latents_mean"] = [m + 0.25 for m in cfg["vae"]["latents_mean"]]
    (moved / "kinema.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match=r"different VAE config .*\['latents_mean'\]"):
        bundler.bundle(tiny_model_dir, tmp_path / "out2", vae=moved)
    with pytest.raises(SystemExit, match=r"not a kinema VAE folder"):
        bundler.bundle(tiny_model_dir, tmp_path / "out2", vae=tmp_path)
    assert not (tmp_path / "out2").exists()


def test_bundle_ships_a_student_from_another_folder_when_it_fits_the_dit(bundler, tiny_model_dir, tmp_path, one_thread):
    from safetensors.torch import save_file

    from kinema.weights import load_dit
    from kinema.weights.student import StudentInfo, read_student, save_student

    dit = load_file(str(tiny_model_dir / "transformer.safetensors"))
    distilled = tmp_path / "distilled"  # a [distill] run's export: a model folder with its student beside it
    shutil.copytree(tiny_model_dir, distilled)
    student = load_dit(distilled)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.25)
    info = StudentInfo(steps=2, times=(1.0, 0.5, 0.0), guidance=3.0, teacher="older-teacher", train_steps=7)
    save_student(distilled, student, info)

    out = tmp_path / "out"
    assert bundler.main([str(tiny_model_dir), "--out", str(out), "--student", str(distilled)]) == 0  # smoke-tests it too
    assert sorted(p.name for p in out.iterdir()) == ["kinema.json", "student.json", "student.safetensors",
                                                      "transformer.safetensors", "vae.safetensors"]
    assert read_student(out) == info
    shipped, shipped_dit = (load_file(str(out / name)) for name in ("student.safetensors", "transformer.safetensors"))
    assert all(torch.equal(shipped[k], (v + 0.25).half()) for k, v in dit.items() if v.is_floating_point())
    assert all(torch.equal(shipped_dit[k], v.half()) for k, v in dit.items() if v.is_floating_point())  # the model's DiT

    misfit = tmp_path / "misfit"
    misfit.mkdir()
    (misfit / "student.json").write_text(json.dumps(info.to_dict()))
    first = sorted(dit)[0]
    save_file({k: v for k, v in dit.items() if k != first}, str(misfit / "student.safetensors"))
    with pytest.raises(SystemExit, match=r"does not fit the DiT .*1 tensors.*" + first.replace(".", r"\.")):
        bundler.bundle(tiny_model_dir, tmp_path / "out2", student=misfit)
    with pytest.raises(SystemExit, match=r"has no student"):
        bundler.bundle(tiny_model_dir, tmp_path / "out2", student=tmp_path / "out2-none")
    assert not (tmp_path / "out2").exists()


def test_the_bundled_model_generates_square_wide_and_tall_clips_offline(tmp_path, one_thread):
    """The weights shipped in kinema/assets/world-small load with no --model and no network, at the
    bundled model's default size and at wide and tall sizes; the CLI writes its default clip."""
    from kinema.cli import main
    from kinema.common.video import read_video
    from kinema.infer import Pipeline
    from kinema.infer.pipeline import bundled_model_path

    assert (bundled_model_path() / "transformer.safetensors").is_file()
    sizes = sum(p.stat().st_size for p in bundled_model_path().glob("*.safetensors")) / 2 ** 20
    assert sizes <= 60.0, f"bundled weights are {sizes:.1f} MiB, over the 60 MB budget"
    pipe = Pipeline.from_pretrained()
    s = pipe.settings("a red ball bounces on the floor")
    assert (s.width, s.height, s.frames, s.fps) == (128, 128, 17, 8)
    for width, height in ((128, 128), (160, 96), (96, 160)):
        video = pipe.generate("a red ball bounces on the floor", width=width, height=height, steps=2, seed=0)
        assert video.frames.shape == (17, height, width, 3) and video.frames.dtype == np.uint8
        assert video.frames.std() > 1.0  # not a blank clip
    out = tmp_path / "ball.mp4"
    assert main(["generate", "a red ball bounces on the floor", "--steps", "2", "-o", str(out)]) == 0
    frames, fps = read_video(out)
    assert frames.shape == (17, 128, 128, 3) and fps == 8
    # the shipped 4-step student samples a request for its steps; any other count is the teacher's
    assert pipe.student is not None and pipe.student[1].steps == 4
    fast = pipe.generate("a red ball bounces on the floor", steps=4, seed=0)
    assert "student" in fast.metadata() and fast.frames.shape == (17, 128, 128, 3) and fast.frames.std() > 1.0
    assert "student" not in video.metadata()


def test_the_bundled_vae_reconstructs_whole_frames_of_every_background(one_thread):
    """The shipped VAE's round trip of a whole 17x128x128 render, one per background of the world: at least 17 dB
    each and 21 dB on average. Its decoder once trained only on crops, whose per-frame norm statistics are not a
    whole frame's: a sky over a meadow came back as smears of colour (14 dB; the checkered floor 19 dB)."""
    from kinema.common.video import from_model, to_model
    from kinema.data.world import render, scene_from_prompt
    from kinema.data.world.captions import BACKGROUND_WORDS
    from kinema.data.world.vocab import BACKGROUNDS
    from kinema.eval.tasks import psnr
    from kinema.infer.pipeline import bundled_model_path
    from kinema.weights import load_vae

    phrases = {background: BACKGROUND_WORDS[background][0][0] for background in BACKGROUNDS}  # "under a blue sky", ...
    assert set(phrases) == set(BACKGROUNDS)
    vae = load_vae(bundled_model_path()).eval()
    scores = {}
    with torch.inference_mode():
        for background, phrase in phrases.items():
            scene = scene_from_prompt(f"a red ball bounces {phrase}", 128, 128, 17, 8, 0)
            assert scene.background == background
            clip = render(scene)
            scores[background] = psnr(from_model(vae.decode(vae.encode(to_model(clip)))), clip)
    assert min(scores.values()) >= 17.0 and np.mean(list(scores.values())) >= 21.0, scores
