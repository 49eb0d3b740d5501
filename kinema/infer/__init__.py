"""Inference: the Pipeline from request to video."""

from .pipeline import InputError, Pipeline, Settings, Video, bundled_model_path, check_settings, make_settings

__all__ = ["InputError", "Pipeline", "Settings", "Video", "bundled_model_path", "check_settings", "make_settings"]
