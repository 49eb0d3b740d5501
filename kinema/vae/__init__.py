"""Causal video VAE (Wan 2.1 layout)."""

from .model import VAE

__all__ = ["VAE"]
