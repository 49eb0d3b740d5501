"""``kinema generate``: its flags, text-to-video, and what every task shares (memory modes, GPUs, output).

Prompting with images and videos (--image, --extend, --long, ...) is ``tasks.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from . import CLIError, at_least_one


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 128x128 or 192x112, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def seconds_arg(text: str) -> float:
    """A duration flag's value: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def _lora(text: str) -> tuple[str, float]:
    path, _, scale = text.rpartition(":") if re.search(r":[-+]?\d*\.?\d+$", text) else (text, "", "1.0")
    try:
        return path, float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lora must be FILE or FILE:SCALE, got {text!r}") from None


def add_parser(sub) -> None:
    """The ``generate`` command and its flags."""
    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt", nargs="?", help="what the video shows (omit with --prompts-file)")
    g.add_argument("--model", help="model folder (kinema or diffusers Wan 2.1); default: the bundled model")
    g.add_argument("--negative", help="negative prompt (default: the model's)")
    n = g.add_mutually_exclusive_group()
    n.add_argument("--frames", type=int, help="frame count, 4k+1 (e.g. 17, 33, 81)")
    n.add_argument("--seconds", type=seconds_arg, help="duration; rounded to the nearest valid frame count")
    g.add_argument("--size", type=_size, help="WIDTHxHEIGHT, multiples of 16 (e.g. 128x128, 192x112); default: the "
                                              "model's, or that of an input image or video")
    g.add_argument("--fps", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    g.add_argument("--guidance-interval", metavar="LO,HI",
                   help="guide only the steps whose noise level t is in [LO, HI] (1 = pure noise); the others take the "
                        "conditional prediction alone, half the network work (default: the model's, 0,1 = every step)")
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
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="precision; auto (the default): bf16 where the device computes it natively (CUDA, or a CPU "
                        "with AVX-512 BF16 / AMX), else fp32")
    g.add_argument("--threads", type=at_least_one("threads"), help="CPU threads (default: PyTorch's choice)")
    g.add_argument("--compile", action="store_true",
                   help="run the DiT (and, off the CPU, the VAE decode) through torch.compile: the first clip "
                        "compiles (up to a minute on 2 CPU cores, seconds once cached); on a CPU the bundled model "
                        "gains nothing in bf16, x1.07 a clip in fp32 (README, Speed); for long videos and many clips")
    g.add_argument("-o", "--output", help="output file: .mp4 .webm .gif .png, or a folder for PNG frames")
    g.add_argument("-q", "--quiet", action="store_true")
    m = g.add_argument_group("memory and GPUs", "A request that cannot fit the chosen mode is refused before "
                             "loading, naming the mode that would fit.")
    m.add_argument("--offload", choices=("none", "model", "block"), default="none",
                   help="model: text encoder, DiT and VAE on the GPU only while each runs; block: the DiT's and text "
                        "encoder's layers stream through the GPU one at a time, VAE decode in tiles (smallest)")
    m.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="int8: DiT block weights stored in 8 bits (per-channel scales)")
    m.add_argument("--gpus", type=at_least_one(), metavar="N", help="run on N GPUs (relaunches under torchrun): CFG halves on "
                   "two groups, tokens split across each (sequence parallel)")
    x = g.add_argument_group("prompt extension", "Rewrite the prompt with a chat model at an OpenAI-compatible "
                             "endpoint first; if it is unreachable, the original prompt is used.")
    x.add_argument("--prompt-extend", metavar="URL", help="e.g. http://127.0.0.1:8080 (adds /v1/chat/completions)")
    x.add_argument("--prompt-extend-model", metavar="NAME", help="model name sent to the endpoint")
    x.add_argument("--prompt-extend-key-env", metavar="VAR", help="environment variable holding the API key")
    from .tasks import add_task_flags
    add_task_flags(g)
    g.set_defaults(func=cmd_generate)


def _slug(prompt: str) -> str:
    return (re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "video")


