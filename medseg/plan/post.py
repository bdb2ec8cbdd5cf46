"""The one plan decision taken after training: keep-largest-component per reported class, kept only where it
raises the mean validation Dice of the run's own predictions (nnU-Net's rule, measured on the validation
cases of this run rather than assumed from the fingerprint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import LoadImage

from medseg.data.case import Case
from medseg.data.labelmaps import mapped_labels
from medseg.inference import keep_largest_component_
from medseg.plan.rules import Decision


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(pred, ref).sum()) / total


def decide_largest_component(cfg: Any, cases: list[Case], pred_dir: Path) -> Decision:
    """The classes (of ``evaluation.classes``, or one per label) whose mean validation Dice is higher with only
    their largest connected component kept, from the predictions in ``pred_dir`` (``<case>.nii.gz``)."""
    classes = dict(cfg.evaluation.classes or {n: [v] for n, v in cfg.data.labels.items() if v != 0})
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    before: dict[str, list[float]] = {n: [] for n in classes}
    after: dict[str, list[float]] = {n: [] for n in classes}
    for case in cases:
        pred = loader(str(pred_dir / f"{case.name}.nii.gz")).as_tensor().to(torch.int64).cpu()
        ref = mapped_labels(np.asarray(loader(str(case.label)))[0], cfg.effective_label_map())
        for name, members in classes.items():
            kept = keep_largest_component_(pred.clone(), members)
            truth = np.isin(ref, members)
            before[name].append(_dice(np.isin(pred[0].numpy(), members), truth))
            after[name].append(_dice(np.isin(kept[0].numpy(), members), truth))
    chosen = [n for n in classes if np.mean(after[n]) > np.mean(before[n]) + 1e-4]
    parts = [f"{n} {np.mean(before[n]):.4f} -> {np.mean(after[n]):.4f}" for n in classes]
    return Decision(chosen, f"measured on {len(cases)} validation case(s) after training (mean Dice without ->"
                            f" with): {', '.join(parts)}; kept where it helps: {', '.join(chosen) or 'none'}")
