"""Microscopy pieces MONAI lacks: the U-Net weight map and its loss, colour to grey.

- :func:`unet_weight_map` / :class:`WeightMapd`: Ronneberger et al. 2015, eq. 2,
  ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``, ``w_c`` the class-balancing weight
  (``N / (K n_c)``: every class present gets the same total weight), ``d1``/``d2`` the distances to the nearest
  and second-nearest object. The border term is put on the pixels outside every object (the thin class
  between touching cells, where the paper shows it). Objects are instances given, or the connected components
  of the object class. Computed once per image in the deterministic (cached) part of the training chain.
  Own code: MONAI has no weight map; scipy's Euclidean distance transform per object, each in the object's
  bounding box grown by the distance where the term falls below ``1e-4 * w0`` (exact there, 0 beyond).
- :class:`WeightMapLoss`: pixel-weighted cross-entropy (``training.loss: weighted_ce``), plus MONAI's soft Dice
  (``weighted_dice_ce``). The weight map reaches it as a second channel of the label (``ConcatItemsd`` at the end
  of the training chain), so MONAI's ``SupervisedTrainer`` and the bundle's ``train.json`` pass it unchanged.
- :class:`RGBToGreyd`: colour pictures to one grey channel (ITU-R BT.601 luma), for ``data.rgb: grey``.

Imports only torch, numpy, scipy and MONAI: exported bundles ship it in ``scripts/medseg_transforms/``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.losses import DiceLoss
from monai.transforms import MapTransform
from scipy import ndimage

from .metatensors import with_meta

LUMA = (0.299, 0.587, 0.114)


def object_instances(label: np.ndarray, objects: int = 0) -> np.ndarray:
    """Connected components (full connectivity) of the object class (``objects``; 0: every value > 0)."""
    mask = label > 0 if objects == 0 else label == objects
    return ndimage.label(mask, structure=np.ones((3,) * label.ndim, dtype=bool))[0]


def class_weights(label: np.ndarray) -> np.ndarray:
    """``w_c``: ``N / (K n_c)`` for each of the ``K`` label values present (mean weight 1)."""
    values, inverse, counts = np.unique(label, return_inverse=True, return_counts=True)
    per_class = label.size / (len(values) * counts.astype(np.float64))
    return per_class[inverse].reshape(label.shape)


def border_term(instances: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """``w0 exp(-(d1 + d2)^2 / 2 sigma^2)`` on the pixels outside every object (0 with fewer than 2 objects)."""
    shape = instances.shape
    reach = sigma * float(np.sqrt(2.0 * np.log(1e4)))  # d1 + d2 beyond this: term < 1e-4 w0
    d1 = np.full(shape, np.inf)
    d2 = np.full(shape, np.inf)
    boxes = ndimage.find_objects(instances)
    margin = int(np.ceil(reach)) + 1
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, shape))
        dist = ndimage.distance_transform_edt(instances[grown] != index)
        a, b = d1[grown], d2[grown]
        closer = dist < a
        b[:] = np.where(closer, a, np.minimum(b, dist))
        a[:] = np.where(closer, dist, a)
    term = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    term[~np.isfinite(d2)] = 0.0
    term[instances > 0] = 0.0
    return term


def unet_weight_map(label: np.ndarray, w0: float = 10.0, sigma: float = 5.0, objects: int = 0,
                    instances: np.ndarray | None = None) -> np.ndarray:
    """The U-Net weight map (float32, the label's shape), 2D or 3D, distances in pixels (voxels).

    Args:
        label: the semantic label map (class balancing counts its values).
        w0, sigma: the border term's height and width (the paper: 10 and about 5 px).
        objects: the label value of the objects (cells, nuclei); 0 = every foreground value.
        instances: an instance label image (0 = no object); default: connected components of the object class.

    Example:
        >>> w = unet_weight_map(mask, w0=10, sigma=5)   # mask: 0 background, 1 cells
    """
    label = np.asarray(label)
    inst = object_instances(label, objects) if instances is None else np.asarray(instances)
    return (class_weights(label) + border_term(inst, w0, sigma)).astype(np.float32)


class WeightMapd(MapTransform):
    """``weight_key`` = :func:`unet_weight_map` of the label under ``keys`` (channel first, ``(1, *spatial)``),
    with the label's metadata. Deterministic, so a ``CacheDataset`` computes it once per training image."""

    def __init__(self, keys: KeysCollection = "label", weight_key: str = "weight", w0: float = 10.0,
                 sigma: float = 5.0, objects: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.weight_key, self.w0, self.sigma, self.objects = weight_key, float(w0), float(sigma), int(objects)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            array = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            weight = unet_weight_map(np.rint(array[0]).astype(np.int64), self.w0, self.sigma, self.objects)
            d[self.weight_key] = with_meta(label, torch.from_numpy(weight[None]))
        return d


class RGBToGreyd(MapTransform):
    """Three (or four, alpha dropped) channels -> one grey channel (BT.601 luma); other images unchanged."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] in (3, 4):
                weights = torch.as_tensor(LUMA, dtype=torch.float32).reshape(3, *([1] * (image.ndim - 1)))
                grey = (torch.as_tensor(image[:3]).float() * weights).sum(0, keepdim=True)
                d[key] = with_meta(image, grey)
        return d


class WeightMapLoss(torch.nn.Module):
    """Pixel-weighted cross-entropy ``mean(w * CE)`` (``ce_weight``), plus ``dice_weight`` x MONAI's soft Dice.

    ``target``: ``(B, 1, *spatial)`` class labels, or ``(B, 2, *spatial)`` with the weight map as channel 1 (the
    training chain's ``ConcatItemsd``); without the weight channel every pixel weighs 1 (validation).
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 0.0, include_background: bool = True,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5) -> None:
        super().__init__()
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=include_background,
                             smooth_nr=smooth_nr, smooth_dr=smooth_dr) if dice_weight > 0 else None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = target[:, :1]
        weight = target[:, 1].float() if target.shape[1] > 1 else torch.ones_like(target[:, 0], dtype=torch.float32)
        ce = torch.nn.functional.cross_entropy(input, labels[:, 0].long(), reduction="none")
        loss = self.ce_weight * (ce * weight).mean()
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(input, labels)
        return loss
