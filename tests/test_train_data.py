"""Where training batches come from: bucket sampling across ranks and epochs, world crops and windows,
data echoing on rendered batches, captions encoded once per loaded batch (``kinema.train.buckets``,
``kinema.train.data``, ``kinema.train.feed``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from kinema.common.video import pixels_to_model
from kinema.config import ConfigError, preset
from kinema.train import load_config, train
from kinema.train.buckets import BucketSampler, GridKeys, SamplerState, check_bucket
from kinema.train.config import BucketConfig

GRIDS = [(3, 8, 8), (3, 6, 10), (1, 8, 8)]  # latent grids of three buckets


# -- buckets ----------------------------------------------------------------------------------------


def test_bucket_sampler_covers_every_sample_once_per_epoch_across_ranks():
    rng = np.random.default_rng(0)
    keys = [GRIDS[k] for k in rng.integers(0, 3, size=60)]
    sizes = {GRIDS[0]: 2, GRIDS[1]: 3, GRIDS[2]: 4}
    for world in (1, 2, 3):
        per_rank = [BucketSampler(keys, sizes, seed=7, rank=r, world_size=world).rank_batches(epoch=0) for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert len(seen) == len(set(seen))  # no duplicates across ranks
        missing = set(range(len(keys))) - set(seen)
        assert world > 1 or not missing
        for g in GRIDS:  # at most world-1 samples per bucket wait for the next epoch
            assert sum(keys[i] == g for i in missing) < world
        for batches in per_rank:  # one latent grid per batch
            assert all(len({keys[i] for i in batch}) == 1 for batch in batches)
        for step in range(len(per_rank[0])):  # ranks agree on the grid of each step
            assert len({keys[per_rank[r][step][0]] for r in range(world)}) == 1


def test_bucket_sampler_is_deterministic_per_seed_and_resumes_mid_epoch():
    keys = [GRIDS[i % 3] for i in range(30)]
    sizes = {g: 2 for g in GRIDS}
    a = BucketSampler(keys, sizes, seed=1).rank_batches(0)
    assert a == BucketSampler(keys, sizes, seed=1).rank_batches(0)
    assert a != BucketSampler(keys, sizes, seed=2).rank_batches(0)
    assert a != BucketSampler(keys, sizes, seed=1).rank_batches(1)
    sampler = BucketSampler(keys, sizes, seed=1)
    stream = sampler.iterate()
    full = [next(stream) for _ in range(len(sampler) + 3)]  # crosses an epoch boundary
    resumed = sampler.iterate(full[4][0])
    assert [next(resumed) for _ in range(len(full) - 5)] == full[5:]
    assert full[len(sampler)][0] == SamplerState(1, 1)


def test_compact_grid_keys_give_the_same_epochs_as_a_list_of_grids():
    codes = np.random.default_rng(3).integers(0, 3, size=257)
    compact, listed = GridKeys(GRIDS, codes), [GRIDS[c] for c in codes]
    assert len(compact) == 257 and list(compact) == listed and list(compact[5:9]) == listed[5:9]
    sizes = {GRIDS[0]: 4, GRIDS[1]: 3, GRIDS[2]: 5}
    for world in (1, 2, 3):
        for rank in range(world):
            a = BucketSampler(compact, sizes, seed=5, rank=rank, world_size=world)
            b = BucketSampler(listed, sizes, seed=5, rank=rank, world_size=world)
            assert len(a) == len(b) == len(a.global_units(1))  # counted without drawing an epoch
            for epoch in (0, 1):
                batches = a.rank_batches(epoch)
                assert batches == b.rank_batches(epoch) and all(isinstance(x, list) for x in batches)
                assert list(batches[3:]) == list(batches)[3:]  # resuming mid-epoch slices the same batches
    with pytest.raises(ValueError, match="indices into 3 grid"):
        GridKeys(GRIDS, np.array([0, 3]))


def test_a_bucket_that_cannot_fit_the_patch_grid_is_refused_with_the_rule():
    cfg = preset("tiny")
    assert check_bucket(BucketConfig(9, 48, 80), cfg) == (3, 6, 10)
    with pytest.raises(ConfigError, match=r"height must be a multiple of 16.*got 100.*96 or 112"):
        check_bucket(BucketConfig(9, 100, 64), cfg)
    with pytest.raises(ConfigError, match=r"frames must be 4k\+1.*got 8.*5 or 9"):
        check_bucket(BucketConfig(8, 64, 64), cfg)


def test_a_clip_folder_takes_the_videos_kinema_data_ingest_takes(tmp_path):
    """.mov and .mkv (and the other containers FFmpeg reads) are clips, not silently left out."""
    import av

    from kinema.train.buckets import bucket_grids
    from kinema.train.data import ClipFolder

    rng = np.random.default_rng(0)
    for name, fmt in (("a.mkv", "matroska"), ("b.MOV", "mov")):
        with av.open(str(tmp_path / name), mode="w", format=fmt) as container:
            stream = container.add_stream("libx264", rate=8)
            stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
            for frame in rng.integers(0, 255, (9, 32, 48, 3), dtype=np.uint8):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    (tmp_path / "a.txt").write_text("a clip in matroska")
    data = ClipFolder(tmp_path, bucket_grids([BucketConfig(9, 32, 48)], preset("tiny")), fps=8.0)
    assert [p.name for p in data.files] == ["a.mkv", "b.MOV"] and data.skipped == []
    first, second = data.load(0), data.load(1)
    assert first.video.shape == second.video.shape == (3, 9, 32, 48) and first.caption == "a clip in matroska"
    assert data.uncaptioned == [tmp_path / "b.MOV"]  # a DiT run says it trains as the empty prompt
    (tmp_path / "b.txt").write_text("   \n")  # empty: still uncaptioned
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe not utf-8")  # unreadable: skipped at the start, with the reason
    data = ClipFolder(tmp_path, bucket_grids([BucketConfig(9, 32, 48)], preset("tiny")), fps=8.0)
    assert [p.name for p in data.files] == ["b.MOV"] and data.uncaptioned == [tmp_path / "b.MOV"]
    assert data.skipped == [(str(tmp_path / "a.mkv"), "caption sidecar a.txt: not valid UTF-8 (byte 0xff at offset 0); "
                                                      "save it as UTF-8")]


def test_world_crops_keep_the_object_scale_of_the_larger_render():
    from kinema.train.data import WorldDataset, render_world, _seed

    bucket = BucketConfig(5, 32, 48, batch_size=2, crop_scale=2)
    data = WorldDataset({(2, 4, 6): bucket}, num_clips=6, seed=3, fps=8.0)
    for index in range(6):
        item = data[index]
        assert item.error is None and tuple(item.video.shape) == (3, 5, 32, 48) and item.video.dtype == torch.uint8
        full, _ = render_world(_seed(3, index), 96, 64, 5, 8.0)  # the 2x render the crop comes from
        full = torch.from_numpy(full).permute(3, 0, 1, 2).float() / 127.5 - 1
        windows = full.unfold(2, 32, 1).unfold(3, 48, 1)  # (3, F, top, left, 32, 48)
        err = (windows - pixels_to_model(item.video)[:, :, None, None]).abs().amax(dim=(0, 1, 4, 5))
        assert err.min() < 1e-6, "the item is not a window of the larger render"
    assert len({data[i].video.sum().item() for i in range(6)}) == 6
    with pytest.raises(ConfigError, match=r"crop_scale must be an integer in \[1, 8\], got 0"):
        BucketConfig(5, 32, 48, crop_scale=0)
    with pytest.raises(ConfigError, match=r"crop_scale > 1 .* model: vae only"):
        load_config({"model": "dit", "preset": "tiny", "data": {"buckets": [dict(frames=5, height=32, width=32, crop_scale=2)]}})


def test_busiest_crop_keeps_the_window_with_the_most_colour_variance():
    from kinema.train.data import _crop

    frames = np.zeros((3, 64, 64, 3), np.uint8)
    frames[:, 48:56, 0:8] = (255, 0, 0)  # one small red object in a black frame, bottom left
    hits = {tries: 0 for tries in (1, 8)}
    for seed in range(200):
        for tries in hits:
            rows, cols = _crop(frames, BucketConfig(3, 16, 16, crop_scale=4, crop_tries=tries), np.random.default_rng(seed))
            window = frames[:, rows, cols]
            assert window.shape == (3, 16, 16, 3)
            hits[tries] += int(window[..., 0].max() == 255)
    # A random 16x16 window sees the object at 16 x 8 of 49^2 offsets (5%, ~11 of 200); the busiest of 8
    # windows sees it whenever one of them does (1 - 0.95^8 = 35%, ~70 of 200).
    assert hits[1] <= 25 and hits[8] >= 45 and hits[8] >= 3 * hits[1]
    # One try is the plain random crop (same window as before crop_tries existed).
    rng = np.random.default_rng(5)
    top, left = rng.integers(0, 49), rng.integers(0, 49)
    rows, cols = _crop(frames, BucketConfig(3, 16, 16, crop_tries=1), np.random.default_rng(5))
    np.testing.assert_array_equal(frames[:, rows, cols], frames[:, top:top + 16, left:left + 16])
    with pytest.raises(ConfigError, match=r"crop_tries must be an integer in \[1, 64\], got 0"):
        BucketConfig(5, 32, 48, crop_tries=0)


def test_world_span_is_checked_and_reaches_the_world_dataset():
    from kinema.train.data import build_dataset

    with pytest.raises(ConfigError, match=r"data.world_span must be in \[1, 4\].*got 0.5"):
        load_config({"preset": "tiny", "data": {"world_span": 0.5}})
    cfg = load_config({"preset": "tiny", "data": {"world_span": 2.0}})
    assert build_dataset(cfg.data, preset(cfg.preset), seed=0).span == 2.0
    with pytest.raises(ConfigError, match=r"world_span_except: unknown motion\(s\) \['flies'\]; accepted: .*'falls'"):
        load_config({"preset": "tiny", "data": {"world_span_except": ["falls", "flies"]}})
    cfg = load_config({"preset": "tiny", "data": {"world_span": 2.0, "world_span_except": ["falls", "bounces"]}})
    assert build_dataset(cfg.data, preset(cfg.preset), seed=0).span_except == ("falls", "bounces")


def test_world_span_except_keeps_those_motions_in_scenes_that_fit_their_clips():
    from kinema.train.data import world_window

    gravity, windowed = set(), 0
    for seed in range(40):
        scene, caption, start = world_window(seed, 96, 96, 17, 8.0, span=2.0, span_except=("falls", "bounces"))
        if any(o.motion in ("falls", "bounces") for o in scene.objects):
            assert (scene.frames, start) == (17, 0), seed  # a drop starts where its scene starts
            gravity.add(seed)
        windowed += start > 0
        same = world_window(seed, 96, 96, 17, 8.0, span=2.0)  # without the exception, only those scenes change
        if seed not in gravity:
            assert same[1:] == (caption, start) and same[0].frames == scene.frames
    assert len(gravity) >= 5 and windowed >= 5
    assert any(world_window(s, 96, 96, 17, 8.0, span=2.0)[2] > 0 for s in gravity)  # they were windowed before


def test_scene_change_cuts_or_dissolves_between_two_clips_at_a_random_frame():
    from kinema.train.data import DISSOLVE_FRAMES, scene_change

    first, second = np.zeros((17, 4, 4, 3), np.uint8), np.full((17, 4, 4, 3), 200, np.uint8)
    kinds = set()
    for seed in range(40):
        frames, mask = scene_change(first, second, np.random.default_rng(seed), first[..., 0] > 0, second[..., 0] > 0)
        level = frames[:, 0, 0, 0].astype(int)
        start = int(np.argmax(level > 0))
        assert 1 <= start and (level[:start] == 0).all() and (np.diff(level) >= 0).all()  # first scene, then on
        ramp = int(np.argmax(level == 200)) - start if (level == 200).any() else len(level) - start
        kinds.add("cut" if ramp == 0 else "dissolve")
        assert ramp == 0 or ramp <= DISSOLVE_FRAMES[1]
        assert (mask[:, 0, 0] == (level > 0)).all()  # where either scene's object is, during the change
        np.testing.assert_array_equal(frames, scene_change(first, second, np.random.default_rng(seed))[0])
    assert kinds == {"cut", "dissolve"}


def test_world_scene_changes_are_checked_and_join_two_rendered_scenes():
    from kinema.train.data import build_dataset

    with pytest.raises(ConfigError, match=r"data.world_scene_changes must be a share in \[0, 1\], got 1.5"):
        load_config({"model": "vae", "preset": "tiny", "data": {"world_scene_changes": 1.5}})
    with pytest.raises(ConfigError, match=r"world_scene_changes=0.3 joins two scenes.*needs model: vae.*'dit'"):
        load_config({"preset": "tiny", "data": {"world_scene_changes": 0.3}})
    buckets = [{"frames": 9, "height": 32, "width": 32}]
    plain = build_dataset(load_config({"model": "vae", "preset": "tiny", "data": {"buckets": buckets}}).data,
                          preset("tiny"), seed=0, captioned=False)
    cfg = load_config({"model": "vae", "preset": "tiny", "data": {"buckets": buckets, "world_scene_changes": 1.0}})
    changing = build_dataset(cfg.data, preset("tiny"), seed=0, captioned=False)
    assert changing.scene_changes == 1.0
    for index in range(3):
        a, b = plain.load(index).video, changing.load(index).video
        assert a.shape == b.shape and torch.equal(a[:, 0], b[:, 0])  # the clip's own scene first ...
        assert not torch.equal(a, b)  # ... then another
        assert torch.equal(b, changing.load(index).video)  # the same item every time


# -- feeding the loop -------------------------------------------------------------------------------


def test_vae_run_echoes_its_rendered_batches_too(tmp_path, monkeypatch):
    from kinema.train.feed import Feed

    loaded = []
    real = Feed.load
    monkeypatch.setattr(Feed, "load", lambda self, items, step: loaded.append(step) or real(self, items, step))
    result = train(dict(model="vae", preset="tiny", out_dir=str(tmp_path / "vae"), max_steps=3,
                        data=dict(kind="world", num_clips=8, echo=3, buckets=[dict(frames=5, height=32, width=32)]),
                        log=dict(every=1, progress=False, tensorboard=False), sample=dict(every=0)))
    assert loaded == [1] and result.step == 3
    assert all(math.isfinite(json.loads(line)["l1"]) for line in result.metrics.read_text().splitlines())


def test_dit_on_world_pixels_encodes_captions_once_per_loaded_batch(tmp_path, monkeypatch):
    from kinema.text.minilm import MiniLMEncoder
    from kinema.train.feed import Feed

    encoded, rows = [], []
    real_encode, real_with_draws = MiniLMEncoder.encode, Feed.with_draws
    monkeypatch.setattr(MiniLMEncoder, "encode", lambda self, prompts: encoded.append(list(prompts))
                        or real_encode(self, prompts))

    def spy(self, source, step):
        batch = real_with_draws(self, source, step)
        rows.append((batch.text_tokens, batch.text_mask, source.text, self.null_encoded))
        return batch

    monkeypatch.setattr(Feed, "with_draws", spy)
    result = train(dict(model="dit", preset="tiny", out_dir=str(tmp_path / "dit"), max_steps=6, seed=1,
                        data=dict(kind="world", num_clips=16, echo=3,
                                  buckets=[dict(frames=5, height=32, width=32, batch_size=4)]),
                        flow=dict(text_dropout=0.5), log=dict(every=1, progress=False, tensorboard=False),
                        sample=dict(every=0), checkpoint=dict(every=100)))
    assert result.step == 6
    captions = [p for p in encoded if p != [""]]  # [""]: the empty prompt, encoded once
    assert len(captions) == 2 and all(len(p) == 4 and all(p) for p in captions)  # steps 1 and 4 load and encode
    dropped = []
    for tokens, mask, (caption_tokens, caption_mask), (null_tokens, null_mask) in rows:
        for i in range(4):  # every row is its caption's encoding or, dropped, the empty prompt's
            kept = torch.equal(tokens[i], caption_tokens[i]) and torch.equal(mask[i], caption_mask[i])
            assert kept or (torch.equal(tokens[i], null_tokens[0]) and torch.equal(mask[i], null_mask[0]))
            dropped.append(not kept)
    assert 0 < sum(dropped) < len(dropped)  # caption dropout is drawn anew on every step, replayed ones too
    assert len({tuple(dropped[i:i + 4]) for i in range(0, 24, 4)}) > 1
    for line in result.metrics.read_text().splitlines():  # the share of a step spent producing its batch
        m = json.loads(line)
        assert 0 < m["data_time_s"] <= m["step_time_s"]
        assert 0 <= m["loader_wait_s"] <= m["data_time_s"]  # waiting on the workers is part of producing it
        assert m["loader_wait_s"] + m["encode_s"] <= m["data_time_s"]  # and so is encoding it
        assert (m["encode_s"] > 0) == (m["step"] in (1, 4))  # only the steps that load a batch encode one
