"""MONAI transform chains for a task: loading, orientation, resampling, CT windowing, augmentation.

The deterministic part is written once as data (:func:`preprocess_spec`: MONAI class names and
arguments) and used twice: instantiated here for training and validation, and written verbatim into
the exported bundle's ``inference.json``, so deployment sees exactly the intensities and grid that
training saw. ``CacheDataset`` caches everything up to the first random transform.
"""

from __future__ import annotations

import math
from typing import Any

from monai import transforms as mt

from medseg.transforms.resample import ScaleSpacingd

KEYS = ("image", "label")


def ct_window(window: dict[str, float]) -> tuple[float, float]:
    """Return ``(a_min, a_max)`` in HU for a ``{level, width}`` window."""
    level, width = float(window["level"]), float(window["width"])
    return level - width / 2.0, level + width / 2.0


def preprocess_spec(cfg: dict[str, Any], keys: tuple[str, ...] = KEYS) -> list[dict[str, Any]]:
    """The deterministic preprocessing as MONAI-bundle style entries ``{"_target_": name, **kwargs}``.

    Example:
        >>> [t["_target_"] for t in preprocess_spec(cfg, ("image",))][:3]
        ['LoadImaged', 'EnsureChannelFirstd', 'Orientationd']
    """
    pre = cfg["preprocessing"]
    a_min, a_max = ct_window(pre["window"])
    k = list(keys)
    modes = ["bilinear" if key == "image" else "nearest" for key in keys]
    spec = [
        {"_target_": "LoadImaged", "keys": k, "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": k},
        {"_target_": "Orientationd", "keys": k, "axcodes": pre["orientation"], "labels": None},
        {"_target_": "ScaleSpacingd", "keys": k, "pixdim": list(pre["spacing"]), "mode": modes},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": a_min, "a_max": a_max,
         "b_min": 0.0, "b_max": 1.0, "clip": True},
    ]
    label_map = cfg["data"].get("label_map") or {}
    if "label" in keys and label_map:  # file values -> label values, e.g. 0/255 masks (medseg.data.layouts)
        spec.insert(1, {"_target_": "MapLabelValued", "keys": "label", "orig_labels": [int(v) for v in label_map],
                        "target_labels": [int(v) for v in label_map.values()]})
    if pre["crop_foreground"]:
        spec.append({"_target_": "CropForegroundd", "keys": k, "source_key": "image", "allow_smaller": True})
    spec.append({"_target_": "EnsureTyped", "keys": k, "track_meta": True})
    return spec


#: medseg's own transforms, by the name the specs use (bundles import them from their scripts/ folder)
OWN_TRANSFORMS = {"ScaleSpacingd": ScaleSpacingd}


def _instantiate(spec: list[dict[str, Any]]) -> list:
    return [
        (OWN_TRANSFORMS.get(s["_target_"]) or getattr(mt, s["_target_"]))(**{a: v for a, v in s.items() if a != "_target_"})
        for s in spec
    ]


def augment_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Patch sampling and augmentation after preprocessing, as bundle-style entries (used for ``train.json`` too)."""
    aug, train = cfg["augmentation"], cfg["training"]
    patch = list(train["patch_size"])
    keys = list(KEYS)
    both = ["bilinear", "nearest"]
    spec: list[dict[str, Any]] = [
        {"_target_": "SpatialPadd", "keys": keys, "spatial_size": patch},
        {"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label", "spatial_size": patch,
         "pos": train["pos_neg_ratio"], "neg": 1.0, "num_samples": 1, "image_key": "image", "image_threshold": 0.0},
    ]
    elastic = aug["elastic"]
    if elastic["prob"] > 0:
        spec.append({"_target_": "Rand3DElasticd" if len(patch) == 3 else "Rand2DElasticd", "keys": keys,
                     "sigma_range": list(elastic["sigma"]), "magnitude_range": list(elastic["magnitude"]),
                     "prob": elastic["prob"], "mode": both, "padding_mode": "zeros"}
                    | ({} if len(patch) == 3 else {"spacing": list(elastic["sigma"])}))
    if aug["rotate_prob"] > 0 or aug["scale_prob"] > 0:
        rot = math.radians(aug["rotate_deg"])
        lo, hi = aug["scale"]
        spec.append({
            "_target_": "RandAffined", "keys": keys, "prob": max(aug["rotate_prob"], aug["scale_prob"]),
            "rotate_range": [[-rot, rot]] * (len(patch) if len(patch) == 3 else 1) if aug["rotate_prob"] > 0 else None,
            "scale_range": [[lo - 1.0, hi - 1.0]] * len(patch) if aug["scale_prob"] > 0 else None,
            "mode": both, "padding_mode": "zeros",
        })
    if aug["flip_prob"] > 0:
        spec += [{"_target_": "RandFlipd", "keys": keys, "prob": aug["flip_prob"], "spatial_axis": a}
                 for a in range(len(patch))]
    if aug["intensity_prob"] > 0:
        spec += [
            {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": aug["intensity_shift"],
             "prob": aug["intensity_prob"]},
            {"_target_": "RandScaleIntensityd", "keys": "image", "factors": aug["intensity_shift"],
             "prob": aug["intensity_prob"]},
        ]
    return spec


def build_train_transforms(cfg: dict[str, Any]) -> mt.Compose:
    """Preprocessing, then label-balanced patch sampling and augmentation for training."""
    return mt.Compose(_instantiate(preprocess_spec(cfg, KEYS) + augment_spec(cfg)))


def build_eval_transforms(cfg: dict[str, Any], with_label: bool = True) -> mt.Compose:
    """Deterministic preprocessing for validation and inference (invertible with ``Invertd``)."""
    return mt.Compose(_instantiate(preprocess_spec(cfg, KEYS if with_label else ("image",))))
