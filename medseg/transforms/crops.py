"""Patch sampling after preprocessing, as bundle-style entries: 3D/2D patches, or 2D slices of 3D volumes.

:func:`crop_spec` pads each case up to ``training.patch_size`` and samples one patch per draw, uniformly
or label-balanced (:func:`balanced_crop_spec`: a foreground voxel is the centre with probability
``pos/(pos+neg)``).

Slice mode (``network.slice_mode: true``, a 2D network on 3D volumes): :func:`slice_crop_spec` pads each
volume's slices up to the 2-value ``training.patch_size``, samples a one-slice-thick patch across
``network.slice_axis`` (label-balanced as for 3D patches) and drops that axis; the 2D augmentation that
follows is the usual one for 2-value patches. Inference runs the network slice by slice with MONAI's
``SliceInferer`` (:func:`medseg.networks.bundle.inferer_def`), so metrics stay 3D. The bundle's ``train.json``
runs the same chain on stock MONAI (medseg's own transforms ship in ``scripts/``).
"""

from __future__ import annotations

from typing import Any

KEYS = ("image", "label")
#: training losses that read the U-Net weight map (a "weight" key beside image and label, see .microscopy)
WEIGHTED_LOSSES = ("weighted_ce", "weighted_dice_ce")


def sample_keys(cfg: dict[str, Any]) -> list[str]:
    """The keys cropped and augmented together: image and label, and the weight map for the weighted losses."""
    return [*KEYS, "weight"] if cfg.training.loss in WEIGHTED_LOSSES else list(KEYS)


def crop_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Padding to the patch size and patch sampling (label-balanced or uniform; slices in slice mode)."""
    if cfg.network.slice_mode:
        return slice_crop_spec(cfg)
    aug, train = cfg.augmentation, cfg.training
    patch = list(train.patch_size)
    keys = sample_keys(cfg)
    spec: list[dict[str, Any]] = []
    if aug.crop.pad_to_patch:
        spec.append({"_target_": "SpatialPadd", "keys": keys, "spatial_size": patch})
    if aug.crop.mode == "random":
        spec.append({"_target_": "RandSpatialCropd", "keys": keys, "roi_size": patch, "random_size": False})
    else:
        spec += balanced_crop_spec(cfg, patch)
    return spec


def balanced_crop_spec(cfg: dict[str, Any], size: list[int]) -> list[dict[str, Any]]:
    """Label-balanced patch sampling: a foreground voxel is the centre with probability pos/(pos+neg).

    The voxel lists are made once per volume and cached with it
    (:class:`~medseg.transforms.sampling.FgBgSampleIndicesd`); searching the label on every draw costs more
    than the draw (~0.4 s per slice on the liver sample in slice mode).
    """
    keys = sample_keys(cfg)
    fg, bg = "label_fg_indices", "label_bg_indices"
    return [
        {"_target_": "FgBgSampleIndicesd", "keys": "label", "image_key": "image", "image_threshold": 0.0,
         "max_samples": 20000, "seed": int(cfg.training.seed)},
        {"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label", "spatial_size": size,
         "pos": cfg.training.pos_neg_ratio, "neg": 1.0, "num_samples": 1, "image_key": "image",
         "image_threshold": 0.0, "fg_indices_key": fg, "bg_indices_key": bg},
        {"_target_": "DeleteItemsd", "keys": [fg, bg]},
    ]


def slice_crop_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Bundle-style entries that turn a preprocessed (C, X, Y, Z) volume into a (C, H, W) slice patch.

    Example:
        >>> [s["_target_"] for s in slice_crop_spec(cfg)]
        ['SpatialPadd', 'FgBgSampleIndicesd', 'RandCropByPosNegLabeld', 'DeleteItemsd', 'SqueezeDimd']
    """
    axis = int(cfg.network.slice_axis)
    patch = [int(p) for p in cfg.training.patch_size]
    keys = sample_keys(cfg)
    pad = patch[:axis] + [-1] + patch[axis:]  # -1: leave the slicing axis as it is
    thin = patch[:axis] + [1] + patch[axis:]
    spec: list[dict[str, Any]] = [{"_target_": "SpatialPadd", "keys": keys, "spatial_size": pad}]
    if cfg.augmentation.crop.mode == "random":
        spec.append({"_target_": "RandSpatialCropd", "keys": keys, "roi_size": thin, "random_size": False})
    else:
        spec += balanced_crop_spec(cfg, thin)
    spec.append({"_target_": "SqueezeDimd", "keys": keys, "dim": axis + 1})  # +1: the channel axis comes first
    return spec
