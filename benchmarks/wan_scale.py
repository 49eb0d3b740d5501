"""kinema vs diffusers at Wan2.1-T2V-1.3B size on a GPU: same random weights, same inputs, one run.

    python benchmarks/wan_scale.py [--frames 81 --height 480 --width 832] [--repeats 3] [--json out.json]

The speed issue's GPU case: the DiT forward (30 layers, dim 1536, 12 heads, ffn 8960, 512 text tokens of
4096) on the latent of an 81x480x832 clip (21x60x104 -> 32760 tokens) and the Wan VAE (base_dim 96) decoding
that latent back to 81 frames, both in bf16, kinema's modules against diffusers' WanTransformer3DModel and
AutoencoderKLWan holding the same weights. Prints each time, the ratio (> 1: kinema is faster), the DiT's
MFU against a measured bf16 matmul peak, the outputs' agreement and peak GPU memory; rows go to --json.
Needs a CUDA GPU and diffusers; weights are random (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import compare, dit_flops, matmul_peak, reference_dit, reference_vae  # noqa: E402


DEVICE = "cuda"


def _synced(fn):
    def run():
        out = fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def _peak_gib(fn) -> float | None:
    if DEVICE != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 difference of two outputs (bf16 kernels differ in summation order, so not bit-equal)."""
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def _row(rows, case, a, b, **extra):
    row = {"case": case, "kinema_ms": round(a * 1000, 1), "diffusers_ms": round(b * 1000, 1), "speedup": round(b / a, 2), **extra}
    rows.append(row)
    print(json.dumps(row), flush=True)


def bench_dit(rows, frames, height, width, repeats, dtype):
    from kinema.config import preset
    from kinema.dit import DiT

    cfg = preset("wan2.1-t2v-1.3b").dit
    torch.manual_seed(0)
    with torch.device(DEVICE):
        ours = DiT(cfg)
        with torch.no_grad():
            for p in ours.parameters():
                p.normal_(0, 0.02)
        ours = ours.to(dtype).eval()
        ref = reference_dit(ours)
    lf, lh, lw = (frames - 1) // 4 + 1, height // 8, width // 8
    x = torch.randn(1, 16, lf, lh, lw, device=DEVICE, dtype=dtype)
    t = torch.full((1,), 500.0, device=DEVICE)
    text = torch.randn(1, 512, cfg.text_dim, device=DEVICE, dtype=dtype)
    tokens = lf * (lh // 2) * (lw // 2)
    with torch.inference_mode():
        fa = _synced(lambda: ours(x, t, text))
        fb = _synced(lambda: ref(x, t, text, return_dict=False)[0])
        diff = _agreement(fa(), fb())
        a, b = compare(fa, fb, repeats)
        mem_a, mem_b = _peak_gib(fa), _peak_gib(fb)
    peak = matmul_peak(dtype, n=8192 if DEVICE == "cuda" else 512, device=DEVICE)
    mfu = dit_flops(cfg, tokens, 512) / a / 1e9 / peak
    _row(rows, f"DiT forward 1.3B {lf}x{lh}x{lw} latent ({tokens} tokens) bf16", a, b, kinema_mfu=round(mfu, 3),
         rel_diff=round(diff, 4), kinema_peak_gib=mem_a, diffusers_peak_gib=mem_b)
    del ours, ref
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def bench_vae(rows, frames, height, width, repeats, dtype):
    from kinema.config import preset
    from kinema.vae import VAE

    torch.manual_seed(0)
    with torch.device(DEVICE):
        ours = VAE(preset("wan2.1-t2v-1.3b").vae).to(dtype).eval()
        ref = reference_vae(ours)
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=DEVICE, dtype=dtype)
    with torch.inference_mode():
        fa = _synced(lambda: ours.decode(z, normalized=False))
        fb = _synced(lambda: ref.decode(z, return_dict=False)[0])
        diff = _agreement(fa(), fb().clamp(-1, 1))
        a, b = compare(fa, fb, repeats)
        mem_a, mem_b = _peak_gib(fa), _peak_gib(fb)
    _row(rows, f"VAE decode {frames}x{height}x{width} bf16", a, b, rel_diff=round(diff, 4),
         kinema_peak_gib=mem_a, diffusers_peak_gib=mem_b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, help="default 81 (cpu: 5)")
    ap.add_argument("--height", type=int, help="default 480 (cpu: 64)")
    ap.add_argument("--width", type=int, help="default 832 (cpu: 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("dit", "vae"))
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test at a small size)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    small = DEVICE == "cpu"  # a smoke test: the 1.3B DiT at Wan's own size would take hours on a CPU
    args.frames = args.frames or (5 if small else 81)
    args.height = args.height or (64 if small else 480)
    args.width = args.width or (64 if small else 832)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("wan_scale.py needs a CUDA GPU (benchmarks/engine.py is the CPU suite)")
    if (args.frames - 1) % 4 or args.height % 16 or args.width % 16:
        raise SystemExit(f"frames must be 4k+1 and height/width multiples of 16, got {args.frames}x{args.height}x{args.width}")
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}", flush=True)
    rows: list = []
    try:
        if args.only in (None, "dit"):
            bench_dit(rows, args.frames, args.height, args.width, args.repeats, torch.bfloat16)
        if args.only in (None, "vae"):
            bench_vae(rows, args.frames, args.height, args.width, args.repeats, torch.bfloat16)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
