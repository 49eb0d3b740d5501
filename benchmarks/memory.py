"""Peak memory and seconds per memory mode: kinema's offload modes (and int8) vs diffusers' WanPipeline.

    python benchmarks/memory.py                  # CPU: a scaled-down Wan-layout model, every mode
    python benchmarks/memory.py --scale wan1.3b  # GPU: Wan2.1-1.3B-sized random weights at 832x480x81
    python benchmarks/memory.py --json out.json

Both engines load the same diffusers-format folder of random weights (built here; nothing is downloaded)
and start from the same noise with the same scheduler settings (UniPC, flow shift 3, guidance 5). Each
case runs in a fresh process so that peaks do not leak between cases:

  GPU: ``torch.cuda.max_memory_allocated`` over the generation (after a 1-step warm-up), and seconds.
  CPU: the process's peak RSS during generation (VmHWM after clearing it once the model is loaded), and
       kinema's ledger of weight bytes resident on the compute device (``Offloader.peak_bytes``): on a CPU
       the "device" is host memory, so offloading cannot lower RSS there; the ledger shows what a GPU would hold.

The wan1.3b text encoder has umT5-XXL's widths and vocabulary but 2 of its 24 layers (random XXL weights
would take minutes to build): block mode streams layers one at a time, so its peak is the real one; the
``none``/``model`` peaks lack the other 22 layers (about 8.4 GB in bf16), which the table notes.
Targets on a GPU: kinema faster than diffusers at equal settings; 1.3B within 8 GB peak with --offload block.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

GB = 1024**3
SCALES = {
    # DiT 384 wide x 8 layers, the Wan VAE at a third of its width, a small umT5; 9 frames at 128x128.
    "cpu": dict(dit=dict(num_attention_heads=6, attention_head_dim=64, ffn_dim=1536, num_layers=8, text_dim=256),
                vae=dict(base_dim=32), text=dict(d_model=256, d_kv=64, d_ff=512, num_layers=2, num_heads=4,
                                                  vocab_size=1000),
                width=128, height=128, frames=9, steps=2, missing_text_layers=0),
    "wan1.3b": dict(dit=dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, text_dim=4096),
                    vae=dict(base_dim=96), text=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=2, num_heads=64,
                                                      vocab_size=256384),
                    width=832, height=480, frames=81, steps=4, missing_text_layers=22),
}
KINEMA_CASES = [("none", "none"), ("model", "none"), ("block", "none"), ("none", "int8"), ("block", "int8")]
DIFFUSERS_CASES = ["none", "model", "block"]
PROMPT, NEGATIVE = "a red fox runs through deep snow at dawn", "blurry low quality"


# -- the model folder ---------------------------------------------------------------------------------------

def build_folder(root: Path, scale: dict, dtype: torch.dtype) -> Path:
    """A ``WanPipeline.save_pretrained`` folder with random weights of the given scale."""
    import diffusers
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    words = [PROMPT, NEGATIVE]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>")
    torch.manual_seed(0)
    text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
        **scale["text"], relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1)).to(dtype)
    transformer = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, freq_dim=256,
                                                  **scale["dit"]).to(dtype)
    with torch.no_grad():  # diffusers zero-initialises nothing here, but make the output head live for sure
        transformer.proj_out.weight.normal_(0, 0.02)
    vae = diffusers.AutoencoderKLWan(**scale["vae"])
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                  num_train_timesteps=1000, flow_shift=3.0)
    diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                          transformer=transformer).save_pretrained(root)
    return root


# -- one case, in its own process ---------------------------------------------------------------------------

def _rss_peak_reset() -> None:
    try:  # Linux: "5" resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def run_case(spec: dict) -> dict:
    """Generate once as ``spec`` says; peak bytes, seconds and (kinema) the estimate and weight ledger."""
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    cuda = device.type == "cuda"
    w, h, f, steps = spec["width"], spec["height"], spec["frames"], spec["steps"]
    gen = torch.Generator("cpu").manual_seed(0)
    noise = torch.randn(1, 16, (f - 1) // 4 + 1, h // 8, w // 8, generator=gen)
    out = {k: spec[k] for k in ("engine", "mode", "quantize")}
    t0 = time.perf_counter()
    if spec["engine"] == "kinema":
        from kinema.infer import Pipeline
        from kinema.infer.memory import estimate_memory
        from kinema.infer.offload import MemoryPlan
        plan = MemoryPlan.for_mode(spec["mode"], spec["quantize"])
        pipe = Pipeline.from_pretrained(spec["folder"], device=str(device), dtype=dtype, memory=plan)
        s = pipe.settings(PROMPT, negative_prompt=NEGATIVE, width=w, height=h, frames=f, steps=steps, guidance=5.0,
                          shift=3.0, sampler="unipc", seed=0)
        out["estimate_gb"] = round(estimate_memory(pipe.cfg, w, h, f, dtype, plan).total / GB, 2)

        def generate(n):
            from dataclasses import replace
            return pipe.run(replace(s, steps=n))
    else:
        import diffusers
        pipe = diffusers.WanPipeline.from_pretrained(spec["folder"], torch_dtype=dtype)  # VAE too, as kinema
        pipe.set_progress_bar_config(disable=True)
        if spec["mode"] == "none":
            pipe.to(device)
        elif spec["mode"] == "model":
            pipe.enable_model_cpu_offload(device=device) if cuda else pipe.to(device)
        else:  # block-level group offloading (with streams on CUDA) and tiled VAE decode
            from diffusers.hooks import apply_group_offloading
            if cuda:
                for module in (pipe.transformer, pipe.text_encoder):
                    apply_group_offloading(module, onload_device=device, offload_type="block_level",
                                           num_blocks_per_group=1, use_stream=True)
                pipe.vae.to(device)
            pipe.vae.enable_tiling()

        def generate(n):
            return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, width=w, height=h, num_frames=f, num_inference_steps=n,
                        guidance_scale=5.0, latents=noise.to(device, dtype), output_type="np")
    out["load_s"] = round(time.perf_counter() - t0, 2)
    if cuda:
        generate(1)  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        out["baseline_gb"] = round(_rss("VmRSS") / GB, 3)
        _rss_peak_reset()
    t0 = time.perf_counter()
    generate(steps)
    if cuda:
        torch.cuda.synchronize()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["peak_gb"] = round((torch.cuda.max_memory_allocated(device) if cuda else _rss("VmHWM")) / GB, 3)
    if spec["engine"] == "kinema" and pipe.offloader is not None:
        out["device_weights_gb"] = round(pipe.offloader.peak_bytes / GB, 3)
    return out


def _child(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {k: spec[k] for k in ("engine", "mode", "quantize")} | {"error": tail[0][:160]}
    return json.loads(lines[-1])


# -- the table ----------------------------------------------------------------------------------------------

def measure(scale_name: str, device: str, dtype: str, steps: int | None) -> list[dict]:
    """Every case of one scale on one device, each in its own process."""
    scale = SCALES[scale_name]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kinema-memory-") as tmp:
        t0 = time.perf_counter()
        folder = build_folder(Path(tmp) / "wan", scale, getattr(torch, dtype))
        print(f"built random {scale_name} weights in {time.perf_counter() - t0:.0f}s", flush=True)
        base = dict(folder=str(folder), device=device, dtype=dtype, width=scale["width"], height=scale["height"],
                    frames=scale["frames"], steps=steps or scale["steps"])
        cases = [dict(base, engine="kinema", mode=m, quantize=q) for m, q in KINEMA_CASES]
        # diffusers' offload hooks need an accelerator: on the CPU only its plain pipeline is comparable
        cases += [dict(base, engine="diffusers", mode=m, quantize="none")
                  for m in (DIFFUSERS_CASES if device == "cuda" else ["none"])]
        for spec in cases:
            row = _child(spec)
            row.update(scale=scale_name, device=device, dtype=dtype)
            rows.append(row)
            _print_row(row, scale["missing_text_layers"])
    return rows


def _print_row(row: dict, missing_layers: int) -> None:
    name = f"{row['engine']:9s} --offload {row['mode']:5s}" + (" --quantize int8" if row["quantize"] != "none" else "")
    if "error" in row:
        print(f"{name:42s} failed: {row['error']}", flush=True)
        return
    extra = ""
    if "device_weights_gb" in row:
        extra += f"  device weights {row['device_weights_gb']:6.2f} GB"
    if "estimate_gb" in row:
        extra += f"  estimate {row['estimate_gb']:6.2f} GB"
    if "baseline_gb" in row:
        extra += f"  (process before loading {row['baseline_gb']:.2f} GB)"
    if missing_layers and row["mode"] != "block":
        extra += f"  + {missing_layers} umT5 layers not built"
    print(f"{name:42s} peak {row['peak_gb']:7.2f} GB  {row['seconds']:8.2f} s  (load {row['load_s']:.1f} s){extra}",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=sorted(SCALES), help="default: cpu, plus wan1.3b when a GPU is present")
    ap.add_argument("--steps", type=int, help="sampling steps per case (default: the scale's)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    gpu = torch.cuda.is_available()
    rows = []
    if args.scale in (None, "cpu"):
        print(f"CPU ({os.cpu_count()} cores), scaled-down Wan layout, fp32:")
        rows += measure("cpu", "cpu", "float32", args.steps)
    if args.scale in (None, "wan1.3b"):
        if gpu:
            print(f"\n{torch.cuda.get_device_name()}: Wan2.1-1.3B-sized random weights at 832x480x81, bf16:")
            rows += measure("wan1.3b", "cuda", "bfloat16", args.steps)
        else:
            print("\nwan1.3b on GPU: no GPU: skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
