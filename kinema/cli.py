"""The ``kinema`` command: the only place that parses arguments.

    kinema generate "a red ball bounces on the floor" -o ball.mp4
    kinema generate "the ball rolls on" --extend ball.mp4 --seconds 2 -o longer.mp4   (also --image, --loop,
        --connect A B, --edit VIDEO --strength S, --keyframe T:PATH, --long SECONDS; -o still.png for an image)
    kinema train configs/world-small-dit.toml [--resume] [--key value ...]
    kinema convert WAN_CHECKPOINT OUT_FOLDER
    kinema eval world --model PATH
    kinema data ingest DATASET VIDEOS/ && kinema data split DATASET && ... (see kinema.data.pipeline)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path


class CLIError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 128x128 or 192x112, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def _lora(text: str) -> tuple[str, float]:
    path, _, scale = text.rpartition(":") if re.search(r":[-+]?\d*\.?\d+$", text) else (text, "", "1.0")
    try:
        return path, float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lora must be FILE or FILE:SCALE, got {text!r}") from None


def _slug(prompt: str) -> str:
    return (re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "video")


def _frames_for_seconds(seconds: float, fps: int, factor: int) -> int:
    """The 4k+1 frame count closest to ``seconds`` of video at ``fps``."""
    k = max(0, round((seconds * fps - 1) / factor))
    return factor * k + 1


def cmd_generate(args) -> int:
    import torch

    from .infer import InputError, bundled_model_path, make_settings
    from .weights import read_config

    model_path = Path(args.model) if args.model else bundled_model_path()
    cfg = read_config(model_path)  # cheap: validates the request before any weights are read
    task = _task(args)
    relaunched = _relaunch_on_gpus(args)
    if relaunched is not None:
        return relaunched
    if task != "text":
        return _generate_task(args, cfg, model_path, task)
    from .infer.i2v_wan import is_wan_i2v
    if is_wan_i2v(cfg):
        raise CLIError(f"{model_path} is a Wan 2.1 image-to-video model: give the first frame with --image PATH")
    rank, world, device = _distributed(args)
    extended = _extend_prompt(args, args.prompt, rank, world)
    fps = args.fps or cfg.sampling.fps
    frames = args.frames
    if args.seconds is not None:
        if args.seconds <= 0:
            raise CLIError(f"--seconds must be > 0, got {args.seconds}")
        frames = _frames_for_seconds(args.seconds, fps, cfg.vae.temporal_factor)
    width, height = args.size if args.size else (None, None)
    prompt = extended.prompt if extended is not None else args.prompt
    settings = make_settings(cfg, prompt, negative_prompt=args.negative, width=width, height=height,
                             frames=frames, fps=args.fps, steps=args.steps, guidance=args.guidance, shift=args.shift,
                             sampler=args.sampler, seed=args.seed, cache_threshold=args.cache_threshold)
    out = Path(args.output) if args.output else _default_output(settings)
    _check_output(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = _load_pipeline(args, model_path, cfg, settings, world, device)
    load_s = time.perf_counter() - t0
    try:
        video = pipe.run(settings, progress=not args.quiet and rank == 0)
    except InputError:
        raise
    if extended is not None:
        video.notes.update(extended.metadata())
    _finish_distributed(world)
    if rank != 0:
        return 0
    video.save(out)
    if not args.quiet:
        t = video.timings
        print(f"wrote {out}  ({len(video.frames)} frames, {settings.width}x{settings.height}, {video.seconds:.1f} s at "
              f"{video.fps} fps; seed {settings.seed})")
        if "student" in video.notes:
            print(f"sampled by the model's {settings.steps}-step student (guidance baked in; --no-student for the teacher)")
        print(f"time: load {load_s:.2f}s, text {t['text']:.2f}s, sampling {t['sample']:.2f}s, decode {t['decode']:.2f}s "
              f"-> {t['total']:.2f}s for {video.seconds:.2f}s of video (real-time factor {video.seconds / t['total']:.2f})")
        if "step_cache" in video.notes:
            print(f"step cache (threshold {settings.cache_threshold}): {video.notes['step_cache']}")
    return 0


def _default_output(settings, ext: str = ".mp4") -> Path:
    base = f"{_slug(settings.prompt)}-s{settings.seed}"
    out, n = Path(f"{base}{ext}"), 1
    while out.exists():  # never overwrite a file the user already has under a default name
        out, n = Path(f"{base}-{n}{ext}"), n + 1
    return out


def _check_output(out: Path) -> None:
    accepted = (".mp4", ".webm", ".gif", ".png")
    if out.suffix and out.suffix.lower() not in accepted:
        raise CLIError(f"output {out} has extension {out.suffix!r}; accepted: {', '.join(accepted)}, "
                       f"or a folder path (no extension) for PNG frames")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write to {parent}: permission denied")


# -- generate: memory modes, prompt extension, several GPUs (issue 8) -------------------------------------------

def _relaunch_on_gpus(args) -> int | None:
    """``--gpus N`` outside torchrun: this same command under torchrun with N processes (its exit status)."""
    if not args.gpus or args.gpus < 2 or "WORLD_SIZE" in os.environ:
        return None
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.gpus),
           "-m", "kinema.cli", *args.argv]
    return subprocess.run(cmd).returncode


def _distributed(args):
    """(rank, world size, device): one process, or this rank's place under torchrun."""
    from .infer.parallel import init_distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.gpus and world > 1 and args.gpus != world:
        raise CLIError(f"--gpus {args.gpus} but torchrun started {world} processes; drop --gpus under torchrun")
    return init_distributed(args.device)


