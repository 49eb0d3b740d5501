"""``kinema generate`` end to end, stage by stage, with and without the step cache; kinema vs diffusers per stage.

    python benchmarks/generate.py [--model PATH] [--thresholds 0 0.1] [--intervals 0,0.92] [--repeats 3] [--compile]
                                  [--json out.json]

Stages: text encode, DiT step (the CFG batch, alone), VAE decode, MP4 write; then whole generations
(text -> sampling -> decode -> MP4, prompt cache cleared first, model loading apart) for each step-cache
threshold and each ``--intervals`` guidance interval: wall, real-time factor (clip seconds / wall seconds),
seconds per sampling step, evaluations the cache reused, and how far the result moved from the uncached,
model-default one (the requests take turns, run by run). MFU is the DiT step's FLOPs
(``engine.dit_flops``) over its time, against a large matmul timed in the same run. Where diffusers has the
same stage (``WanTransformer3DModel`` step, ``AutoencoderKLWan`` decode) it runs with identical weights,
interleaved with kinema (``engine.compare``); ratio = diffusers / kinema, > 1 means kinema is faster.

Model: --model, else the bundled model if this install has it, else random weights of the bundled shape
(world-small) in a temporary folder: the timings hold, the quality columns then say little.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import compare, dit_flops, matmul_peak, reference_dit, reference_vae  # noqa: E402

from kinema.common.precision import dtype_name  # noqa: E402
from kinema.eval.tasks import psnr  # noqa: E402
from kinema.infer import Pipeline, Video  # noqa: E402
from kinema.infer.pipeline import bundled_model_path  # noqa: E402


def model_folder(path: str | None, scratch: Path) -> tuple[Path, str]:
    """(folder, "given" | "bundled" | "random"): random is world-small's shape, written to ``scratch``."""
    if path is not None:
        return Path(path), "given"
    try:
        return bundled_model_path(), "bundled"
    except FileNotFoundError:
        pass
    from kinema.config import preset
    from kinema.dit import DiT
    from kinema.vae import VAE
    from kinema.weights import save_model

    torch.manual_seed(0)
    cfg = preset("world-small")
    dit = DiT(cfg.dit)
    with torch.no_grad():  # non-zero everywhere, so no zero-initialised layer is skipped for free
        for p in dit.parameters():
            p.normal_(0, 0.02)
    folder = scratch / "world-small-random"
    save_model(folder, cfg, dit, VAE(cfg.vae))
    return folder, "random"


