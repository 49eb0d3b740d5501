"""kinema vs diffusers, same weights and shapes, in one run: DiT forward / training step and VAE encode / decode.

    python benchmarks/engine.py [--repeats 5] [--json results.json]

Prints one row per case with both times and the ratio diffusers / kinema (> 1 means kinema is faster).
Shapes: DiT dim 384 / 8 layers / 6 heads / ffn 1536 (the engine issue's; ``--dit bundled``: the bundled
world-small DiT, dim 256 / 6 layers / 4 heads) on 17x128x128 clips (latent 5x16x16 -> 320 tokens), VAE
base_dim 32 on 17x128x128.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def timeit(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b``, run alternately so both see the same machine load."""
    fn_a(), fn_b()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fn_a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fn_b()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def matmul_peak(dtype: torch.dtype, n: int = 1024, device: str = "cpu") -> float:
    """Measured matmul GFLOP/s of this machine for ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    secs = timeit(lambda: (a @ b, sync()), repeats=5)
    return 2 * n**3 / secs / 1e9


def reference_dit(ours):
    """diffusers' ``WanTransformer3DModel`` holding the weights of the kinema DiT ``ours``, in its dtype and device."""
    from diffusers import WanTransformer3DModel

    from kinema.weights.folder import dit_config_to_diffusers

    ref = WanTransformer3DModel.from_config(dit_config_to_diffusers(ours.cfg))
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref = _cast(ref, ours.patch_embedding.weight)
    for name, p in ref.named_parameters():  # what from_pretrained(torch_dtype=bf16) leaves in fp32
        if any(part in (ref._keep_in_fp32_modules or ()) for part in name.split(".")):
            p.data = p.data.float()
    return ref


def reference_vae(ours):
    """diffusers' ``AutoencoderKLWan`` holding the weights of the kinema VAE ``ours``, in its dtype and device."""
    from diffusers import AutoencoderKLWan

    from kinema.weights.folder import vae_config_to_diffusers

    param = next(ours.parameters())
    ref = AutoencoderKLWan.from_config(vae_config_to_diffusers(ours.cfg))
    ref.load_state_dict(ours.state_dict(), strict=True)
    return _cast(ref, param)


def _cast(ref, like: torch.Tensor):
    # diffusers warns on any .to(dtype=...) of its models, even to float32; cast only when the dtype changes
    ref = ref if like.dtype == torch.float32 else ref.to(dtype=like.dtype)
    return ref.to(like.device).eval()


def dit_shape(name: str):
    """The DiTConfig a benchmark runs: "issue" (dim 384 / 8 layers / 6 heads / ffn 1536) or "bundled" (world-small)."""
    from kinema.config import DiTConfig, preset

    if name == "bundled":
        return preset("world-small").dit
    return DiTConfig(num_attention_heads=6, attention_head_dim=64, in_channels=16, out_channels=16, text_dim=384,
                     freq_dim=256, ffn_dim=1536, num_layers=8)


def dit_pair(dtype: torch.dtype, shape: str = "issue"):
    from kinema.dit import DiT

    cfg = dit_shape(shape)
    torch.manual_seed(0)
    ours = DiT(cfg)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    ours = ours.to_precision(dtype)
    return ours, reference_dit(ours), cfg


