"""``kinema convert``: an original Wan 2.1 checkpoint to a diffusers-layout folder."""

from __future__ import annotations


def add_parser(sub) -> None:
    """The ``convert`` command."""
    c = sub.add_parser("convert", help="convert an original Wan 2.1 checkpoint to a diffusers-layout folder")
    c.add_argument("src", help="checkpoint file or folder (.safetensors, or .pth loaded weights-only)")
    c.add_argument("dst", help="output folder")
    c.add_argument("--kind", choices=("auto", "dit", "vae"), default="auto")
    c.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from ..weights.convert import convert_checkpoint
    out = convert_checkpoint(args.src, args.dst, kind=args.kind)
    print(f"wrote {out}")
    return 0
