"""The generation pipeline: request -> text -> noise -> sampler (+ conditioning) -> decode -> video.

``Pipeline.generate`` is the Python API behind ``kinema generate``; every task (text-to-video,
image-to-video, extend, loop, connect, edit, keyframes) reaches the same ``sample`` loop, differing
only in the ``Condition`` (given latent frames) and the starting point (noise, or a noised video for edits).
A model folder with a few-step student (``kinema.weights.student``) is sampled by it, with the Euler
times and guidance it was distilled for, whenever a request asks for exactly its number of steps.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..common.precision import compute_dtype, dtype_name, resolve_dtype, usable_dtype  # noqa: F401 (re-exported)
from ..config import SAMPLERS, ModelConfig, check_interval
from ..dit import DiT
from ..flow import get_sampler, guided, sampling_schedule, shift_t
from ..tasks import Condition, conditioned_velocity, cyclic_velocity
from ..vae import VAE
from ..weights.student import StudentInfo, load_student
from .offload import MemoryPlan, apply_memory_plan
from .step_cache import CacheStats, check_threshold, step_cache
from .tiling import decode_tiled

# Latent frames a loop is decoded after (itself, continued backwards): the causal decoder's frames depend on the
# frames before them. With the bundled model's VAE the seam of 20 world loops fell from 23.1 (0-255 mean abs, after
# 1 frame) to 11.5 / 8.8 / 7.7 / 7.5 after 4 / 8 / 12 / 16, and stayed there (24, 32).
LOOP_WARMUP = 16


class InputError(ValueError):
    """A generation request is invalid; the message names the value and what is accepted. ``param``: the
    request field it came from, where there is one (the HTTP API's error reports it)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class Settings:
    """Everything that determines a generated video (stored in the output's metadata)."""

    prompt: str
    negative_prompt: str = ""
    width: int = 128
    height: int = 128
    frames: int = 17
    fps: int = 8
    steps: int = 20
    guidance: float = 5.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # noise levels whose steps are guided (flow.guidance)
    shift: float = 3.0
    sampler: str = "unipc"
    seed: int = 0
    strength: float = 1.0  # < 1: edit an input video (SDEdit), starting from t = strength
    cache_threshold: float = 0.0  # > 0: skip the DiT's later blocks on steps where block 0 barely changed


@dataclass
class Video:
    """A generated clip: uint8 frames (F, H, W, 3), its frame rate, and the settings that made it."""

    frames: np.ndarray
    fps: float
    settings: Settings
    model: str
    latents: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # extra metadata, e.g. the prompt before extension

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps

    def metadata(self) -> dict[str, str]:
        """Container metadata: prompt, seed, model and every setting."""
        s = asdict(self.settings)
        return {"prompt": s.pop("prompt"), "seed": str(s.pop("seed")), "model": self.model,
                "settings": json.dumps(s), "software": "kinema", **self.notes}

    def save(self, path: str | Path) -> Path:
        """Write the clip (format by extension: .mp4 .webm .gif, .png for a one-frame clip, or a folder of PNGs:
        a path ending in '/' or without extension) atomically; ValueError for a .png of several frames."""
        from ..common.video_write import write_video
        write_video(path, self.frames, self.fps, metadata=self.metadata())
        return Path(path)


def check_device(name, flag: str = "device") -> torch.device:
    """The torch.device ``name`` names, if this machine has it; InputError naming what is accepted otherwise."""
    cpu = f"{flag} cpu" if flag.startswith("--") else f"{flag}='cpu'"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"{flag} {name!r} is not a device; accepted: cpu, cuda, cuda:N (a GPU), mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise InputError(f"{flag} {name}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use {cpu}")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"{flag} {name}: there are {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{flag} {name}: this PyTorch sees no Apple GPU (MPS); use {cpu}")
    elif dev.type != "cpu":
        raise InputError(f"{flag} {name!r} is not supported; accepted: cpu, cuda, cuda:N (a GPU), mps")
    return dev


def nearest_valid_frames(frames: int, factor: int = 4) -> tuple[int, int]:
    """The valid frame counts (factor*k + 1) just below and above ``frames``."""
    lo = max(1, (frames - 1) // factor * factor + 1)
    return lo, lo + factor


def make_settings(cfg: ModelConfig, prompt: str, **overrides) -> Settings:
    """Settings from ``cfg``'s sampling defaults and the non-None ``overrides``, validated against ``cfg``."""
    d = cfg.sampling
    base = dict(negative_prompt=d.negative_prompt, width=d.width, height=d.height, frames=d.frames, fps=d.fps,
                steps=d.steps, guidance=d.guidance, guidance_interval=d.guidance_interval, shift=d.shift,
                sampler=d.sampler)
    extras = {"seed", "strength", "cache_threshold"}
    unknown = sorted(set(overrides) - set(base) - extras)
    if unknown:
        raise InputError(f"unknown setting(s) {unknown}; accepted: {sorted(set(base) | extras)}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings(prompt=prompt, **base)
    check_settings(cfg, s)
    return s


def check_settings(cfg: ModelConfig, s: Settings) -> None:
    """Raise InputError naming the bad value and what is accepted, before any work starts (a guidance interval
    given as text "LO,HI" or a list is stored back as a float pair)."""
    if not isinstance(s.prompt, str) or not s.prompt.strip():
        raise InputError("prompt is empty; give a description of the video, e.g. \"a red ball bounces on the floor\"",
                         param="prompt")
    m = cfg.pixel_multiple
    for name, v in (("width", s.width), ("height", s.height)):
        if not isinstance(v, int) or v < m or v % m:
            lo = max(m, (int(v) // m) * m) if isinstance(v, (int, float)) and v > 0 else m
            raise InputError(f"{name} {v} is not a positive multiple of {m}; try {lo} or {lo + m}", param="size")
    tf = cfg.vae.temporal_factor
    if not isinstance(s.frames, int) or s.frames < 1 or (s.frames - 1) % tf:
        lo, hi = nearest_valid_frames(int(s.frames) if isinstance(s.frames, (int, float)) and s.frames > 0 else 1, tf)
        raise InputError(f"frames {s.frames} is not {tf}k+1 (1, {tf + 1}, {2 * tf + 1}, ...); try {lo} or {hi}",
                         param="seconds")
    if s.sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {s.sampler!r}; choose one of {list(SAMPLERS)}", param="sampler")
    if not isinstance(s.steps, int) or not 1 <= s.steps <= 1000:
        raise InputError(f"steps must be an integer in [1, 1000], got {s.steps}", param="steps")
    if not (isinstance(s.guidance, (int, float)) and math.isfinite(s.guidance) and 0 <= s.guidance <= 50):
        raise InputError(f"guidance must be a number in [0, 50], got {s.guidance}", param="guidance")
    try:
        s.guidance_interval = check_interval(s.guidance_interval)
    except ValueError as e:
        raise InputError(str(e), param="guidance_interval") from None
    if not (isinstance(s.shift, (int, float)) and 0 < s.shift <= 100):
        raise InputError(f"shift must be in (0, 100], got {s.shift}", param="shift")
    if not isinstance(s.fps, int) or not 1 <= s.fps <= 240:
        raise InputError(f"fps must be an integer in [1, 240], got {s.fps}", param="fps")
    if not isinstance(s.seed, int) or not 0 <= s.seed < 2**63:
        raise InputError(f"seed must be an integer in [0, 2^63), got {s.seed}", param="seed")
    if not (isinstance(s.strength, (int, float)) and 0 < s.strength <= 1):
        raise InputError(f"strength must be in (0, 1], got {s.strength}", param="strength")
    try:
        check_threshold(s.cache_threshold)
    except ValueError as e:
        raise InputError(str(e), param="cache_threshold") from None


def wan_i2v_refusal(name: str, what: str = "") -> str:
    """Why a Wan 2.1 image-to-video model refuses a request other than making video from an image (``what``: the
    request, e.g. "text-to-video")."""
    return (f"{name} is a Wan 2.1 image-to-video model: it makes video from an image: "
            f"kinema.infer.i2v_wan.image_to_video(pipe, image, prompt) (kinema generate --image)"
            + (f"; {what} is not available with it" if what else ""))


class Pipeline:
    """A loaded model (DiT + VAE + text encoder) that turns requests into videos."""

    def __init__(self, cfg: ModelConfig, dit: DiT, vae: VAE, text_encoder, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, name: str | None = None):
        self.cfg, self.dit, self.vae, self.text_encoder = cfg, dit, vae, text_encoder
        self.device, self.dtype = torch.device(device), dtype
        self.name = name or cfg.name
        self._prompt_cache: dict = {}
        self.vae_tiles: tuple[int, int] | None = None  # (tile, overlap) in latent pixels: decode in spatial tiles
        self.offloader = None  # set by offload.apply_memory_plan
        self.student: tuple[DiT, StudentInfo] | None = None  # few-step student, used when a request's steps match
        self.cache_stats = None  # the step cache's CacheStats from the last sample(), None when it was off
        self.cache_totals = CacheStats()  # ... added up over every sample() that ran one
        self.compiled = False  # compile(): the DiT(s) and the VAE decode run through torch.compile

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str = "cpu",
                        dtype: torch.dtype | str | None = None, lora: list[tuple[str, float]] | None = None,
                        memory: str | MemoryPlan = "none", student: bool = True, compile: bool = False) -> Pipeline:
        """Load a kinema or diffusers Wan folder (None = the bundled model) ready to generate.

        ``student``: load the folder's few-step student, if it has one (not with LoRAs or a memory plan,
        which apply to the teacher only); ``False`` always samples with the teacher.

        ``memory``: an offload mode ("none" | "model" | "block") or a full ``MemoryPlan`` (see ``offload.py``).

        ``dtype``: a ``torch.dtype``, a name ("fp32", "bf16", "fp16"), "auto" (bf16 where the device has it
        natively, else fp32: what the CLI uses) or None (fp32). Half precision the CPU would only emulate falls
        back to fp32 with a warning.

        ``compile``: ``compile()`` the loaded pipeline (not with offloading or int8 weights).

        On a CPU this also tunes the process's C allocator to keep freed memory (``kinema.common.malloc``).
        """
        from ..text import build_text_encoder
        from ..weights import load_dit, load_vae, read_config
        check_device(device)
        if torch.device(device).type == "cpu":
            from ..common.malloc import keep_freed_memory
            keep_freed_memory()  # CPU tensors reuse freed memory (first clip 22% faster; KINEMA_MALLOC=system: off)
        path = Path(path) if path is not None else bundled_model_path()
        dtype = compute_dtype(dtype, device)
        plan = MemoryPlan.for_mode(memory) if isinstance(memory, str) else memory
        if compile and not plan.weights_as_loaded:
            raise InputError(f"compile does not combine with offload {plan.offload!r} / quantize {plan.quantize!r}: "
                             f"compiled graphs hold the weights where they were loaded, in their stored precision")
        home = "cpu" if plan.offload != "none" else device  # offloaded components move on first use
        cfg = read_config(path)
        dit = load_dit(path, dtype=dtype).to(home)
        vae = load_vae(path, dtype=torch.float32 if dtype == torch.float16 else dtype).to(home)
        for lora_path, scale in lora or []:
            from ..train.lora import apply_lora
            apply_lora(dit, lora_path, scale)
        # umT5 in bf16 whenever the DiT is half precision (Wan runs it so; T5 overflows in fp16).
        text_dtype = torch.bfloat16 if cfg.text.kind == "t5" and dtype != torch.float32 else torch.float32
        text = build_text_encoder(cfg.text, dtype=text_dtype).to(home)
        pipe = cls(cfg, dit, vae, text, device=device, dtype=dtype, name=cfg.name if path is None else str(cfg.name))
        if student and not lora and plan == MemoryPlan():
            found = load_student(path, dtype=dtype)
            pipe.student = None if found is None else (found[0].to(device), found[1])
        if plan != MemoryPlan():
            pipe.offloader = apply_memory_plan(pipe, plan)
        return pipe.compile() if compile else pipe

    def compile(self) -> Pipeline:
        """Run the DiT (and the student) and, where that is faster, the VAE decode through ``torch.compile``
        (inductor), in place; returns the pipeline.

        For processes that make many clips (a server, long videos): each new shape (size, length, prompt
        length, guided or not) compiles on its first call, about a minute for the bundled model on 2 CPU
        cores (seconds once inductor's on-disk cache holds the graphs); a shape that changes is then compiled
        as dynamic. Measured on the bundled model, 2 CPU cores with AVX-512 BF16 (README, Speed): since the
        eager DiT's bf16 changes of 2026-11-28 (oneDNN weight layouts kept, the fused GELU, the prompt's keys
        and values reused) a compiled bf16 DiT step is x0.99-1.09 of eager (x1.23 before) and a whole bf16
        clip x0.94-0.97 (a compiled DiT recomputes the prompt's keys and values every step); fp32: step x1.14,
        clip x1.07. The VAE decode compiled is no faster on a CPU (x0.94-0.99 in bf16; inductor's convolutions
        leave oneDNN's direct path, x0.40 in fp32 on 2026-11-27's code), so on a CPU it stays eager. Outputs
        match eager to rounding, not bit for bit. Inductor needs a C++ compiler on a CPU and Triton on a GPU.
        A request with the step cache samples eagerly (the cache swaps block forwards).
        """
        if not self.compiled:
            self.dit.compile()
            if self.student is not None:
                self.student[0].compile()
            if self.device.type != "cpu":
                self.vae.decode = torch.compile(self.vae.decode)
            self.compiled = True
        return self

    def settings(self, prompt: str, **overrides) -> Settings:
        """Request settings: the model's defaults, overridden by the given (non-None) values, validated."""
        return make_settings(self.cfg, prompt, **overrides)

    # -- stages --------------------------------------------------------------------------------------------
    def latent_shape(self, s: Settings) -> tuple[int, int, int, int, int]:
        sf = self.cfg.vae.spatial_factor
        return (1, self.cfg.vae.z_dim, self.vae.latent_frames(s.frames), s.height // sf, s.width // sf)

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text tokens (B, L, D) on the model's device/dtype and the key mask (None where the model attends padding)."""
        key = tuple(prompts)
        if key not in self._prompt_cache:
            if len(self._prompt_cache) > 64:
                self._prompt_cache.clear()
            tokens, mask = self.text_encoder.encode(list(prompts))
            self._prompt_cache[key] = (tokens.to(self.device, self.dtype), mask.to(self.device))
        tokens, mask = self._prompt_cache[key]
        return tokens, (mask if self.cfg.text.use_mask else None)

    def velocity_fn(self, text: torch.Tensor, mask: torch.Tensor | None, guidance: float, dit: DiT | None = None,
                    interval: tuple[float, float] | None = None):
        """A guided velocity ``(x, t_frames) -> v`` over a (cond, uncond) text pair (text is (2, L, D));
        ``interval``: the noise levels whose steps are guided (``flow.guided``; None: every step). A step
        outside it runs the conditional row alone."""
        dit = self.dit if dit is None else dit
        integer_timesteps = self.cfg.sampling.schedule == "wan" and dit is self.dit

        first, first_mask = text[:1], None if mask is None else mask[:1]  # one tensor for every step: see reusing_text

        def both(x: torch.Tensor, t_frames: torch.Tensor, need_uncond: bool):
            ts = t_frames * 1000.0
            if integer_timesteps:  # Wan was trained and sampled on int(t * 1000)
                ts = ts.floor()
            if not need_uncond:
                v = dit(x.to(self.dtype), ts, first, first_mask)
                return v.float(), None
            v = dit(torch.cat([x, x]).to(self.dtype), torch.cat([ts, ts]), text, mask).float()
            return v[:1], v[1:]

        return guided(both, guidance, interval)

    def check_samples_alone(self, what: str = "text-to-video") -> None:
        """InputError for a Wan 2.1 image-to-video model asked to sample without its image: its DiT reads the
        image's latents as extra input channels and its CLIP tokens, which only ``i2v_wan.image_to_video``
        attaches (a forward pre-hook); without them the DiT would fail on a shape mismatch deep inside."""
        from . import i2v_wan
        if i2v_wan.is_wan_i2v(self.cfg) and not any(getattr(hook, "feeds_image", False)
                                                    for hook in self.dit._forward_pre_hooks.values()):
            raise InputError(wan_i2v_refusal(self.name, what))

    def uses_student(self, s: Settings) -> bool:
        """True when ``s`` is sampled by the few-step student: there is one, and ``s`` asks for its steps."""
        return self.student is not None and s.steps == self.student[1].steps

    def student_notes(self, s: Settings) -> dict[str, str]:
        """Metadata saying that (and how) the student made a video: its times and the guidance baked into it."""
        if not self.uses_student(s):
            return {}
        info = self.student[1]
        return {"student": json.dumps({"steps": info.steps, "sampler": "euler",
                                       "times": student_times(info, s.strength).tolist(),
                                       "guidance_baked": info.guidance, "negative_prompt_baked": info.negative_prompt,
                                       "not_used": ["guidance", "guidance_interval", "shift", "sampler",
                                                    "negative_prompt"]})}

    @torch.inference_mode()
    def sample(self, s: Settings, condition: Condition | None = None, init_latents: torch.Tensor | None = None,
               callback: Callable[[int, int], None] | None = None, cyclic: bool = False) -> torch.Tensor:
        """Latents (1, C, F, h, w) for settings ``s``: noise -> sampler, holding ``condition`` frames clean.

        ``init_latents`` with ``s.strength < 1`` starts from the noised input video (SDEdit). ``cyclic``: the
        latent frames are one period of a loop, sampled as a cycle (``cyclic_velocity``).
        """
        self.check_samples_alone()
        shape = self.latent_shape(s)
        gen = torch.Generator("cpu").manual_seed(s.seed)
        noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)
        student = self.student if self.uses_student(s) else None  # (DiT, StudentInfo): one forward per step
        ts = (sampling_schedule(s.steps, shift=s.shift, t_start=s.strength, kind=self.cfg.sampling.schedule)
              if student is None else student_times(student[1], s.strength))
        x = noise
        if init_latents is not None and s.strength < 1:
            t0 = float(ts[0])
            x = (1 - t0) * init_latents.to(noise) + t0 * noise
        if condition is not None:
            x = condition.apply(x)
        text, mask = self.encode_prompts([s.prompt, s.negative_prompt])
        velocity = (self.velocity_fn(text, mask, s.guidance, interval=s.guidance_interval) if student is None else
                    self.velocity_fn(text, mask, 1.0, dit=student[0]))
        velocity = conditioned_velocity(cyclic_velocity(velocity) if cyclic else velocity, condition)
        step_cb = None if callback is None else (lambda i, n, _x: callback(i + 1, n))
        # the step cache reuses a residual across steps by input similarity: a turned cycle is not the same input
        threshold = 0.0 if cyclic else s.cache_threshold
        eager = self.compiled and threshold > 0  # the cache swaps block forwards that a compiled graph has inlined
        dit = self.dit if student is None else student[0]
        with (torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext(),
              dit.reusing_text(),  # the prompt pair is embedded (and its keys and values projected) once
              step_cache(dit, threshold) as cache):  # fresh per run
            x = get_sampler(s.sampler if student is None else "euler")(velocity, x, ts.to(self.device), callback=step_cb)
        self.cache_stats = None if cache is None else cache.stats
        if cache is not None:
            self.cache_totals.full += cache.stats.full
            self.cache_totals.reused += cache.stats.reused
        return x if condition is None else condition.apply(x)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, cyclic: bool = False) -> np.ndarray:
        """uint8 frames (F, H, W, 3) from latents.

        ``cyclic``: the latent frames are one period of a loop, ``tf`` pixel frames each. The causal decoder's
        frames depend on the frames before them, so the period is decoded after ``LOOP_WARMUP`` latent frames
        of itself (continued backwards around the cycle) and only its own frames are kept: they begin as
        they follow its end when the loop plays.
        """
        if cyclic:
            n = latents.shape[2]
            before = [(i - LOOP_WARMUP) % n for i in range(LOOP_WARMUP)]
            frames = self.decode(torch.cat([latents[:, :, before], latents], dim=2))
            return frames[len(frames) - self.cfg.vae.temporal_factor * n:]
        video = self.decode_pixels(latents)
        return ((video[0].float().permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's decoding (1, 3, F, H, W) in [-1, 1] of ``latents`` (cast to its dtype), tiled if asked
        (``vae_tiles``); differentiable where autograd is on."""
        latents = latents.to(next(self.vae.parameters()).dtype)
        return self.vae.decode(latents) if self.vae_tiles is None else decode_tiled(self.vae, latents, *self.vae_tiles)

    def generate(self, prompt: str, *, negative_prompt: str | None = None, width: int | None = None,
                 height: int | None = None, frames: int | None = None, fps: int | None = None, steps: int | None = None,
                 guidance: float | None = None, guidance_interval: tuple[float, float] | str | None = None,
                 shift: float | None = None, sampler: str | None = None, seed: int = 0,
                 cache_threshold: float | None = None, progress: bool | Callable[[int, int], None] = False) -> Video:
        """Text -> video with this model's defaults for anything not given."""
        self.check_samples_alone()
        s = self.settings(prompt, negative_prompt=negative_prompt, width=width, height=height, frames=frames, fps=fps,
                          steps=steps, guidance=guidance, guidance_interval=guidance_interval, shift=shift,
                          sampler=sampler, seed=seed,
                          cache_threshold=cache_threshold)
        return self.run(s, progress=progress)

    def run(self, s: Settings, condition: Condition | None = None, init_latents: torch.Tensor | None = None,
            progress: bool | Callable[[int, int], None] = False, cyclic: bool = False,
            decode_with: Condition | None = None) -> Video:
        """Sample and decode for validated settings; timings per stage are recorded on the result. ``cyclic``:
        the latent frames are one period of a loop (``sample``, ``decode``). ``decode_with``: latent frames
        decoded in place of the sampled ones (given frames fitted to their pixels, ``kinema.tasks.fit``);
        ``Video.latents`` stays what was sampled."""
        self.check_samples_alone()  # before the prompt is encoded
        callback, bar = _progress(progress, s.steps)
        t0 = time.perf_counter()
        self.encode_prompts([s.prompt, s.negative_prompt])
        t1 = time.perf_counter()
        latents = self.sample(s, condition=condition, init_latents=init_latents, callback=callback, cyclic=cyclic)
        t2 = time.perf_counter()
        if bar is not None:
            bar.close()
        frames = self.decode(latents if decode_with is None else decode_with.apply(latents), cyclic=cyclic)
        t3 = time.perf_counter()
        timings = {"text": t1 - t0, "sample": t2 - t1, "decode": t3 - t2, "total": t3 - t0}
        notes = {"dtype": dtype_name(self.dtype)}
        if self.cache_stats is not None:
            notes["step_cache"] = str(self.cache_stats)
        notes.update(self.student_notes(s))
        return Video(frames=frames, fps=s.fps, settings=s, model=self.name, latents=latents, timings=timings,
                     notes=notes)


def _progress(progress, steps):
    if callable(progress):
        return progress, None
    if not progress:
        return None, None
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc="sampling", unit="step", leave=False)
    return (lambda i, n: bar.update(1)), bar


def student_times(info: StudentInfo, strength: float = 1.0) -> torch.Tensor:
    """The student's sampling times from ``strength`` on: from the latest of its times at or below
    ``shift_t(strength)`` (the teacher's first time at that strength; the student only knows its own times,
    so a partly noised start is noised to that one), or its last step when none is."""
    times = torch.tensor(info.times, dtype=torch.float64)
    if strength >= 1:
        return times
    first = int(torch.nonzero(times <= shift_t(float(strength), info.shift) + 1e-12)[0])
    return times[min(first, len(times) - 2):]


def bundled_model_path() -> Path:
    """The model shipped inside the package (kinema/assets/world-small)."""
    p = Path(__file__).resolve().parent.parent / "assets" / "world-small"
    if not (p / "kinema.json").is_file():
        raise FileNotFoundError(f"the bundled model is missing from this install ({p}); pass --model PATH")
    return p