def _finish_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()


def _extend_prompt(args, prompt: str, rank: int, world: int):
    """The prompt rewritten at --prompt-extend (rank 0 asks, every rank gets its answer), or None when not asked."""
    if not args.prompt_extend:
        for flag, value in (("--prompt-extend-model", args.prompt_extend_model),
                            ("--prompt-extend-key-env", args.prompt_extend_key_env)):
            if value is not None:
                raise CLIError(f"{flag} goes with --prompt-extend URL")
        return None
    from .infer.prompt import PromptExtender, extend_prompt
    try:
        extender = PromptExtender(args.prompt_extend, args.prompt_extend_model or "default", args.prompt_extend_key_env)
    except ValueError as e:
        raise CLIError(str(e)) from e
    result = extend_prompt(prompt, extender) if rank == 0 else None
    if world > 1:  # ranks must sample the very same prompt
        import torch.distributed as dist
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    if rank == 0 and (not result.extended or not args.quiet):
        print(f"prompt extended: {result.prompt}" if result.extended else f"prompt {result.note}", file=sys.stderr)
    return result


def _load_pipeline(args, model_path: Path, cfg, settings, world: int, device):
    """The pipeline in the asked memory mode, spread over the torchrun ranks; refused first if it cannot fit."""
    import torch

    from .infer import Pipeline
    from .infer.offload import MemoryFitError, MemoryPlan, check_memory
    from .infer.parallel import ParallelError, init_mesh, parallelize, plan_parallel
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    memory = MemoryPlan.for_mode(args.offload, args.quantize)
    layout = None
    try:
        if world > 1:
            if settings.cache_threshold > 0:  # ranks holding token shards would decide to skip differently
                raise CLIError(f"--cache-threshold {settings.cache_threshold} runs in one process; drop it or --gpus")
            layout = plan_parallel(world, cfg.dit.num_attention_heads, settings.guidance)
        check_memory(cfg, settings.width, settings.height, settings.frames, dtype, memory, device, settings.guidance,
                     sequence_parallel=layout.sequence if layout else 1, cfg_parallel=layout.cfg if layout else 1)
    except (ParallelError, MemoryFitError) as e:
        raise CLIError(str(e)) from e
    if torch.device(device).type == "cpu" and args.offload != "none" and not args.quiet:
        print(f"note: --offload {args.offload} keeps weights in host memory and moves them to the accelerator only "
              f"while used; on the CPU that saves nothing (--quantize int8 and --dtype bf16 do)", file=sys.stderr)
    pipe = Pipeline.from_pretrained(model_path, device=device, dtype=dtype, lora=args.lora, memory=memory,
                                    student=not args.no_student)
    if layout is not None:
        parallelize(pipe.dit, init_mesh(layout))
    return pipe


# -- generate: prompting with images and videos, long video (issue 4) -----------------------------------------

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


