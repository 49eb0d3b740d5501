"""The size a task is made at when the request names none: its input's own where the model can make it, else
the input's aspect ratio at the model's pixel count (``kinema.infer.tasks.size_for_input``), in the Python API
and the CLI, and what the CLI says about it."""

from __future__ import annotations

import numpy as np
import pytest

from kinema.cli import main
from kinema.common.video_write import write_video
from kinema.infer import tasks
from test_tasks import media  # noqa: F401 (the same module-scoped inputs)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_size_for_input_keeps_the_input_where_the_model_can_make_it_and_its_aspect_otherwise():
    from kinema.config import preset

    cfg = preset("world-small")  # 128x128 default, multiples of 16
    assert tasks.size_for_input(192, 112, cfg) == (192, 112)  # its own size: multiples of 16, < 2x the pixels
    assert tasks.size_for_input(64, 48, cfg) == (64, 48)
    assert tasks.size_for_input(1920, 1080, cfg) == (176, 96)  # 16:9 at 128x128's pixel count
    assert tasks.size_for_input(1080, 1920, cfg) == (96, 176)  # portrait stays portrait
    assert tasks.size_for_input(100, 100, cfg) == (128, 128)  # not multiples of 16
    assert tasks.size_for_input(512, 512, cfg) == (128, 128)  # 16x the model's pixels
    assert tasks.size_for_input(4000, 10, cfg) == (2560, 16)  # never below one multiple


def test_tasks_without_a_size_take_their_input_s(pipe, media):
    wide = np.ascontiguousarray(np.concatenate([media["video"], media["video"][:, :, :16]], axis=2))  # 48 wide
    image = np.ascontiguousarray(wide[0])
    steps = dict(steps=2)
    assert tasks.extend(pipe, "a ball", wide, 0.5, **steps).frames.shape[1:3] == (32, 48)
    assert tasks.edit(pipe, "a ball", wide, 0.5, **steps).frames.shape == wide.shape
    assert tasks.image_to_video(pipe, "a ball", image, fit_steps=0, **steps).frames.shape[1:3] == (32, 48)
    assert tasks.loop(pipe, "a ball", image, **steps).frames.shape[1:3] == (32, 48)
    assert tasks.keyframes(pipe, "a ball", [(0.0, image)], fit_steps=0, **steps).frames.shape[1:3] == (32, 48)
    transition, joined = tasks.connect(pipe, "a ball", wide, media["video"], 0.5, **steps)  # B fitted to A's size
    assert transition.frames.shape[1:3] == joined.frames.shape[1:3] == (32, 48)
    # a size asked for is kept: the input is fitted to it
    assert tasks.extend(pipe, "a ball", wide, 0.5, width=32, height=32, **steps).frames.shape[1:3] == (32, 32)
    assert tasks.loop(pipe, "a ball", **steps).frames.shape[1:3] == (64, 64)  # no input: the model's size


def test_cli_task_made_at_its_input_s_size_and_says_when_it_resizes(tiny_model_dir, media, tmp_path, capsys):
    from kinema.common.video import probe_video

    big = np.zeros((90, 160, 3), np.uint8)  # 16:9, not multiples of 16
    write_video(tmp_path / "wide.png", big[None], fps=8)
    write_video(tmp_path / "clip.mp4", media["video"], fps=8)
    out = tmp_path / "a.mp4"
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--image", str(tmp_path / "wide.png"),
                 "--steps", "1", "--fit-steps", "0", "-o", str(out)]) == 0
    assert (probe_video(out)["width"], probe_video(out)["height"]) == (80, 48)  # 16:9 at 64x64's pixel count
    err = capsys.readouterr().err
    assert f"--image {tmp_path / 'wide.png'} is 160x90; made at 80x48" in err and "--size WxH to choose" in err
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--extend", str(tmp_path / "clip.mp4"),
                 "--steps", "1", "-o", str(out)]) == 0
    assert (probe_video(out)["width"], probe_video(out)["height"]) == (32, 32)  # its own size, no note
    assert "made at" not in capsys.readouterr().err
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--extend", str(tmp_path / "clip.mp4"),
                 "--seconds", "0.01", "--steps", "1", "-o", str(out)]) == 0
    assert probe_video(out)["frames"] == 11 + 4  # a step of 4 frames at least, and it says so
    assert "--seconds 0.01 comes to 4 new frames (0.5 s at 8 fps), the fewest an extension adds" in \
        capsys.readouterr().err
