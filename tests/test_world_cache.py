"""``kinema data world``: a latent cache of procedural-world clips, resumable, that a DiT trains on."""

from __future__ import annotations

import json
import re

import pytest
import torch

from kinema.cli import main
from kinema.config import ConfigError
from kinema.data.cache import LatentCacheReader
from kinema.data.config import Bucket
from kinema.data.encode import Encoders
from kinema.data.world import make_clip
from kinema.data.world_cache import encode_world


def test_world_cache_holds_each_seeds_clip_encoded_and_resumes_shard_by_shard(tmp_path, tiny_model_dir, one_thread):
    out = tmp_path / "cache"
    buckets = [Bucket(5, 32, 32), Bucket(1, 32, 48)]
    encode_world(out, tiny_model_dir, 5, buckets, seed=7, batch_size=2, shard_size=2, device="cpu", log=None)
    reader = LatentCacheReader(out, 4, 384)
    assert len(reader) == 5 and [s["id"] for s in reader.samples] == [f"world-{7 + i}" for i in range(5)]
    enc = Encoders(tiny_model_dir, "cpu")
    for i in (0, 3):  # clip i: seed 7 + i at bucket i mod 2, its caption, its latents
        bucket = buckets[i % 2]
        frames, caption, _ = make_clip(7 + i, bucket.width, bucket.height, bucket.frames, 8.0)
        sample = reader[i]
        assert sample["caption"] == caption
        torch.testing.assert_close(sample["latents"], enc.video(frames[None])[0], atol=1e-5, rtol=1e-5)
        tokens, mask = enc.text([caption])[0]
        torch.testing.assert_close(sample["text_tokens"], tokens)
    assert reader.null_text() is not None

    # killed after the first shard: the rerun keeps it (not rewritten) and writes the rest
    shard0 = out / "shard-00000.safetensors"
    mtime = shard0.stat().st_mtime_ns
    for name in ("shard-00001.safetensors", "shard-00002.json", "manifest.json"):
        (out / name).unlink()
    encode_world(out, tiny_model_dir, 5, buckets, seed=7, batch_size=2, shard_size=2, device="cpu", log=None)
    assert shard0.stat().st_mtime_ns == mtime
    again = LatentCacheReader(out, 4, 384)
    assert [s["id"] for s in again.samples] == [s["id"] for s in reader.samples]
    torch.testing.assert_close(again[3]["latents"], reader[3]["latents"])

    with pytest.raises(ConfigError, match=r"other settings \(seed differ\)"):
        encode_world(out, tiny_model_dir, 5, buckets, seed=8, shard_size=2, device="cpu", log=None)


def test_a_dit_trains_on_a_world_cache(tmp_path, tiny_model_dir, one_thread):
    from kinema.train import train

    cache = tmp_path / "cache"
    assert main(["data", "world", str(cache), "--model", str(tiny_model_dir), "--clips", "4", "--bucket", "5x32x32",
                 "--device", "cpu", "-q"]) == 0
    result = train(dict(model="dit", init_from=str(tiny_model_dir), out_dir=str(tmp_path / "run"), max_steps=2,
                        data=dict(kind="latents", path=str(cache), buckets=[dict(frames=5, height=32, width=32, batch_size=2)]),
                        log=dict(every=1, progress=False, tensorboard=False), sample=dict(every=0)))
    assert result.step == 2 and all(json.loads(line)["loss"] > 0 for line in result.metrics.read_text().splitlines())


def test_a_model_trained_on_a_cache_keeps_the_latent_statistics_of_the_vae_that_encoded_it(tmp_path, tiny_model_dir,
                                                                                              one_thread, capsys):
    import shutil

    from kinema.train import TrainError, train
    from kinema.weights import read_config

    measured = tmp_path / "measured"  # a VAE with statistics of its own, as a trained VAE's export has
    shutil.copytree(tiny_model_dir, measured)
    config = json.loads((measured / "kinema.json").read_text())
    config["vae"]["latents_mean"] = [0.5, -0.25, 0.125, 0.0]
    config["vae"]["latents_std"] = [2.0, 1.5, 0.75, 3.0]
    (measured / "kinema.json").write_text(json.dumps(config))
    cache = tmp_path / "cache"
    assert main(["data", "world", str(cache), "--model", str(measured), "--clips", "2", "--bucket", "5x32x32",
                 "--device", "cpu", "-q"]) == 0

    def run(name, vae_from):  # previews off: the run never loads the VAE, only its config
        return train(dict(preset="tiny", vae_from=str(vae_from), out_dir=str(tmp_path / name), max_steps=1,
                          data=dict(kind="latents", path=str(cache), buckets=[dict(frames=5, height=32, width=32,
                                                                                   batch_size=2)]),
                          log=dict(every=1, progress=False, tensorboard=False), sample=dict(every=0)))

    exported = read_config(run("run", measured).exported).vae
    capsys.readouterr()
    assert exported.latents_mean == (0.5, -0.25, 0.125, 0.0) and exported.latents_std == (2.0, 1.5, 0.75, 3.0)
    with pytest.raises(TrainError, match=r"latent statistics \(latents_mean\) differ.*pass --vae_from"):
        run("other", tiny_model_dir)  # not the VAE that encoded the cache
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["info"]["fps"] = 16.0  # as `kinema data encode --fps 16` writes it for this 8 fps model
    (cache / "manifest.json").write_text(json.dumps(manifest))
    run("fast", measured)
    assert "holds clips resampled to 16 fps; the model plays video at 8 fps, so its videos will move at 0.5x" in \
        capsys.readouterr().out


def test_world_cache_refuses_bad_input_before_encoding(tmp_path, tiny_model_dir, capsys):
    def refused(folder: str, *flags: str, model=tiny_model_dir) -> str:
        assert main(["data", "world", str(tmp_path / folder), "--model", str(model), *flags]) != 0
        return capsys.readouterr().err

    assert re.search(r"frames must be 4k\+1 for the VAE, got 6; nearest: 5 or 9", refused("a", "--clips", "2", "--bucket", "6x32x32"))
    assert "clips, batch size and shard size must be >= 1, got 0" in refused("b", "--clips", "0")
    assert "a bucket is FRAMESxHEIGHTxWIDTH, e.g. 17x96x160, got '17x64'" in refused("c", "--clips", "2", "--bucket", "17x64")
    assert re.search(r"--model .*missing", refused("d", "--clips", "2", model=tmp_path / "missing"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "exists and is not a world cache" in refused("mine", "--clips", "2")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not any((tmp_path / name).exists() for name in "abcd")  # nothing written before the input is checked
