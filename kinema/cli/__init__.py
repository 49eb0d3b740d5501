"""The ``kinema`` command: the only place that parses arguments.

    kinema generate "a red ball bounces on the floor" -o ball.mp4
    kinema generate "the ball rolls on" --extend ball.mp4 --seconds 2 -o longer.mp4   (also --image, --loop,
        --connect A B, --edit VIDEO --strength S, --keyframe T:PATH, --long SECONDS; -o still.png for an image)
    kinema train configs/world-small-dit.toml [--resume] [--key value ...]
    kinema convert WAN_CHECKPOINT OUT_FOLDER
    kinema eval world --model PATH
    kinema serve [--model PATH] [--workers N]   (or `serve api`, `serve worker`, `serve keys create|list|revoke`)
    kinema data ingest DATASET VIDEOS/ && kinema data split DATASET && ... (see kinema.data.pipeline)

One module per command family (generate.py + tasks.py, train.py, convert.py, serve.py, data.py), each with an
``add_parser(sub)``; every import of torch and the models waits until a command runs, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import gc
import sys


class CLIError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def at_least_one(unit: str = "", example: str = ""):
    """An argparse ``type``: a whole number >= 1, else "must be a whole number[ of UNIT] >= 1[ (e.g. EXAMPLE)]"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number{f' of {unit}' if unit else ''} >= 1"
                                             f"{f' (e.g. {example})' if example else ''}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``kinema`` parser with every command (in the order ``--help`` lists them)."""
    from . import convert, data, generate, serve, train
    p = argparse.ArgumentParser(prog="kinema", description="Text, image or video in; video out.")
    p.add_argument("--version", action="version", version=f"kinema {__import__('kinema').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for family in (generate, convert, train, serve, data):
        family.add_parser(sub)
    return p


def _train_error():
    from ..train.config import TrainError
    return TrainError


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (default: sys.argv); its exit status."""
    import warnings
    warnings.formatwarning = lambda message, *args, **kwargs: f"kinema: warning: {message}\n"
    parser = build_parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(_join_dashed_values(given))
    args.argv = given  # for `generate --gpus N`, relaunched under torchrun
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "generate" and getattr(args, "threads", None) != 1:  # before PyTorch (and OpenMP) loads
        from ..common.threads import wait_passively_if_busy
        others = wait_passively_if_busy()
        if others is not None and not args.quiet:
            print(f"note: other processes keep about {others:.1f} of this machine's CPU cores busy: PyTorch's "
                  "threads will wait for each other passively instead of spinning (OMP_WAIT_POLICY=PASSIVE)",
                  file=sys.stderr)
    from ..config import ConfigError
    from ..infer import InputError
    from ..weights import WeightsError
    restore = _exit_cleanly_on_sigterm(args.command)
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra)
        return args.func(args)
    except (CLIError, InputError, ConfigError, WeightsError, FileNotFoundError, _train_error()) as e:
        print(f"kinema {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (a full disk, a folder that turned read-only, ...)
        print(f"kinema {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:  # an allocation the checks before the work did not foresee
        if not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
                or "can't allocate memory" in str(e)):
            raise
        print(f"kinema {args.command}: error: out of memory ({str(e).strip() or type(e).__name__}); ask for less: "
              f"a smaller size, fewer frames or seconds, or --dtype bf16", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kinema {args.command}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"kinema {args.command}: terminated", file=sys.stderr)
        return 143
    finally:
        restore()
        if argv is None and args.command == "generate":  # the command itself, about to exit
            # Python's shutdown collects garbage over every live object, PyTorch's many thousands included:
            # frozen, they are skipped. `kinema generate` as a command 3.46 -> 3.03 s (median of 12, 2 cores).
            # Only for the one-clip command: long runs (train, serve) have worker processes and files whose
            # finalisers should run as they always have.
            gc.freeze()


def _join_dashed_values(argv: list[str]) -> list[str]:
    """``--keyframe -1:end.png`` as ``--keyframe=-1:end.png``: argparse takes a value that starts with '-' (and
    is not a plain number) for a flag, and would say the flag lacks its argument instead of why -1 is refused."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--keyframe" and i + 1 < len(argv) and argv[i + 1].startswith("-") and ":" in argv[i + 1]:
            out.append(f"--keyframe={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


class _Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``) raised in the main thread, so that every ``finally``
    and ``atomic_path`` clean-up runs as for Ctrl-C: no half-written temporary file is left behind."""


def _exit_cleanly_on_sigterm(command: str):
    """Turn SIGTERM into ``_Terminated`` while a one-process command that writes the user's files runs
    (``serve`` shuts down its own way; ``train`` and ``data`` fork workers that should keep the default), from
    the main thread, where Python delivers signals; returns what puts the old handler back."""
    import signal
    import threading

    if command not in ("generate", "convert", "eval") or threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminated(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    return lambda: signal.signal(signal.SIGTERM, previous)
