"""Preprocessing and augmentation, built from the task config as MONAI ``Compose`` chains.

- :mod:`.pipeline`: the chains as bundle-style specs (``preprocess_spec``, ``augment_spec``) and built.
- :mod:`.crops`: patch sampling (3D/2D patches, 2D slices of 3D volumes).
- own transforms where MONAI lacks one: :mod:`.resample` (spacing), :mod:`.intensity` (stacked windows,
  foreground z-score, Nyul), :mod:`.bias` (N4), :mod:`.deform` (one-resampling augmentation),
  :mod:`.sampling` (cached fg/bg indices); they ship in bundles' ``scripts/``.
- :mod:`.settings` (windows, channels), :mod:`.fit` (values fitted from the training cases),
  :mod:`.seeding` (loader generators), :mod:`.preview` (the augmentation preview's patches).
"""

from __future__ import annotations

from medseg.transforms.fit import fit_preprocessing
from medseg.transforms.pipeline import augment_spec, build_eval_transforms, build_train_transforms, preprocess_spec
from medseg.transforms.seeding import data_generator
from medseg.transforms.settings import ct_window, input_channels, windows

__all__ = ["augment_spec", "build_eval_transforms", "build_train_transforms", "ct_window", "data_generator",
           "fit_preprocessing", "input_channels", "preprocess_spec", "windows"]
