"""``kinema generate`` for prompting with images and videos and long video (issue 4): the flags, the task they
ask for, its inputs read and checked before the model loads, and the run."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from . import CLIError
from .generate import (check_output, clip_summary, default_output, distributed, finish_distributed, frames_for_seconds,
                       load_pipeline, output_suffix, seconds_arg, warn_student_ignores)

_TASK_FLAGS = {"extend": "--extend", "connect": "--connect", "edit": "--edit", "keyframe": "--keyframe",
               "long": "--long", "loop": "--loop", "image": "--image"}


def _keyframe(text: str) -> tuple[float, str]:
    seconds, sep, path = text.partition(":")
    try:
        if not sep or not path:
            raise ValueError
        return float(seconds), path
    except ValueError:
        raise argparse.ArgumentTypeError(f"--keyframe must be SECONDS:PATH (e.g. 1.5:key.png), got {text!r}") from None


def add_task_flags(g: argparse.ArgumentParser) -> None:
    t = g.add_argument_group(
        "prompting with images and videos",
        "Without --size, the clip takes its (first) input's size: its own where the model can make it (multiples "
        "of 16, up to twice the model's pixel count), else its aspect ratio at the model's pixel count. Inputs of "
        "another size are fitted to the clip's by --resize (default crop: scale to cover, centre-crop); "
        "videos are resampled to --fps. Unreadable inputs, --strength outside (0, 1] and keyframe times outside "
        "the clip are refused before anything is generated.")
    t.add_argument("--image", metavar="PATH", help="image-to-video: the image as frame --image-frame (with --loop: "
                   "the loop starts on it, held for one latent frame)")
    t.add_argument("--image-frame", type=int, metavar="N", help="pixel frame to pin --image at (default 0; later "
                   "frames pin a 4-frame still at the latent frame holding N)")
    t.add_argument("--fit-steps", type=int, metavar="N", help="with --image (as frame 0) or a --keyframe at 0: "
                   "gradient steps fitting the image's latent to it through the decoder, so the first frame "
                   "comes out closer to the image (default 10, about 0.5-0.9 s on 2 CPU cores; 0: off)")
    t.add_argument("--extend", metavar="VIDEO", help="continue VIDEO by --seconds (default: one default clip); "
                   "writes VIDEO plus the new part")
    t.add_argument("--backward", action="store_true", help="with --extend: add the new part before VIDEO")
    t.add_argument("--motion-strength", type=float, metavar="S", help="with --extend or --connect: the new part "
                   "starts as the input's motion carried on (optical flow, constant velocity; a transition cross-fades "
                   "A's into B's) noised to S in (0, 1], and the model refines it; lower keeps more of the carried "
                   "motion, 1 starts from pure noise (default 0.4)")
    t.add_argument("--loop", action="store_true", help="a clip whose last frame leads into its first")
    t.add_argument("--connect", nargs=2, metavar=("A", "B"), help="a --seconds transition from the end of A to the "
                   "start of B; writes A+transition+B to -o and the transition to OUT-transition.EXT")
    t.add_argument("--edit", metavar="VIDEO", help="re-generate VIDEO from the prompt (SDEdit), keeping its length")
    t.add_argument("--strength", type=float, help="with --edit: in (0, 1]; how much is re-generated (default 0.6)")
    t.add_argument("--keyframe", action="append", type=_keyframe, metavar="T:PATH",
                   help="pin the image PATH at T seconds (repeatable)")
    t.add_argument("--long", type=seconds_arg, metavar="SECONDS", help="any length (60 and more): window by window "
                   "(--frames = window), streamed to -o .mp4/.webm in constant memory")
    t.add_argument("--prompts-file", metavar="FILE", help="with --long: timed prompts, one 'SECONDS PROMPT' per line "
                   "(first at 0), instead of the prompt argument")
    t.add_argument("--overlap", type=int, metavar="N", help="latent frames carried over (extend, connect, long; "
                   "default 2)")
    t.add_argument("--join", choices=("fade", "cut"), help="with --extend or --connect: fade (default) the input "
                   "frames the new part starts from (or ends on) to the model's decoding of them, so the join steps "
                   "like the rest; cut keeps the input's frames exactly")
    t.add_argument("--resize", choices=("crop", "pad", "stretch"), default="crop",
                   help="how inputs of another size are fitted (default crop)")


def task_of(args) -> str:
    """The task the generate flags ask for: text, image, image-to-video, keyframes, extend, connect, loop, edit, long."""
    given = [dest for dest in _TASK_FLAGS if getattr(args, dest, None) not in (None, False, [])]
    if "loop" in given and "image" in given:
        given.remove("image")  # --loop --image: a loop that starts from the image
    if len(given) > 1:
        raise CLIError(f"choose one task; got {', '.join(_TASK_FLAGS[d] for d in given)}")
    for flag, dest, needs in (("--image-frame", "image_frame", "image"), ("--backward", "backward", "extend"),
                              ("--strength", "strength", "edit"), ("--prompts-file", "prompts_file", "long")):
        if getattr(args, dest) not in (None, False) and needs not in given:
            raise CLIError(f"{flag} goes with {_TASK_FLAGS[needs]}" + (", not --loop" if "loop" in given else ""))
    if args.join is not None and not set(given) & {"extend", "connect"}:
        raise CLIError("--join goes with --extend or --connect")
    if args.motion_strength is not None and not set(given) & {"extend", "connect"}:
        raise CLIError("--motion-strength goes with --extend or --connect")
    if args.fit_steps is not None:
        if not set(given) & {"image", "keyframe"} or "loop" in given:
            raise CLIError("--fit-steps goes with --image or --keyframe" + (", not --loop" if "loop" in given else ""))
        if args.fit_steps < 0:
            raise CLIError(f"--fit-steps must be >= 0 (0: decode the encoder's latent), got {args.fit_steps}")
        if ("image" in given and args.image_frame) or ("keyframe" in given and all(t != 0 for t, _ in args.keyframe)):
            raise CLIError("--fit-steps fits an image at frame 0 (--image without --image-frame, or --keyframe 0:PATH); "
                           "here it would change nothing")
    if args.overlap is not None and not set(given) & {"extend", "connect", "long"}:
        raise CLIError("--overlap goes with --extend, --connect or --long" +
                       (" (a loop carries nothing over: it is sampled as a cycle)" if "loop" in given else ""))
    if given:
        return {"image": "image-to-video", "keyframe": "keyframes"}.get(given[0], given[0])
    is_png = bool(args.output) and output_suffix(args.output) == ".png"
    return "image" if is_png or args.frames == 1 else "text"


def generate_task(args, cfg, model_path: Path, task: str) -> int:
    """``kinema generate`` for every task but plain text-to-video: check all inputs, then load, run and save."""
    import torch

    from ..infer import make_settings
    from ..infer import long as long_mod
    from ..infer import tasks

    fps = args.fps or cfg.sampling.fps
    tf = cfg.vae.temporal_factor
    frames = args.frames
    sets_length = task in ("extend", "connect", "edit")
    if sets_length and frames is not None:
        raise CLIError(f"--frames does not apply to {task}: its length comes from the input" +
                       (" and --seconds" if task != "edit" else ""))
    if args.seconds is not None and args.seconds <= 0:
        raise CLIError(f"--seconds must be > 0, got {args.seconds}")
    if task in ("long", "edit") and args.seconds is not None:
        raise CLIError("--seconds does not apply to " + ("--long (give the length there; --frames sets the window)"
                                                          if task == "long" else "--edit (the input sets the length)"))
    if args.seconds is not None and not sets_length:
        frames = frames_for_seconds(args.seconds, fps, tf)
    if task == "image":
        if frames not in (None, 1):
            raise CLIError(f"a .png holds one frame; drop --frames/--seconds or use --frames 1 (got {frames} frames)")
        frames = 1
    prompts = args.prompt
    if task == "long" and args.prompts_file:
        if args.prompt:
            raise CLIError("give either a prompt or --prompts-file, not both")
        prompts = long_mod.check_timed_prompts(long_mod.read_prompts_file(args.prompts_file), args.long)
    first_prompt = prompts[0][1] if isinstance(prompts, list) else prompts
    width, height = args.size if args.size else _input_size(args, task, cfg)
    overrides = dict(negative_prompt=args.negative, width=width, height=height, fps=args.fps, steps=args.steps,
                     guidance=args.guidance, guidance_interval=args.guidance_interval, shift=args.shift,
                     sampler=args.sampler, seed=args.seed, cache_threshold=args.cache_threshold)
    settings = make_settings(cfg, first_prompt, frames=None if sets_length else frames, **overrides)
    beside = transition_path if task == "connect" else None  # a connection also writes its transition alone
    out = check_output(args.output if args.output else default_output(settings, ".png" if task == "image" else ".mp4",
                                                                       beside))
    side = check_output(transition_path(out)) if beside else None
    for flag, given in _input_paths(args, task):
        for target in filter(None, (out, side)):
            if os.path.exists(given) and os.path.exists(target) and os.path.samefile(given, target):
                raise CLIError(f"output {target} is also the {flag} input: writing it would replace the input; "
                               f"choose another -o")
    if task == "long" and output_suffix(out) not in long_mod.STREAM_FORMATS:
        raise CLIError(f"--long streams to .mp4 or .webm, got {out}")
    if task != "image" and output_suffix(out) == ".png":
        raise CLIError(f"a .png holds one frame; write {task} to .mp4, .webm, .gif or a folder")

    inputs = _task_inputs(args, task, settings, cfg)  # every input read and checked before the model loads
    from ..infer.i2v_wan import is_wan_i2v
    wan_i2v = is_wan_i2v(cfg)
    if wan_i2v and (task != "image-to-video" or inputs["frame"] != 0):
        raise CLIError(f"{model_path} is a Wan 2.1 image-to-video model: it takes --image as the first frame "
                       f"(no --image-frame, no {_TASK_FLAGS.get(task, task)})")
    if wan_i2v and args.fit_steps is not None:
        raise CLIError(f"{model_path} is a Wan 2.1 image-to-video model: the image enters through its own "
                       f"channels, no latent frame is pinned to fit (drop --fit-steps)")
    if args.prompt_extend:
        raise CLIError(f"--prompt-extend goes with text-to-video, not {task}")
    if task == "long" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError("--long streams its output from one process; run it without --gpus / torchrun")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rank, world, device = distributed(args)
    t0 = time.perf_counter()
    window, smaller = _window_frames(task, inputs, settings, cfg)
    pipe = load_pipeline(args, model_path, cfg, dataclasses.replace(settings, frames=window), world, device, smaller)
    load_s = time.perf_counter() - t0
    if rank == 0:
        warn_student_ignores(args, pipe, settings)
    kw = {k: v for k, v in overrides.items() if v is not None}
    progress = not args.quiet and rank == 0
    if task == "long":
        result = long_mod.long_video(pipe, prompts, output=Path(out), progress=progress, frames=frames, **inputs, **kw)
        if not args.quiet:
            print(f"wrote {out}  ({result.frames} frames, {result.seconds:.1f} s in {result.windows} windows; "
                  f"load {load_s:.2f}s, generate {result.timings['total']:.2f}s)")
        return 0
    run = {"image": tasks.image, "image-to-video": tasks.image_to_video, "keyframes": tasks.keyframes,
           "extend": tasks.extend, "connect": tasks.connect, "loop": tasks.loop, "edit": tasks.edit}[task]
    if wan_i2v:  # Wan 2.1 I2V: the image enters through the DiT's own channels and CLIP tokens
        from ..infer import i2v_wan
        run = lambda pipe, prompt, image, frame, resize, **kw: i2v_wan.image_to_video(pipe, image, prompt, **kw)  # noqa: E731
    if not sets_length:
        kw["frames"] = frames
    if task != "image":  # every other task fits its inputs by the --resize policy
        kw["resize"] = args.resize
    if args.fit_steps is not None:
        kw["fit_steps"] = args.fit_steps
    if args.join is not None:
        kw["join"] = args.join
    result = run(pipe, first_prompt, progress=progress, **inputs, **kw)
    video = result[1] if task == "connect" else result
    finish_distributed(world)
    if rank != 0:
        return 0
    video.save(out)
    if task == "connect":
        result[0].save(side)
    if not args.quiet:
        print(f"wrote {out}  ({clip_summary(video)}; seed {settings.seed}; load {load_s:.2f}s, generate "
              f"{video.timings['total']:.2f}s)")
        if task == "connect":
            print(f"wrote {side}  (the {len(result[0].frames)}-frame transition alone)")
        if task == "loop":
            seam, typical = tasks.loop_seam(video.frames)
            print(f"loop seam: last-to-first difference {seam:.2f} vs median frame-to-frame {typical:.2f} (0-255)")
    return 0


def transition_path(out: str) -> str:
    """Where ``--connect`` writes the transition alone, beside its output ``out``."""
    if not output_suffix(out):
        return out.rstrip("/" + os.sep) + "-transition/"
    return str(Path(out).with_name(f"{Path(out).stem}-transition{Path(out).suffix}"))


def _input_paths(args, task: str) -> list[tuple[str, str]]:
    """(flag, path) of every input file the task reads."""
    paths = {"image-to-video": [("--image", args.image)], "loop": [("--image", args.image)],
             "extend": [("--extend", args.extend)], "edit": [("--edit", args.edit)],
             "connect": [("--connect A", (args.connect or [None, None])[0]), ("--connect B", (args.connect or [None, None])[1])],
             "keyframes": [(f"--keyframe {t:g}", p) for t, p in (args.keyframe or [])]}.get(task, [])
    return [(flag, str(path)) for flag, path in paths if path]


def _window_frames(task: str, inputs: dict, settings, cfg) -> tuple[int, str]:
    """The frames of the task's DiT window (what the memory check must fit) and the flags that shorten it."""
    from ..infer import tasks

    tf = cfg.vae.temporal_factor
    if task in ("extend", "connect"):
        new = tasks.new_frame_count(inputs["seconds"], settings.fps, tf, inputs.get("direction", "forward"))
        given = tf * inputs.get("overlap", tasks.DEFAULT_OVERLAP) * (2 if task == "connect" else 1)
        return new + given + 1, "a smaller --size or fewer --seconds"
    if task == "edit":  # the whole input, at 4k+1 frames
        return tf * ((len(inputs["video"]) - 1) // tf) + 1, "a smaller --size or a shorter input"
    return settings.frames, "a smaller --size or fewer --frames"


def _input_size(args, task: str, cfg) -> tuple[int | None, int | None]:
    """Without --size, a task with an input image or video is made at that input's size (``size_for_input``);
    a note says so where the input is resized to get there. (None, None) for tasks without one."""
    from ..infer import tasks

    flag, path = {"image-to-video": ("--image", args.image), "loop": ("--image", args.image),
                  "keyframes": ("--keyframe", args.keyframe[0][1] if args.keyframe else None),
                  "extend": ("--extend", args.extend), "connect": ("--connect A", (args.connect or [None])[0]),
                  "edit": ("--edit", args.edit)}.get(task, (None, None))
    if path is None:
        return None, None
    given = tasks.media_size(path, flag)
    width, height = tasks.size_for_input(*given, cfg)
    if (width, height) != given and not args.quiet:
        print(f"kinema: {flag} {path} is {given[0]}x{given[1]}; made at {width}x{height}, its aspect ratio at the "
              f"model's {cfg.sampling.width}x{cfg.sampling.height} pixel count (--size WxH to choose; --resize "
              f"{args.resize} fits it)", file=sys.stderr)
    return width, height


def _task_inputs(args, task: str, settings, cfg) -> dict:
    """The task function's input arguments, read from the paths and checked (InputError/CLIError if bad)."""
    from ..infer import tasks

    fps, tf = settings.fps, cfg.vae.temporal_factor
    w, h, policy = settings.width, settings.height, args.resize
    seconds = args.seconds if args.seconds is not None else (cfg.sampling.frames - 1) / fps
    if task == "image-to-video":
        frame = args.image_frame or 0
        if not 0 <= frame < settings.frames:
            raise CLIError(f"--image-frame must be in [0, {settings.frames - 1}] for {settings.frames} frames, "
                           f"got {frame}")
        inputs = dict(image=tasks.load_image(args.image, w, h, policy, name="--image"), frame=frame)
    elif task == "loop":
        inputs = dict(image=tasks.load_image(args.image, w, h, policy, name="--image") if args.image else None)
    elif task == "keyframes":
        tasks.keyframe_frames([t for t, _ in args.keyframe], settings.frames, settings.fps, tf)
        inputs = dict(images_at=[(t, tasks.load_image(p, w, h, policy, name=f"--keyframe {t}:{p}"))
                                 for t, p in args.keyframe])
    elif task == "extend":
        inputs = dict(video=tasks.load_video(args.extend, fps, w, h, policy, name="--extend"),
                      seconds=tasks.check_seconds(seconds, "--seconds"),
                      direction="backward" if args.backward else "forward")
    elif task == "connect":
        inputs = dict(video_a=tasks.load_video(args.connect[0], fps, w, h, policy, name="--connect A"),
                      video_b=tasks.load_video(args.connect[1], fps, w, h, policy, name="--connect B"),
                      seconds=tasks.check_seconds(seconds, "--seconds"))
    elif task == "edit":
        strength = tasks.check_strength(0.6 if args.strength is None else args.strength)
        inputs = dict(video=tasks.load_video(args.edit, fps, w, h, policy, name="--edit"), strength=strength)
    elif task == "long":
        from ..infer.long import DEFAULT_OVERLAP
        inputs = dict(seconds=tasks.check_seconds(args.long, "--long"))
        latent_frames = (settings.frames - 1) // tf + 1
        overlap = args.overlap if args.overlap is not None else DEFAULT_OVERLAP
        if overlap < 1:
            raise CLIError(f"--overlap must be a whole number of latent frames >= 1, got {overlap}")
        if not overlap < latent_frames:  # each later window re-creates `overlap` latent frames and adds the rest
            shortest = overlap * tf + 1
            raise CLIError(f"--long windows of {settings.frames} frames ({latent_frames} latent) cannot carry "
                           f"{overlap} latent frames over{'' if args.overlap else ' (the default --overlap)'}: give "
                           f"--frames {shortest} or more" + (", or --overlap 1" if latent_frames >= 2 else ""))
    else:
        inputs = {}
    if task in ("extend", "connect") and not args.quiet:
        new = tasks.new_frame_count(inputs["seconds"], fps, tf, inputs.get("direction", "forward"))
        if abs(new - inputs["seconds"] * fps) > tf / 2:  # more than rounding to the nearest step: the minimum
            print(f"kinema: --seconds {inputs['seconds']:g} comes to {new} new frames ({new / fps:g} s at {fps} fps), "
                  f"the fewest {'an extension' if task == 'extend' else 'a connection'} adds", file=sys.stderr)
    if args.overlap is not None:
        inputs["overlap"] = args.overlap
    if args.motion_strength is not None:
        inputs["motion_strength"] = tasks.check_motion_strength(args.motion_strength, "--motion-strength")
    return inputs
