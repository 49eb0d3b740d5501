"""The world benchmark: score generated videos against the procedural scene each prompt asked for.

``detect`` reads objects, background and camera from pixels; ``evaluate`` turns that into
per-attribute verdicts and the benchmark table. Nothing here touches a model: a model enters only
through ``run_world_eval``'s ``generate_fn(prompt, seed) -> uint8 (F, H, W, 3)``.
"""

from kinema.eval.world.vision import Detection, ObjectTrack, detect
from kinema.eval.world.evaluate import (
    ATTRIBUTES, CATEGORIES, aggregate, build_eval_prompts, evaluate_video, evaluate_videos, judge_video,
    run_world_eval,
)  # fmt: skip

__all__ = [
    "ATTRIBUTES", "CATEGORIES", "Detection", "ObjectTrack", "aggregate", "build_eval_prompts", "detect",
    "evaluate_video", "evaluate_videos", "judge_video", "run_world_eval",
]  # fmt: skip
