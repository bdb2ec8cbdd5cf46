"""Preprocessing and augmentation, built from the task config as MONAI ``Compose`` chains."""

from __future__ import annotations

from medseg.transforms.pipeline import build_eval_transforms, build_train_transforms, ct_window, preprocess_spec

__all__ = ["build_train_transforms", "build_eval_transforms", "ct_window", "preprocess_spec"]
