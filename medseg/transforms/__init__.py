"""Preprocessing and augmentation, built from the task config as MONAI ``Compose`` chains.

The names below load lazily: :mod:`medseg.config` imports :mod:`medseg.transforms.settings` to validate
a config without importing MONAI.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "augment_spec": "pipeline",
    "build_eval_transforms": "pipeline",
    "build_train_transforms": "pipeline",
    "preprocess_spec": "pipeline",
    "ct_window": "settings",
    "windows": "settings",
    "input_channels": "settings",
    "fit_preprocessing": "fit",
    "data_generator": "seeding",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"medseg.transforms.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'medseg.transforms' has no attribute {name!r}")
