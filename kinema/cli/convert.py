"""``kinema convert``: an original Wan 2.1 checkpoint to a diffusers-layout folder."""

from __future__ import annotations

from . import at_least_one


def add_parser(sub) -> None:
    """The ``convert`` command."""
    c = sub.add_parser("convert", help="convert an original Wan 2.1 checkpoint to a diffusers-layout folder")
    c.add_argument("src", help="checkpoint file or folder (.safetensors, or .pth loaded weights-only)")
    c.add_argument("dst", help="output folder")
    c.add_argument("--kind", choices=("auto", "dit", "vae"), default="auto")
    c.add_argument("--attention-head-dim", type=at_least_one(example="128, Wan's"), default=None, metavar="N",
                   help="a DiT's attention head width (its tensors do not tell the head count). Default: from the "
                        "config.json beside the checkpoint (dim / num_heads, or attention_head_dim), else Wan's 128; "
                        "a value that contradicts that config.json is refused")
    c.add_argument("--overwrite", action="store_true",
                   help="replace dst when it exists and holds a previous conversion (config.json + "
                        "diffusion_pytorch_model.safetensors): the new folder is written beside it and swapped in "
                        "once complete, so dst is never left half-written")
    c.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from ..weights.convert import convert_checkpoint
    out = convert_checkpoint(args.src, args.dst, kind=args.kind, attention_head_dim=args.attention_head_dim,
                             overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
