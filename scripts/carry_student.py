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

from kinema.common.io import atomic_path, atomic_write_text
from kinema.weights.student import STUDENT_CONFIG, STUDENT_FILE


def carry(student: Path, old: Path, new: Path) -> tuple[dict, dict, float]:
    """(tensors of ``student`` + ``new`` - ``old``, in fp32; the student's config, updated; the L2 norm of the
    change)."""
    files = {"--student": student / STUDENT_FILE, "--student config": student / STUDENT_CONFIG,
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
    change = {k: b[k].float() - a[k].float() for k in s if s[k].is_floating_point()}
    out = {k: (s[k].float() + change[k]).contiguous() if k in change else s[k] for k in s}
    config = json.loads(files["--student config"].read_text())
    config["carried_from"] = (f"student {student} (distilled from {config.get('teacher') or 'an unnamed teacher'})"
                              f" + teacher {new} - teacher {old}")
    config["teacher"] = str(new)
    return out, config, sum(float(d.norm() ** 2) for d in change.values()) ** 0.5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, required=True, help="folder with student.safetensors + student.json")
    ap.add_argument("--old", type=Path, required=True, help="model folder of the DiT the fine-tune started from")
    ap.add_argument("--new", type=Path, required=True, help="model folder of the fine-tuned DiT")
    ap.add_argument("--out", type=Path, required=True, help="folder to write the carried student to")
    args = ap.parse_args(argv)
    tensors, config, moved = carry(args.student, args.old, args.new)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / STUDENT_FILE) as tmp:  # as save_student writes them: never half-written
        save_file(tensors, str(tmp), metadata={"format": "kinema-student", "steps": str(config["steps"])})
    atomic_write_text(args.out / STUDENT_CONFIG, json.dumps(config, indent=2))
    print(f"carried {args.student} onto {args.new}: {len(tensors)} tensors, moved by {moved:.3g} (L2) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
