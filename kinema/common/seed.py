"""Seeding: one call for the global RNGs, and explicit generators for sampling noise."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (all devices) with ``seed``; returns nothing."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # numpy accepts 32-bit seeds only
    torch.manual_seed(seed)  # also seeds every CUDA device


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``: same seed + device + dtype = same noise."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return torch.Generator(device=torch.device(device)).manual_seed(seed)
