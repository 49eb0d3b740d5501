"""The spacetime-patch Diffusion Transformer."""

from .model import DiT
from .patchify import patch_grid, patchify, unpatchify

__all__ = ["DiT", "patch_grid", "patchify", "unpatchify"]
