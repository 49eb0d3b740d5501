"""Conditioning on given frames: one mechanism for image-to-video, extend, loop, connect and keyframes."""

from .condition import PATTERNS, Condition, conditioned_velocity, cyclic_velocity, sample_mask

__all__ = ["Condition", "conditioned_velocity", "cyclic_velocity", "sample_mask", "PATTERNS"]
