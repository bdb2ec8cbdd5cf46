"""2D networks on 3D volumes: training samples 2D slices from the preprocessed volumes.

With ``network.slice_mode: true`` the patch sampling of :func:`medseg.transforms.pipeline.crop_spec` is
replaced by :func:`slice_crop_spec`: pad each volume's slices up to ``training.patch_size`` (2 values),
sample a one-slice-thick patch across ``network.slice_axis`` (label-balanced, as for 3D patches: a
foreground voxel is the centre with probability ``pos/(pos+neg)``), and drop that axis. The 2D
augmentation that follows is the usual one for 2-value patches. Inference runs the network slice by
slice with MONAI's ``SliceInferer`` (:func:`medseg.networks.bundle.inferer_def`), so metrics stay 3D.
The bundle's ``train.json`` runs the same chain on stock MONAI (medseg's own transforms ship in ``scripts/``).
"""

from __future__ import annotations

from typing import Any

KEYS = ("image", "label")


def slice_crop_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Bundle-style entries that turn a preprocessed (C, X, Y, Z) volume into a (C, H, W) slice patch.

    Example:
        >>> [s["_target_"] for s in slice_crop_spec(cfg)]
        ['SpatialPadd', 'FgBgSampleIndicesd', 'RandCropByPosNegLabeld', 'DeleteItemsd', 'SqueezeDimd']
    """
    axis = int(cfg["network"]["slice_axis"])
    patch = [int(p) for p in cfg["training"]["patch_size"]]
    keys = list(KEYS)
    pad = patch[:axis] + [-1] + patch[axis:]  # -1: leave the slicing axis as it is
    thin = patch[:axis] + [1] + patch[axis:]
    spec: list[dict[str, Any]] = [{"_target_": "SpatialPadd", "keys": keys, "spatial_size": pad}]
    if cfg["augmentation"]["crop"]["mode"] == "random":
        spec.append({"_target_": "RandSpatialCropd", "keys": keys, "roi_size": thin, "random_size": False})
    else:
        from medseg.transforms.pipeline import balanced_crop_spec

        spec += balanced_crop_spec(cfg, thin)
    spec.append({"_target_": "SqueezeDimd", "keys": keys, "dim": axis + 1})  # +1: the channel axis comes first
    return spec

