"""Samples for the augmentation preview: a preprocessed patch and augmented draws of the same case."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.transforms import CenterSpatialCrop, SpatialPad

from medseg.transforms.pipeline import build_eval_transforms, build_train_transforms


def preview_samples(cfg: dict[str, Any], case: dict[str, str], n: int = 3, seed: int = 0):
    """``(image, label, [(aug_image, aug_label), ...])`` as numpy arrays of the training patch size."""
    patch = cfg["training"]["patch_size"]
    fit = lambda x: CenterSpatialCrop(patch)(SpatialPad(patch)(x))  # noqa: E731
    pre = build_eval_transforms(cfg)(dict(case))
    original = (fit(pre["image"])[0].numpy(), fit(pre["label"])[0].numpy())
    chain = build_train_transforms(cfg)
    chain.set_random_state(seed=seed)
    augmented = []
    for _ in range(n):
        sample = chain(dict(case))[0]
        augmented.append((sample["image"][0].numpy(), np.asarray(sample["label"][0].numpy())))
    return original[0], original[1], augmented
