"""``kinema serve``: the OpenAI-compatible video API, its workers and web page (issue 6)."""

from __future__ import annotations

import argparse
import sys

from . import CLIError


API, WORKER, KEYS = "api", "worker", "keys"
EVERY = (API, WORKER, KEYS)


def _serve_options(p: argparse.ArgumentParser, top: bool, role: str | None = None) -> None:
    """The deployment flags, on ``serve`` (all of them) and again on a role (only those it reads, with no defaults,
    so either place works; a flag the role ignores, e.g. ``serve api --device``, is refused by argparse)."""
    d = {} if top else {"default": argparse.SUPPRESS}
    csv = lambda text: tuple(v.strip() for v in text.split(",") if v.strip())  # noqa: E731

    def add(roles: tuple[str, ...], *flags: str, **kw) -> None:
        if top or role in roles:
            p.add_argument(*flags, **kw, **d)

    add(EVERY, "--data", dest="data_dir", help="data folder: results, uploads, SQLite store (default ~/.kinema/serve)")
    add(EVERY, "--db", help="job store URL: sqlite:///PATH or postgresql://USER@HOST/DB (shared by several hosts)")
    add((API,), "--host", help="address to bind (default 127.0.0.1: this machine only)")
    add((API,), "--port", type=int, help="default 8000")
    add((API, WORKER), "--model", dest="models", action="append",
        help="model folder to serve (repeatable; default: bundled)")
    add((API, WORKER), "--sizes", type=csv, help="accepted sizes, e.g. 128x128,176x96 (default: from each model)")
    add((API, WORKER), "--seconds", type=csv, help="accepted durations, e.g. 2,4 (default: from each model)")
    add((), "--workers", type=int, help="worker processes started by `kinema serve` (default 1)")
    add((WORKER,), "--device", help="worker device, e.g. cuda (default cpu)")
    add((WORKER,), "--dtype", choices=("auto", "fp32", "bf16", "fp16"),
        help="workers' precision (default auto: bf16 where the device has it natively, else fp32)")
    add((WORKER,), "--offload", choices=("none", "model", "block"),
        help="workers' memory mode, as `kinema generate --offload` (default none)")
    add((WORKER,), "--quantize", choices=("none", "int8"),
        help="int8: workers store DiT block weights in 8 bits, as `kinema generate --quantize`")
    add((WORKER,), "--threads", type=int, help="CPU threads per worker (default: PyTorch's choice)")
    add((WORKER,), "--compile", action="store_const", const=True,
        help="workers run the DiT (and, off the CPU, the VAE decode) through torch.compile (each new size "
             "compiles on its first job; measured on a CPU: no gain in bf16, x1.07 a clip in fp32)")
    add((API,), "--no-auth", dest="auth", action="store_const", const=False,
        help="no API keys (development; refused unless --host is loopback)")
    add((API, WORKER), "--lease-seconds", dest="lease_s", type=float,
        help="retry a job after its worker is silent this long (60)")
    add((API, WORKER), "--max-attempts", type=int, help="tries per job before it fails (3)")
    add((API, WORKER), "--ttl-hours", dest="ttl_s", type=lambda h: float(h) * 3600, metavar="HOURS",
        help="keep results this long (168)")
    add((API, WORKER), "--poll-ms", type=int, help="poll interval hinted to clients and used by idle workers (1000)")
    add((API, KEYS), "--rate", dest="rate_per_min", type=int, help="default videos per minute per key (30)")
    add((API, KEYS), "--queue", dest="max_queue", type=int, help="default unfinished videos per key (16)")


def add_parser(sub) -> None:
    """The ``serve`` command, its roles (api, worker, keys) and their flags."""
    s = sub.add_parser("serve", help="run the OpenAI-compatible /v1/videos API, its workers and web page",
                       description="kinema serve: API + workers; `serve api` / `serve worker` run one side; "
                                   "`serve keys create|list|revoke` manage API keys.")
    _serve_options(s, top=True)
    roles = s.add_subparsers(dest="serve_role", metavar="[ROLE]",
                             help="optional: without one, the API and its workers in one command")
    _serve_options(roles.add_parser("api", help="the HTTP API only"), top=False, role=API)
    w = roles.add_parser("worker", help="one worker only (any host that reaches the store and data folder)")
    _serve_options(w, top=False, role=WORKER)
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
        _serve_options(k, top=False, role=KEYS)
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import dataclasses

    from ..serve import ServeConfig
    from ..serve import run
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)
             if getattr(args, f.name, None) is not None}
    cfg = ServeConfig(**{k: tuple(v) if k == "models" else v for k, v in given.items()})
    role, action = args.serve_role, getattr(args, "keys_action", None)
    if role == "worker" or (role is None and cfg.workers > 0):
        from .generate import check_device
        check_device(cfg.device)  # before any worker starts: each would fail on it, and be restarted
        note = cfg.memory_plan().note_on(cfg.device)
        if note:
            print(f"note: {note}", file=sys.stderr)
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
        from ..infer.offload import MemoryFitError
        from ..serve.worker import ModelUnavailable
        try:
            return run.serve_worker(cfg, slot=args.slot)
        except MemoryFitError as e:  # checked before any weights are read (``kinema serve`` logs it per worker)
            raise CLIError(str(e)) from e
        except ModelUnavailable as e:  # its first model cannot be loaded: starting it again would not help
            raise CLIError(f"{e}; the worker does not start") from e
    else:
        return run.serve_all(cfg)
    return 0

