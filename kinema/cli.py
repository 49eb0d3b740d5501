"""The ``kinema`` command: the only place that parses arguments.

    kinema generate "a red ball bounces on the floor" -o ball.mp4
    kinema train configs/world-small-dit.toml [--resume] [--key value ...]
    kinema convert WAN_CHECKPOINT OUT_FOLDER
    kinema eval world --model PATH
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

    from .infer import InputError, Pipeline, bundled_model_path, make_settings
    from .weights import read_config

    model_path = Path(args.model) if args.model else bundled_model_path()
    cfg = read_config(model_path)  # cheap: validates the request before any weights are read
    fps = args.fps or cfg.sampling.fps
    frames = args.frames
    if args.seconds is not None:
        if args.seconds <= 0:
            raise CLIError(f"--seconds must be > 0, got {args.seconds}")
        frames = _frames_for_seconds(args.seconds, fps, cfg.vae.temporal_factor)
    width, height = args.size if args.size else (None, None)
    settings = make_settings(cfg, args.prompt, negative_prompt=args.negative, width=width, height=height,
                             frames=frames, fps=args.fps, steps=args.steps, guidance=args.guidance, shift=args.shift,
                             sampler=args.sampler, seed=args.seed)
    out = Path(args.output) if args.output else _default_output(settings)
    _check_output(out)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(model_path, device=args.device, dtype=dtype, lora=args.lora)
    load_s = time.perf_counter() - t0
    try:
        video = pipe.run(settings, progress=not args.quiet)
    except InputError:
        raise
    video.save(out)
    if not args.quiet:
        t = video.timings
        print(f"wrote {out}  ({len(video.frames)} frames, {settings.width}x{settings.height}, {video.seconds:.1f} s at "
              f"{video.fps} fps; seed {settings.seed})")
        print(f"time: load {load_s:.2f}s, text {t['text']:.2f}s, sampling {t['sample']:.2f}s, decode {t['decode']:.2f}s "
              f"-> {t['total']:.2f}s for {video.seconds:.2f}s of video (real-time factor {video.seconds / t['total']:.2f})")
    return 0


def _default_output(settings) -> Path:
    base = f"{_slug(settings.prompt)}-s{settings.seed}"
    out, n = Path(f"{base}.mp4"), 1
    while out.exists():  # never overwrite a file the user already has under a default name
        out, n = Path(f"{base}-{n}.mp4"), n + 1
    return out


def _check_output(out: Path) -> None:
    accepted = (".mp4", ".webm", ".gif", ".png")
    if out.suffix and out.suffix.lower() not in accepted:
        raise CLIError(f"output {out} has extension {out.suffix!r}; accepted: {', '.join(accepted)}, "
                       f"or a folder path (no extension) for PNG frames")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise CLIError(f"cannot write to {parent}: permission denied")


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kinema", description="Text, image or video in; video out.")
    p.add_argument("--version", action="version", version=f"kinema {__import__('kinema').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate a video from a prompt")
    g.add_argument("prompt", help="what the video shows")
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
    g.add_argument("--lora", type=_lora, action="append", metavar="FILE[:SCALE]", help="apply a LoRA (repeatable)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    g.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    g.add_argument("-o", "--output", help="output file: .mp4 .webm .gif .png, or a folder for PNG frames")
    g.add_argument("-q", "--quiet", action="store_true")
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
    e.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from .config import ConfigError
    from .infer import InputError
    from .weights import WeightsError
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra)
        return args.func(args)
    except (CLIError, InputError, ConfigError, WeightsError, FileNotFoundError) as e:
        print(f"kinema {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kinema {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
