"""Few-step distillation: a frozen, guided teacher DiT teaches a student to sample in K steps (default 4).

Method: guidance-baked trajectory distillation for rectified flow (the math is ``kinema.flow.distill``).
The student's K Euler steps run over fixed times t_0 = 1 > ... > t_K = 0 from the teacher's own
sampling schedule; for each segment the teacher, with classifier-free guidance against its negative
prompt, solves the ODE from x_k at t_k to t_{k+1} in M sub-steps, and the student, one conditional
forward at (x_k, t_k), learns that segment's mean velocity. The student starts as a copy of the
teacher (same Wan-layout DiT), and because guidance is baked in (Meng et al. 2023, "On Distillation of
Guided Diffusion Models") it needs one forward per step: 4 in all, against the teacher's 2 x N.

Why this and not the alternatives: progressive distillation (Salimans & Ho 2022) needs log2(N / K)
rounds of training; reflow (Liu et al. 2022, InstaFlow) first generates and stores a dataset of
teacher (noise, sample) pairs and aims at 1-2 steps through straighter paths, needing several
reflows; consistency distillation (LCM, Luo et al. 2023) trains any-step jumps against an EMA target
net and is noisier at a fixed small K. Training exactly the K-step sampler that generation uses (as in
TRACT, Berthelot et al. 2023, and PeRFlow, Yan et al. 2024, with one segment per step) needs one phase,
no stored data, no target network, and its loss measures directly how far the student's step is from
the teacher's: the right trade for a 4-step sampler of a small model.

Segment starts (``distill.states``): "teacher" follows the teacher's own trajectory from noise (the
states the student meets at inference); "noised" restarts each segment from the sample's real latent
noised to t_k (the data distribution rather than the guided one; same cost, no error carried along).
Conditioning patterns (``flow.cond_probs``) apply as in pre-training: given frames stay clean at t = 0
for both networks and are not scored, so the student keeps image-to-video, extend and the rest.

Cost per sample and step: K * M teacher sub-steps (x2 for Heun, x2 for guidance), without gradients,
plus K student forwards and backwards batched together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from kinema.config import ConfigError, ModelConfig
from kinema.flow import guided, interpolate
from kinema.flow.distill import distill_schedule, segment_targets
from kinema.tasks.condition import Condition, conditioned_velocity
from kinema.train.config import TrainConfig
from kinema.weights.student import StudentInfo

Text = tuple[torch.Tensor, torch.Tensor]  # (tokens (L, D), mask (L,) bool)


def student_info(cfg: TrainConfig, teacher_cfg: ModelConfig, train_steps: int = 0) -> StudentInfo:
    """What the run's student bakes in: ``[distill]`` values, the teacher's sampling defaults where unset."""
    dc, defaults = cfg.distill, teacher_cfg.sampling
    shift = dc.shift if dc.shift is not None else defaults.shift
    times, _ = distill_schedule(dc.steps, dc.substeps, shift)
    return StudentInfo(steps=dc.steps, times=tuple(times.tolist()),
                       guidance=dc.guidance if dc.guidance is not None else defaults.guidance,
                       negative_prompt=dc.negative_prompt if dc.negative_prompt is not None else defaults.negative_prompt,
                       shift=shift, teacher=str(cfg.teacher), train_steps=train_steps)


def _sampling(info: StudentInfo) -> dict:
    """What makes two students sample alike: their step times, baked-in guidance and negative prompt."""
    return {"steps": info.steps, "times": tuple(info.times), "guidance": info.guidance,
            "negative_prompt": info.negative_prompt, "shift": info.shift}


def start_student(cfg: TrainConfig):
    """``distill.continue_student``: init_from's exported student, refused unless it samples as this run's will."""
    from kinema.weights import read_config
    from kinema.weights.student import load_student

    loaded = load_student(cfg.init_from)
    if loaded is None:
        raise ConfigError(f"distill.continue_student: {cfg.init_from} has no few-step student (student.json and "
                          "student.safetensors) to start from; drop the option to start from its DiT")
    dit, had = loaded
    had_s, want_s = _sampling(had), _sampling(student_info(cfg, read_config(cfg.teacher)))
    differ = [f"{k} {had_s[k]!r} vs {want_s[k]!r}" for k in had_s if had_s[k] != want_s[k]]
    if differ:
        raise ConfigError(f"distill.continue_student: the student of {cfg.init_from} samples differently from this "
                          f"run's ({'; '.join(differ)}); set [distill] to match it, or start from a DiT")
    return dit


def _pad(tokens: torch.Tensor, mask: torch.Tensor, length: int) -> Text:
    """(B, L, D), (B, L) zero-padded (mask False) to ``length`` tokens."""
    extra = length - tokens.shape[1]
    if extra <= 0:
        return tokens, mask
    return (torch.nn.functional.pad(tokens, (0, 0, 0, extra)),
            torch.nn.functional.pad(mask, (0, extra), value=False))


class Distiller:
    """The frozen teacher plus the student's schedule; ``losses`` is the distillation objective of one batch."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device, encode: Callable[[str], Text]):
        """``encode(prompt)`` gives one prompt's (tokens (L, D), mask (L,)): the teacher's negative prompt."""
        from kinema.weights import load_dit, read_config

        teacher_cfg = read_config(cfg.teacher)
        if teacher_cfg.dit != model_cfg.dit:
            raise ConfigError(f"distill: the student ({cfg.init_source}) and the teacher ({cfg.teacher}) must share "
                              f"one DiT config; they differ: {model_cfg.dit} vs {teacher_cfg.dit}")
        self.cfg = cfg.distill
        self.info = student_info(cfg, teacher_cfg)
        self.times, self.fine_times = distill_schedule(self.cfg.steps, self.cfg.substeps, self.info.shift)
        self.teacher = load_dit(cfg.teacher).to(device).eval().requires_grad_(False)
        self.use_mask = model_cfg.text.use_mask
        self.negative = tuple(t.to(device) for t in encode(self.info.negative_prompt))
        # forward + backward is ~3 forwards: K student passes and the teacher's forwards, in student-pass units
        calls = self.cfg.steps * self.cfg.substeps * (2 if self.cfg.sampler == "heun" else 1)
        self.flops_factor = self.cfg.steps + calls * (2 if self.info.guidance != 1 else 1) / (3 * self.cfg.reuse)
        self.kept: dict[tuple, list[tuple]] = {}  # distill.reuse: per batch shape, the last computed batches
        self.calls = 0
        self.draws = torch.Generator().manual_seed(cfg.seed)

    def teacher_velocity(self, text: torch.Tensor, text_mask: torch.Tensor) -> Callable:
        """The guided teacher ``(x, t_frames (B, F)) -> v`` for text (B, L, D) against the negative prompt."""
        b = text.shape[0]
        length = max(text.shape[1], self.negative[0].shape[0])
        text, text_mask = _pad(text, text_mask, length)
        neg, neg_mask = _pad(self.negative[0][None], self.negative[1][None], length)
        both_text = torch.cat([text, neg.expand(b, -1, -1).to(text.dtype)])
        both_mask = torch.cat([text_mask, neg_mask.expand(b, -1)]) if self.use_mask else None

        def cond_uncond(x, t_frames, need_uncond):
            ts = t_frames * 1000.0
            if not need_uncond:
                return self.teacher(x, ts, text, text_mask if self.use_mask else None), None
            v = self.teacher(torch.cat([x, x]), torch.cat([ts, ts]), both_text, both_mask)
            return v[:b], v[b:]

        return guided(cond_uncond, self.info.guidance)

    @property
    def computed(self) -> list[tuple]:
        """Every kept batch's (states, targets, frame mask, text, text mask), of all shapes."""
        return [c for batches in self.kept.values() for c in batches]

    def segments(self, latents: torch.Tensor, noise: torch.Tensor, frame_mask: torch.Tensor, text: torch.Tensor,
                 text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's segments of one batch: each segment's start state and mean velocity, (K, B, C, F, H, W)."""
        cond = Condition(latents, frame_mask)
        times = self.times.tolist()
        with torch.no_grad():
            velocity = conditioned_velocity(self.teacher_velocity(text, text_mask), cond)

            def noised(k: int) -> torch.Tensor:  # segment k restarts from the real latent noised to t_k
                return cond.apply(interpolate(latents, noise, times[k]))

            return segment_targets(velocity, cond.apply(noise), self.fine_times.to(latents.device),
                                   self.cfg.substeps, self.cfg.sampler, noised if self.cfg.states == "noised" else None)

    def losses(self, student, latents: torch.Tensor, noise: torch.Tensor, frame_mask: torch.Tensor,
               text: torch.Tensor, text_mask: torch.Tensor,
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample loss (B,) (mean over the K segments) and per-segment parts ``seg{k}`` (B,).

        ``latents``/``noise`` (B, C, F, H, W), ``frame_mask`` (B, F) bool (given frames), ``text`` (B, L, D),
        ``weights`` (B,) the loop's per-sample weights (0 for a stand-in). With ``distill.reuse`` > 1 a call may
        train on an earlier batch of the same shape instead (batches with stand-ins are neither kept nor swapped).
        """
        times = self.times.tolist()
        whole = weights is None or bool((weights == 1).all())  # no stand-in for a bad sample: safe to keep or swap
        shape = (tuple(latents.shape), tuple(text.shape))  # buckets mix shapes: batches are kept per shape
        alike = self.kept.get(shape, []) if whole else []
        if self.calls % self.cfg.reuse == 0 or not alike:
            states, targets = self.segments(latents, noise, frame_mask, text, text_mask)
            if whole and self.cfg.reuse > 1:
                self.kept[shape] = (alike + [(states, targets, frame_mask, text, text_mask)])[-self.cfg.reuse:]
        else:  # distill.reuse: train again on one of the last computed batches of this shape (this one goes unused)
            pick = int(torch.randint(len(alike), (1,), generator=self.draws))
            states, targets, frame_mask, text, text_mask = alike[pick]
        self.calls += 1
        b, k = states.shape[1], states.shape[0]
        t = torch.tensor(times[:k], device=latents.device, dtype=torch.float32).repeat_interleave(b)  # (K * B,)
        t_frames = t[:, None] * (~frame_mask).repeat(k, 1).float()  # (K * B, F): row k * B + i is sample i at t_k
        pred = student(states.flatten(0, 1), t_frames * 1000.0, text.repeat(k, 1, 1),
                       text_mask.repeat(k, 1) if self.use_mask else None)
        err = (pred.float().unflatten(0, (k, b)) - targets.float()).square()  # (K, B, C, F, H, W)
        scored = (~frame_mask)[None, :, None, :, None, None].float().expand_as(err)
        per_segment = (err * scored).sum((2, 3, 4, 5)) / scored.sum((2, 3, 4, 5)).clamp_min(1.0)  # (K, B)
        return per_segment.mean(0), {f"seg{i}": per_segment[i].detach() for i in range(k)}


def export_student(checkpoint_meta: dict, cfg: TrainConfig, student, vae, out: str | Path) -> Path:
    """The teacher's model folder at ``out`` (its DiT, the run's VAE) with the student beside it."""
    from kinema.weights import load_dit, read_config, save_model
    from kinema.weights.student import read_student, save_student

    model_cfg = ModelConfig.from_dict(checkpoint_meta["model_config"])
    steps = checkpoint_meta["step"]
    if cfg.distill.continue_student:  # the student's own count: its earlier training plus this run's
        steps += read_student(cfg.init_from).train_steps
    save_model(out, model_cfg, dit=load_dit(cfg.teacher), vae=vae)
    return save_student(out, student, student_info(cfg, read_config(cfg.teacher), steps))
