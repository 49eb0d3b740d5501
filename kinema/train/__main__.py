"""``python -m kinema.train CONFIG [--key value ...] [--resume]``: the entry torchrun can launch directly.

    torchrun --nproc_per_node 8 -m kinema.train configs/world-small-dit.yaml --out_dir runs/ws
"""

from __future__ import annotations

import sys

from kinema.config import ConfigError
from kinema.train.config import TrainError
from kinema.train.loop import train


def main(argv: list[str] | None = None) -> int:
    """Parse ``CONFIG [overrides] [--resume]``, train, and turn known errors into one clear line (exit 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    resume = "--resume" in args
    args = [a for a in args if a != "--resume"]
    try:
        train(args[0], args[1:], resume=resume)
    except (ConfigError, TrainError) as err:
        print(f"kinema train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
