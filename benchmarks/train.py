"""Training throughput, kinema's DiT vs diffusers' WanTransformer3DModel, same weights and batch, in one run.

    python benchmarks/train.py [--repeats 5] [--batches 1 4] [--threads N] [--precision fp32|bf16] [--json F]

One training step = flow-matching interpolation, forward, MSE to the velocity target, backward, AdamW
step. Shapes: dim 384 / 8 layers / 6 heads / ffn 1536 (``--dit bundled``: the bundled model's), 17x128x128 clips
(latent 5x16x16 -> 320 tokens), text 64 x 384. Prints tokens/s and MFU (against this machine's measured
matmul peak, kinema.train.throughput) for both and the ratio kinema / diffusers (> 1: kinema is faster).
fp32 on CPU and bf16 autocast on CUDA unless ``--precision`` says (bf16 on a CPU: autocast there, as
``[parallel] precision = "bf16"`` trains; its matmul peak then the bf16 one). Steps of the two are timed
alternately, so a machine whose load changes during the run slows both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def build_pair(device: torch.device, shape: str = "issue"):
    """(kinema DiT, diffusers WanTransformer3DModel, cfg) holding identical weights."""
    from diffusers import WanTransformer3DModel

    from engine import dit_shape

    from kinema.dit.model import DiT

    cfg = dit_shape(shape)
    torch.manual_seed(0)
    ours = DiT(cfg)
    with torch.no_grad():  # non-zero everywhere, so no branch is trivially cheap
        for p in ours.parameters():
            p.normal_(0, 0.02)
    ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_attention_heads,
                                attention_head_dim=cfg.attention_head_dim, in_channels=cfg.in_channels,
                                out_channels=cfg.out_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm,
                                qk_norm=cfg.qk_norm, eps=cfg.eps, rope_max_seq_len=cfg.rope_max_seq_len)
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ours.to(device).train(), ref.to(device).train(), cfg


def make_step(model, call, device: torch.device, bf16: bool):
    """A closure running one training step of ``model`` on a batch; ``call(model, x_t, t, text)`` -> velocity."""
    from kinema.flow import interpolate, velocity_target

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step(latents, noise, t, text):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            pred = call(model, interpolate(latents, noise, t), t * 1000.0, text)
        loss = (pred.float() - velocity_target(latents, noise).float()).square().mean()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return loss.detach()

    return step


def kinema_call(model, x, t, text):
    return model(x, t, text)


def diffusers_call(model, x, t, text):
    return model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]


def interleaved_medians(fns: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed in alternating rounds so load changes hit both alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--dit", choices=("issue", "bundled"), default="issue",
                        help="DiT shape: the engine issue's dim 384 / 8 layers (default) or the bundled model's")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="fp32, or bf16 autocast (default: bf16 on CUDA, fp32 on a CPU)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from kinema.train.throughput import dit_tokens, dit_train_flops, measure_matmul_peak

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = (args.precision or ("bf16" if device.type == "cuda" else "fp32")) == "bf16"
    peak = measure_matmul_peak(device, torch.bfloat16 if bf16 else torch.float32, seconds=1.0)
    ours, ref, cfg = build_pair(device, args.dit)
    params = sum(p.numel() for p in ours.parameters())
    grid, text_len = (5, 16, 16), 64  # 17x128x128 pixels -> latent 5x16x16
    tokens = dit_tokens(cfg, grid)
    steps = {"kinema": make_step(ours, kinema_call, device, bf16), "diffusers": make_step(ref, diffusers_call, device, bf16)}
    print(f"device {device}, {'bf16 autocast' if bf16 else 'fp32'}, {params / 1e6:.1f}M params, {tokens} tokens/clip, "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s, torch {torch.__version__}")
    print(f"{'batch':>5} {'impl':>10} {'step ms':>9} {'tokens/s':>10} {'MFU':>7}")
    results = []
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        latents = torch.randn(batch, cfg.in_channels, *grid, generator=g).to(device)
        noise = torch.randn(latents.shape, generator=g).to(device)
        t = torch.rand(batch, generator=g).to(device)
        text = torch.randn(batch, text_len, cfg.text_dim, generator=g).to(device)
        flops = batch * dit_train_flops(cfg, params, tokens, text_len)
        row = {"batch": batch}
        medians = interleaved_medians({name: (lambda step=step: step(latents, noise, t, text)) for name, step in steps.items()},
                                      args.repeats)
        for name, secs in medians.items():
            row[name] = {"step_s": secs, "tokens_per_s": batch * tokens / secs, "mfu": flops / secs / peak}
            print(f"{batch:>5} {name:>10} {secs * 1e3:>9.1f} {batch * tokens / secs:>10.0f} {flops / secs / peak:>7.2%}")
        if any(row[name]["mfu"] > 1 for name in medians):
            print("      note: MFU above 100%: the matmul peak was measured while the machine was busier; rerun")
        row["ratio"] = row["diffusers"]["step_s"] / row["kinema"]["step_s"]
        print(f"{batch:>5} {'ratio':>10} {row['ratio']:>9.2f}x  (kinema tokens/s / diffusers tokens/s)")
        results.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "precision": "bf16" if bf16 else "fp32", "peak_flops": peak, "params": params, "tokens": tokens, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
