"""kinema data through the command line: captions from a mapping or a plugged-in captioner (and what
happens when it fails), templates, clips exported as files, inspect's statistics and contact sheet, and
the CLI's errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kinema.cli import main
from kinema.data.caption import caption
from kinema.data.config import CaptionConfig
from kinema.data.manifest import Dataset
from kinema.data.shards import DataError, read_parquet
from kinema.data.synthetic import world_shots, write_test_video

SHOTS = [14, 20, 16]  # at 12 fps: three clips


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A dataset of one three-shot video, ingested, split and scored through `kinema data`."""
    base = tmp_path_factory.mktemp("captions")
    frames, _, _ = world_shots([7, 8, 9], SHOTS, 96, 64, 12, distinct=True)
    write_test_video(base / "videos" / "walk.mp4", frames, 12)
    (base / "videos" / "walk.txt").write_text("a short caption")
    config = base / "data.toml"
    config.write_text("[filter]\nmax_static_fraction = 1.0\n")
    root = base / "ds"
    assert main(["data", "ingest", str(root), str(base / "videos"), "-q"]) == 0
    for stage in ("split", "score"):
        assert main(["data", stage, str(root), "--config", str(config), "-q"]) == 0
    return root


def clips(root):
    return Dataset.open(root).table("clips")


def test_a_mapping_captions_clips_by_id_or_by_file_name(scored, tmp_path):
    ids = [c["clip_id"] for c in clips(scored)]
    mapping = tmp_path / "captions.csv"
    mapping.write_text(f"clip_id,name,caption\n{ids[1]},,the middle shot\n,walk.mp4,the walk\n")
    assert main(["data", "caption", str(scored), "--mapping", str(mapping), "-q"]) == 0
    got = [(c["caption"], c["caption_source"]) for c in clips(scored)]
    assert got == [("the walk", "mapping"), ("the middle shot", "mapping"), ("the walk", "mapping")]


