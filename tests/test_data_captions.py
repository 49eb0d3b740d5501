"""kinema data through the command line: captions from a mapping or a plugged-in captioner (and what
happens when it fails), templates, clips exported as files, inspect's statistics and contact sheet, and
the CLI's errors."""

from __future__ import annotations

import textwrap

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
