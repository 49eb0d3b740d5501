"""Captions: a small grammar that says what a scene shows, and its exact inverse.

Every element has training words and a disjoint set of held-out words and sentence frames
("unseen phrasings") that training never uses, so the evaluation can ask in words the model has
not read. ``parse_caption`` reads both styles back by matching whole phrases, longest first:
backgrounds and camera moves are taken out before object words are read, so "under a blue sky"
never makes a blue object.
"""

from __future__ import annotations

import re

import numpy as np

from kinema.data.world.sample import as_rng, scene_from_spec
from kinema.data.world.scene import ObjectSpec, Scene, SceneSpec

STYLES = ("train", "heldout_phrasing")

# name -> (training phrases, held-out phrases)
COLOUR_WORDS = {
    "red": (("red", "scarlet"), ("crimson",)),
    "orange": (("orange", "tangerine"), ("amber",)),
    "yellow": (("yellow", "golden"), ("lemon",)),
    "green": (("green", "lime"), ("emerald",)),
    "cyan": (("cyan", "turquoise"), ("aqua",)),
    "blue": (("blue", "cobalt"), ("sapphire",)),
    "purple": (("purple", "violet"), ("plum",)),
    "pink": (("pink", "magenta"), ("fuchsia",)),
}
SHAPE_WORDS = {
    "circle": (("ball", "circle", "disc"), ("sphere", "orb")),
    "square": (("square", "box", "block"), ("cube", "crate")),
    "triangle": (("triangle", "wedge"), ("pyramid",)),
    "star": (("star",), ("five-pointed star",)),
}
SIZE_WORDS = {
    "small": (("small", "little"), ("tiny",)),
    "medium": (("medium", "medium-sized"), ("mid-sized",)),
    "large": (("large", "big"), ("huge",)),
}
MOTION_WORDS = {
    "still": (("stays still", "sits still", "rests in place", "does not move"), ("remains motionless", "stays put")),
    "moves_left": (("moves to the left", "slides to the left", "slides left", "moves left", "drifts to the left"),
                   ("travels leftward", "glides to the left")),
    "moves_right": (("moves to the right", "slides to the right", "slides right", "moves right",
                     "drifts to the right"),
                    ("travels rightward", "glides to the right")),
    "moves_up": (("moves up", "rises", "floats upward", "drifts up"), ("ascends", "climbs upward")),
    "moves_down": (("moves down", "sinks", "slides downward", "drifts down"), ("descends steadily", "glides down")),
    "falls": (("falls", "drops", "falls down", "falls to the ground"), ("plummets", "plunges downward")),
    "bounces": (("bounces", "bounces on the floor", "keeps bouncing", "bounces up and down"),
                ("rebounds off the floor", "hops up and down")),
    "spins": (("spins", "rotates", "spins in place", "turns around"), ("twirls", "revolves in place")),
    "grows": (("grows", "gets bigger", "expands", "grows larger"), ("swells", "inflates")),
    "shrinks": (("shrinks", "gets smaller", "contracts", "shrinks down"), ("dwindles", "deflates")),
}
BACKGROUND_WORDS = {
    "black": (("on a black background", "against a black backdrop"), ("on a pitch-black canvas",)),
    "white": (("on a white background", "against a white backdrop"), ("on a snow-white canvas",)),
    "grey": (("on a grey background", "on a gray background", "against a grey backdrop"), ("on an ash-grey canvas",)),
    "sky": (("under a blue sky", "in a grassy field under the sky", "outdoors on a sunny day"),
            ("beneath a clear daytime sky", "in an open meadow")),
    "night": (("at night", "under a starry sky", "against the night sky"), ("beneath the stars", "on a starry night")),
    "checkered": (("on a checkered floor", "on a checkerboard floor", "in a room with a tiled floor"),
                  ("on a chessboard floor", "over chequered tiles")),
}
CAMERA_WORDS = {
    "static": (("with a static camera", "shot on a fixed camera"), ("seen from a locked-off camera",)),
    "pan_left": (("as the camera pans left", "while the camera pans to the left", "with the camera panning left"),
                 ("as the view sweeps to the left",)),
    "pan_right": (("as the camera pans right", "while the camera pans to the right", "with the camera panning right"),
                  ("as the view sweeps to the right",)),
    "zoom_in": (("as the camera zooms in", "while the camera slowly zooms in", "with the camera zooming in"),
                ("as the view pushes in closer",)),
    "zoom_out": (("as the camera zooms out", "while the camera pulls back", "with the camera zooming out"),
                 ("as the view widens",)),
}
# Sentence frames: {objects} {background} {camera} slots; joiners for 2 and 3 objects.
FRAMES = {
    "train": ("{objects} {background} {camera}", "{Background}, {objects} {camera}"),
    "heldout_phrasing": ("we see {objects_that} {background} {camera}", "{Background}: {objects_that} {camera}"),
}
JOINERS = {
    "train": (("{0} while {1}", "{0} and {1}"), ("{0}, {1} and {2}", "{0} while {1} and {2}")),
    "heldout_phrasing": (("{0}; meanwhile {1}",), ("{0}; {1}; and also {2}",)),
}
MENTION_SIZE_P = 0.5
MENTION_BACKGROUND_P = 0.8
MENTION_STATIC_CAMERA_P = 0.15


