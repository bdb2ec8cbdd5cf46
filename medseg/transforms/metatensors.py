"""MetaTensor helpers shared by medseg's own transforms: new values that keep an image's metadata.

Imports only torch and MONAI: exported bundles ship this module in ``scripts/medseg_transforms/``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform


def with_meta(img: Any, values: torch.Tensor) -> Any:
    """``values`` with the metadata and transform history of ``img`` (a plain tensor when ``img`` is one)."""
    if isinstance(img, MetaTensor):
        return MetaTensor(values, meta=dict(img.meta), applied_operations=list(img.applied_operations))
    return values


def plain(img: Any) -> torch.Tensor:
    """The values of ``img`` (MetaTensor, tensor or array) as a plain tensor."""
    return img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)


def map_channels(transform: MapTransform, data: Mapping[Hashable, Any],
                 fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[Hashable, Any]:
    """Apply ``fn`` to each channel (as float) of each of ``transform``'s keys; metadata is kept."""
    d = dict(data)
    for key in transform.key_iterator(d):
        x = plain(d[key]).float()
        d[key] = with_meta(d[key], torch.stack([fn(x[c]) for c in range(x.shape[0])]))
    return d
