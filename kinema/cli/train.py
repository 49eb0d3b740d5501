"""``kinema train`` (python or torchrun) and ``kinema eval``."""

from __future__ import annotations

from . import CLIError


def add_parser(sub) -> None:
    """The ``train`` and ``eval`` commands."""
    t = sub.add_parser("train", help="train or fine-tune (python or torchrun)",
                       epilog="Any config field can be overridden after the config file as --section.key value "
                              "(or --key value at the top level), e.g. --optim.lr 1e-4 --max_steps 2000 "
                              "--init_from MODEL --vae_from MODEL --stop_after_minutes 30; values are read as JSON "
                              "(numbers, true/false, null, lists), except that text fields (out_dir, data.path, ...) "
                              "take them as given; an unknown key is refused with the accepted ones. See "
                              "configs/*.toml for the fields.")
    t.add_argument("config", help="training config file (configs/*.toml)")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.set_defaults(func=cmd_train, takes_extra=True)

    e = sub.add_parser("eval", help="measure quality")
    e.add_argument("suite", choices=("world", "tasks"),
                   help="world: prompt following and physics on the procedural world; tasks: image-to-video, "
                        "extension and loops on world clips")
    e.add_argument("--model", help="model folder; default: the bundled model")
    e.add_argument("--n", type=int, default=100, help="prompts per row (world) or cases (tasks)")
    e.add_argument("--steps", type=int, help="sampling steps; default: the model's")
    e.add_argument("--guidance", type=float, help="classifier-free guidance scale; default: the model's")
    e.add_argument("--guidance-interval", metavar="LO,HI",
                   help="noise levels whose steps are guided, as `kinema generate --guidance-interval`; default: the "
                        "model's")
    e.add_argument("--shift", type=float, help="timestep shift of the sampling schedule; default: the model's")
    e.add_argument("--motion-strength", type=float, metavar="S",
                   help="tasks: the extensions' start, as `kinema generate --extend --motion-strength` (default 0.4; "
                        "1: from pure noise)")
    e.add_argument("--only", metavar="PARTS",
                   help="tasks: measure only these, comma-separated: image (image-to-video), extend (forwards and "
                        "backwards), loop (default: all; each case is sampled with the same seed either way)")
    e.add_argument("--no-student", action="store_true",
                   help="sample with the teacher even when the model has a few-step student for --steps")
    e.add_argument("--cache-threshold", type=float, metavar="T",
                   help="the step cache, as `kinema generate --cache-threshold` (default 0: off); the report "
                        "says how many of the DiT's row evaluations it reused")
    e.add_argument("--dtype", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="sampling precision (default fp32, so scores do not depend on the CPU; bf16 falls back to "
                        "fp32 with a warning where the CPU would emulate it; auto: as `kinema generate`)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", help="write the report here as JSON")
    e.add_argument("--ground-truth", action="store_true", help="score rendered ground truth instead (validates the evaluator)")
    e.add_argument("--reconstruct", action="store_true",
                   help="score the model's VAE reconstructions of the ground truth (the ceiling for its DiT)")
    e.set_defaults(func=cmd_eval)


def cmd_train(args, extra: list[str]) -> int:
    from ..train import train
    train(args.config, overrides=extra, resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    from ..eval.cli import EvalArgumentError, run_eval
    try:
        return run_eval(args)
    except EvalArgumentError as e:
        raise CLIError(str(e)) from None
