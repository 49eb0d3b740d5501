"""kinema data, end to end on videos the tests make: real hard cuts in several containers and codecs,
a rotated phone clip, a truncated file and a file that is not a video; resume after a kill; shards;
and a few training steps from the cache it writes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kinema.data.caption import caption
from kinema.data.config import CaptionConfig, EncodeConfig, FilterConfig, SplitConfig, load_data_config
from kinema.data.decode import iter_frames
from kinema.data.encode import encode
from kinema.data.ingest import ingest, source_id
from kinema.data.manifest import Dataset
from kinema.data.score import score
from kinema.data.shards import DataError, Shard, read_parquet, unit_of
from kinema.data.split import split
from kinema.data.synthetic import truncate, world_shots, write_test_video

# name -> (width, height, fps, shot lengths in frames, display rotation); every shot is 1-10 s long.
VIDEOS = {
    "cuts.mp4": (96, 64, 12, [18, 25, 14, 21], 0),
    "cuts.webm": (128, 96, 10, [16, 22, 12], 0),
    "nested/cuts.mkv": (80, 48, 15, [20, 17, 24], 0),
    "phone.mp4": (64, 96, 24, [30, 36], 90),  # portrait, stored landscape plus a display matrix
}
BUCKETS = [dict(frames=9, height=48, width=64), dict(frames=9, height=64, width=48), dict(frames=9, height=64, width=64)]
PERMISSIVE = FilterConfig(max_static_fraction=1.0)  # world shots can be slow; this file checks every clip survives
QUIET = None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A folder of videos plus the truth: name -> (cut frames, upright first frame)."""
    root = tmp_path_factory.mktemp("videos")
    truth = {}
    for i, (name, (w, h, fps, lengths, rotation)) in enumerate(VIDEOS.items()):
        frames, cuts, _ = world_shots([10 * i + k for k in range(len(lengths))], lengths, w, h, fps, distinct=True)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_test_video(root / name, frames, fps, rotation=rotation)
        truth[name] = (cuts, frames[0])
    truncate(root / "cuts.mp4", root / "truncated.mp4", keep=0.5)
    (root / "notes.mp4").write_text("not a video at all\n" * 40)
    (root / "cuts.txt").write_text("four shots of the procedural world\n")
    (root / "phone.json").write_text(json.dumps({"segments": [{"start": 0, "end": 1.25, "caption": "first shot"},
                                                              {"start": 1.25, "end": 9, "caption": "second shot"}]}))
    return root, truth


def spread_units(videos) -> int:
    """The fewest units that put the corpus's good videos into 3 different units, odd and even ones (ids
    hash the absolute paths, which differ per run): so a kill can land between finished and unfinished
    units, and both of two shards have work."""
    ids = [source_id(str((videos / name).resolve())) for name in VIDEOS]
    for n in range(3, 500):
        units = {unit_of(i, n) for i in ids}
        if len(units) >= 3 and {u % 2 for u in units} == {0, 1}:
            return n
    raise AssertionError("no unit count spreads the corpus")


def run_all(root, videos, shard=Shard(), model=None, units=None, encode_cfg=None, **caption_cfg):
    units = units or spread_units(videos)
    ingest(root, [str(videos)], units=units, shard=shard, log=QUIET)
    split(root, SplitConfig(), shard=shard, log=QUIET)
    score(root, filters=PERMISSIVE, shard=shard, log=QUIET)
    caption(root, CaptionConfig(**caption_cfg), shard=shard, log=QUIET)
    if model is not None:
        return encode(root, model, encode_cfg, shard=shard, log=QUIET)


def cache_config() -> EncodeConfig:
    return load_data_config({"encode": {"buckets": BUCKETS, "fps": 8, "batch_size": 2, "shard_size": 4}}).encode


@pytest.fixture(scope="module")
def dataset(corpus, tiny_model_dir, tmp_path_factory):
    """One unsharded run of every stage over the corpus."""
    root = tmp_path_factory.mktemp("ds") / "ds"
    run_all(root, corpus[0], model=tiny_model_dir, encode_cfg=cache_config())
    return root


def by_name(rows, corpus_root):
    out = {}
    for r in rows:
        out.setdefault(str(Path(r["path"]).relative_to(corpus_root)), []).append(r)
    return out


# -- what ingest and split find ---------------------------------------------------------------------------------