def _task(args) -> str:
    """The task the generate flags ask for: text, image, image-to-video, keyframes, extend, connect, loop, edit, long."""
    given = [dest for dest in _TASK_FLAGS if getattr(args, dest, None)]
    if "loop" in given and "image" in given:
        given.remove("image")  # --loop --image: a loop that starts from the image
    if len(given) > 1:
        raise CLIError(f"choose one task; got {', '.join(_TASK_FLAGS[d] for d in given)}")
    for flag, dest, needs in (("--image-frame", "image_frame", "image"), ("--backward", "backward", "extend"),
                              ("--strength", "strength", "edit"), ("--prompts-file", "prompts_file", "long")):
        if getattr(args, dest) not in (None, False) and needs not in given:
            raise CLIError(f"{flag} goes with {_TASK_FLAGS[needs]}" + (", not --loop" if "loop" in given else ""))
    if args.overlap is not None and not set(given) & {"extend", "connect", "long", "loop"}:
        raise CLIError("--overlap goes with --extend, --connect, --long or --loop")
    if given:
        return {"image": "image-to-video", "keyframe": "keyframes"}.get(given[0], given[0])
    is_png = bool(args.output) and Path(args.output).suffix.lower() == ".png"
    return "image" if is_png or args.frames == 1 else "text"


def _generate_task(args, cfg, model_path: Path, task: str) -> int:
    """``kinema generate`` for every task but plain text-to-video: check all inputs, then load, run and save."""
    import torch

    from .infer import make_settings
    from .infer import long as long_mod
    from .infer import tasks

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
        frames = _frames_for_seconds(args.seconds, fps, tf)
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
    width, height = args.size if args.size else (None, None)
    overrides = dict(negative_prompt=args.negative, width=width, height=height, fps=args.fps, steps=args.steps,
                     guidance=args.guidance, shift=args.shift, sampler=args.sampler, seed=args.seed,
                     cache_threshold=args.cache_threshold)
    settings = make_settings(cfg, first_prompt, frames=None if sets_length else frames, **overrides)
    out = Path(args.output) if args.output else _default_output(settings, ".png" if task == "image" else ".mp4")
    _check_output(out)
    if task == "long" and out.suffix.lower() not in long_mod.STREAM_FORMATS:
        raise CLIError(f"--long streams to .mp4 or .webm, got {out}")
    if task != "image" and out.suffix.lower() == ".png":
        raise CLIError(f"a .png holds one frame; write {task} to .mp4, .webm, .gif or a folder")

    inputs = _task_inputs(args, task, settings, cfg)  # every input read and checked before the model loads
    from .infer.i2v_wan import is_wan_i2v
    wan_i2v = is_wan_i2v(cfg)
    if wan_i2v and (task != "image-to-video" or inputs["frame"] != 0):
        raise CLIError(f"{model_path} is a Wan 2.1 image-to-video model: it takes --image as the first frame "
                       f"(no --image-frame, no {_TASK_FLAGS.get(task, task)})")
    if args.prompt_extend:
        raise CLIError(f"--prompt-extend goes with text-to-video, not {task}")
    if task == "long" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CLIError("--long streams its output from one process; run it without --gpus / torchrun")

    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world, device = _distributed(args)
    t0 = time.perf_counter()
    pipe = _load_pipeline(args, model_path, cfg, settings, world, device)
    load_s = time.perf_counter() - t0
    kw = {k: v for k, v in overrides.items() if v is not None}
    progress = not args.quiet and rank == 0
    if task == "long":
        result = long_mod.long_video(pipe, prompts, output=out, progress=progress, frames=frames, **inputs, **kw)
        if not args.quiet:
            print(f"wrote {out}  ({result.frames} frames, {result.seconds:.1f} s in {result.windows} windows; "
                  f"load {load_s:.2f}s, generate {result.timings['total']:.2f}s)")
        return 0
    run = {"image": tasks.image, "image-to-video": tasks.image_to_video, "keyframes": tasks.keyframes,
           "extend": tasks.extend, "connect": tasks.connect, "loop": tasks.loop, "edit": tasks.edit}[task]
    if wan_i2v:  # Wan 2.1 I2V: the image enters through the DiT's own channels and CLIP tokens
        from .infer import i2v_wan
        run = lambda pipe, prompt, image, frame, resize, **kw: i2v_wan.image_to_video(pipe, image, prompt, **kw)  # noqa: E731
    if not sets_length:
        kw["frames"] = frames
    if task != "image":  # every other task fits its inputs by the --resize policy
        kw["resize"] = args.resize
    result = run(pipe, first_prompt, progress=progress, **inputs, **kw)
    video = result[1] if task == "connect" else result
    _finish_distributed(world)
    if rank != 0:
        return 0
    video.save(out)
    if task == "connect":
        side = out.with_name(f"{out.stem}-transition{out.suffix}")
        result[0].save(side)
    if not args.quiet:
        print(f"wrote {out}  ({len(video.frames)} frames, {settings.width}x{settings.height}, {video.seconds:.1f} s at "
              f"{video.fps} fps; seed {settings.seed}; load {load_s:.2f}s, generate {video.timings['total']:.2f}s)")
        if task == "connect":
            print(f"wrote {side}  (the {len(result[0].frames)}-frame transition alone)")
        if task == "loop":
            seam, typical = tasks.loop_seam(video.frames)
            print(f"loop seam: last-to-first difference {seam:.2f} vs median frame-to-frame {typical:.2f} (0-255)")
    return 0


