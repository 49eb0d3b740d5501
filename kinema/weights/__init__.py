"""Load and save model weights: kinema folders, diffusers-format Wan 2.1 folders, original Wan checkpoints."""

from .folder import (WeightsError, folder_kind, load_dit, load_vae, read_config, read_safetensors, save_diffusers_component,
                     save_model)

__all__ = ["WeightsError", "folder_kind", "load_dit", "load_vae", "read_config", "read_safetensors", "save_model",
           "save_diffusers_component"]