def test_bad_files_are_rejected_with_their_reason_and_every_good_file_is_kept(corpus, dataset):
    videos, _ = corpus
    sources = by_name(Dataset.open(dataset).table("sources"), videos)
    assert sorted(sources) == sorted(VIDEOS)
    rejects = {r["path"].rsplit("/", 1)[-1]: r for r in read_parquet(dataset / "rejects.parquet")}
    assert sorted(rejects) == ["notes.mp4", "truncated.mp4"]
    assert rejects["truncated.mp4"]["stage"] == "ingest" and "truncated" in rejects["truncated.mp4"]["reason"]
    assert "not a readable video" in rejects["notes.mp4"]["reason"]
    codecs = {name: (rows[0]["container"].split(",")[0], rows[0]["codec"]) for name, rows in sources.items()}
    assert codecs == {"cuts.mp4": ("mov", "h264"), "cuts.webm": ("matroska", "vp9"),
                      "nested/cuts.mkv": ("matroska", "h264"), "phone.mp4": ("mov", "h264")}
    for name, (w, h, fps, lengths, rotation) in VIDEOS.items():
        row = sources[name][0]
        assert (row["width"], row["height"], row["rotation"] % 360 != 0) == (w, h, bool(rotation))
        assert row["fps"] == pytest.approx(fps) and row["frames"] == sum(lengths)


def test_ingest_says_how_many_files_it_kept_and_rejected(corpus, tmp_path):
    lines = []
    ingest(tmp_path / "ds", [str(corpus[0])], log=lines.append)
    assert lines[-1] == (f"ingest: {len(VIDEOS)} video(s) readable, 2 rejected (why: `kinema data inspect "
                         f"{tmp_path / 'ds'}` or rejects.parquet)")


def test_scene_boundaries_are_found_within_one_frame_and_every_shot_becomes_a_clip(corpus, dataset):
    videos, truth = corpus
    ds = Dataset.open(dataset)
    scenes, clips = by_name(ds.table("scenes"), videos), by_name(ds.table("clips"), videos)
    for name, (cuts, _) in truth.items():
        found = [s["start_frame"] for s in scenes[name]][1:]
        assert len(found) == len(cuts), (name, found, cuts)
        assert max(abs(a - b) for a, b in zip(found, cuts)) <= 1, (name, found, cuts)
        fps = VIDEOS[name][2]
        starts = [0] + cuts
        assert [round(c["start_time"] * fps) for c in clips[name]] == pytest.approx(starts, abs=1)
        assert all(c["keep"] for c in clips[name])
    assert len({c["clip_id"] for c in ds.table("clips")}) == len(ds.table("clips"))


def test_videos_too_short_for_a_clip_are_rejected_with_their_length(tmp_path):
    frames, _, _ = world_shots([1, 2, 3], [6, 6, 6], 64, 48, 12, distinct=True)
    write_test_video(tmp_path / "videos" / "one_frame.mp4", frames[:1], 12)
    write_test_video(tmp_path / "videos" / "short.mp4", frames[:5], 12)
    write_test_video(tmp_path / "videos" / "quick_cuts.mp4", frames, 12)  # 1.5 s, but three 0.5 s shots
    write_test_video(tmp_path / "videos" / "long_enough.mp4", np.concatenate([frames[:6]] * 3), 12)  # one 1.5 s shot
    root, lines = tmp_path / "ds", []
    ingest(root, [str(tmp_path / "videos")], log=QUIET)
    assert split(root, SplitConfig(), log=lines.append).complete
    reasons = {Path(r["path"]).name: r["reason"] for r in read_parquet(root / "rejects.parquet")}
    assert reasons == {"one_frame.mp4": "shorter than split.min_seconds (1 s): 0.08 s",
                       "short.mp4": "shorter than split.min_seconds (1 s): 0.42 s",
                       "quick_cuts.mp4": "no shot reaches split.min_seconds (1 s): 3 shots, the longest 0.50 s"}
    assert {Path(c["path"]).name for c in Dataset.open(root).table("clips")} == {"long_enough.mp4"}
    assert lines[-1] == (f"split: 1 clip(s) from 1 video(s), 3 video(s) rejected (why: `kinema data inspect {root}` "
                         "or rejects.parquet)")
    score(root, log=QUIET)
    report = (root / "report.txt").read_text()
    assert "left out before the filter (3; also in rejects.parquet):" in report
    assert "  split: short.mp4: shorter than split.min_seconds (1 s): 0.42 s" in report


def test_a_rotated_phone_clip_reads_upright(corpus):
    videos, truth = corpus
    first = next(iter_frames(videos / "phone.mp4")).pixels
    upright = truth["phone.mp4"][1]
    assert first.shape == upright.shape == (96, 64, 3)
    assert np.abs(first.astype(int) - upright).mean() < 6  # H.264 noise; sideways would be ~50