def frames_for_seconds(seconds: float, fps: int, factor: int) -> int:
    """The 4k+1 frame count closest to ``seconds`` of video at ``fps``."""
    k = max(0, round((seconds * fps - 1) / factor))
    return factor * k + 1


def cmd_generate(args) -> int:
    import torch

    from ..infer import InputError, bundled_model_path, make_settings
    from ..weights import read_config
    from .tasks import generate_task, task_of

    model_path = Path(args.model) if args.model else bundled_model_path()
    cfg = read_config(model_path)  # cheap: validates the request before any weights are read
    task = task_of(args)
    relaunched = _relaunch_on_gpus(args)
    if relaunched is not None:
        return relaunched
    if task != "text":
        return generate_task(args, cfg, model_path, task)
    from ..infer.i2v_wan import is_wan_i2v
    if is_wan_i2v(cfg):
        raise CLIError(f"{model_path} is a Wan 2.1 image-to-video model: give the first frame with --image PATH")
    rank, world, device = distributed(args)
    fps = args.fps or cfg.sampling.fps
    frames = args.frames
    if args.seconds is not None:
        if args.seconds <= 0:
            raise CLIError(f"--seconds must be > 0, got {args.seconds}")
        frames = frames_for_seconds(args.seconds, fps, cfg.vae.temporal_factor)
    width, height = args.size if args.size else (None, None)
    settings = make_settings(cfg, args.prompt, negative_prompt=args.negative, width=width, height=height,
                             frames=frames, fps=args.fps, steps=args.steps, guidance=args.guidance,
                             guidance_interval=args.guidance_interval, shift=args.shift, sampler=args.sampler,
                             seed=args.seed, cache_threshold=args.cache_threshold)
    out = check_output(args.output if args.output else default_output(settings))
    extended = _extend_prompt(args, args.prompt, rank, world)  # after every check: a round trip, maybe a paid one
    if extended is not None:
        settings = dataclasses.replace(settings, prompt=extended.prompt)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = load_pipeline(args, model_path, cfg, settings, world, device)
    load_s = time.perf_counter() - t0
    if rank == 0:
        warn_student_ignores(args, pipe, settings)
    try:
        video = pipe.run(settings, progress=not args.quiet and rank == 0)
    except InputError:
        raise
    if extended is not None:
        video.notes.update(extended.metadata())
    finish_distributed(world)
    if rank != 0:
        return 0
    video.save(out)
    if not args.quiet:
        t = video.timings
        print(f"wrote {out}  ({clip_summary(video)}; seed {settings.seed}; {video.notes.get('dtype', 'float32')})")
        if "student" in video.notes:
            print(f"sampled by the model's {settings.steps}-step student (guidance baked in; --no-student for the teacher)")
        print(f"time: load {load_s:.2f}s, text {t['text']:.2f}s, sampling {t['sample']:.2f}s, decode {t['decode']:.2f}s "
              f"-> {t['total']:.2f}s for {video.seconds:.2f}s of video (real-time factor {video.seconds / t['total']:.2f})")
        if "step_cache" in video.notes:
            print(f"step cache (threshold {settings.cache_threshold}): {video.notes['step_cache']}")
    return 0


def default_output(settings, ext: str = ".mp4", beside=None) -> Path:
    """A new file name from the prompt and seed; with ``beside`` (path -> the path of a second output written next
    to it), one where both names are free."""
    base = f"{_slug(settings.prompt)}-s{settings.seed}"
    out, n = Path(f"{base}{ext}"), 1
    while out.exists() or (beside is not None and Path(beside(str(out))).exists()):  # never overwrite the user's
        out, n = Path(f"{base}-{n}{ext}"), n + 1
    return out


def output_suffix(out: str) -> str:
    """The lower-case extension of output ``out``; "" for a folder of PNG frames (a path ending in '/', or
    without an extension), as ``write_video`` reads it."""
    return "" if out.endswith(("/", os.sep)) or not Path(out).suffix else Path(out).suffix.lower()


