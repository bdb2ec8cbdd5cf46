"""Sliding-window prediction mapped back onto each input's own grid, and the final evaluation."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import Invertd, LoadImage

from medseg.data.labelmaps import case_name, mapped_labels, write_label_nifti
from medseg.engine.fastpath import faster_steps, invert_to_labels, keep_largest_component_, split_loading
from medseg.errors import MedsegError
from medseg.evaluation import evaluate_case
from medseg.transforms import build_eval_transforms, input_channels

logger = logging.getLogger("medseg.evaluate")


def predict_case(
    cfg: dict[str, Any], net: torch.nn.Module, case: dict[str, str], device: torch.device, transforms=None,
    tta: bool = False,
) -> MetaTensor:
    """Predict one case; returns the label map (1, *spatial) on the original image grid, post-processed.

    Args:
        cfg: resolved task config.
        net: the trained network.
        case: ``{"image": path}`` (a file or a DICOM series folder; a ``label`` key is carried along).
        device: where the network runs.
        transforms: the deterministic preprocessing (default: built from ``cfg``).
        tta: average the softmax over mirrored copies of the input (every combination of axes).
    """
    transforms = transforms or build_eval_transforms(cfg)
    preloaded = split_loading(transforms, case)
    if preloaded is not None:  # NIfTI: same tensor and metadata as LoadImaged, without its row-major copy
        transforms, case = preloaded
    transforms = faster_steps(transforms)
    data = transforms(dict(case))
    image = data["image"]
    expected = input_channels(cfg)
    if image.shape[0] != expected:
        raise MedsegError(f"{case['image']}: {image.shape[0]} image channels; the network takes {expected}")
    inferer = sliding_window_inferer(cfg)
    batch = image.unsqueeze(0).to(device)
    dims = list(range(2, batch.ndim))
    flips = [list(c) for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)] if tta else [[]]
    net.eval()
    probs = None
    with torch.no_grad():
        for axes in flips:
            x = torch.flip(batch, axes) if axes else batch
            p = torch.softmax(inferer(x, net), 1)
            p = torch.flip(p, axes) if axes else p
            probs = p if probs is None else probs.add_(p)
    probs = (probs.div_(len(flips)) if len(flips) > 1 else probs)[0].cpu()  # in place: a volume less to allocate
    labels = invert_to_labels(probs, image, transforms)  # None: a chain it does not cover, MONAI's Invertd runs
    if labels is None:
        labels = invert_argmax(probs, data, transforms)
    for members in largest_component_labels(cfg):
        keep_largest_component_(labels.as_tensor(), members)
    return labels


def invert_argmax(probs: torch.Tensor, data: dict[str, Any], transforms) -> MetaTensor:
    """MONAI's way to the label map on the input grid: ``Invertd`` of the probabilities, then argmax (uint8)."""
    image = data["image"]
    pred = MetaTensor(probs, meta=image.meta, applied_operations=image.applied_operations)
    inverted = Invertd(keys="pred", transform=transforms, orig_keys="image", nearest_interp=False)({**data, "pred": pred})
    # torch.max(...).indices is argmax; torch.argmax over dim 0 is ~10x slower on CPU (1.8 s vs 0.17 s, 3x512x512x100)
    labels = torch.max(inverted["pred"].as_tensor(), dim=0, keepdim=True).indices.to(torch.uint8)
    return MetaTensor(labels, meta=inverted["pred"].meta)


def largest_component_labels(cfg: dict[str, Any]) -> list[list[int]]:
    """Label sets whose union is reduced to its largest connected component after prediction."""
    classes = cfg["evaluation"]["classes"]
    return [list(classes[name]) for name in cfg["evaluation"]["keep_largest_component"]]


def case_id(case: dict[str, str]) -> str:
    """A case's name: its image file name without the image suffix."""
    image = case["image"]
    return case_name(Path(image[0] if isinstance(image, list) else image))  # first channel of a multi-channel case


def sliding_window_inferer(cfg: dict[str, Any]) -> Inferer:
    """Training-patch-sized windows, Gaussian blending, the configured overlap; with ``network.slice_mode``
    MONAI's SliceInferer (a 2D network slice by slice through the volume; the bundle uses the same entry)."""
    from medseg.networks.bundle import build_inferer

    return build_inferer(cfg)


def evaluate_cases(
    cfg: dict[str, Any], net: torch.nn.Module, cases: list[dict[str, str]], device: torch.device, pred_dir: Path
) -> dict[str, dict[str, dict[str, float | str]]]:
    """Predict each case on its original grid, write the prediction, and compute metrics in mm."""
    pred_dir.mkdir(parents=True, exist_ok=True)
    transforms = build_eval_transforms(cfg)
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    per_case = {}
    for i, case in enumerate(cases, 1):
        cid = case_id(case)
        pred = predict_case(cfg, net, case, device, transforms)
        ref = loader(case["label"])
        if tuple(pred.shape[1:]) != tuple(ref.shape[1:]):
            raise RuntimeError(f"{cid}: inverted prediction {tuple(pred.shape)} does not match label {tuple(ref.shape)}")
        affine = np.asarray(ref.affine, dtype=np.float64)
        nd = ref.ndim - 1  # spatial dims (2D images carry a 3x3 or 4x4 affine)
        spacing = np.sqrt((affine[:nd, :nd] ** 2).sum(axis=0))
        per_case[cid] = evaluate_case(
            pred[0].numpy(), mapped_labels(ref[0].numpy(), cfg["data"].get("label_map")), spacing, cfg["evaluation"]["classes"],
            tolerance_mm=cfg["evaluation"]["tolerance_mm"], worst_mm=cfg["evaluation"]["worst_mm"] or None,
        )
        write_label_nifti(pred[0].numpy(), affine, pred_dir / f"{cid}.nii.gz", source=Path(case["image"]))
        dice = ", ".join(f"{k} Dice {v['dice']:.3f}" for k, v in per_case[cid].items())
        logger.info("evaluated case %d/%d (%s): %s", i, len(cases), cid, dice)
    return per_case