def test_captions_come_from_sidecars_by_clip_time(corpus, dataset):
    videos, _ = corpus
    clips = by_name(Dataset.open(dataset).table("clips"), videos)
    assert {c["caption"] for c in clips["cuts.mp4"]} == {"four shots of the procedural world"}
    assert [c["caption"] for c in clips["phone.mp4"]] == ["first shot", "second shot"]
    assert {c["caption"] for c in clips["cuts.webm"]} == {"four shots of the procedural world"}  # same stem
    assert {c["caption_source"] for c in clips["nested/cuts.mkv"]} == {"none"}


def test_cache_holds_every_kept_clip_in_the_documented_format(dataset):
    manifest = json.loads((dataset / "cache" / "manifest.json").read_text())
    assert (manifest["format"], manifest["version"], manifest["latent_channels"], manifest["text_dim"]) == \
        ("kinema-latent-cache", 1, 4, 384)
    kept = [c for c in Dataset.open(dataset).table("clips") if c["keep"]]
    assert sorted(s["id"] for s in manifest["samples"]) == sorted(c["clip_id"] for c in kept)
    grids = {(48, 64): [4, 3, 6, 8], (64, 48): [4, 3, 8, 6], (64, 64): [4, 3, 8, 8]}
    for s in manifest["samples"]:
        tensors = load_file(dataset / "cache" / s["shard"])
        assert list(tensors[f"{s['id']}.latents"].shape) == s["shape"]
        assert s["shape"] in grids.values()
        tokens, mask = tensors[f"{s['id']}.text_tokens"], tensors[f"{s['id']}.text_mask"]
        assert tokens.shape[1] == 384 and mask.dtype == torch.bool and mask.all()
    phone = [s for s in manifest["samples"] if s["caption"].endswith("shot")]
    assert phone and all(s["shape"] == grids[(64, 48)] for s in phone)  # portrait clips go to the portrait bucket
    null = load_file(dataset / "cache" / "null.safetensors")
    assert null["text_tokens"].shape[1] == 384


def test_encode_takes_the_models_frame_rate_unless_told(dataset, tiny_model_dir, tmp_path):
    fast = tmp_path / "sixteen"  # a model that makes video at 16 fps, as Wan 2.1 does
    shutil.copytree(tiny_model_dir, fast)
    config = json.loads((fast / "kinema.json").read_text())
    config["sampling"]["fps"] = 16
    (fast / "kinema.json").write_text(json.dumps(config))
    default = dataclasses.replace(cache_config(), fps=None)
    copy = tmp_path / "ds"  # the encode stage's record is the dataset's: the module's stays as it is
    shutil.copytree(dataset, copy)
    for model, cfg, want in ((fast, default, 16), (tiny_model_dir, default, 8), (fast, cache_config(), 8)):
        out = tmp_path / f"cache-{want}-{model.name}"
        encode(copy, model, cfg, out=out, log=QUIET)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["info"]["fps"] == want, (model, cfg.fps)


def test_a_training_run_from_the_cache_works_end_to_end(dataset, tmp_path):
    from kinema.train import train

    buckets = [dict(b, batch_size=2) for b in BUCKETS]
    result = train(dict(preset="tiny", out_dir=str(tmp_path / "run"), max_steps=3, seed=0,
                        data=dict(kind="latents", path=str(dataset / "cache"), buckets=buckets),
                        optim=dict(lr=1e-3, warmup_steps=1), log=dict(every=1, progress=False, tensorboard=False),
                        sample=dict(every=0), checkpoint=dict(every=100)))
    losses = [json.loads(line)["loss"] for line in result.metrics.read_text().splitlines()]
    assert result.step == 3 and len(losses) == 3 and all(np.isfinite(losses))


# -- resume, idempotence, shards ---------------------------------------------------------------------------------


def test_rerunning_a_finished_dataset_does_nothing(corpus, dataset, tiny_model_dir):
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*") if p.is_file()}
    runs = [ingest(dataset, log=QUIET), split(dataset, SplitConfig(), log=QUIET),
            score(dataset, filters=PERMISSIVE, log=QUIET), caption(dataset, log=QUIET)]
    assert all(not r.done and r.complete for r in runs)
    assert encode(dataset, tiny_model_dir, cache_config(), log=QUIET).done == []
    unit_files = {p: t for p, t in before.items() if "units" in p.parts}
    assert all(p.stat().st_mtime_ns == t for p, t in unit_files.items())