def check_output(out: str | os.PathLike) -> str:
    """``out`` checked before any work starts: a format kinema writes, in a place it can write. Returned as the
    string to save to (a trailing '/' kept: it makes a folder of PNG frames of any name)."""
    raw = os.fspath(out)
    accepted = (".mp4", ".webm", ".gif", ".png")
    suffix = output_suffix(raw)
    if suffix and suffix not in accepted:
        raise CLIError(f"output {raw} has extension {suffix!r}; accepted: {', '.join(accepted)}, "
                       f"or a folder path (ending in '/' or without extension) for PNG frames")
    path = Path(raw)
    if not suffix and path.exists() and not path.is_dir():
        raise CLIError(f"cannot write PNG frames into {raw}: it is a file, not a folder")
    if suffix and path.is_dir():
        raise CLIError(f"cannot write {raw}: it is a folder")
    if not suffix and path.is_dir():
        from ..common.video import FOLDER_METADATA, FRAME_PATTERN, _is_frame_folder
        if not _is_frame_folder(path):  # never replaced: it would take the user's other files with it
            raise CLIError(f"cannot write PNG frames into {raw}: it holds files other than {FRAME_PATTERN.format(0)}"
                           f"... and {FOLDER_METADATA}; pick an empty or new folder")
    where = path if not suffix else path.parent
    while not where.exists() and where != where.parent:  # the nearest folder that exists: the rest is created
        where = where.parent
    if not where.is_dir():
        raise CLIError(f"cannot write {raw}: {where} is a file, not a folder")
    try:  # an unnamed scratch file (nothing is left behind): the only test that holds for root and odd mounts
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as e:
        raise CLIError(f"cannot write {raw}: {where} is not writable ({e.strerror or e})") from None
    return raw


# -- memory modes, prompt extension, several GPUs (issue 8) ----------------------------------------------------

def _relaunch_on_gpus(args) -> int | None:
    """``--gpus N`` outside torchrun: this same command under torchrun with N processes (its exit status)."""
    if not args.gpus or args.gpus < 2 or "WORLD_SIZE" in os.environ:
        return None
    device = check_device(args.device)  # before N processes start, each to fail the same way
    if device.type == "cuda":
        import torch
        if torch.cuda.device_count() < args.gpus:
            raise CLIError(f"--gpus {args.gpus}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif not args.quiet:
        print(f"note: --gpus {args.gpus} with --device {args.device}: {args.gpus} processes on this CPU "
              f"(--device cuda for GPUs)", file=sys.stderr)
    import subprocess
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.gpus),
           "-m", "kinema.cli", *args.argv]
    return subprocess.run(cmd).returncode


def check_device(name: str, flag: str = "--device"):
    """The torch.device ``name`` names, if this machine has it; CLIError naming what is accepted otherwise."""
    from ..infer.pipeline import InputError, check_device as check
    try:
        return check(name, flag)
    except InputError as e:
        raise CLIError(str(e)) from None


def clip_summary(video) -> str:
    """"17 frames, 128x128, 2.1 s at 8 fps", or "one frame, 128x128" for an image."""
    height, width = video.frames.shape[1:3]
    if len(video.frames) == 1:
        return f"one frame, {width}x{height}"
    return f"{len(video.frames)} frames, {width}x{height}, {video.seconds:.1f} s at {video.fps:g} fps"


def warn_student_ignores(args, pipe, settings) -> None:
    """Say which of the flags given are not used when the model's few-step student samples the request."""
    if args.quiet or not pipe.uses_student(settings):
        return
    ignored = [flag for flag, value in (("--guidance", args.guidance), ("--guidance-interval", args.guidance_interval),
                                        ("--shift", args.shift),
                                        ("--sampler", args.sampler), ("--negative", args.negative)) if value is not None]
    if ignored:
        print(f"kinema: warning: {', '.join(ignored)} not used: the model's {settings.steps}-step student samples "
              f"with Euler, its guidance and negative prompt baked in (--no-student: the teacher)", file=sys.stderr)


