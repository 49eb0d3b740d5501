"""Throughput accounting: the machine's measured matmul peak and the DiT's training FLOPs per step.

MFU = achieved model FLOP/s / (peak matmul FLOP/s x ranks). The peak is measured once per process
(a few large matmuls in the training dtype), not read off a spec sheet, so a laptop CPU and an H100
are judged against what their own BLAS/cuBLAS reaches. Model FLOPs follow the usual convention
(PaLM appendix B): 6 x parameters x tokens for the weights (forward + backward), plus attention
12 x layers x dim x (N^2 + N x L_text) per sample; recomputation under activation checkpointing is not counted.
"""

from __future__ import annotations

import time

import torch

from kinema.config import DiTConfig

_PEAKS: dict[tuple[str, torch.dtype], float] = {}


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                        seconds: float = 0.25) -> float:
    """Measured dense matmul FLOP/s on ``device`` in ``dtype`` (cached per device and dtype)."""
    key = (str(device), dtype)
    if key in _PEAKS:
        return _PEAKS[key]
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.matmul(a, b)  # warm-up (kernel selection, thread pool start)
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    _PEAKS[key] = 2 * size**3 / best
    return _PEAKS[key]


def dit_tokens(cfg: DiTConfig, grid: tuple[int, int, int]) -> int:
    """Spacetime patches (tokens) of one latent grid (frames, height, width)."""
    pt, ph, pw = cfg.patch_size
    return (grid[0] // pt) * (grid[1] // ph) * (grid[2] // pw)


def dit_train_flops(cfg: DiTConfig, params: int, tokens: int, text_len: int) -> float:
    """Forward + backward FLOPs of one sample of ``tokens`` patches with ``text_len`` text tokens."""
    attention = 12 * cfg.num_layers * cfg.dim * (tokens * tokens + tokens * text_len)
    return 6.0 * params * tokens + attention
