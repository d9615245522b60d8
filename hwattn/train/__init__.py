"""Training harness: `train(TrainConfig)`, checkpoints, and the `hwattn train` / `hwattn compare` commands.

Kept import-light (the CLI imports this package to build its parser); the heavy parts load on first use.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"TrainConfig": "hwattn.train.config", "PRESETS": "hwattn.train.config",
            "preset_config": "hwattn.train.config", "train": "hwattn.train.trainer",
            "evaluate": "hwattn.train.trainer", "save_checkpoint": "hwattn.train.checkpoint",
            "load_checkpoint": "hwattn.train.checkpoint"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hwattn.train' has no attribute {name!r}")
