"""kinema.tasks.motion: a clip's motion carried past its end, on synthetic clips with a known velocity."""

from __future__ import annotations

import numpy as np
import pytest

from kinema.tasks.motion import carry_motion


def square_clip(frames: int, x0: float, vx: float, size: int = 64, side: int = 12) -> np.ndarray:
    """A red square ``side`` px wide at x = x0 + vx * t on a grey-blue gradient, ``frames`` frames."""
    ramp = np.linspace(60, 140, size, dtype=np.float32)
    background = np.stack([ramp[:, None].repeat(size, 1), np.full((size, size), 90, np.float32),
                           ramp[None, :].repeat(size, 0)], -1).astype(np.uint8)
    clip = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        x = int(round(x0 + vx * t))
        clip[t, 26:26 + side, x:x + side] = (220, 30, 30)
    return clip


def red_centre(frame: np.ndarray) -> tuple[float, int]:
    """(mean x, pixel count) of the red square's pixels."""
    red = (frame[..., 0] > 180) & (frame[..., 1] < 80)
    return float(np.nonzero(red)[1].mean()) if red.any() else float("nan"), int(red.sum())


def test_carried_motion_goes_on_at_the_clips_velocity_and_clears_where_the_object_was():
    clip = square_clip(5, 10, 3.0)  # 3 px per frame to the right
    carried = carry_motion(clip, 6)
    assert carried.shape == (6, 64, 64, 3) and carried.dtype == np.uint8
    start, area = red_centre(clip[-1])
    for n, frame in enumerate(carried, 1):
        x, count = red_centre(frame)
        assert x == pytest.approx(start + 3 * n, abs=1.0) and abs(count - area) <= 0.25 * area
    # the square's old place shows the background again, not a copy of the square
    assert red_centre(carried[-1][:, :int(start) + 6])[1] == 0
    # carried out of the frame, it is gone; a still clip, or one frame, continues as itself
    assert red_centre(carry_motion(clip, 20)[-1])[1] == 0
    still = np.repeat(clip[:1], 4, axis=0)
    assert np.array_equal(carry_motion(still, 3), np.repeat(clip[:1], 3, axis=0))
    assert np.array_equal(carry_motion(clip[:1], 2), np.repeat(clip[:1], 2, axis=0))
    backwards = carry_motion(clip[::-1], 2)  # the clip reversed moves left: before its start
    assert red_centre(backwards[0])[0] == pytest.approx(red_centre(clip[0])[0] - 3, abs=1.0)
    with pytest.raises(ValueError, match="uint8"):
        carry_motion(clip.astype(np.float32), 2)