def _task_inputs(args, task: str, settings, cfg) -> dict:
    """The task function's input arguments, read from the paths and checked (InputError/CLIError if bad)."""
    from .infer import tasks

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
        inputs = dict(seconds=tasks.check_seconds(args.long, "--long"))
    else:
        inputs = {}
    if args.overlap is not None:
        inputs["overlap"] = args.overlap
    return inputs


def _add_task_flags(g: argparse.ArgumentParser) -> None:
    t = g.add_argument_group(
        "prompting with images and videos",
        "Input images and videos are resized to --size by --resize (default crop: scale to cover, centre-crop); "
        "videos are resampled to --fps. Unreadable inputs, --strength outside (0, 1] and keyframe times outside "
        "the clip are refused before anything is generated.")
    t.add_argument("--image", metavar="PATH", help="image-to-video: the image as frame --image-frame (with --loop: "
                   "the loop starts from it)")
    t.add_argument("--image-frame", type=int, metavar="N", help="pixel frame to pin --image at (default 0; later "
                   "frames pin a 4-frame still at the latent frame holding N)")
    t.add_argument("--extend", metavar="VIDEO", help="continue VIDEO by --seconds (default: one default clip); "
                   "writes VIDEO plus the new part")
    t.add_argument("--backward", action="store_true", help="with --extend: add the new part before VIDEO")
    t.add_argument("--loop", action="store_true", help="a clip whose last frame leads into its first")
    t.add_argument("--connect", nargs=2, metavar=("A", "B"), help="a --seconds transition from the end of A to the "
                   "start of B; writes A+transition+B to -o and the transition to OUT-transition.EXT")
    t.add_argument("--edit", metavar="VIDEO", help="re-generate VIDEO from the prompt (SDEdit), keeping its length")
    t.add_argument("--strength", type=float, help="with --edit: in (0, 1]; how much is re-generated (default 0.6)")
    t.add_argument("--keyframe", action="append", type=_keyframe, metavar="T:PATH",
                   help="pin the image PATH at T seconds (repeatable)")
    t.add_argument("--long", type=float, metavar="SECONDS", help="any length (60 and more): window by window "
                   "(--frames = window), streamed to -o .mp4/.webm in constant memory")
    t.add_argument("--prompts-file", metavar="FILE", help="with --long: timed prompts, one 'SECONDS PROMPT' per line "
                   "(first at 0), instead of the prompt argument")
    t.add_argument("--overlap", type=int, metavar="N", help="latent frames carried over (extend, connect, long: "
                   "default 2; loop: shared frames, default 1)")
    t.add_argument("--resize", choices=("crop", "pad", "stretch"), default="crop",
                   help="how inputs of another size are fitted (default crop)")


def cmd_convert(args) -> int:
    from .weights.convert import convert_checkpoint
    out = convert_checkpoint(args.src, args.dst, kind=args.kind)
    print(f"wrote {out}")
    return 0


