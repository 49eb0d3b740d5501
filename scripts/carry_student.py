"""Carry a distilled student over to a fine-tuned teacher by adding the teacher's fine-tune to it.

    python scripts/carry_student.py --student kinema/assets/world-small --old kinema/assets/world-small \\
        --new runs/world-small-dit-span-physics/model --out runs/student-carried

A student is its teacher's weights plus what distillation changed; a short fine-tune of the teacher is the
teacher plus another small change. When both changes are small, the second carries over: the new student is
``student + (new DiT - old DiT)`` (LCM-LoRA's "acceleration vector" added to a fine-tuned model, as weights).
Distilling again from the new teacher is better and costs a GPU (`configs/world-small-distill.toml`); this
costs a second, and `kinema eval world|tasks --steps 4` says whether it held. ``--old`` is the DiT the
fine-tune started from (its transformer.safetensors), not necessarily the one the student was distilled
from: the sum keeps whatever distillation changed either way.

Writes ``OUT/student.safetensors`` (fp32) and ``OUT/student.json`` (the student's own, with ``teacher`` set to
``--new`` and ``carried_from`` naming the sum), for `python scripts/bundle_model.py NEW --student OUT`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def carry(student: Path, old: Path, new: Path) -> tuple[dict, dict, float]:
    """(tensors of ``student`` + ``new`` - ``old``, in fp32; the student's config, updated; the L2 norm of the
    change)."""
    files = {"--student": student / "student.safetensors", "--student config": student / "student.json",
             "--old": old / "transformer.safetensors", "--new": new / "transformer.safetensors"}
    missing = [f"{flag} {path}" for flag, path in files.items() if not path.is_file()]
    if missing:
        raise SystemExit(f"carry_student: missing {', '.join(missing)}")
    s, a, b = (load_file(str(files[k])) for k in ("--student", "--old", "--new"))
    if not (set(s) == set(a) == set(b)) or any(not (s[k].shape == a[k].shape == b[k].shape) for k in s):
        odd = sorted(k for k in set(s) | set(a) | set(b) if not (k in s and k in a and k in b)
                     or not (s[k].shape == a[k].shape == b[k].shape))
        raise SystemExit(f"carry_student: the student and both DiTs must have the same tensors; {len(odd)} differ "
                         f"in name or shape, e.g. {odd[:3]}")
    out = {k: (s[k].float() + b[k].float() - a[k].float()).contiguous() if s[k].is_floating_point() else s[k]
           for k in s}
    config = json.loads(files["--student config"].read_text())
    config["carried_from"] = (f"student {student} (distilled from {config.get('teacher') or 'an unnamed teacher'})"
                              f" + teacher {new} - teacher {old}")
    config["teacher"] = str(new)
    moved = sum(float((b[k].float() - a[k].float()).norm() ** 2) for k in s if s[k].is_floating_point()) ** 0.5
    return out, config, moved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, required=True, help="folder with student.safetensors + student.json")
    ap.add_argument("--old", type=Path, required=True, help="model folder of the DiT the fine-tune started from")
    ap.add_argument("--new", type=Path, required=True, help="model folder of the fine-tuned DiT")
    ap.add_argument("--out", type=Path, required=True, help="folder to write the carried student to")
    args = ap.parse_args(argv)
    tensors, config, moved = carry(args.student, args.old, args.new)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out / "student.safetensors"), metadata={"format": "kinema"})
    (args.out / "student.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"carried {args.student} onto {args.new}: {len(tensors)} tensors, moved by {moved:.3g} (L2) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