def timed(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls, waiting for the device each time."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def dit_inputs(pipe: Pipeline, s, text: torch.Tensor, mask: torch.Tensor | None):
    """One sampling step's DiT call: the CFG batch (cond, uncond) at t = 500, as ``Pipeline.velocity_fn`` makes it;
    the conditional row alone when the model's few-step student samples ``s`` (its guidance is baked in)."""
    rows = 1 if pipe.uses_student(s) or s.guidance == 1 else 2
    gen = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(pipe.latent_shape(s), generator=gen).to(pipe.device, pipe.dtype).expand(rows, -1, -1, -1, -1)
    t = torch.full((rows,), 500.0, device=pipe.device)
    return x.contiguous(), t, text[:rows], None if mask is None else mask[:rows]


def step_net(pipe: Pipeline, s):
    """The network one sampling step of ``s`` calls: the model's few-step student when it samples ``s``, else the DiT."""
    return pipe.student[0] if pipe.uses_student(s) else pipe.dit


@torch.inference_mode()
def stages(pipe: Pipeline, s, repeats: int, peak_gflops: float, scratch: Path) -> dict:
    """Seconds of each stage on its own, and the DiT step's FLOPs and MFU."""
    dev = pipe.device
    prompts = [s.prompt, s.negative_prompt]
    text_s = timed(lambda: pipe.text_encoder.encode(prompts), repeats, dev)
    text, mask = pipe.encode_prompts(prompts)
    x, t, txt, msk = dit_inputs(pipe, s, text, mask)
    net = step_net(pipe, s)
    step_s = timed(lambda: net(x, t, txt, msk), repeats, dev)
    cfg = pipe.cfg.dit
    tokens = x[0, 0].numel() // (cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
    flops = dit_flops(cfg, tokens, text.shape[1]) * x.shape[0]
    latents = x[:1].float()
    decode_s = timed(lambda: pipe.decode(latents), repeats, dev)
    video = Video(frames=pipe.decode(latents), fps=s.fps, settings=s, model=pipe.name)
    out = scratch / "stage.mp4"
    write_s = timed(lambda: video.save(out), repeats, dev)
    return {"text_encode_s": text_s, "dit_step_s": step_s, "dit_step_rows": x.shape[0], "dit_tokens": tokens,
            "dit_gflop_per_step": flops / 1e9, "dit_step_mfu": flops / step_s / 1e9 / peak_gflops,
            "vae_decode_s": decode_s, "mp4_write_s": write_s}


def generations(pipe: Pipeline, requests: list, repeats: int, scratch: Path) -> list[tuple[dict, object]]:
    """Per request, the median whole-generation wall (text, sampling, decode, MP4) and its split, and the last
    run's Video. The requests take turns, run by run, so a busy spell of the machine falls on all of them."""
    walls, splits, step_times, videos = ([[] for _ in requests] for _ in range(4))
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)
    for turn in range(repeats + 1):  # the first turn warms up (allocator, oneDNN kernels) and is not counted
        for k, s in enumerate(requests):
            marks = []
            pipe._prompt_cache.clear()  # a fresh `kinema generate` process encodes its prompt once
            sync()
            t0 = time.perf_counter()
            video = pipe.run(s, progress=lambda i, n: marks.append(time.perf_counter()))
            t1 = time.perf_counter()
            video.save(scratch / "generation.mp4")
            t2 = time.perf_counter()
            videos[k] = [video, pipe.cache_stats]
            if turn:
                walls[k].append(t2 - t0)
                splits[k].append({**video.timings, "write": t2 - t1})
                step_times[k].append(float(np.diff(marks).mean()) if len(marks) > 1 else video.timings["sample"])
    out = []
    for k, s in enumerate(requests):
        i = int(np.argsort(walls[k])[len(walls[k]) // 2])  # the median run, reported whole
        video, stats = videos[k]
        row = {"cache_threshold": s.cache_threshold, "guidance_interval": list(s.guidance_interval),
               "total_s": walls[k][i], "real_time_factor": video.seconds / walls[k][i], "text_s": splits[k][i]["text"],
               "sample_s": splits[k][i]["sample"], "decode_s": splits[k][i]["decode"],
               "write_s": splits[k][i]["write"], "step_s": step_times[k][i]}
        if stats is not None:
            row.update(reused=stats.reused, evaluations=stats.full + stats.reused)
        out.append((row, video))
    return out


@torch.inference_mode()
def versus_diffusers(pipe: Pipeline, s, repeats: int) -> list[dict]:
    """DiT step and VAE decode, kinema vs diffusers with the same weights, interleaved."""
    text, _ = pipe.encode_prompts([s.prompt, s.negative_prompt])
    x, t, txt, _ = dit_inputs(pipe, s, text, None)  # diffusers' Wan attends to every text token: no mask on either
    ref = reference_dit(pipe.dit)
    dit_k, dit_d = compare(lambda: pipe.dit(x, t, txt), lambda: ref(x, t, txt, return_dict=False), repeats)
    rows = [{"case": f"DiT step ({x.shape[0]} rows, no text mask)", "kinema_s": dit_k, "diffusers_s": dit_d,
             "ratio": dit_d / dit_k}]
    if x.shape[0] == 2:  # a guided step as each pipeline runs it: diffusers' WanPipeline calls its transformer
        # once for the prompt and once for the negative prompt; kinema's sampler sends both rows in one call, and
        # embeds the prompt pair and projects its cross-attention keys and values once per clip (reusing_text)
        def wan_pipeline_step():
            return [ref(x[i:i + 1], t[i:i + 1], txt[i:i + 1], return_dict=False) for i in range(2)]
        with pipe.dit.reusing_text():
            k, d = compare(lambda: pipe.dit(x, t, txt), wan_pipeline_step, repeats)
        rows.append({"case": "guided step, as WanPipeline runs it", "kinema_s": k, "diffusers_s": d, "ratio": d / k})
    del ref
    vae_ref = reference_vae(pipe.vae)
    z = torch.randn(pipe.latent_shape(s), generator=torch.Generator().manual_seed(0)).to(pipe.device)
    z = z.to(next(pipe.vae.parameters()).dtype)
    dec_k, dec_d = compare(lambda: pipe.vae.decode(z, normalized=False), lambda: vae_ref.decode(z), repeats)
    return rows + [{"case": "VAE decode", "kinema_s": dec_k, "diffusers_s": dec_d, "ratio": dec_d / dec_k}]


def versus_compiled(pipe: Pipeline, folder: Path, s, repeats: int, diffusers: bool) -> tuple[list[dict], list[dict]]:
    """Eager ``pipe`` against a twin loaded with ``compile=True`` (what ``--compile`` runs: the DiT or student
    and the VAE decode through ``torch.compile``), interleaved: one DiT step, the VAE decode and the whole clip.
    The twin's first clip (compiling) is timed apart. ratio = eager / compiled, > 1 means compiling helps.
    With ``diffusers``, also the compiled DiT against diffusers' transformer compiled alike (same weights, the
    request's step without a text mask): ratio = diffusers / kinema."""
    twin = Pipeline.from_pretrained(folder, device=pipe.device, dtype=pipe.dtype, compile=True)
    started = time.perf_counter()
    twin.run(s)
    compile_s = time.perf_counter() - started
    with torch.inference_mode():
        text, mask = pipe.encode_prompts([s.prompt, s.negative_prompt])
        x, t, txt, msk = dit_inputs(pipe, s, text, mask)
        z = x[:1].float().to(next(pipe.vae.parameters()).dtype)
        cases = ((f"DiT step ({x.shape[0]} rows)", lambda p: step_net(p, s)(x, t, txt, msk)),
                 ("VAE decode", lambda p: p.vae.decode(z, normalized=False)),
                 ("whole clip", lambda p: p.run(s)))
        rows = []
        for case, call in cases:
            e, c = compare(lambda: call(pipe), lambda: call(twin), repeats)
            rows.append({"case": case, "eager_s": e, "compiled_s": c, "ratio": e / c})
    rows[0]["compile_s"] = compile_s  # the twin's first clip: every graph of this request compiled
    both = []
    if diffusers:
        with torch.inference_mode():
            ref = reference_dit(twin.dit)
            ref.compile()
            x, t, txt, _ = dit_inputs(pipe, s, text, None)  # diffusers' Wan attends to every text token
            k, d = compare(lambda: twin.dit(x, t, txt), lambda: ref(x, t, txt, return_dict=False), repeats)
        both.append({"case": f"DiT step ({x.shape[0]} rows, no text mask), both compiled", "kinema_s": k,
                     "diffusers_s": d, "ratio": d / k})
    return rows, both


def print_table(result: dict) -> None:
    st, req = result["stages"], result["request"]
    print(f"\n{result['model']['name']} ({result['model']['kind']} weights), {result['model']['dtype']}, {result['machine']['threads']} threads; "
          f"{req['frames']}x{req['height']}x{req['width']} at {req['fps']} fps ({req['clip_seconds']:.2f} s), "
          + (f"{req['steps']} Euler steps of the model's distilled student (guidance {req['guidance']} baked in)"
             if req.get("student") else f"{req['steps']} {req['sampler']} steps, guidance {req['guidance']}")
          + f"; load {result['load_s']:.2f} s")
    print(f"  text encode        {st['text_encode_s'] * 1000:9.1f} ms")
    print(f"  DiT step           {st['dit_step_s'] * 1000:9.1f} ms   {st['dit_gflop_per_step']:.1f} GFLOP, "
          f"MFU {st['dit_step_mfu']:.1%} of {result['machine']['matmul_peak_gflops']:.0f} GFLOP/s")
    print(f"  VAE decode         {st['vae_decode_s'] * 1000:9.1f} ms")
    print(f"  MP4 write          {st['mp4_write_s'] * 1000:9.1f} ms")
    print(f"  {'cache':>8} {'guided t':>10} {'total s':>8} {'RTF':>6} {'sample s':>9} {'step ms':>8} {'reused':>8} "
          f"{'speed-up':>9} {'latent err':>10} {'PSNR dB':>8}")
    for r in result["runs"]:
        reused = f"{r['reused']}/{r['evaluations']}" if "reused" in r else "-"
        guided_t = "{:g}-{:g}".format(*r["guidance_interval"])
        print(f"  {r['cache_threshold']:>8g} {guided_t:>10} {r['total_s']:8.2f} {r['real_time_factor']:6.2f} "
              f"{r['sample_s']:9.2f} "
              f"{r['step_s'] * 1000:8.1f} {reused:>8} {r['sample_speedup']:8.2f}x {r['latent_rel_err']:10.4f} "
              f"{'exact' if r['psnr_db'] is None else format(r['psnr_db'], '.1f'):>8}")
    for r in result.get("vs_compiled", []):
        note = f" (the first clip, compiling: {r['compile_s']:.0f} s)" if "compile_s" in r else ""
        print(f"  {r['case'] + ', --compile':36s} eager  {r['eager_s'] * 1000:8.1f} ms   compiled  "
              f"{r['compiled_s'] * 1000:8.1f} ms   x{r['ratio']:.2f}{note}")
    for r in result.get("vs_diffusers", []) + result.get("vs_diffusers_compiled", []):
        print(f"  {r['case']:36s} kinema {r['kinema_s'] * 1000:8.1f} ms   diffusers {r['diffusers_s'] * 1000:8.1f} ms"
              f"   x{r['ratio']:.2f}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: the bundled model, else random world-small weights)")
    ap.add_argument("--prompt", default="a red ball bounces on a checkered floor")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.1], help="step-cache thresholds (0 = off)")
    ap.add_argument("--intervals", nargs="+", default=[], metavar="LO,HI",
                    help="also time these guidance intervals (uncached), each against the model's own")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--size", help="WIDTHxHEIGHT (default: the model's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--no-diffusers", action="store_true", help="skip the kinema vs diffusers rows")
    ap.add_argument("--compile", action="store_true", help="also time a --compile twin: DiT step, VAE decode, whole clip (and the DiT against diffusers' "
                         "compiled alike)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if 0.0 not in args.thresholds:  # the uncached run is the reference for speed-up and error
        args.thresholds = [0.0, *args.thresholds]
    width, height = map(int, args.size.split("x")) if args.size else (None, None)

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        folder, kind = model_folder(args.model, scratch)
        t = time.perf_counter()
        pipe = Pipeline.from_pretrained(folder, device=args.device, dtype=args.dtype)
        load_s = time.perf_counter() - t
        peak = matmul_peak(pipe.dtype, n=2048, device=args.device)
        base = pipe.settings(args.prompt, steps=args.steps, frames=args.frames, width=width, height=height)
        result = {
            "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "matmul_peak_gflops": peak},
            "model": {"path": None if kind == "random" else str(folder), "kind": kind, "name": pipe.cfg.name,
                      "dtype": dtype_name(pipe.dtype)},
            "request": {"width": base.width, "height": base.height, "frames": base.frames, "fps": base.fps,
                        "steps": base.steps, "guidance": base.guidance, "sampler": base.sampler,
                        "student": pipe.uses_student(base),
                        "clip_seconds": base.frames / base.fps},
            "load_s": load_s,
            "stages": stages(pipe, base, args.repeats, peak, scratch),
            "runs": [],
        }
        runs = [(threshold, None) for threshold in sorted(set(args.thresholds))]
        runs += [(0.0, interval) for interval in args.intervals]
        requests = [pipe.settings(args.prompt, steps=base.steps, frames=base.frames, width=base.width,
                                  height=base.height, cache_threshold=threshold, guidance_interval=interval)
                    for threshold, interval in runs]
        timed_runs = generations(pipe, requests, args.repeats, scratch)
        ref_row, ref_video = timed_runs[0]  # uncached, the model's guidance interval
        for row, video in timed_runs:
            row["sample_speedup"] = ref_row["sample_s"] / row["sample_s"]
            row["latent_rel_err"] = float((video.latents - ref_video.latents).norm() / ref_video.latents.norm())
            db = psnr(video.frames, ref_video.frames)
            row["psnr_db"] = None if math.isinf(db) else db  # None: identical frames
            result["runs"].append(row)
        if args.compile:
            result["vs_compiled"], result["vs_diffusers_compiled"] = versus_compiled(
                pipe, folder, base, args.repeats, diffusers=not args.no_diffusers)
        if not args.no_diffusers:
            try:
                result["vs_diffusers"] = versus_diffusers(pipe, base, args.repeats)
            except ImportError as e:
                print(f"diffusers rows skipped: {e}", file=sys.stderr)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