def cmd_train(args, extra: list[str]) -> int:
    from .train import train
    train(args.config, overrides=extra, resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    from .eval.cli import run_eval
    return run_eval(args)


# -- serve: the OpenAI-compatible video API, its workers and web page (issue 6) --------------------------------

def _serve_options(p: argparse.ArgumentParser, top: bool) -> None:
    """The deployment flags, on ``serve`` and again on each role (there with no defaults, so either place works)."""
    d = {} if top else {"default": argparse.SUPPRESS}
    csv = lambda text: tuple(v.strip() for v in text.split(",") if v.strip())  # noqa: E731
    p.add_argument("--data", dest="data_dir", help="data folder: results, uploads, SQLite store (default ~/.kinema/serve)", **d)
    p.add_argument("--db", help="job store URL: sqlite:///PATH or postgresql://USER@HOST/DB (shared by several hosts)", **d)
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)", **d)
    p.add_argument("--port", type=int, help="default 8000", **d)
    p.add_argument("--model", dest="models", action="append", help="model folder to serve (repeatable; default: bundled)", **d)
    p.add_argument("--sizes", type=csv, help="accepted sizes, e.g. 128x128,176x96 (default: from each model)", **d)
    p.add_argument("--seconds", type=csv, help="accepted durations, e.g. 2,4 (default: from each model)", **d)
    p.add_argument("--workers", type=int, help="worker processes started by `kinema serve` (default 1)", **d)
    p.add_argument("--device", help="worker device, e.g. cuda (default cpu)", **d)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), **d)
    p.add_argument("--threads", type=int, help="CPU threads per worker", **d)
    p.add_argument("--no-auth", dest="auth", action="store_const", const=False,
                   help="no API keys (development; refused unless --host is loopback)", **d)
    p.add_argument("--lease-seconds", dest="lease_s", type=float, help="retry a job after its worker is silent this long (60)", **d)
    p.add_argument("--max-attempts", type=int, help="tries per job before it fails (3)", **d)
    p.add_argument("--ttl-hours", dest="ttl_s", type=lambda h: float(h) * 3600, help="keep results this long (168)", **d)
    p.add_argument("--poll-ms", type=int, help="poll interval hinted to clients and used by idle workers (1000)", **d)
    p.add_argument("--rate", dest="rate_per_min", type=int, help="default videos per minute per key (30)", **d)
    p.add_argument("--queue", dest="max_queue", type=int, help="default unfinished videos per key (16)", **d)


def _add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="run the OpenAI-compatible /v1/videos API, its workers and web page",
                       description="kinema serve: API + workers; `serve api` / `serve worker` run one side; "
                                   "`serve keys create|list|revoke` manage API keys.")
    _serve_options(s, top=True)
    roles = s.add_subparsers(dest="serve_role", metavar="ROLE")
    _serve_options(roles.add_parser("api", help="the HTTP API only"), top=False)
    w = roles.add_parser("worker", help="one worker only (any host that reaches the store and data folder)")
    _serve_options(w, top=False)
    w.add_argument("--slot", type=int, default=0, help="this worker's number on its host (distinct per process)")
    keys = roles.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_action", required=True,
                                                                           metavar="ACTION")
    kc = keys.add_parser("create", help="make a key (its secret is printed once)")
    kc.add_argument("--name", required=True)
    kc.add_argument("--key-rate", type=int, help="videos per minute for this key (default: the server's)")
    kc.add_argument("--key-queue", type=int, help="unfinished videos for this key (default: the server's)")
    kr = keys.add_parser("revoke", help="revoke a key by id or name")
    kr.add_argument("key")
    for k in (kc, kr, keys.add_parser("list", help="list keys (never their secrets)")):
        _serve_options(k, top=False)
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import dataclasses

    from .serve import ServeConfig
    from .serve import run
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)
             if getattr(args, f.name, None) is not None}
    cfg = ServeConfig(**{k: tuple(v) if k == "models" else v for k, v in given.items()})
    role, action = args.serve_role, getattr(args, "keys_action", None)
    if role == "keys" and action == "create":
        print(run.create_key(cfg, args.name, args.key_rate, args.key_queue))
        print("(store this key now: only its hash is kept)", file=sys.stderr)
    elif role == "keys" and action == "list":
        rows = run.key_table(cfg)
        for row in rows:
            print("  ".join(f"{k}={v}" for k, v in row.items()))
        if not rows:
            print("no keys; create one with `kinema serve keys create --name NAME`", file=sys.stderr)
    elif role == "keys":
        if not run.revoke_key(cfg, args.key):
            raise CLIError(f"no live key with id or name {args.key!r}; see `kinema serve keys list`")
        print(f"revoked {args.key}")
    elif role == "api":
        return run.serve_api(cfg)
    elif role == "worker":
        return run.serve_worker(cfg, slot=args.slot)
    else:
        return run.serve_all(cfg)
    return 0


