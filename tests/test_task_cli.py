"""`kinema generate` with the task flags: every input checked before the model loads, and what the tasks write."""

from __future__ import annotations

import numpy as np
import pytest
from test_tasks import broken, media  # noqa: F401 -- the fixtures these tests share with the Python API's

from kinema.cli import main
from kinema.common.video import read_video
from kinema.common.video_write import write_video


# -- the CLI -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,match", [
    (["--image", "{d}/broken.png"], "--image: cannot decode"),
    (["--edit", "{d}/broken.mp4", "--strength", "0.5"], "--edit: cannot decode"),
    (["--edit", "{d}/clip.mp4", "--strength", "0"], "strength must be in (0, 1]"),
    (["--keyframe", "5:{d}/key.png"], "outside the clip"),
    (["--keyframe", "-1:{d}/key.png"], "keyframe time -1.0 s lies outside the clip"),  # a value, not a flag
    (["--image", "{d}/key.png", "--extend", "{d}/clip.mp4"], "choose one task"),
    (["--strength", "0.5"], "--strength goes with --edit"),
    (["--extend", "{d}/clip.mp4", "--frames", "17"], "--frames does not apply"),
    (["--long", "10", "-o", "{d}/long.gif"], "--long streams to .mp4 or .webm"),
    (["--image", "{d}/key.png", "-o", "{d}/x.png"], "a .png holds one frame"),
    (["--loop", "--overlap", "1"], "--overlap goes with --extend, --connect or --long (a loop"),
    (["--extend", "{d}/clip.mp4", "--fit-steps", "5"], "--fit-steps goes with --image or --keyframe"),
    (["--loop", "--image", "{d}/key.png", "--fit-steps", "5"], "--fit-steps goes with --image or --keyframe, not --loop"),
    (["--image", "{d}/key.png", "--fit-steps", "-1"], "--fit-steps must be >= 0"),
    (["--image", "{d}/key.png", "--join", "cut"], "--join goes with --extend or --connect"),
    (["--motion-strength", "0.5"], "--motion-strength goes with --extend or --connect"),
    (["--extend", "{d}/clip.mp4", "--motion-strength", "2"], "--motion-strength must be a number in (0, 1]"),
    (["--extend", "{d}/clip.mp4", "--seconds", "1e6"], "fewer --seconds"),  # the window, not the default clip
    (["--connect", "{d}/clip.mp4", "{d}/clip.mp4", "--seconds", "1e6"], "fewer --seconds"),
    (["--edit", "{d}/clip.mp4", "-o", "{d}/clip.mp4"], "output {d}/clip.mp4 is also the --edit input"),
    (["--connect", "{d}/clip.mp4", "{d}/b-transition.mp4", "-o", "{d}/b.mp4"],
     "output {d}/b-transition.mp4 is also the --connect B input"),  # where the transition alone would go
    (["--image", "{d}/key.png", "--image-frame", "4", "--fit-steps", "5"], "--fit-steps fits an image at frame 0"),
    (["--keyframe", "0.5:{d}/key.png", "--fit-steps", "5"], "--fit-steps fits an image at frame 0"),
    (["--long", "4", "--frames", "5"], "--long windows of 5 frames (2 latent) cannot carry 2 latent frames over"),
    (["--long", "4", "--overlap", "0"], "--overlap must be a whole number of latent frames >= 1, got 0"),
    (["--image", "{d}/key.png", "-o", "{d}/full/"], "it holds files other than frame_00000.png"),
])
def test_cli_refuses_bad_task_input(tiny_model_dir, broken, media, capsys, args, match):
    write_video(broken / "clip.mp4", media["video"], fps=8)
    write_video(broken / "key.png", media["other"][None], fps=8)
    write_video(broken / "b-transition.mp4", media["video"], fps=8)
    (broken / "full").mkdir()
    (broken / "full" / "holiday.jpg").write_bytes(b"the user's own file")
    argv = ["generate", "a ball", "--model", str(tiny_model_dir), *[a.format(d=broken) for a in args]]
    assert main(argv) == 2
    assert match.format(d=broken) in capsys.readouterr().err
    assert (broken / "full" / "holiday.jpg").read_bytes() == b"the user's own file"


def test_cli_image_to_video_fits_the_first_frame_unless_told_not_to(tiny_model_dir, media, tmp_path):
    write_video(tmp_path / "key.png", media["other"][None], fps=8)
    errors = {}
    for steps in ("0", None):
        out = tmp_path / f"i2v-{steps}"  # a folder of PNG frames: lossless
        fit = ["--fit-steps", steps] if steps else []
        assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--image", str(tmp_path / "key.png"),
                     *fit, "--size", "32x32", "--steps", "2", "-o", str(out), "-q"]) == 0
        frames, _ = read_video(out)
        errors[steps] = np.abs(frames[0].astype(float) - media["other"]).mean()
    assert errors[None] < errors["0"]


def test_cli_connect_writes_joined_and_transition(tiny_model_dir, media, tmp_path):
    write_video(tmp_path / "a", media["video"], fps=8)
    write_video(tmp_path / "b", media["video"][:5], fps=8)
    out = tmp_path / "joined"
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--connect", str(tmp_path / "a"),
                 str(tmp_path / "b"), "--seconds", "0.5", "--size", "32x32", "--steps", "2", "--join", "cut",
                 "-o", str(out), "-q"]) == 0
    joined, _ = read_video(out)
    transition, _ = read_video(tmp_path / "joined-transition")
    assert len(transition) == 4 and len(joined) == 11 + 4 + 5
    assert np.array_equal(joined[:11], media["video"]) and np.array_equal(joined[-5:], media["video"][:5])
    faded = tmp_path / "faded"  # the default: the shared frames at both ends fade, the rest stays
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--connect", str(tmp_path / "a"),
                 str(tmp_path / "b"), "--seconds", "0.5", "--size", "32x32", "--steps", "2", "-o", str(faded), "-q"]) == 0
    faded, _ = read_video(faded)
    assert np.array_equal(faded[:6], media["video"][:6]) and np.array_equal(faded[11:15], transition)
    assert not np.array_equal(faded[6:11], media["video"][6:11])
