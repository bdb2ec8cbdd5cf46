"""Segmentation losses from the ``training`` section of a task config (MONAI's loss classes).

Every loss takes raw network logits ``(B, C, *spatial)`` and an integer label map ``(B, 1, *spatial)``
(one-hot encoded and soft-maxed inside the loss).

=============  ======================================================================================
``loss``       what is computed
=============  ======================================================================================
``dice_ce``    ``ce_weight`` x cross-entropy + ``dice_weight`` x soft Dice (``monai.losses.DiceCELoss``)
``dice``       soft Dice (``monai.losses.DiceLoss``)
``ce``         cross-entropy (``DiceCELoss`` with the Dice weight 0), times ``ce_weight``
``dice_focal`` ``dice_weight`` x soft Dice + ``ce_weight`` x focal loss, ``focal_gamma``
               (``monai.losses.DiceFocalLoss``)
``weighted_ce`` ``ce_weight`` x mean(w x cross-entropy), w the U-Net weight map (``training.weight_map``;
               :class:`medseg.transforms.microscopy.WeightMapLoss`, own: MONAI has no pixel-weighted CE)
``weighted_dice_ce`` the same plus ``dice_weight`` x soft Dice
=============  ======================================================================================

The soft Dice is ``1 - (2 |P.G| + eps) / (|P| + |G| + eps)`` per case and class with ``eps =
dice_smooth``, averaged over classes (the background channel only with ``include_background``) and
cases. The defaults (``dice_ce``, weights 1 and 1, eps 1e-5, background included) are MONAI's
``DiceCELoss(to_onehot_y=True, softmax=True)``.
"""

from __future__ import annotations

from typing import Any

import monai.losses
import torch

from medseg.config import TrainingConfig
from medseg.config.registries import LOSSES
from medseg.transforms.microscopy import WeightMapLoss

#: own loss classes by the ``_target_`` their entries name (bundles ship them in scripts/medseg_transforms)
OWN_LOSSES = {"WeightMapLoss": WeightMapLoss}


def training_section(tr: Any) -> TrainingConfig:
    """``tr`` itself, checked to be the training section (``cfg.training``; tests and benchmarks build one with
    :func:`medseg.config.load_config` or ``TrainingConfig.model_validate``)."""
    if isinstance(tr, TrainingConfig):
        return tr
    raise TypeError(f"expected the training section (a TrainingConfig), got {type(tr).__name__}")


def _dice_args(tr: TrainingConfig) -> dict[str, Any]:
    eps = float(tr.dice_smooth)
    return {"to_onehot_y": True, "softmax": True, "smooth_nr": eps, "smooth_dr": eps,
            "include_background": bool(tr.include_background)}


def dice_ce_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "DiceCELoss", **_dice_args(tr), "lambda_ce": float(tr.ce_weight),
            "lambda_dice": float(tr.dice_weight)}


def dice_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "DiceLoss", **_dice_args(tr)}


def ce_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "lambda_ce": float(tr.ce_weight),
            "lambda_dice": 0.0}


def dice_focal_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "DiceFocalLoss", **_dice_args(tr), "gamma": float(tr.focal_gamma),
            "lambda_dice": float(tr.dice_weight), "lambda_focal": float(tr.ce_weight)}


def weighted_ce_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "WeightMapLoss", "ce_weight": float(tr.ce_weight), "dice_weight": 0.0}


def weighted_dice_ce_def(tr: TrainingConfig) -> dict[str, Any]:
    eps = float(tr.dice_smooth)
    return {"_target_": "WeightMapLoss", "ce_weight": float(tr.ce_weight), "dice_weight": float(tr.dice_weight),
            "include_background": bool(tr.include_background), "smooth_nr": eps, "smooth_dr": eps}


def monai_loss_def(tr: TrainingConfig) -> dict[str, Any]:
    """The loss named by ``training.loss`` as a MONAI config entry (``_target_`` + arguments); the bundle's
    ``train.json`` uses the same entry, so a retrain from the bundle optimises the same loss. The builder of
    each name is found in :data:`medseg.config.registries.LOSSES`."""
    tr = training_section(tr)
    return LOSSES.resolve(tr.loss)(tr)


def build_loss(tr: TrainingConfig) -> torch.nn.Module:
    """The loss named by ``training.loss`` with its weights, smoothing and background option.

    Example:
        >>> loss = build_loss(load_config("liver").training)
    """
    entry = monai_loss_def(tr)
    target = entry.pop("_target_")
    return (OWN_LOSSES.get(target) or getattr(monai.losses, target))(**entry)