# -- data: raw videos -> a training-ready latent cache (issue 7) -------------------------------------------------

def _add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="turn a folder of videos into a latent cache (ingest, split, score, caption, "
                                    "encode, inspect)",
                       description="Each stage is resumable (re-running skips finished work) and shardable: --shard "
                                   "i/n, or one shard per torchrun rank. Run them in order on one DATASET folder.")
    stages = d.add_subparsers(dest="data_command", required=True, metavar="STAGE")

    def stage(name: str, about: str) -> argparse.ArgumentParser:
        p = stages.add_parser(name, help=about)
        p.add_argument("dataset", help="the dataset folder")
        if name != "inspect":
            p.add_argument("--config", help="data config (.toml/.json): [split] [score] [filter] [caption] [encode]")
            p.add_argument("--shard", help="i/n: this process's share of the units (default: RANK/WORLD_SIZE, or all)")
            p.add_argument("-q", "--quiet", action="store_true")
        return p

    ing = stage("ingest", "probe videos into DATASET/sources.parquet (bad files: rejects.parquet)")
    ing.add_argument("inputs", nargs="*", help="folders (walked) and video files; default: those of the last ingest")
    ing.add_argument("--list", help="a text file of video paths, one per line")
    ing.add_argument("--units", type=int, help="work units the corpus is cut into (fixed when the dataset is made; "
                                               "default: one per ~32 files)")
    stage("split", "detect shots and cut them into clips (timestamps)").add_argument(
        "--export", action="store_true", help="also write every clip to DATASET/clips/ID.mp4")
    stage("score", "measure motion, sharpness, black/frozen/flash frames; filter; report.txt")
    cap = stage("caption", "captions from sidecars (VIDEO.txt / .json), a mapping, or a captioner")
    cap.add_argument("--mapping", help="CSV or Parquet: a caption column and a clip_id, path or name column")
    cap.add_argument("--captioner", metavar="MODULE:FUNCTION", help="function(frames, prompt) -> str, e.g. a local VLM")
    cap.add_argument("--prompt-template", help="what the captioner is asked ({caption} {duration} {width} ...)")
    cap.add_argument("--caption-template", help="the stored caption, e.g. 'sks style, {caption}'")
    enc = stage("encode", "VAE latents + text tokens of the kept clips into DATASET/cache")
    enc.add_argument("--model", required=True, help="model folder whose VAE and text encoder are used")
    enc.add_argument("--bucket", action="append", metavar="FxHxW", help="a training size, e.g. 17x96x160 (repeatable; "
                                                                        "default: the config's)")
    enc.add_argument("--fps", type=float, help="frame rate clips are resampled to (default 8)")
    enc.add_argument("--out", help="cache folder (default DATASET/cache)")
    enc.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK when there is a GPU), cpu, cuda")
    enc.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    ins = stage("inspect", "summary statistics and a contact sheet")
    ins.add_argument("--sheet", help="write a PNG grid of clip thumbnails here")
    ins.add_argument("--max-clips", type=int, default=48)
    ins.add_argument("--json", help="write the statistics here as JSON")
    d.set_defaults(func=cmd_data)


