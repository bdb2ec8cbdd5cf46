"""Task configuration: a pipeline YAML over typed defaults, validated key by key into a :class:`TaskConfig`.

- :mod:`medseg.config.schema`: the pydantic models, one per section: every key's default, type and range.
- :mod:`medseg.config.registries`: the option names (networks, losses, optimisers, schedules, CT window presets,
  modalities, layouts, amp modes), each mapped to what implements it; the schema checks names against them
  and the layers that build things look their builders up there, so no list is written twice.
- :mod:`medseg.config.load`: YAML loading, the per-modality defaults, ``--set key=value``, one-line errors.

Why pydantic v2 rather than dataclasses with the jsonschema dependency: the models give typed attribute
access, defaults and range validators in one declaration, and its errors carry the exact location of a
bad value (``('training', 'epochs')``, ``('preprocessing', 'window', 1)``), which maps directly onto the
dotted key of our one-line messages; jsonschema would need the schema written a second time beside the
dataclasses and its error paths re-mapped by hand.

Validation never modifies its input; values fitted from the data live in ``cfg.fitted`` (one function fills
it: :func:`medseg.transforms.fit.fit_preprocessing`) and are read through ``cfg.effective_spacing()`` etc.

Example:
    >>> cfg = load_config("liver", overrides=["training.epochs=2"])
    >>> cfg.network.name, cfg.training.epochs
    ('resunet', 2)
"""

from __future__ import annotations

from medseg.config.load import PIPELINES_DIR, available_tasks, flatten, load_config, parse_override, resolve_task
from medseg.config.schema import (AugmentationConfig, BundleConfig, DataConfig, EvaluationConfig, FittedConfig,
                                  NetworkConfig, PreprocessingConfig, TaskConfig, TrackingConfig, TrainingConfig,
                                  defaults, window_ranges)

#: Every key with its default, as plain dicts (``task`` empty); the schema in :mod:`medseg.config.schema` is
#: where they are declared.
DEFAULTS = defaults()

__all__ = ["DEFAULTS", "PIPELINES_DIR", "AugmentationConfig", "BundleConfig", "DataConfig", "EvaluationConfig",
           "FittedConfig", "NetworkConfig", "PreprocessingConfig", "TaskConfig", "TrackingConfig", "TrainingConfig",
           "available_tasks", "flatten", "load_config", "parse_override", "resolve_task", "window_ranges"]
