"""Video/image I/O: round trips per format, metadata, atomic writes, decode errors, rotation, resizing."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from kinema.common import video as vio
from kinema.common.video import (
    VideoDecodeError,
    from_model,
    probe_video,
    read_image,
    read_video,
    read_video_metadata,
    resize_video,
    to_model,
)
from kinema.common.video_write import write_video

F_, H, W = 9, 48, 64
META = {"prompt": "a red fox runs through snow, über", "seed": "1234", "model": "tiny",
        "settings": json.dumps({"steps": 4, "guidance": 3.0})}


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """9 frames of 64x48: a colour ramp over time plus a white square moving right (a clear, codec-friendly signal)."""
    frames = np.zeros((F_, H, W, 3), np.uint8)
    for i in range(F_):
        frames[i, :, :, 0] = 20 + 25 * i
        frames[i, :, :, 2] = 200 - 20 * i
        frames[i, 12:28, 4 + 5 * i : 20 + 5 * i] = 255
    return frames


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name, codec, tol", [("clip.mp4", "h264", 4.0), ("clip.webm", "vp9", 4.0), ("clip.gif", "gif", 2.0)])
def test_video_round_trip(tmp_path, clip, name, codec, tol):
    path = write_video(tmp_path / name, clip, fps=8, metadata=META)
    frames, fps = read_video(path)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert abs(fps - 8) < 0.5
    assert np.abs(frames.astype(int) - clip).mean() < tol
    # frame order survives: the moving square is where it should be in the first and last frame
    assert frames[0, 20, 8].min() > 200 and frames[-1, 20, 8].min() < 200
    info = probe_video(path)
    assert info["codec"] == codec and (info["width"], info["height"], info["frames"]) == (W, H, F_)
    assert abs(info["duration"] - F_ / 8) < 0.05
    assert read_video_metadata(path) == META
    assert _leftovers(tmp_path) == []


def test_mp4_is_browser_friendly(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat"), "+faststart must put the index before the media data"


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_saturated_colours_survive(tmp_path, ext):
    # A BT.601/BT.709 mix-up between writing and reading shifts pure colours by 10-40 levels.
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [20, 200, 90]], np.uint8)
    frames = np.repeat(np.repeat(colours[:, None, None], 16, 1), 16, 2)  # one flat 16x16 colour per frame
    back, _ = read_video(write_video(tmp_path / f"colours{ext}", frames, fps=8))
    assert np.abs(back[:, 4:12, 4:12].astype(int) - frames[:, 4:12, 4:12]).max() <= 4


def test_png_and_folder_round_trip_are_lossless(tmp_path, clip):
    image_path = write_video(tmp_path / "still.png", clip[3], fps=8, metadata=META)
    np.testing.assert_array_equal(read_image(image_path), clip[3])
    assert read_video_metadata(image_path) == META
    frames, _ = read_video(image_path)
    assert frames.shape == (1, H, W, 3)

    folder = write_video(str(tmp_path / "frames") + "/", clip, fps=8, metadata=META)
    assert sorted(p.name for p in folder.iterdir())[:2] == ["frame_00000.png", "frame_00001.png"]
    frames, fps = read_video(folder)
    np.testing.assert_array_equal(frames, clip)
    assert fps == 8 and read_video_metadata(folder) == META
    assert probe_video(folder)["frames"] == F_
    # a second write replaces the folder
    write_video(folder, clip[:2], fps=4)
    assert read_video(folder)[0].shape[0] == 2 and _leftovers(tmp_path) == []


def test_png_refuses_many_frames_and_unknown_extension_is_named(tmp_path, clip):
    with pytest.raises(ValueError, match="one frame"):
        write_video(tmp_path / "x.png", clip, fps=8)
    with pytest.raises(ValueError, match=r"'\.avi'.*\.mp4"):
        write_video(tmp_path / "x.avi", clip, fps=8)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", clip.astype(np.float32), fps=8)


def test_folder_output_never_deletes_foreign_files(tmp_path, clip):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes|other"):
        write_video(str(tmp_path / "mine") + "/", clip, fps=8)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_odd_sizes_are_padded_for_h264(tmp_path, clip):
    odd = np.ascontiguousarray(clip[:, :47, :63])
    frames, _ = read_video(write_video(tmp_path / "odd.mp4", odd, fps=8))
    assert frames.shape == (F_, 48, 64, 3)
    assert np.abs(frames[:, :47, :63].astype(int) - odd).mean() < 4


def test_read_resamples_fps_and_stops_at_max_frames(tmp_path, clip):
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)
    half, fps = read_video(path, fps=4)
    assert fps == 4 and half.shape[0] == 5  # ticks 0, .25, .5, .75, 1.0 s within 1.125 s
    np.testing.assert_array_equal(half, read_video(path)[0][::2])
    double, _ = read_video(path, fps=16)
    assert double.shape[0] == 18
    np.testing.assert_array_equal(double[0], double[1])
    assert read_video(path, max_frames=3)[0].shape[0] == 3


def test_model_seam_round_trip_is_exact(clip):
    x = to_model(clip)
    assert x.shape == (1, 3, F_, H, W) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(from_model(x), clip)
    assert from_model(torch.full((1, 3, 1, 2, 2), 5.0)).max() == 255  # clamped, not wrapped
    with pytest.raises(ValueError, match="batch"):
        from_model(torch.zeros(2, 3, 1, 4, 4))


# ----------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames/"])
def test_failed_write_leaves_nothing_behind(tmp_path, clip, monkeypatch, name):
    calls = {"n": 0}
    real_mp4, real_png = av.VideoFrame.from_ndarray, Image.Image.save

    def fail_midway(real):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:
                raise RuntimeError("simulated crash")
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_midway(real_mp4))
    monkeypatch.setattr(Image.Image, "save", fail_midway(real_png))
    monkeypatch.setattr(Image, "fromarray", fail_midway(Image.fromarray))
    with pytest.raises(RuntimeError, match="simulated"):
        write_video(str(tmp_path / name), clip, fps=8)
    assert calls["n"] >= 4
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, clip, monkeypatch):
    path = write_video(tmp_path / "clip.mp4", clip, fps=8, metadata={"version": "old"})
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        write_video(path, clip, fps=8, metadata={"version": "new"})
    assert read_video_metadata(path) == {"version": "old"} and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- bad input


def test_undecodable_files_raise_video_decode_error(tmp_path, clip):
    good = write_video(tmp_path / "clip.mp4", clip, fps=8).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    for bad in (truncated, text, tmp_path / "missing.mp4"):
        with pytest.raises(VideoDecodeError, match=bad.name) as err:
            read_video(bad)
        assert isinstance(err.value, ValueError) and err.value.__cause__ is None
    with pytest.raises(VideoDecodeError, match="notes.mp4"):
        probe_video(text)
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(VideoDecodeError, match="fake.png"):
        read_image(fake_png)


def test_read_image_converts_modes_to_rgb(tmp_path):
    grey = Image.fromarray(np.full((5, 7), 90, np.uint8), mode="L")
    grey.save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), np.full((5, 7, 3), 90, np.uint8))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[:2, :, 3], rgba[2:, :, 3] = 200, 255, 0  # top half opaque red, bottom transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (4, 4, 3) and out[0, 0, 0] == 200 and out[3, 0].max() == 0
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).convert("P").save(tmp_path / "pal.gif")
    assert read_image(tmp_path / "pal.gif").shape == (3, 3, 3)
    ramp = np.linspace(0, 65535, 16).round().astype(np.uint16).reshape(4, 4)  # 16-bit grey: scaled, not clipped
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    out = read_image(tmp_path / "grey16.png")
    np.testing.assert_array_equal(out[..., 0], np.round(ramp / 65535 * 255).astype(np.uint8))
    assert (out[..., 0] == out[..., 2]).all() and out.min() == 0 and out.max() == 255
    Image.fromarray(np.full((2, 2), 0.5, np.float32), mode="F").save(tmp_path / "float.tif")
    assert (read_image(tmp_path / "float.tif") == 128).all()  # a float image in [0, 1]


# ----------------------------------------------------------------------------- rotation


def test_rotated_phone_clip_comes_back_upright(tmp_path):
    # A portrait scene (64 tall, 48 wide) with a white block in its top-left corner, stored the way
    # phones do: the sensor's landscape frames plus a display matrix saying "turn 90 degrees".
    upright = np.zeros((5, 64, 48, 3), np.uint8)
    upright[:, :16, :16] = 255
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))  # (5, 48, 64, 3), landscape
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(90)
        for frame in stored:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    frames, _ = read_video(path)
    assert frames.shape == upright.shape
    assert np.abs(frames.astype(int) - upright).mean() < 6
    assert frames[:, 4:12, 4:12].min() > 200 and frames[:, -12:, -12:].max() < 50
    info = probe_video(path)
    assert info["rotation"] == 90 and (info["width"], info["height"]) == (48, 64)


def test_upright_helper_turns_counter_clockwise():
    a = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(vio._upright(a, 90), np.rot90(a))
    np.testing.assert_array_equal(vio._upright(a, -90), np.rot90(a, -1))
    np.testing.assert_array_equal(vio._upright(a, 180), a[::-1, ::-1])
    assert vio._upright(a, 0) is a


# ----------------------------------------------------------------------------- resize


def test_resize_policies(clip):
    for policy in ("crop", "pad", "stretch"):
        out = resize_video(clip, 32, 32, policy)
        assert out.shape == (F_, 32, 32, 3) and out.dtype == np.uint8
    # pad keeps the whole picture and adds black bars top and bottom (64x48 -> 32x24 in a 32x32 box)
    padded = resize_video(np.full((1, 48, 64, 3), 200, np.uint8), 32, 32, "pad")
    assert padded[0, :4].max() == 0 and padded[0, -4:].max() == 0 and padded[0, 4:28].min() == 200
    # crop fills the frame: no black
    assert resize_video(np.full((1, 48, 64, 3), 200, np.uint8), 32, 32, "crop").min() == 200
    # torch in, torch out; same size is identity
    as_tensor = resize_video(torch.from_numpy(clip), W, H)
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_array_equal(as_tensor.numpy(), clip)
    with pytest.raises(ValueError, match="policy.*'squash'"):
        resize_video(clip, 32, 32, "squash")


@pytest.mark.parametrize("name", ["clip.mp4", "frames/"])
def test_an_output_that_cannot_be_made_is_named_not_its_temporary_name(tmp_path, clip, name):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(FileExistsError) as err:  # its folder cannot be made: the error names that folder
        write_video(str(tmp_path / "notes.txt" / name), clip, fps=8)
    assert err.value.filename == str(tmp_path / "notes.txt")
    with pytest.raises(OSError) as err:  # /proc takes no new files: the error names the output, not a temp name
        write_video(f"/proc/{name}", clip, fps=8)
    assert err.value.filename == f"/proc/{name}".rstrip("/") and ".tmp" not in str(err.value)
