"""Pipeline: determinism, settings validation, metadata, guidance, and the CLI's handling of bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from kinema.cli import main
from kinema.infer import InputError, Pipeline


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return Pipeline.from_pretrained(tiny_model_dir)


def test_same_seed_same_video_other_seed_other_video(pipe):
    a = pipe.generate("a red ball bounces", seed=3)
    b = pipe.generate("a red ball bounces", seed=3)
    c = pipe.generate("a red ball bounces", seed=4)
    assert a.frames.shape == (9, 64, 64, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_prompt_changes_the_video(pipe):
    a = pipe.generate("a red ball", seed=0)
    b = pipe.generate("a blue star spins on a checkered floor", seed=0)
    assert not torch.equal(a.latents, b.latents)


def test_guidance_one_skips_the_unconditional_pass(pipe, monkeypatch):
    calls = []
    forward = pipe.dit.forward
    monkeypatch.setattr(pipe.dit, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))
    pipe.generate("a ball", guidance=1.0, steps=2, sampler="euler")
    assert calls == [1, 1]
    calls.clear()
    pipe.generate("a ball", guidance=4.0, steps=2, sampler="euler")
    assert calls == [2, 2]  # cond and uncond batched together


def test_guidance_interval_runs_the_unconditional_row_only_inside_it(pipe, monkeypatch):
    import json
    calls = []
    forward = pipe.dit.forward
    monkeypatch.setattr(pipe.dit, "forward", lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k))
    common = dict(guidance=4.0, steps=4, shift=1.0, sampler="euler", seed=2)  # steps at t = 1, 0.75, 0.5, 0.25
    video = pipe.generate("a ball", guidance_interval=(0.4, 0.8), **common)
    assert calls == [1, 2, 2, 1]
    assert json.loads(video.metadata()["settings"])["guidance_interval"] == [0.4, 0.8]
    # no step inside: the video guidance 1 makes; the whole range: the default's
    assert torch.equal(pipe.generate("a ball", guidance_interval="0,0.1", **common).latents,
                       pipe.generate("a ball", **{**common, "guidance": 1.0}).latents)
    everywhere = pipe.generate("a ball", guidance_interval=(0, 1), **common).latents
    assert torch.equal(everywhere, pipe.generate("a ball", **common).latents)
    assert not torch.equal(everywhere, video.latents)


@pytest.mark.parametrize("sampler", ["euler", "heun", "unipc"])
def test_every_sampler_runs(pipe, sampler):
    v = pipe.generate("a ball", sampler=sampler, steps=3, frames=5, width=32, height=48)
    assert v.frames.shape == (5, 48, 32, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(frames=10), r"frames 10 is not 4k\+1.*try 9 or 13"),
    (dict(width=70), r"width 70 is not a positive multiple of 16"),
    (dict(steps=0), r"steps must be an integer in \[1, 1000\]"),
    (dict(sampler="ddim"), r"unknown sampler 'ddim'"),
    (dict(guidance=-1.0), r"guidance must be"),
    (dict(guidance_interval=(0.8, 0.2)), r"guidance interval must be two noise levels LO,HI .*got \(0.8, 0.2\)"),
    (dict(guidance_interval="0.5"), r"guidance interval must be .*got '0.5'"),
])
def test_bad_settings_are_refused(pipe, kwargs, match):
    with pytest.raises(InputError, match=match):
        pipe.generate("a ball", **kwargs)


def test_empty_prompt_is_refused(pipe):
    with pytest.raises(InputError, match="prompt is empty"):
        pipe.generate("   ")


def test_cli_writes_mp4_with_metadata(tiny_model_dir, tmp_path):
    from kinema.common.video import probe_video, read_video_metadata
    out = tmp_path / "ball.mp4"
    assert main(["generate", "a red ball", "--model", str(tiny_model_dir), "--seed", "7", "-o", str(out), "-q"]) == 0
    assert probe_video(out)["codec"] == "h264" and probe_video(out)["frames"] == 9
    meta = read_video_metadata(out)
    assert meta["prompt"] == "a red ball" and meta["seed"] == "7" and "steps" in meta["settings"]
    assert [p.name for p in tmp_path.iterdir()] == ["ball.mp4"]  # no temp files left behind


def test_cli_summarises_what_it_wrote(tiny_model_dir, tmp_path, capsys):
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--frames", "1", "--steps", "1",
                 "-o", str(tmp_path / "still.png")]) == 0
    assert "(one frame, 64x64; seed 0;" in capsys.readouterr().out
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--steps", "1",
                 "-o", str(tmp_path / "clip.mp4")]) == 0
    assert "(9 frames, 64x64, 1.1 s at 8 fps; seed 0;" in capsys.readouterr().out


def test_cli_seconds_rounds_to_valid_frames(tiny_model_dir, tmp_path):
    from kinema.common.video import probe_video
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--seconds", "2", "--fps", "8", "-o", str(out), "-q"]) == 0
    assert probe_video(out)["frames"] == 17


def test_cli_png_for_a_single_frame(tiny_model_dir, tmp_path):
    out = tmp_path / "still.png"
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--frames", "1", "-o", str(out), "-q"]) == 0
    from PIL import Image
    with Image.open(out) as img:
        assert img.size == (64, 64)


@pytest.mark.parametrize("args,match", [
    (["--frames", "10"], "frames 10 is not 4k+1"),
    (["--size", "100x64"], "width 100 is not a positive multiple of 16"),
    (["--steps", "-3"], "steps must be"),
    (["--sampler", "nope"], "unknown sampler"),
    (["--guidance-interval", "0.9,0.1"], "guidance interval must be two noise levels LO,HI with 0 <= LO < HI <= 1"),
    (["-o", "x.avi"], "accepted: .mp4"),
    (["--device", "tpu9"], "'tpu9' is not a device; accepted: cpu, cuda"),
])
def test_cli_bad_input_exits_2_with_message(tiny_model_dir, tmp_path, capsys, args, match):
    code = main(["generate", "a ball", "--model", str(tiny_model_dir), *args])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,match", [
    (["--seconds", "nan"], "argument --seconds: must be a finite number of seconds > 0"),
    (["--seconds", "inf"], "argument --seconds: must be a finite number of seconds > 0"),
    (["--long", "0"], "argument --long: must be a finite number of seconds > 0"),  # not taken for "no --long"
    (["--threads", "0"], "argument --threads: must be a whole number of threads >= 1"),
    (["--gpus", "0"], "argument --gpus: must be a whole number >= 1, got '0'"),
    (["--gpus", "-2"], "argument --gpus: must be a whole number >= 1"),
])
def test_cli_flag_values_are_checked_as_they_are_parsed(tiny_model_dir, capsys, args, match):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "a ball", "--model", str(tiny_model_dir), *args])
    assert exit_.value.code == 2 and match in capsys.readouterr().err


def test_cli_output_paths_are_checked_before_any_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import tempfile

    blocker = tmp_path / "afile"
    blocker.write_text("mine")

    def refused(out):
        assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--steps", "1", "-q", "-o", out]) == 2
        return capsys.readouterr().err

    assert "afile is a file, not a folder" in refused(str(blocker / "x.mp4"))
    assert "into " + str(blocker) + ": it is a file" in refused(str(blocker))  # a folder of frames where a file is
    (tmp_path / "adir.mp4").mkdir()
    assert "it is a folder" in refused(str(tmp_path / "adir.mp4"))
    assert blocker.read_text() == "mine" and not list((tmp_path / "adir.mp4").iterdir())

    def no_write(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    with monkeypatch.context() as m:  # a folder the user cannot write to (as root, only a real attempt can tell)
        m.setattr(tempfile, "TemporaryFile", no_write)
        assert "not writable (Permission denied)" in refused(str(tmp_path / "new" / "x.mp4"))
    assert not (tmp_path / "new").exists()  # nothing created on the way to a refusal
    # a trailing '/' is a folder of PNG frames whatever the name looks like
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--steps", "1", "--frames", "5", "-q",
                 "-o", str(tmp_path / "run.v2") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "run.v2").iterdir())[:2] == ["frame_00000.png", "frame_00001.png"]


def test_cli_sigterm_leaves_no_temporary_file(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import os
    import signal

    from kinema.common.io import atomic_path
    from kinema.infer.pipeline import Video

    def killed_while_writing(self, path):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a video")
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill`, `timeout` or `docker stop` would, mid-write
    monkeypatch.setattr(Video, "save", killed_while_writing)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "clip.mp4"
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--steps", "1", "-q", "-o", str(out)]) == 143
    assert "terminated" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # neither the clip nor its temporary file
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only


def test_cli_corrupt_lora_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "style.safetensors"
    bad.write_bytes(b"not a safetensors file")
    monkeypatch.setattr(Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--lora", f"{bad}:0.5", "-q",
                 "-o", str(tmp_path / "x.mp4")]) == 2
    assert f"--lora {bad}: cannot read {bad} as a safetensors LoRA file" in capsys.readouterr().err


def test_cli_lora_for_another_model_is_refused_naming_its_base(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from safetensors.torch import save_file
    monkeypatch.setattr(Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    other = tmp_path / "other.safetensors"  # a LoRA whose layers are wider than the tiny DiT's
    save_file({"blocks.0.attn1.to_k.lora_A.weight": torch.zeros(4, 256),
               "blocks.0.attn1.to_k.lora_B.weight": torch.zeros(256, 4)}, str(other), {"base_model": "world-small"})
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--lora", str(other), "-q",
                 "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert f"--lora {other}: LoRA for 'blocks.0.attn1.to_k' has A (4, 256)" in err and "trained on world-small" in err
    assert not (tmp_path / "x.mp4").exists()


def test_out_of_memory_during_the_work_is_an_error_not_a_traceback(tiny_model_dir, tmp_path, capsys, monkeypatch):
    def too_big(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 32768065536 bytes")
    monkeypatch.setattr(Pipeline, "run", too_big)
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "-q", "-o", str(tmp_path / "x.mp4")]) == 1
    assert "error: out of memory ([enforce fail" in capsys.readouterr().err
    monkeypatch.setattr(Pipeline, "run", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors are bugs: their traceback is kept
        main(["generate", "a ball", "--model", str(tiny_model_dir), "-q", "-o", str(tmp_path / "x.mp4")])


def test_the_python_api_refuses_a_device_this_machine_lacks():
    import kinema
    with pytest.raises(kinema.InputError, match=r"device cuda:99: (this PyTorch .* sees no CUDA GPU; use device='cpu'|"
                                                r"there are \d+ CUDA GPU)"):
        kinema.load(device="cuda:99")


def test_video_save_refuses_a_png_of_several_frames(pipe, tmp_path):
    video = pipe.generate("a ball", steps=1, frames=5)
    with pytest.raises(ValueError, match="a .png holds one frame, got 5"):
        video.save(tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_the_command_freezes_its_objects_before_python_exits_and_a_call_from_python_does_not(monkeypatch, capsys):
    import gc
    frozen = []
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    assert main(["generate", "   "]) == 2  # a call from Python (tests, scripts): its objects stay collectable
    assert frozen == []
    monkeypatch.setattr(sys, "argv", ["kinema", "generate", "   "])
    assert main() == 2  # the console script: about to exit, so shutdown's collection skips them
    assert frozen == [True] and "prompt is empty" in capsys.readouterr().err


def test_cli_missing_model(capsys, tmp_path):
    assert main(["generate", "a ball", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_size_syntax():
    r = subprocess.run([sys.executable, "-m", "kinema.cli", "generate", "x", "--size", "big"], capture_output=True, text=True)
    assert r.returncode == 2 and "WIDTHxHEIGHT" in r.stderr


def test_auto_dtype_is_bf16_only_where_the_cpu_has_it(tiny_model_dir, monkeypatch):
    from kinema.infer.pipeline import resolve_dtype
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert resolve_dtype("auto", "cpu") == torch.float32
    pipe = Pipeline.from_pretrained(tiny_model_dir, dtype="auto")
    assert pipe.dtype == torch.float32 and pipe.generate("a ball", steps=1).notes["dtype"] == "float32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    pipe = Pipeline.from_pretrained(tiny_model_dir, dtype="auto")
    assert pipe.dtype == pipe.dit.dtype == next(pipe.vae.parameters()).dtype == torch.bfloat16
    video = pipe.generate("a ball", steps=1)
    assert video.notes["dtype"] == "bfloat16" and video.metadata()["dtype"] == "bfloat16"
    assert video.frames.shape == (9, 64, 64, 3)
    assert resolve_dtype(None) == resolve_dtype("fp32") == torch.float32
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16, fp16, got 'f32'"):
        resolve_dtype("f32")


def test_bf16_on_a_cpu_without_it_falls_back_with_a_message(tiny_model_dir, monkeypatch):
    from kinema.infer.pipeline import usable_dtype
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    with pytest.warns(UserWarning, match="no native support.*using float32"):
        pipe = Pipeline.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    assert pipe.dtype == torch.float32 and next(pipe.dit.parameters()).dtype == torch.float32
    assert pipe.generate("a ball", steps=1).frames.shape == (9, 64, 64, 3)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert usable_dtype("cpu", torch.bfloat16) == torch.bfloat16
    with pytest.warns(UserWarning, match="float16 requested"):  # AVX-512 BF16 alone does not make fp16 native
        assert usable_dtype("cpu", torch.float16) == torch.float32


def test_the_cli_says_which_flags_the_student_does_not_use(capsys):
    from types import SimpleNamespace

    from kinema.cli.generate import warn_student_ignores

    class Pipe:
        def __init__(self, student):
            self.student = student

        def uses_student(self, settings):
            return self.student

    args = SimpleNamespace(quiet=False, guidance=7.0, guidance_interval="0.2,0.9", shift=None, sampler="heun",
                           negative=None)
    settings = SimpleNamespace(steps=4)
    warn_student_ignores(args, Pipe(True), settings)
    err = capsys.readouterr().err
    assert "--guidance, --guidance-interval, --sampler not used: the model's 4-step student" in err
    assert "--shift" not in err
    warn_student_ignores(args, Pipe(False), settings)  # the teacher samples: every flag is used
    assert not capsys.readouterr().err
