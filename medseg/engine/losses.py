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
=============  ======================================================================================

The soft Dice is ``1 - (2 |P.G| + eps) / (|P| + |G| + eps)`` per case and class with ``eps =
dice_smooth``, averaged over classes (the background channel only with ``include_background``) and
cases. The defaults (``dice_ce``, weights 1 and 1, eps 1e-5, background included) are MONAI's
``DiceCELoss(to_onehot_y=True, softmax=True)``.
"""

from __future__ import annotations

from typing import Any

import torch
import monai.losses

from medseg.errors import MedsegError

LOSSES = ("dice_ce", "dice", "ce", "dice_focal")


def monai_loss_def(train_cfg: dict[str, Any]) -> dict[str, Any]:
    """The loss named by ``train_cfg['loss']`` as a MONAI config entry (``_target_`` + arguments); the
    bundle's ``train.json`` uses the same entry, so a retrain from the bundle optimises the same loss."""
    name = train_cfg["loss"]
    eps = float(train_cfg["dice_smooth"])
    alpha, beta = float(train_cfg["ce_weight"]), float(train_cfg["dice_weight"])
    dice_args = {"to_onehot_y": True, "softmax": True, "smooth_nr": eps, "smooth_dr": eps,
                 "include_background": bool(train_cfg["include_background"])}
    if name == "dice_ce":
        return {"_target_": "DiceCELoss", **dice_args, "lambda_ce": alpha, "lambda_dice": beta}
    if name == "dice":
        return {"_target_": "DiceLoss", **dice_args}
    if name == "ce":
        return {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "lambda_ce": alpha, "lambda_dice": 0.0}
    if name == "dice_focal":
        return {"_target_": "DiceFocalLoss", **dice_args, "gamma": float(train_cfg["focal_gamma"]),
                "lambda_dice": beta, "lambda_focal": alpha}
    raise MedsegError(f"training.loss '{name}' is not known; choose one of {', '.join(LOSSES)}")


def build_loss(train_cfg: dict[str, Any]) -> torch.nn.Module:
    """The loss named by ``train_cfg['loss']`` with its weights, smoothing and background option.

    Example:
        >>> loss = build_loss({"loss": "dice_ce", "ce_weight": 1.0, "dice_weight": 1.0, "dice_smooth": 1e-5,
        ...                    "include_background": True, "focal_gamma": 2.0})
    """
    entry = monai_loss_def(train_cfg)
    return getattr(monai.losses, entry.pop("_target_"))(**entry)
