"""Preprocessing and augmentation, built from the task config as MONAI ``Compose`` chains."""

from __future__ import annotations

from medseg.transforms.pipeline import (
    augment_spec,
    build_eval_transforms,
    build_train_transforms,
    ct_window,
    preprocess_spec,
)

__all__ = ["augment_spec", "build_train_transforms", "build_eval_transforms", "ct_window", "preprocess_spec"]
