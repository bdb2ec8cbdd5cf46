"""One case scored from its files: read both label maps, bring the prediction onto the reference grid, every metric."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.data.labelmaps import LabelMap, onto_grid, same_grid
from medseg.data.labels_io import read_labels
from medseg.errors import MedsegError
from medseg.evaluation.classes import label_values
from medseg.evaluation.metrics import evaluate_case
from medseg.evaluation.surface import bounding_box


@dataclass(frozen=True)
class CaseJob:
    """Everything one worker process needs to score one case (picklable)."""

    case: str
    pred: Path | None  # None: a missing prediction, scored as an empty mask
    ref: Path
    classes: dict[str, list[int]] | None  # None: every label value of the reference and prediction, one class each
    tolerance_mm: float = 2.0
    resample: bool = False
    worst_mm: float | None = None


def outside_voxels(src: LabelMap, grid: LabelMap) -> int:
    """How many labelled voxels of ``src`` have their centre outside the voxels of ``grid`` (mapping ``src`` onto
    ``grid`` drops them)."""
    box = bounding_box(src.array != 0, margin=0)
    if box is None:
        return 0
    mapping = np.linalg.solve(grid.affine, src.affine)  # src index -> grid index
    lin, shift = mapping[:-1, :-1], mapping[:-1, -1]
    shape = np.array(grid.array.shape)

    def inside(points: np.ndarray) -> np.ndarray:  # the centre within a grid voxel (its half-voxel border included)
        index = points @ lin.T + shift
        return np.all((index >= -0.501) & (index <= shape - 0.499), axis=1)

    corners = np.array(list(itertools.product(*[(s.start, s.stop - 1) for s in box])), dtype=np.float64)
    if inside(corners).all():  # both boxes are convex: every labelled voxel is inside too
        return 0
    points = np.argwhere(src.array != 0).astype(np.float64)
    return int(np.count_nonzero(~inside(points)))


def score_case(job: CaseJob) -> tuple[str, dict, tuple[int, int]]:
    """``(case, {class: {metric: value, ..., "flag": ...}}, outside)`` for one case (see :func:`evaluate_case`);
    ``outside``: (labelled reference voxels outside the prediction's field of view, which are scored as missed;
    the reference's labelled voxels).

    The prediction is scored on the reference grid. When labelled prediction voxels lie outside it and the
    reference's voxels coincide with part of the prediction's grid (a DICOM SEG that stores only its
    non-empty slices), both are scored on the prediction's grid instead; otherwise the case is refused, as
    those voxels would silently drop out of every score."""
    ref = read_labels(job.ref)
    what = f"case '{job.case}'"
    ref_array, spacing = ref.array, ref.spacing
    outside = 0
    if job.pred is None:
        pred = np.zeros(ref.array.shape, dtype=ref.array.dtype)
    else:
        source = read_labels(job.pred)
        pred = onto_grid(source, ref, job.resample, what=what)
        lost = 0 if same_grid(source, ref) else outside_voxels(source, ref)
        if lost:
            try:
                ref_array = onto_grid(ref, source, False, what=what)
            except MedsegError:
                ref_array = None
            if ref_array is None or outside_voxels(ref, source):
                raise MedsegError(
                    f"{what}: {lost} labelled voxel(s) of {job.pred.name} lie outside the reference grid"
                    f" ({ref.describe()}; prediction {source.describe()}) and would be left out of every score;"
                    " give a reference that covers the prediction's field of view")
            pred, spacing = source.array, source.spacing
        elif not same_grid(source, ref):
            outside = outside_voxels(ref, source)  # a smaller field of view: those reference voxels count as missed
    classes = job.classes
    if classes is None:
        values = sorted(set(label_values(ref_array)) | set(label_values(pred)))
        classes = {f"label_{v}": [v] for v in values if v != 0}
    labelled = int(np.count_nonzero(ref.array)) if outside else 0
    scores = evaluate_case(pred, ref_array, spacing, classes, job.tolerance_mm, job.worst_mm)
    return job.case, scores, (outside, labelled)