def caption(scene: Scene | SceneSpec, rng: np.random.Generator | int, style: str = "train") -> str:
    """One caption for the scene, drawn from the grammar in the given style."""
    if style not in STYLES:
        raise ValueError(f"caption style must be one of {STYLES}, got {style!r}")
    rng = as_rng(rng)
    spec = scene.spec() if isinstance(scene, Scene) else scene
    held = style != "train"

    def pick(table: dict, name: str) -> str:
        words = table[name][1 if held else 0]
        return words[int(rng.integers(len(words)))]

    clauses = []
    for obj in spec.objects:
        size = f"{pick(SIZE_WORDS, obj.size)} " if obj.size and rng.random() < MENTION_SIZE_P else ""
        noun = f"{size}{pick(COLOUR_WORDS, obj.colour)} {pick(SHAPE_WORDS, obj.shape)}"
        clauses.append((f"{_article(noun)} {noun}", pick(MOTION_WORDS, obj.motion)))
    objects = _join([f"{n} {m}" for n, m in clauses], JOINERS[style], rng)
    objects_that = _join([f"{n} that {m}" for n, m in clauses], JOINERS[style], rng)

    background = ""
    if spec.background and rng.random() < MENTION_BACKGROUND_P:
        background = pick(BACKGROUND_WORDS, spec.background)
    camera = ""
    if spec.camera and (spec.camera != "static" or rng.random() < MENTION_STATIC_CAMERA_P):
        camera = pick(CAMERA_WORDS, spec.camera)
    frames = FRAMES[style] if background else FRAMES[style][:1]
    frame = frames[int(rng.integers(len(frames)))]
    text = frame.format(objects=objects, objects_that=objects_that, background=background,
                        Background=background[:1].upper() + background[1:], camera=camera)
    text = re.sub(r"\s+", " ", text).strip()
    return text[:1].upper() + text[1:]


def parse_caption(text: str) -> SceneSpec:
    """What a caption asks for: objects (in order), background and camera; None where unsaid."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"a caption must be a non-empty string, got {text!r}")
    remaining = " " + re.sub(r"[^a-z\- ]+", " ", text.lower()) + " "
    background = camera = None
    found = _find(remaining, _PHRASES_SCENE)
    for start, end, kind, name in found:
        if kind == "background":
            background = background or name
        else:
            camera = camera or name
        remaining = remaining[:start] + " " * (end - start) + remaining[end:]

    objects: list[dict] = []
    for _, _, kind, name in _find(remaining, _PHRASES_OBJECT):
        current = objects[-1] if objects else None
        starts_new = current is None or (kind in ("size", "colour", "shape") and current.get("shape")) or (
            kind == "colour" and current.get("colour")) or (kind == "size" and current.get("size"))
        if kind == "motion" and current is not None and not current.get("motion"):
            starts_new = False
        if starts_new:
            objects.append({})
        objects[-1].setdefault(kind, name)
    if not objects:
        raise ValueError(
            f"no object found in {text!r}: a prompt names a colour {sorted(COLOUR_WORDS)}, a shape "
            f"{sorted(SHAPE_WORDS)} and a motion, e.g. 'a red ball bounces on a black background'")
    if len(objects) > 3:
        raise ValueError(f"a scene holds at most 3 objects, {text!r} names {len(objects)}")
    specs = tuple(ObjectSpec(o.get("colour"), o.get("shape"), o.get("motion"), o.get("size")) for o in objects)
    return SceneSpec(specs, background, camera)


def scene_from_prompt(text: str, width: int, height: int, frames: int, fps: float, seed: int) -> Scene:
    """A scene showing what the prompt asks (unsaid attributes drawn from ``seed``)."""
    return scene_from_spec(parse_caption(text), width, height, frames, fps, seed)


# --- helpers ---


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


def _join(parts: list[str], joiners, rng: np.random.Generator) -> str:
    if len(parts) == 1:
        return parts[0]
    options = joiners[len(parts) - 2]
    return options[int(rng.integers(len(options)))].format(*parts)


def _phrase_table(tables: dict[str, dict]) -> list[tuple[re.Pattern, str, str]]:
    """(pattern, kind, name) for every phrase of every style, longest phrase first."""
    rows = []
    for kind, table in tables.items():
        for name, (train, held) in table.items():
            for phrase in train + held:
                rows.append((phrase, kind, name))
    rows.sort(key=lambda r: -len(r[0]))
    return [(re.compile(r"(?<![a-z\-])" + re.escape(p) + r"(?![a-z\-])"), k, n) for p, k, n in rows]


def _find(text: str, table) -> list[tuple[int, int, str, str]]:
    """Non-overlapping phrase matches (start, end, kind, name) in text order, longer phrases winning."""
    taken = np.zeros(len(text), dtype=bool)
    found = []
    for pattern, kind, name in table:
        for m in pattern.finditer(text):
            if not taken[m.start() : m.end()].any():
                taken[m.start() : m.end()] = True
                found.append((m.start(), m.end(), kind, name))
    return sorted(found)


_PHRASES_SCENE = _phrase_table({"background": BACKGROUND_WORDS, "camera": CAMERA_WORDS})
_PHRASES_OBJECT = _phrase_table({"colour": COLOUR_WORDS, "shape": SHAPE_WORDS, "size": SIZE_WORDS, "motion": MOTION_WORDS})
