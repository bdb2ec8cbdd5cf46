"""Click guidance channels for click-guided (interactive) networks: one channel per label after the image.

A click is ``(i, j, k, label)``: a voxel that the user says belongs to ``label`` (a positive click on a class,
or a negative click on a class turned into a click on background). Channel ``label`` holds
``max over its clicks of exp(-d^2 / 2 sigma^2)`` (``d`` the distance in voxels; 1 at the click). All channels
zero is "no clicks": the network then segments automatically.

Own code: ``monai.apps.deepedit``'s AddGuidanceSignalDeepEditd works on numpy per sample with label-name dicts
and a fixed spatial layout; here the maps are drawn on torch tensors (one sample or a batch) in place, only in a
box of 4 sigma around each click. Imports torch, numpy and MONAI only (shipped in bundles' scripts/).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

Click = Sequence[float]  # (i, j, k, label) in voxels of the grid the map is drawn on


def draw_click(channel: torch.Tensor, point: Sequence[float], sigma: float) -> None:
    """``channel = max(channel, exp(-|x - point|^2 / 2 sigma^2))`` in a box of 4 sigma around ``point``, in place."""
    spatial = channel.shape
    radius = max(1, int(math.ceil(4 * sigma)))
    centre = [int(round(float(p))) for p in point]
    if any(c < 0 or c >= n for c, n in zip(centre, spatial)):
        return
    lo = [max(0, c - radius) for c in centre]
    hi = [min(n, c + radius + 1) for c, n in zip(centre, spatial)]
    axes = [torch.arange(a, b, dtype=torch.float32, device=channel.device) - float(p)
            for a, b, p in zip(lo, hi, point)]
    dist2 = sum(g**2 for g in torch.meshgrid(*axes, indexing="ij"))
    blob = torch.exp(-dist2 / (2.0 * sigma * sigma)).to(channel.dtype)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    channel[box] = torch.maximum(channel[box], blob)


def guidance_maps(spatial: Sequence[int], n_labels: int, clicks: Iterable[Click], sigma: float,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n_labels, *spatial)`` click maps for ``clicks`` (labels outside ``0..n_labels-1`` are refused)."""
    maps = torch.zeros((n_labels, *spatial), dtype=torch.float32, device=device)
    for click in clicks:
        *point, label = click
        if not 0 <= int(label) < n_labels:
            raise ValueError(f"click {list(click)}: label {int(label)} is not one of 0..{n_labels - 1}")
        draw_click(maps[int(label)], point, sigma)
    return maps


def map_clicks(clicks: Iterable[Click], from_affine: Any, to_affine: Any) -> list[list[float]]:
    """Clicks in voxels of the grid of ``from_affine`` -> voxels of the grid of ``to_affine`` (both voxel -> world)."""
    src, dst = np.asarray(from_affine, dtype=np.float64), np.asarray(to_affine, dtype=np.float64)
    to_voxel = np.linalg.inv(dst) @ src
    out = []
    for click in clicks:
        *point, label = click
        # a 2D grid carries a 3D (4x4) affine, as MONAI's MetaTensor does: the missing axes are at voxel 0
        pad = [0.0] * max(0, len(to_voxel) - 1 - len(point))
        ijk = to_voxel @ np.array([*map(float, point), *pad, 1.0])
        out.append([*ijk[: len(point)].tolist(), int(label)])
    return out


class AddGuidanced(MapTransform):
    """Append ``n_labels`` click channels to the image (zeros: automatic segmentation).

    With ``data[clicks_key]`` (``[[i, j, k, label], ...]`` in voxels of the file as read, before orientation,
    spacing and crop), the clicks are mapped through the image's original and current affines and drawn.
    The appended channels are not recorded as an applied operation (inverting the chain ignores them).
    """

    def __init__(self, keys: KeysCollection, n_labels: int, sigma: float = 2.0, clicks_key: Hashable = "clicks",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.n_labels, self.sigma, self.clicks_key = int(n_labels), float(sigma), clicks_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            clicks = d.get(self.clicks_key) or []
            if clicks and isinstance(image, MetaTensor) and "original_affine" in image.meta:
                clicks = map_clicks(clicks, image.meta["original_affine"], image.affine)
            maps = guidance_maps(image.shape[1:], self.n_labels, clicks, self.sigma, image.device)
            joined = torch.cat([torch.as_tensor(image), maps.to(image.dtype)])
            d[key] = MetaTensor(joined, meta=image.meta, applied_operations=image.applied_operations) \
                if isinstance(image, MetaTensor) else joined
        return d