def dit_flops(cfg, tokens: int, text_len: int) -> float:
    """Forward FLOPs of the DiT blocks (matmuls + attention) for one sample."""
    d, f = cfg.dim, cfg.ffn_dim
    per_block = 2 * tokens * (4 * d * d + 2 * d * f) + 2 * tokens * d * d + 2 * 2 * text_len * d * d
    per_block += 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * text_len * d
    return cfg.num_layers * per_block


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 / AMX); elsewhere bf16 is emulated and slow."""
    from kinema.common.precision import native_cpu_dtypes

    return torch.cuda.is_available() or torch.bfloat16 in native_cpu_dtypes()


def bench_dit(repeats: int, rows: list, shape: str = "issue"):
    dtypes = (torch.float32, torch.bfloat16) if native_bf16() else (torch.float32,)
    if not native_bf16():
        print("bf16: skipped, this CPU has no native bf16 (no AVX-512 BF16 or AMX)")
    for dtype in dtypes:
        ours, ref, cfg = dit_pair(dtype, shape)
        peak = matmul_peak(dtype)
        for batch in (1, 4):
            x = torch.randn(batch, 16, 5, 16, 16, dtype=dtype)
            t = torch.full((batch,), 500.0)
            text = torch.randn(batch, 64, 384, dtype=dtype)
            flops = dit_flops(cfg, 320, 64) * batch
            with torch.inference_mode():
                a, b = compare(lambda: ours(x, t, text), lambda: ref(x, t, text, return_dict=False), repeats)
            rows.append(_row(f"DiT forward b{batch} {_name(dtype)}", a, b, mfu=flops / a / 1e9 / peak))

            target = torch.randn_like(x)
            opt_a = torch.optim.AdamW(ours.parameters(), lr=1e-5)
            opt_b = torch.optim.AdamW(ref.parameters(), lr=1e-5)

            def step(model, opt, call):
                opt.zero_grad(set_to_none=True)
                loss = (call(model).float() - target.float()).square().mean()
                loss.backward()
                opt.step()

            a, b = compare(lambda: step(ours, opt_a, lambda m: m(x, t, text)),
                           lambda: step(ref, opt_b, lambda m: m(x, t, text, return_dict=False)[0]), repeats)
            rows.append(_row(f"DiT train step b{batch} {_name(dtype)}", a, b, mfu=3 * flops / a / 1e9 / peak))


def bench_vae(repeats: int, rows: list):
    from diffusers import AutoencoderKLWan

    from kinema.config import VAEConfig
    from kinema.vae import VAE

    for dtype in (torch.float32, torch.bfloat16) if native_bf16() else (torch.float32,):
        torch.manual_seed(0)
        ref = AutoencoderKLWan(base_dim=32, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1).eval()
        ours = VAE(VAEConfig(base_dim=32, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1)).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        ours, ref = ours.to(dtype), _cast(ref, next(ours.parameters()))
        video = (torch.rand(1, 3, 17, 128, 128) * 2 - 1).to(dtype)
        z = torch.randn(1, 16, 5, 16, 16).to(dtype)
        with torch.inference_mode():
            a, b = compare(lambda: ours.encode_moments(video), lambda: ref.encode(video), repeats)
            rows.append(_row(f"VAE encode 17x128x128 {_name(dtype)}", a, b))
            a, b = compare(lambda: ours.decode(z, normalized=False), lambda: ref.decode(z), repeats)
            rows.append(_row(f"VAE decode 17x128x128 {_name(dtype)}", a, b))


def _name(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def _row(case, kinema_s, diffusers_s, mfu=None):
    row = {"case": case, "kinema_ms": round(kinema_s * 1000, 2), "diffusers_ms": round(diffusers_s * 1000, 2),
           "speedup": round(diffusers_s / kinema_s, 2)}
    if mfu is not None:
        row["kinema_mfu"] = round(mfu, 3)
    print(f"{case:32s} kinema {row['kinema_ms']:9.1f} ms   diffusers {row['diffusers_ms']:9.1f} ms   "
          f"x{row['speedup']:.2f}" + (f"   MFU {mfu:.1%}" if mfu is not None else ""), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", choices=("dit", "vae"))
    ap.add_argument("--dit", choices=("issue", "bundled"), default="issue",
                    help="DiT shape: the engine issue's dim 384 / 8 layers (default) or the bundled model's")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    bf16 = f", bf16 {matmul_peak(torch.bfloat16):.0f} GFLOP/s" if native_bf16() else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
          f"{' + bf16' if native_bf16() else ''}; "
          f"matmul peak fp32 {matmul_peak(torch.float32):.0f} GFLOP/s{bf16}")
    rows: list = []
    if args.only in (None, "vae"):
        bench_vae(args.repeats, rows)
    if args.only in (None, "dit"):
        bench_dit(args.repeats, rows, args.dit)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