def check_loras(loras: list[tuple[str, float]], cfg=None, model_path=None) -> None:
    """Read every ``--lora`` file before the model loads (they are small): a missing, corrupt or non-LoRA file, or
    (given the model's ``cfg``) one whose layers the model lacks or has at other shapes, is refused by name instead
    of failing after the model is in memory."""
    import torch

    from ..train.lora import check_lora_fits, load_lora_state
    dit = None
    for path, _ in loras:
        try:
            state = load_lora_state(path)
            if cfg is not None:
                if dit is None:
                    from ..dit import DiT
                    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
                        dit = DiT(cfg.dit)
                check_lora_fits(dit, path, state)
        except (ValueError, OSError) as e:
            fits = f": it does not fit {model_path}{_lora_base(path)}" if cfg is not None and isinstance(e, ValueError) \
                and "LoRA for" in str(e) else ""
            raise CLIError(f"--lora {e}{fits}" if fits else f"--lora {path}: {e}") from None


def _lora_base(path) -> str:
    """", trained on BASE" from a LoRA file's metadata (kinema writes ``base_model``), or ""."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            base = (f.metadata() or {}).get("base_model")
    except Exception:  # noqa: BLE001 -- read once already by check_loras; the note is optional
        return ""
    return f" (it was trained on {base})" if base else ""


def distributed(args):
    """(rank, world size, device): one process, or this rank's place under torchrun."""
    from ..infer.parallel import init_distributed
    check_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.gpus and world > 1 and args.gpus != world:
        raise CLIError(f"--gpus {args.gpus} but torchrun started {world} processes; drop --gpus under torchrun")
    return init_distributed(args.device)


def finish_distributed(world: int) -> None:
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
    from ..infer.prompt import PromptExtender, extend_prompt
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


def load_pipeline(args, model_path: Path, cfg, settings, world: int, device,
                  smaller: str = "a smaller --size or fewer --frames"):
    """The pipeline in the asked memory mode, spread over the torchrun ranks; refused first if it cannot fit
    ``settings`` (its frames: the DiT's window; ``smaller``: the flags that would make it smaller)."""
    from ..infer import Pipeline
    from ..infer.memory import check_memory
    from ..infer.offload import MemoryFitError, MemoryPlan
    from ..infer.parallel import ParallelError, init_mesh, parallelize, plan_parallel
    from ..common.precision import compute_dtype
    dtype = compute_dtype(args.dtype, device)
    memory = MemoryPlan.for_mode(args.offload, args.quantize)
    layout = None
    try:
        if args.compile and (world > 1 or not memory.weights_as_loaded):
            modes = [f"--{flag} {value}" for flag, value in (("offload", args.offload), ("quantize", args.quantize))
                     if value != "none"]
            raise CLIError("--compile runs the model in one process where it was loaded; drop it, or drop "
                           + ("--gpus" if world > 1 else " and ".join(modes)))
        if world > 1:
            if settings.cache_threshold > 0:  # ranks holding token shards would decide to skip differently
                raise CLIError(f"--cache-threshold {settings.cache_threshold} runs in one process; drop it or --gpus")
            layout = plan_parallel(world, cfg.dit.num_attention_heads, settings.guidance)
        check_memory(cfg, settings.width, settings.height, settings.frames, dtype, memory, device, settings.guidance,
                     smaller=smaller, sequence_parallel=layout.sequence if layout else 1,
                     cfg_parallel=layout.cfg if layout else 1)
    except (ParallelError, MemoryFitError) as e:
        raise CLIError(str(e)) from e
    note = memory.note_on(device)
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    check_loras(args.lora or [], cfg, model_path)
    pipe = Pipeline.from_pretrained(model_path, device=device, dtype=dtype, lora=args.lora, memory=memory,
                                    student=not args.no_student, compile=args.compile)
    if layout is not None:
        parallelize(pipe.dit, init_mesh(layout))
    return pipe
