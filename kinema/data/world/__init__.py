"""The procedural world: seeded, captioned clips of coloured shapes moving by simple physics.

kinema's bundled model trains on it and the world benchmark (``kinema.eval.world``) scores
generated videos against it, since every clip has a ground truth. numpy only. Reading order:
``vocab`` (what exists) -> ``scene`` (a clip as data) -> ``physics`` -> ``motion`` (what a track
shows) -> ``sample`` (draw a scene that shows a request) -> ``render`` -> ``captions`` ->
``dataset``.
"""

from kinema.data.world.captions import STYLES, caption, parse_caption, scene_from_prompt
from kinema.data.world.dataset import WorldClips, make_clip
from kinema.data.world.motion import MotionReading, is_clean, physics_ok, read_motion
from kinema.data.world.physics import Tracks, simulate
from kinema.data.world.render import render, render_background
from kinema.data.world.sample import HELD_OUT_MODES, is_held_out, sample_scene, sample_spec, scene_from_spec
from kinema.data.world.scene import ObjectSpec, Scene, SceneSpec, WorldObject, camera_at, to_screen, world_box
from kinema.data.world.vocab import (
    BACKGROUNDS, CAMERAS, COLOURS, GRAVITY, HELD_OUT, MOTIONS, SHAPES, SIZES, TEXTURED_BACKGROUNDS,
)  # fmt: skip

__all__ = [
    "BACKGROUNDS", "CAMERAS", "COLOURS", "GRAVITY", "HELD_OUT", "HELD_OUT_MODES", "MOTIONS", "SHAPES",
    "SIZES", "STYLES", "TEXTURED_BACKGROUNDS", "MotionReading", "ObjectSpec", "Scene", "SceneSpec",
    "Tracks", "WorldClips", "WorldObject", "camera_at", "caption", "is_clean", "is_held_out", "make_clip",
    "parse_caption", "physics_ok", "read_motion", "render", "render_background", "sample_scene",
    "sample_spec", "scene_from_prompt", "scene_from_spec", "simulate", "to_screen", "world_box",
]  # fmt: skip