def test_a_plugged_in_captioner_recaptions_from_the_prompt_template(scored, tmp_path, monkeypatch):
    (tmp_path / "my_vlm.py").write_text(textwrap.dedent("""
        def describe(frames, prompt):
            return f"{frames.shape[0]}x{frames.shape[1]}x{frames.shape[2]} saw: {prompt}"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = CaptionConfig(captioner="my_vlm:describe", prompt_template="[{caption}] {duration:.1f}s",
                        caption_template="sks, {caption}", frames=4, max_size=48)
    caption(scored, cfg, log=None)
    rows = clips(scored)
    expected = [f"sks, 4x32x48 saw: [a short caption] {n / 12:.1f}s" for n in SHOTS]
    assert [c["caption"] for c in rows] == expected
    assert {(c["caption_source"], c["original_caption"]) for c in rows} == {("captioner", "a short caption")}


def test_a_captioner_that_fails_on_one_clip_costs_that_clip_only(scored, tmp_path, monkeypatch):
    (tmp_path / "flaky_vlm.py").write_text(textwrap.dedent("""
        calls = []
        def describe(frames):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("out of memory")
            return "a described clip"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = caption(scored, CaptionConfig(captioner="flaky_vlm:describe"), log=None)
    assert run.complete
    rows = clips(scored)
    assert [c["keep"] for c in rows] == [True, False, True]
    assert rows[1]["reasons"][-1] == "caption: captioning failed: RuntimeError: out of memory"
    rejects = [r for r in read_parquet(scored / "rejects.parquet") if r["stage"] == "caption"]
    assert [r["clip_id"] for r in rejects] == [rows[1]["clip_id"]] and "out of memory" in rejects[0]["reason"]


def test_bad_templates_and_captioners_are_refused_with_what_is_accepted(scored):
    with pytest.raises(DataError, match=r"bad field 'title'; accepted: \{caption\} \{duration\}"):
        caption(scored, CaptionConfig(caption_template="{title}"), log=None)
    with pytest.raises(DataError, match="captioner 'no_such_module:f' cannot be loaded"):
        caption(scored, CaptionConfig(captioner="no_such_module:f"), log=None)


def test_inspect_prints_statistics_and_writes_a_contact_sheet(scored, tmp_path, capsys):
    assert main(["data", "caption", str(scored), "-q"]) == 0
    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(scored), "--sheet", str(sheet), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "sources: 1 files" in out and "clips: 3" in out and "captions: 3 of 3 kept clips" in out
    with Image.open(sheet) as img:
        assert img.size == (3 * 164, 90 + 14 + 4)  # one row of three 160-wide thumbnails with labels


def test_the_cli_names_the_stage_to_run_first(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    frames, _, _ = world_shots([1], [16], 64, 48, 8)
    write_test_video(video, frames, 8)
    assert main(["data", "ingest", str(tmp_path / "ds"), str(video), "-q"]) == 0
    assert main(["data", "encode", str(tmp_path / "ds"), "--model", str(tmp_path), "-q"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["data", "score", str(tmp_path / "ds"), "--shard", "5/2"]) == 2
    assert "shard must be i/n" in capsys.readouterr().err
    assert main(["data", "score", str(tmp_path / "ds"), "-q"]) == 2
    assert "run `kinema data split" in capsys.readouterr().err


def test_split_export_writes_each_clip_as_a_file_with_its_frames(tmp_path):
    from kinema.common.video import read_video

    frames, _, _ = world_shots([7, 8, 9], SHOTS, 96, 64, 12, distinct=True)
    write_test_video(tmp_path / "videos" / "walk.mp4", frames, 12)
    root = tmp_path / "ds"
    assert main(["data", "ingest", str(root), str(tmp_path / "videos"), "-q"]) == 0
    assert main(["data", "split", str(root), "--export", "-q"]) == 0
    rows = clips(root)
    assert [r["frames"] for r in rows] == SHOTS
    for row, start in zip(rows, [0, SHOTS[0], SHOTS[0] + SHOTS[1]]):
        assert row["clip_path"] == str(root / "clips" / f"{row['clip_id']}.mp4")
        video, fps = read_video(row["clip_path"])
        assert video.shape == (row["frames"], 64, 96, 3) and fps == pytest.approx(12)
        assert np.abs(video[0].astype(int) - frames[start]).mean() < 6  # the shot's own first frame


# -- sidecars that are there but unreadable; clips with no caption at all ------------------------------------------

SIDECARS = {  # video stem -> (sidecar name, its bytes) or None
    "trailing_comma": ("trailing_comma.json", b'{"caption": "a red square", }'),
    "other_key": ("other_key.json", b'{"text": "a red square"}'),
    "bad_segment": ("bad_segment.json", b'{"segments": [{"start": 0, "caption": "x"}]}'),
    "not_utf8": ("not_utf8.txt", b"\xff\xfe bad utf"),
    "good": ("good.json", b'{"caption": "a good caption"}'),
    "bare": None,
    "bare_too": None,
}


@pytest.fixture(scope="module")
def sidecar_dataset(tmp_path_factory):
    """A scored dataset of one-shot videos, each with one kind of sidecar (or none)."""
    base = tmp_path_factory.mktemp("sidecars")
    frames, _, _ = world_shots([3], [16], 64, 48, 8)
    for stem, sidecar in SIDECARS.items():
        write_test_video(base / "videos" / f"{stem}.mp4", frames, 8)
        if sidecar:
            (base / "videos" / sidecar[0]).write_bytes(sidecar[1])
    (base / "videos" / "meta.json").write_text('{"uploader": "someone", "fps": 8}')  # another tool's metadata ...
    (base / "videos" / "meta.txt").write_text("the caption of meta")  # ... next to a caption: the .txt is used
    write_test_video(base / "videos" / "meta.mp4", frames, 8)
    root = base / "ds"
    assert main(["data", "ingest", str(root), str(base / "videos"), "-q"]) == 0
    config = base / "data.toml"
    config.write_text("[filter]\nmax_static_fraction = 1.0\n")
    for stage in ("split", "score"):
        assert main(["data", stage, str(root), "--config", str(config), "-q"]) == 0
    return root


def by_stem(rows):
    return {Path(r["path"]).stem: r for r in rows}


def test_unreadable_or_unrecognised_sidecars_reject_their_clip_with_the_reason(sidecar_dataset):
    run = caption(sidecar_dataset, log=None)
    assert run.complete
    rows = by_stem(clips(sidecar_dataset))
    assert sorted(stem for stem, r in rows.items() if r["keep"]) == ["bare", "bare_too", "good", "meta"]
    reasons = {Path(r["path"]).stem: r["reason"] for r in read_parquet(sidecar_dataset / "rejects.parquet")
               if r["stage"] == "caption"}
    assert reasons == {
        "trailing_comma": "sidecar trailing_comma.json: not valid JSON (line 1 col 29: Expecting property name "
                          "enclosed in double quotes)",
        "other_key": "sidecar other_key.json: has no 'caption' or 'segments' key (keys ['text']); accepted: "
                     '{"caption": text} or {"segments": [{"start": s, "end": e, "caption": text}, ...]}',
        "bad_segment": 'sidecar bad_segment.json: segments[0] must be {"start": seconds, "end": seconds, '
                       '"caption": text}, got {"start": 0, "caption": "x"}',
        "not_utf8": "sidecar not_utf8.txt: not valid UTF-8 (byte 0xff at offset 0); save it as UTF-8",
    }
    assert rows["trailing_comma"]["reasons"] == [f"caption: {reasons['trailing_comma']}"]
    got = {stem: (rows[stem]["caption"], rows[stem]["caption_source"]) for stem in ("good", "meta", "bare")}
    assert got == {"good": ("a good caption", "sidecar-json"), "meta": ("the caption of meta", "sidecar-txt"),
                   "bare": ("", "none")}  # no sidecar at all: kept, trained unconditionally


def test_the_caption_stage_says_how_many_kept_clips_have_no_caption(sidecar_dataset, capsys):
    assert main(["data", "caption", str(sidecar_dataset)]) == 0
    out = capsys.readouterr().out
    assert ("caption: 2 of 4 clips have no caption: they train as the empty prompt (from 2 video(s): bare.mp4, "
            "bare_too.mp4;") in out
    assert f"caption: 4 clip(s) rejected (why: `kinema data inspect {sidecar_dataset}`" in out
    lines = []
    caption(sidecar_dataset, CaptionConfig(caption_template="sks, {caption}"), log=lines.append)
    assert "caption: 2 of 4 clips have no caption: they train as the caption template alone (e.g. 'sks, ')" in lines[-2]


def test_a_contact_sheet_of_a_dataset_split_found_no_clip_in_says_why(tmp_path, capsys):
    frames, _, _ = world_shots([1], [5], 64, 48, 24)
    write_test_video(tmp_path / "videos" / "short.mp4", frames, 24)
    write_test_video(tmp_path / "videos" / "one_frame.mp4", frames[:1], 24)
    root = tmp_path / "ds"
    assert main(["data", "ingest", str(root), str(tmp_path / "videos"), "-q"]) == 0
    assert main(["data", "inspect", str(root), "--sheet", str(tmp_path / "sheet.png")]) == 2
    assert f"run `kinema data split {root}` first" in capsys.readouterr().err
    assert main(["data", "split", str(root), "-q"]) == 0
    assert main(["data", "inspect", str(root), "--sheet", str(tmp_path / "sheet.png")]) == 2
    captured = capsys.readouterr()
    assert "shorter than split.min_seconds" in captured.out  # the rejects, listed above the error
    assert ("error: no clips to show: split kept none of 2 videos; see the rejects "
            f"(`kinema data inspect {root}` lists them") in captured.err
    assert not (tmp_path / "sheet.png").exists()


def test_bad_data_config_values_are_refused_before_the_model_loads(scored, tmp_path, capsys):
    config = tmp_path / "data.toml"
    config.write_text("[encode]\nbatch_size = 1.5\n")
    missing_model = str(tmp_path / "no_model")
    assert main(["data", "encode", str(scored), "--model", missing_model, "--config", str(config), "-q"]) == 2
    assert "encode.batch_size must be an integer, got 1.5" in capsys.readouterr().err
    config.write_text('[split]\nthreshold = "abc"\n')
    assert main(["data", "split", str(scored), "--config", str(config), "-q"]) == 2
    assert "split.threshold must be a number, got 'abc'" in capsys.readouterr().err


def test_a_device_that_is_not_one_is_refused_before_the_model_loads(scored, tmp_path, capsys):
    missing_model = str(tmp_path / "no_model")
    for command in (["encode", str(scored)], ["world", str(tmp_path / "cache"), "--clips", "1"]):
        assert main(["data", *command, "--model", missing_model, "--device", "tpu", "-q"]) == 2
        assert ("--device 'tpu' is not a device; accepted: cpu, cuda, cuda:N (a GPU), mps, or auto"
                in capsys.readouterr().err)