def test_a_killed_split_resumes_without_redoing_finished_units_or_duplicating(corpus, dataset, tmp_path, monkeypatch):
    import kinema.data.split as split_module

    root, units = tmp_path / "ds", spread_units(corpus[0])
    ingest(root, [str(corpus[0])], units=units, log=QUIET)
    real = split_module.split_source
    calls: list[dict] = []
    killed: list[int] = []

    def dies_in_the_second_unit(source, cfg):
        calls.append(source)
        if len({c["unit"] for c in calls}) == 2 and not killed:
            killed.append(source["unit"])
            raise KeyboardInterrupt  # what a kill looks like from inside: nothing after this line runs
        return real(source, cfg)

    monkeypatch.setattr(split_module, "split_source", dies_in_the_second_unit)
    with pytest.raises(KeyboardInterrupt):
        split(root, SplitConfig(), log=QUIET)
    store = Dataset.open(root).store("split")
    finished = {u: store.marker_path(u).stat().st_mtime_ns for u in range(units) if store.marker(u)}
    assert calls[0]["unit"] in finished and killed[0] not in finished
    assert not (root / "clips.parquet").exists()  # merged tables wait for the last unit

    calls.clear()
    run = split(root, SplitConfig(), log=QUIET)
    assert sorted(run.skipped) == sorted(finished) and run.complete
    assert all(store.marker_path(u).stat().st_mtime_ns == t for u, t in finished.items())
    assert calls and not {c["unit"] for c in calls} & set(finished)  # nothing finished was decoded again
    whole = Dataset.open(dataset)
    for table in ("scenes", "clips"):
        assert Dataset.open(root).gather("split", table) == whole.gather("split", table), table
    ids = [c["clip_id"] for c in Dataset.open(root).table("clips")]
    assert len(ids) == len(set(ids))


def manifest_and_tensors(cache):
    manifest = json.loads((cache / "manifest.json").read_text())
    ids = [s["id"] for s in manifest["samples"]]
    assert len(ids) == len(set(ids))
    tensors = {}
    for s in manifest["samples"]:
        shard = load_file(cache / s["shard"])
        tensors[s["id"]] = [shard[f"{s['id']}.{k}"].numpy().tobytes() for k in ("latents", "text_tokens", "text_mask")]
    manifest["info"].pop("model")
    return manifest, tensors


def test_two_shards_one_killed_and_resumed_equal_one_unsharded_run(corpus, dataset, tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    import kinema.data.encode as encode_module

    root = tmp_path / "ds"
    first = run_all(root, corpus[0], Shard(0, 2), tiny_model_dir, encode_cfg=cache_config())
    assert first.done and not first.complete and not (root / "cache" / "manifest.json").exists()  # waits for shard 1
    store = Dataset.open(root).store("encode")
    finished = {u: store.marker_path(u).stat().st_mtime_ns for u in first.done}

    def killed(*args):
        raise KeyboardInterrupt  # shard 1 dies writing its first cache shard

    monkeypatch.setattr(encode_module, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        run_all(root, corpus[0], Shard(1, 2), tiny_model_dir, encode_cfg=cache_config())
    monkeypatch.undo()
    last = run_all(root, corpus[0], Shard(1, 2), tiny_model_dir, encode_cfg=cache_config())
    assert last.complete and last.done and set(finished) <= set(last.skipped)
    assert all(store.marker_path(u).stat().st_mtime_ns == t for u, t in finished.items())  # shard 0's work stands

    for table in ("sources", "scenes", "clips", "rejects"):
        assert Dataset.open(root).table(table) == Dataset.open(dataset).table(table), table
    assert manifest_and_tensors(root / "cache") == manifest_and_tensors(dataset / "cache")


def test_a_stage_before_its_upstream_names_the_command_to_run(corpus, tmp_path):
    root = tmp_path / "ds"
    ingest(root, [str(corpus[0])], units=2, log=QUIET)
    with pytest.raises(DataError, match="kinema data split .*--shard"):
        score(root, log=QUIET)
    with pytest.raises(DataError, match="not a kinema dataset"):
        split(tmp_path / "nothing", log=QUIET)


def test_changed_filter_thresholds_refilter_without_decoding_again(corpus, tmp_path, monkeypatch):
    import kinema.data.score as score_module

    root = tmp_path / "ds"
    shutil.copytree(corpus[0], tmp_path / "videos")
    ingest(root, [str(tmp_path / "videos")], units=2, log=QUIET)
    split(root, SplitConfig(), log=QUIET)
    score(root, filters=PERMISSIVE, log=QUIET)
    monkeypatch.setattr(score_module, "measure_source", lambda *a: pytest.fail("decoded again"))
    strict = dataclasses.replace(PERMISSIVE, min_width=90)
    run = score(root, filters=strict, log=QUIET)
    assert run.complete and len(run.done) == 2
    clips = Dataset.open(root).table("clips")
    assert {c["keep"] for c in clips if c["width"] >= 90} == {True}
    assert all(c["reasons"] == [f"min_width: width {c['width']} < 90"] for c in clips if c["width"] < 90)
    report = (root / "report.txt").read_text()
    assert "min_width" in report and f"of {len(clips)} clips kept" in report
