"""kinema data, part by part: cut detection and clip planning on series, the measures on frames with a
known answer, the filter's reasons, configs, shards, and the latent cache format against training's reader."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kinema.config import ConfigError, preset
from kinema.data.cache import CacheError, LatentCacheReader, read_manifest, write_latent_cache
from kinema.data.config import Bucket, FilterConfig, ScoreConfig, SplitConfig, load_data_config
from kinema.data.encode import assign_bucket, check_bucket
from kinema.data.measures import ClipMeter, reasons
from kinema.data.scenes import detect_cuts, plan_clips
from kinema.data.shards import DataError, Shard, fingerprint, resolve_shard, unit_of

# -- scene detection on change series ----------------------------------------------------------------------------

CFG = SplitConfig()


def series(n: int, base: float = 1.0, spikes: dict[int, float] | None = None) -> tuple[list[float], list[float]]:
    """changes with spikes at hard cuts; skips (frame i vs i - 2) high across a cut, low elsewhere."""
    changes = [0.0] + [base] * (n - 1)
    skips = [0.0, 0.0] + [base * 2] * (n - 2)
    for i, value in (spikes or {}).items():
        changes[i] = value
        skips[i] = skips[i + 1] = value  # frames on the two sides of a cut differ
    return changes, skips


def test_hard_cuts_are_found_at_their_frame():
    changes, skips = series(60, spikes={12: 30.0, 40: 25.0})
    assert detect_cuts(changes, skips, 12, CFG) == [12, 40]


def test_a_single_flash_frame_is_not_a_cut():
    changes, skips = series(40, spikes={12: 30.0})
    changes[13] = 30.0  # the flash frame 12 differs from both neighbours ...
    skips[13] = 1.0  # ... but frames 11 and 13 are the same shot
    assert detect_cuts(changes, skips, 12, CFG) == []


def test_fast_motion_that_changes_every_frame_a_lot_is_not_cut():
    changes, skips = series(60, base=28.0)
    changes[30] = 100.0  # big, but not `ratio` (4) times its neighbours
    assert detect_cuts(changes, skips, 12, CFG) == []
    changes[30] = 120.0
    assert detect_cuts(changes, skips, 12, CFG) == [30]


def test_cuts_closer_than_the_minimum_scene_are_ignored():
    changes, skips = series(60, spikes={12: 30.0, 13: 30.0, 30: 30.0})
    assert detect_cuts(changes, skips, 12, CFG) == [12, 30]


def test_clips_cover_a_scene_in_equal_pieces_no_longer_than_max():
    times = [i / 10 for i in range(200)]
    cfg = SplitConfig(min_seconds=1.0, max_seconds=4.0)
    pieces = plan_clips(20, 120, times, 10, cfg)  # a 10 s shot
    assert len(pieces) == 3 and pieces[0][0] == 20 and pieces[-1][1] == 120
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert all(1.0 <= (b - a) / 10 <= 4.0 for a, b in pieces)
    assert plan_clips(0, 9, times, 10, cfg) == []  # 0.9 s < min_seconds
    assert plan_clips(0, 10, times, 10, cfg) == [(0, 10)]


# -- measures ----------------------------------------------------------------------------------------------------


def measure(frames: np.ndarray, fps: float = 8.0, **cfg) -> dict:
    meter = ClipMeter(len(frames), fps, ScoreConfig(**cfg))
    for frame in frames:
        meter.add(frame)
    return meter.result()


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2

    noise = rng.integers(0, 255, (h, w)).astype(np.uint8)
    smooth = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 3), None, 0, 255, cv2.NORM_MINMAX)
    return np.repeat(smooth[..., None], 3, axis=2)


def test_motion_is_the_known_speed_in_frame_widths_per_second():
    big = texture(np.random.default_rng(0), 120, 400)
    frames = np.stack([big[:, 100 - 2 * i: 260 - 2 * i] for i in range(16)])  # 160 wide, 2 px/frame to the right
    m = measure(frames, fps=8.0)
    assert m["motion"] == pytest.approx(2 / 160 * 8, rel=0.1)  # 0.1 frame widths per second
    assert m["static_fraction"] == 0 and m["flashes"] == 0 and m["black_fraction"] == 0
    slow = measure(frames[::2], fps=4.0)  # the same motion sampled half as often
    assert slow["motion"] == pytest.approx(m["motion"], rel=0.1)


def test_a_frozen_clip_is_static_and_still():
    still = np.repeat(texture(np.random.default_rng(1), 90, 160)[None], 12, axis=0)
    m = measure(still)
    assert m["static_fraction"] == 1.0 and m["motion"] < 1e-3


def test_black_frames_and_flashes_are_counted():
    frames = np.repeat(texture(np.random.default_rng(2), 90, 160)[None] // 2, 12, axis=0)
    frames[:3] = 0
    frames[8] = 255
    m = measure(frames)
    assert m["black_fraction"] == pytest.approx(3 / 12) and m["flashes"] == 1


def test_blur_lowers_sharpness():
    import cv2

    sharp = texture(np.random.default_rng(3), 90, 160)
    sharp = np.where(sharp > 128, 255, 0).astype(np.uint8)  # hard edges
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2)
    assert measure(np.stack([sharp] * 4))["sharpness"] > 4 * measure(np.stack([blurred] * 4))["sharpness"]


def test_filter_reasons_name_the_rule_the_value_and_the_threshold():
    clip = dict(motion=0.001, sharpness=50.0, black_fraction=0.0, static_fraction=0.95, flashes=0, aspect=16 / 9,
                width=64, height=36, duration=3.0)
    assert reasons(clip, FilterConfig()) == ["max_static_fraction: frozen frames 95% > 90%"]
    got = reasons(clip, FilterConfig(min_motion=0.01, max_static_fraction=1.0, min_height=48))
    assert got == ["min_motion: motion 0.001 < 0.01", "min_height: height 36 < 48"]


# -- configs and buckets -----------------------------------------------------------------------------------------


def test_data_config_loads_from_toml_and_refuses_unknown_keys(tmp_path):
    path = tmp_path / "data.toml"
    path.write_text('[split]\nmax_seconds = 6.0\n[filter]\nmin_motion = 0.01\n'
                    '[encode]\nfps = 12\nbuckets = [{ frames = 9, height = 48, width = 64 }, "17x64x64"]\n')
    cfg = load_data_config(path)
    assert (cfg.split.max_seconds, cfg.filter.min_motion, cfg.encode.fps) == (6.0, 0.01, 12)
    assert cfg.encode.buckets == (Bucket(9, 48, 64), Bucket(17, 64, 64))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['min_moton'\]; accepted: .*'min_motion'"):
        load_data_config({"filter": {"min_moton": 0.1}})
    with pytest.raises(ConfigError, match="max_seconds .* must be >= 2 \\* split.min_seconds"):
        load_data_config({"split": {"min_seconds": 3, "max_seconds": 4}})
    with pytest.raises(ConfigError, match="FRAMESxHEIGHTxWIDTH"):
        Bucket.parse("17x96")


@pytest.mark.parametrize("section, key, value, message", [
    ("score", "max_flow_pairs", 2.5, "score.max_flow_pairs must be an integer, got 2.5"),
    ("encode", "batch_size", 1.5, "encode.batch_size must be an integer, got 1.5"),
    ("split", "threshold", "abc", "split.threshold must be a number, got 'abc'"),
    ("split", "min_seconds", True, "split.min_seconds must be a number, got True"),  # a bool is not a number
    ("split", "max_seconds", float("inf"), "split.max_seconds must be a finite number, got inf"),
    ("filter", "max_flashes", "2", "filter.max_flashes must be an integer, got '2'"),
    ("caption", "mapping", 3, "caption.mapping must be a string, got 3"),
    ("encode", "buckets", "17x64x64", 'encode.buckets must be a list of buckets, each "FRAMESxHEIGHTxWIDTH"'),
    ("encode", "buckets", [17], r"encode.buckets\[0\] must be a bucket"),
    ("encode", "buckets", ["17x64"], r"encode.buckets\[0\]: a bucket is FRAMESxHEIGHTxWIDTH"),
    ("encode", "buckets", [{"frames": "17", "height": 64, "width": 64}],
     r"encode.buckets\[0\].frames must be an integer, got '17'"),
    ("encode", "buckets", [{"frames": 17, "height": 64}], r"encode.buckets\[0\]: missing key\(s\) \['width'\]"),
])
def test_data_config_values_of_the_wrong_type_are_refused_by_key_before_any_work(section, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_data_config({section: {key: value}})


def test_data_config_values_convert_to_their_fields_types(tmp_path):
    path = tmp_path / "data.toml"
    path.write_text('[split]\nthreshold = 9\n[filter]\nmax_motion = inf\n[encode]\nfps = 12\n')
    cfg = load_data_config(path)
    assert (cfg.split.threshold, cfg.filter.max_motion, cfg.encode.fps) == (9.0, math.inf, 12.0)
    assert all(type(v) is float for v in (cfg.split.threshold, cfg.filter.max_motion, cfg.encode.fps))
    assert load_data_config({"split": {"threshold": "1e1"}}).split.threshold == 10.0  # YAML-ish strings, as recipes
    assert load_data_config({"caption": {"mapping": None}}).caption.mapping is None


def test_buckets_the_model_cannot_take_are_refused_with_what_would_fit():
    model = preset("tiny")  # 4x temporal, 16-pixel multiple
    check_bucket(Bucket(9, 48, 64), model)
    with pytest.raises(ConfigError, match="frames must be 4k\\+1 .* got 8; nearest: 5 or 9"):
        check_bucket(Bucket(8, 48, 64), model)
    with pytest.raises(ConfigError, match="width must be a multiple of 16, got 70; nearest: 64 or 80"):
        check_bucket(Bucket(9, 48, 70), model)


def test_clips_go_to_the_bucket_of_nearest_aspect_they_are_long_enough_for():
    buckets = (Bucket(17, 64, 64), Bucket(9, 48, 80), Bucket(9, 80, 48), Bucket(1, 64, 64))
    clip = dict(width=320, height=180, duration=3.0)
    assert assign_bucket(clip, buckets, 8) == Bucket(9, 48, 80)
    assert assign_bucket({**clip, "width": 180, "height": 320}, buckets, 8) == Bucket(9, 80, 48)
    assert assign_bucket({**clip, "duration": 0.5}, buckets, 8) == Bucket(1, 64, 64)  # only the image bucket fits
    assert assign_bucket({**clip, "duration": 0.5}, buckets[:3], 8) is None


# -- shards ------------------------------------------------------------------------------------------------------


def test_shards_come_from_the_flag_or_torchrun_and_split_units_disjointly(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_shard(None) == Shard(0, 1)
    assert resolve_shard("2/4") == Shard(2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve_shard(None) == Shard(1, 3) and resolve_shard("0/2") == Shard(0, 2)
    for bad in ("4/4", "1", "a/b"):
        with pytest.raises(DataError, match="i/n"):
            resolve_shard(bad)
    owners = [[s for s in range(3) if Shard(s, 3).owns(u)] for u in range(10)]
    assert all(len(o) == 1 for o in owners)


def test_a_shard_run_with_other_settings_says_why_the_merge_waits(tmp_path):
    import pyarrow as pa

    from kinema.data.shards import UnitStore, run_units
    store = UnitStore(tmp_path, "encode")
    schema = pa.schema([("x", pa.int64())])

    def work(fp):
        return lambda unit, _: store.write(unit, fp, {"rows": ([{"x": unit}], schema)})
    first = run_units(store, 4, Shard(0, 2), lambda u: "fps8", work("fps8"))  # shard 0 with one setting
    assert first.others == [1, 3] and first.stale == [] and "other settings" not in first.summary()
    second = run_units(store, 4, Shard(1, 2), lambda u: "fps16", work("fps16"))  # shard 1 with another
    assert second.others == [0, 2] and second.stale == [0, 2] and not second.complete
    assert "2 of them finished with other settings or inputs than this run's" in second.summary()


def test_units_and_fingerprints_are_stable():
    assert unit_of("abc", 16) == unit_of("abc", 16) == int(__import__("hashlib").sha1(b"abc").hexdigest()[:16], 16) % 16
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1}) != fingerprint({"a": 1, "b": 3})


# -- the latent cache format, against training's reader ----------------------------------------------------------


def samples(n: int):
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        length = 3 + i % 2
        yield dict(id=f"c{i}", latents=torch.randn(4, 3, 6, 8, generator=g), text_tokens=torch.randn(length, 384, generator=g),
                   text_mask=torch.ones(length, dtype=torch.bool), caption=f"caption {i}")


def test_the_cache_has_the_documented_layout_and_reads_back_the_same_here_and_in_training(tmp_path):
    from safetensors.torch import load_file

    from kinema.train.data import LatentCache

    null = (torch.zeros(2, 384), torch.ones(2, dtype=torch.bool))
    root = write_latent_cache(tmp_path / "cache", samples(5), null_text=null, shard_size=2, info={"by": "test"})
    manifest = json.loads((root / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "samples"} == {
        "format": "kinema-latent-cache", "version": 1, "latent_channels": 4, "text_dim": 384,
        "null_text": "null.safetensors", "info": {"by": "test"}}
    assert [(s["id"], s["shard"], s["shape"], s["caption"]) for s in manifest["samples"]] == [
        (f"c{i}", f"shard-{i // 2:05d}.safetensors", [4, 3, 6, 8], f"caption {i}") for i in range(5)]
    assert sorted(load_file(root / "shard-00000.safetensors")) == sorted(
        f"c{i}.{k}" for i in range(2) for k in ("latents", "text_tokens", "text_mask"))
    reader = LatentCacheReader(root, latent_channels=4, text_dim=384)
    trained = LatentCache(root, {(3, 6, 8)}, 4, 384)
    assert len(reader) == len(trained) == 5
    for i, expected in enumerate(samples(5)):
        got, item = reader[i], trained.load(i)
        assert torch.equal(got["latents"], expected["latents"]) and torch.equal(item.latents, expected["latents"])
        assert torch.equal(got["text_tokens"], expected["text_tokens"]) and got["caption"] == item.caption
        assert got["text_mask"].dtype == torch.bool and got["text_mask"].shape == expected["text_mask"].shape
    assert torch.equal(reader.null_text()[0], null[0]) and torch.equal(trained.null_text()[1], null[1])


def test_a_cache_that_is_missing_or_does_not_fit_the_model_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="not a latent cache: it does not exist"):
        read_manifest(tmp_path / "nowhere")
    root = write_latent_cache(tmp_path / "c", samples(1))
    with pytest.raises(CacheError, match="latent_channels is 4, the model needs 16"):
        read_manifest(root, latent_channels=16)
    with pytest.raises(CacheError, match="duplicate sample id 'c0'"):
        write_latent_cache(tmp_path / "d", [*samples(1), *samples(1)])
