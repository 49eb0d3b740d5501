"""Long video on a tiny random model: window bookkeeping, each window continuing the last one's latent frames
exactly, the whole video decoded as one clip, timed prompts, atomic streaming output, bad input, and peak
memory that does not grow with the number of windows."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
import torch

from kinema.common.video import probe_video, read_video, read_video_metadata
from kinema.infer import InputError
from kinema.infer.long import (VideoWriter, check_timed_prompts, long_video, prompt_at, read_prompts_file,
                               window_count)

KW = dict(width=32, height=32, steps=2)  # 9-frame windows (3 latent frames) at 8 fps
FPS, WINDOW, SPAN = 8, 9, 5  # overlap 2 latent frames = 5 pixel frames re-created per later window


pytestmark = pytest.mark.usefixtures("one_thread")


def seconds_for(windows: int) -> float:
    return (WINDOW + (windows - 1) * (WINDOW - SPAN)) / FPS


def test_window_count():
    assert window_count(9, 9, 2, 4) == 1 and window_count(1, 9, 2, 4) == 1
    assert window_count(13, 9, 2, 4) == 2 and window_count(14, 9, 2, 4) == 3
    assert window_count(60 * 8, 17, 2, 4) == 1 + math.ceil((480 - 17) / 12)


def test_each_window_holds_the_previous_windows_end(pipe, tmp_path, monkeypatch):
    calls = []
    sample = pipe.sample

    def spy(s, condition=None, init_latents=None, callback=None, **kw):
        out = sample(s, condition=condition, init_latents=init_latents, callback=callback, **kw)
        calls.append((s, condition, out))
        return out

    monkeypatch.setattr(pipe, "sample", spy)
    out = tmp_path / "long.mp4"
    result = long_video(pipe, "a ball", seconds_for(4) - 1 / FPS, out, **KW)  # the last window is cut short
    assert result.windows == 4 and result.frames == 20 and probe_video(out)["frames"] == 20
    assert calls[0][1] is None
    seeds = [s.seed for s, _, _ in calls]
    assert seeds == [0, 1, 2, 3]
    for (_, _, before), (s, condition, latents) in zip(calls, calls[1:]):
        assert condition.mask.tolist() == [[True, True, False]]
        assert torch.equal(condition.latents[:, :, :2], before[:, :, -2:])  # the last window's end, as it was
        assert torch.equal(latents[:, :, :2], condition.latents[:, :, :2])  # given frames come out exactly
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]  # no temporary file left behind
    assert "windows" in read_video_metadata(out)["settings"]


def test_timed_prompts_switch_per_window(pipe, tmp_path):
    prompts = [(0, "a red ball"), (2.0, "a blue ball")]
    result = long_video(pipe, prompts, seconds_for(5), tmp_path / "long.mp4", **KW)
    # new frames per window: [0, 9), [9, 13), [13, 17), [17, 21), [21, 25): middles at 0.56, 1.38, 1.88, 2.38, 2.88 s
    assert result.window_prompts == ["a red ball", "a red ball", "a red ball", "a blue ball", "a blue ball"]
    settings = json.loads(read_video_metadata(result.path)["settings"])
    assert settings["window_prompts"] == result.window_prompts  # the file says which prompt made which window


def test_every_timed_prompt_is_used_or_named(pipe, tmp_path):
    early = [(0, "a red ball"), (0.5, "a blue ball")]  # the first window's middle is past 0.5 s: still the first
    result = long_video(pipe, early, seconds_for(1), tmp_path / "a.mp4", **KW)
    assert result.window_prompts == ["a red ball"]
    crowded = [(0, "a red ball"), (1.4, "a green box"), (1.45, "a blue ball")]  # both within one window's step
    with pytest.warns(UserWarning, match=r"1 timed prompt\(s\) .* not used: 1.4 s 'a green box' \(windows start every"):
        result = long_video(pipe, crowded, seconds_for(3), tmp_path / "b.mp4", **KW)
    assert "a green box" not in result.window_prompts


def test_prompts_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# scene plan\n0 a red ball rolls\n\n12.5 it bounces\n1:30 it stops\n", encoding="utf-8")
    prompts = read_prompts_file(f)
    assert prompts == [(0.0, "a red ball rolls"), (12.5, "it bounces"), (90.0, "it stops")]
    assert prompt_at(prompts, 12.4) == "a red ball rolls" and prompt_at(prompts, 100) == "it stops"
    f.write_text("\ufeff0\ta red ball rolls\n1:05   it stops\n", encoding="utf-8")  # a BOM, a tab, spaces
    assert read_prompts_file(f) == [(0.0, "a red ball rolls"), (65.0, "it stops")]
    for bad in ("1:-30 x", "1:75 x", "soon a ball"):
        f.write_text(f"0 a\n{bad}\n", encoding="utf-8")
        with pytest.raises(InputError, match=r"prompts.txt:2: expected 'SECONDS PROMPT'"):
            read_prompts_file(f)
    f.write_text("soon a ball\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"prompts.txt:1: expected 'SECONDS PROMPT'"):
        read_prompts_file(f)


@pytest.mark.parametrize("prompts,match", [
    ([], "no prompts"),
    ([(1.0, "a")], "first prompt must start at 0"),
    ([(0, "a"), (5, "b"), (3, "c")], "must increase"),
    ([(0, "a"), (20, "b")], "starts after the video ends"),
    ([(0, "  ")], "empty"),
])
def test_bad_timed_prompts(prompts, match):
    with pytest.raises(InputError, match=match):
        check_timed_prompts(prompts, 10.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(seconds=0), "seconds must be a number of seconds > 0"),
    (dict(seconds=2.0, overlap=3), r"overlap must be in \[1, 2\]"),
    (dict(seconds=2.0, output="x.gif"), "streams to .mp4 or .webm"),
    (dict(seconds=2.0, frames=1), r"a 1-frame window is one latent frame, none to carry into the next"),
    (dict(seconds=2.0, output="folder.mp4"), "it is a folder"),
])
def test_long_bad_input_is_refused_before_sampling(pipe, tmp_path, monkeypatch, kwargs, match):
    monkeypatch.setattr(pipe, "sample", lambda *a, **k: pytest.fail("sampled on bad input"))
    output = tmp_path / kwargs.pop("output", "x.mp4")
    if output.name == "folder.mp4":
        output.mkdir()
    with pytest.raises(InputError, match=match):
        long_video(pipe, "a ball", output=output, **{**KW, **kwargs})
    assert [p.name for p in tmp_path.iterdir()] in ([], ["folder.mp4"])


def test_writer_streams_and_is_atomic(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    with VideoWriter(tmp_path / "a.mp4", 8) as writer:
        writer.write(frames[:2])
        writer.write(frames[2:])
    back, fps = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape and fps == 8
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "b.mp4", 8) as writer:
            writer.write(frames)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


# -- memory ----------------------------------------------------------------------------------------------------


def peak_memory(run) -> tuple[int, int, int]:
    """(torch, python) peak bytes allocated during ``run()`` above what was live before it, and the torch bytes
    still held when it returned (what a leak leaves behind, even one smaller than the first window's peak).

    torch: PyTorch's CPU allocator events from the profiler (``profile_memory``), summed in time order;
    every tensor, however it is made, passes through it. python: tracemalloc's peak, which covers numpy
    arrays (numpy reports its buffers to tracemalloc) and Python objects. Both are exact byte counts of
    this process's own allocations, so unlike RSS they do not depend on what earlier tests left behind
    or on when the C allocator returns pages.
    """
    from torch.profiler import ProfilerActivity, profile
    tracemalloc.start()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run()
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        pytest.skip("this torch build's profiler exposes no allocation events")
    events = sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak, python_peak, live


def test_peak_memory_does_not_grow_with_length(pipe, tmp_path):
    def run(windows):
        return lambda: long_video(pipe, "a ball", seconds_for(windows), tmp_path / f"{windows}.mp4", **KW)

    run(1)()  # warm up: first-call caches (prompt embeddings, kernels) are not per-window memory
    torch2, py2, held2 = peak_memory(run(2))
    torch14, py14, held14 = peak_memory(run(14))
    # One window's decoded pixels: float32 in torch, uint8 in numpy. Keeping the frames of the twelve extra
    # windows alive would break these bounds (the test below); sampling memory is the same for every window.
    window_float = 3 * WINDOW * 32 * 32 * 4
    window_uint8 = WINDOW * 32 * 32 * 3
    assert torch14 <= torch2 + window_float // 2, (torch2, torch14)
    assert held14 <= held2 + window_float // 2, (held2, held14)
    assert py14 <= py2 + 2 * window_uint8, (py2, py14)
    assert torch2 > 10 * window_float  # the measure sees the sampling and decoding at all


def test_the_memory_measure_sees_a_leak(pipe, tmp_path, monkeypatch):
    kept = []
    decode_chunks = pipe.vae.decode_chunks

    def leaky(latents, **kw):
        for chunk in decode_chunks(latents, **kw):
            kept.append(chunk.clone())  # the bug this guards against: holding every window's frames
            yield chunk

    monkeypatch.setattr(pipe.vae, "decode_chunks", leaky)
    long_video(pipe, "a ball", seconds_for(1), tmp_path / "1.mp4", **KW)  # warm up, as the test above does
    _, _, held2 = peak_memory(lambda: long_video(pipe, "a ball", seconds_for(2), tmp_path / "2.mp4", **KW))
    _, _, held14 = peak_memory(lambda: long_video(pipe, "a ball", seconds_for(14), tmp_path / "14.mp4", **KW))
    # each later window decodes only its new frames: 12 more windows' worth, held, must show (they stay under
    # the first window's peak, which decodes a whole window, so the peak alone would not see them)
    assert held14 - held2 >= 12 * 3 * (WINDOW - SPAN) * 32 * 32 * 4 * 0.9, (held2, held14)


def test_cli_long_with_timed_prompts(tiny_model_dir, tmp_path, capsys):
    from kinema.cli import main
    plan = tmp_path / "plan.txt"
    plan.write_text("0 a red ball rolls\n2 a blue ball bounces\n", encoding="utf-8")
    out = tmp_path / "long.mp4"
    argv = ["generate", "--model", str(tiny_model_dir), "--long", "3", "--prompts-file", str(plan), "--size", "32x32",
            "--steps", "2", "-o", str(out), "-q"]
    assert main(argv) == 0
    assert probe_video(out)["frames"] == 24
    assert main([*argv[:1], "a ball", *argv[1:]]) == 2
    assert "either a prompt or --prompts-file" in capsys.readouterr().err
