"""One case scored from its files: read both label maps, bring the prediction onto the reference grid, every metric."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.labelmaps import onto_grid
from medseg.data.labels_io import read_labels
from medseg.evaluation.classes import label_values
from medseg.evaluation.metrics import evaluate_case


@dataclass(frozen=True)
class CaseJob:
    """Everything one worker process needs to score one case (picklable)."""

    case: str
    pred: Path | None  # None: a missing prediction, scored as an empty mask
    ref: Path
    classes: dict[str, list[int]] | None  # None: every label value of the reference, one class each
    tolerance_mm: float = 2.0
    resample: bool = False
    worst_mm: float | None = None


def score_case(job: CaseJob) -> tuple[str, dict]:
    """``(case, {class: {metric: value, ..., "flag": ...}})`` for one case (see :func:`evaluate_case`)."""
    ref = read_labels(job.ref)
    if job.pred is None:
        pred = np.zeros(ref.array.shape, dtype=ref.array.dtype)
    else:
        pred = onto_grid(read_labels(job.pred), ref, job.resample, what=f"case '{job.case}'")
    classes = job.classes
    if classes is None:
        classes = {f"label_{v}": [v] for v in label_values(ref.array) if v != 0}
    return job.case, evaluate_case(pred, ref.array, ref.spacing, classes, job.tolerance_mm, job.worst_mm)