def cmd_data(args) -> int:
    from .data.pipeline import run_command
    from .data.shards import DataError
    try:
        return run_command(args)
    except DataError as e:
        raise CLIError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kinema", description="Text, image or video in; video out.")
    p.add_argument("--version", action="version", version=f"kinema {__import__('kinema').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt", nargs="?", help="what the video shows (omit with --prompts-file)")
    g.add_argument("--model", help="model folder (kinema or diffusers Wan 2.1); default: the bundled model")
    g.add_argument("--negative", help="negative prompt (default: the model's)")
    n = g.add_mutually_exclusive_group()
    n.add_argument("--frames", type=int, help="frame count, 4k+1 (e.g. 17, 33, 81)")
    n.add_argument("--seconds", type=float, help="duration; rounded to the nearest valid frame count")
    g.add_argument("--size", type=_size, help="WIDTHxHEIGHT, multiples of 16 (e.g. 128x128, 192x112)")
    g.add_argument("--fps", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    g.add_argument("--shift", type=float, help="timestep shift (higher = more steps at high noise)")
    g.add_argument("--sampler", help="euler | heun | unipc")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-student", action="store_true",
                   help="sample with the teacher even when the model folder has a few-step student whose step count "
                        "equals --steps (it is used automatically then)")
    g.add_argument("--cache-threshold", type=float, metavar="X",
                   help="step cache: reuse the DiT's later blocks on steps where its first block's output changed by "
                        "less than X (relative; 0 = off, the default; ~0.05-0.2 trades quality for speed)")
    g.add_argument("--lora", type=_lora, action="append", metavar="FILE[:SCALE]", help="apply a LoRA (repeatable)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    g.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    g.add_argument("-o", "--output", help="output file: .mp4 .webm .gif .png, or a folder for PNG frames")
    g.add_argument("-q", "--quiet", action="store_true")
    m = g.add_argument_group("memory and GPUs", "A request that cannot fit the chosen mode is refused before "
                             "loading, naming the mode that would fit.")
    m.add_argument("--offload", choices=("none", "model", "block"), default="none",
                   help="model: text encoder, DiT and VAE on the GPU only while each runs; block: the DiT's and text "
                        "encoder's layers stream through the GPU one at a time, VAE decode in tiles (smallest)")
    m.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: DiT block weights stored in 8 bits (per-channel scales)")
    m.add_argument("--gpus", type=int, metavar="N", help="run on N GPUs (relaunches under torchrun): CFG halves on "
                   "two groups, tokens split across each (sequence parallel)")
    x = g.add_argument_group("prompt extension", "Rewrite the prompt with a chat model at an OpenAI-compatible "
                             "endpoint first; if it is unreachable, the original prompt is used.")
    x.add_argument("--prompt-extend", metavar="URL", help="e.g. http://127.0.0.1:8080 (adds /v1/chat/completions)")
    x.add_argument("--prompt-extend-model", metavar="NAME", help="model name sent to the endpoint")
    x.add_argument("--prompt-extend-key-env", metavar="VAR", help="environment variable holding the API key")
    _add_task_flags(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("convert", help="convert an original Wan 2.1 checkpoint to a diffusers-layout folder")
    c.add_argument("src", help="checkpoint file or folder (.safetensors, or .pth loaded weights-only)")
    c.add_argument("dst", help="output folder")
    c.add_argument("--kind", choices=("auto", "dit", "vae"), default="auto")
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("train", help="train or fine-tune (python or torchrun)")
    t.add_argument("config", help="training config file (configs/*.toml)")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.set_defaults(func=cmd_train, takes_extra=True)

    e = sub.add_parser("eval", help="measure quality")
    e.add_argument("suite", choices=("world",), help="world: prompt following and physics on the procedural world")
    e.add_argument("--model", help="model folder; default: the bundled model")
    e.add_argument("--n", type=int, default=100, help="prompts per row")
    e.add_argument("--steps", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", help="write the report here as JSON")
    e.add_argument("--ground-truth", action="store_true", help="score rendered ground truth instead (validates the evaluator)")
    e.add_argument("--reconstruct", action="store_true",
                   help="score the model's VAE reconstructions of the ground truth (the ceiling for its DiT)")
    e.set_defaults(func=cmd_eval)
    _add_serve_parser(sub)
    _add_data_parser(sub)
    return p


def _train_error():
    from .train.config import TrainError
    return TrainError


def main(argv: list[str] | None = None) -> int:
    import warnings
    warnings.formatwarning = lambda message, *args, **kwargs: f"kinema: warning: {message}\n"
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `generate --gpus N`, relaunched under torchrun
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .config import ConfigError
    from .infer import InputError
    from .weights import WeightsError
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra)
        return args.func(args)
    except (CLIError, InputError, ConfigError, WeightsError, FileNotFoundError, _train_error()) as e:
        print(f"kinema {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kinema {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
