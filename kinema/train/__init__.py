"""Training at any scale: ``train(config, overrides, resume)`` runs unchanged under ``python`` or ``torchrun``.

See ``kinema.train.config`` for the recipe fields, ``kinema.train.data`` for the data sources and the
latent cache format, ``kinema.train.lora`` for the LoRA file format. Names are imported on first use,
so ``import kinema.train`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "kinema.train.config", "TrainError": "kinema.train.config", "load_config": "kinema.train.config",
    "train": "kinema.train.loop", "TrainResult": "kinema.train.loop", "export": "kinema.train.exporter",
    "apply_lora": "kinema.train.lora", "remove_lora": "kinema.train.lora",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kinema.train' has no attribute {name!r}")
