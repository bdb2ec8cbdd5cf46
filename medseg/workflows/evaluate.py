"""Evaluate a folder of predictions against a folder of references, as a plain function (the command's body).

Example (a notebook):
    >>> from medseg.workflows import evaluate
    >>> result = evaluate.run("runs/liver/x/predictions", "data/Task03_Liver/labelsTr",
    ...                       labels={"liver": [1, 2], "tumour": [2]}, output="eval")
    >>> result.summary["liver"]["dice"]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.data.formats import IMAGE_SUFFIXES
from medseg.data.images import read_image
from medseg.data.pictures import is_picture, read_picture
from medseg.data.tiff_units import tiff_pixel_size
from medseg.errors import MedsegError
from medseg.evaluation import binary_metrics, summarise, write_reports
from medseg.evaluation.classes import parse_classes
from medseg.evaluation.instances import instance_metrics, membrane_metrics
from medseg.evaluation.pairing import case_key, find_cases, match
from medseg.evaluation.plots import boxplot
from medseg.evaluation.scoring import CaseJob, score_case
from medseg.fileio import atomic_write_text
from medseg.workflows.outputs import check_output_folder


logger = logging.getLogger(__name__)


class MissingPredictions(MedsegError):
    """Reference cases without a prediction (and ``missing_as_empty`` not set)."""

    def __init__(self, cases: list[str], unmatched: list[str] | None = None):
        self.cases, self.unmatched = cases, unmatched or []
        names = (f"; {len(self.unmatched)} prediction file(s) match no reference case ({', '.join(self.unmatched)}):"
                 " files pair by name without the suffix (case.nii.gz, case.nrrd or case_seg.nii.gz), rename them"
                 if self.unmatched else "")
        super().__init__(f"no prediction for {len(cases)} reference case(s): {', '.join(cases)}{names};"
                         " pass --missing-as-empty (missing_as_empty=True) to score them as empty predictions, or"
                         " --predicted-only (predicted_only=True) to score only the cases that have a prediction")


@dataclass
class EvaluationResult:
    summary: dict[str, dict[str, float]]  # class -> metric (mean), metric_std, metric_median, cases, flagged
    per_case: dict[str, dict[str, dict]]  # case -> class -> metric -> value (and "flag")
    missing: list[str] = field(default_factory=list)  # reference cases scored as empty predictions
    not_predicted: list[str] = field(default_factory=list)  # reference cases left out (predicted_only)
    unmatched: list[str] = field(default_factory=list)  # prediction files of no reference case (not scored)
    files: dict[str, Path] = field(default_factory=dict)  # "csv", "json", "boxplot" -> written path
    #: case -> (labelled reference voxels outside the prediction's field of view, the reference's labelled voxels)
    outside_fov: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the unit of the distances (and of the "mm" columns): "mm"; "px" where every reference is a picture that
    #: states no pixel size; "µm" where every one is a TIFF that states it (medseg.data.tiff_units); "mixed" else
    unit: str = "mm"


def run(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[str, list[int]] | str | None = None,
    tolerance_mm: float = 2.0,
    output: str | Path = "evaluation",
    resample: bool = False,
    missing_as_empty: bool = False,
    worst_mm: float | None = None,
    jobs: int | None = None,
    on_case: Callable[[str, int, int], None] | None = None,
    predicted_only: bool = False,
) -> EvaluationResult:
    """Score every reference case; write ``metrics_per_case.csv``, ``metrics.json`` and ``metrics_boxplot.png``.

    Args:
        pred_dir, ref_dir: folders of predicted and reference label maps, paired by case name.
        labels: reported classes, ``{"liver": [1, 2], "tumour": [2]}`` or ``"liver=1+2,tumour=2"``
            (default: each label value of each reference).
        tolerance_mm: tolerance for NSD and boundary F1.
        output: folder for the three files (created; each file written atomically).
        resample: map predictions on another grid onto the reference grid (nearest neighbour).
        missing_as_empty: score a missing prediction as an empty mask instead of raising MissingPredictions.
        predicted_only: score only the reference cases that have a prediction (a reference folder holding the
            training cases too, predictions of the validation cases); the others are listed in ``not_predicted``.
        worst_mm: distance given when exactly one mask is empty (default: the image diagonal).
        jobs: worker processes, one case each (default: CPU count).
        on_case: called as ``on_case(case, done, total)`` after each case.
    """
    classes = parse_classes(labels) if isinstance(labels, str) else labels
    _check_options(tolerance_mm, worst_mm, jobs)
    check_output_folder(Path(output), "the metrics files")
    refs = find_cases(Path(ref_dir), "reference")
    preds = find_cases(Path(pred_dir), "prediction")
    if predicted_only and missing_as_empty:
        raise MedsegError("--predicted-only and --missing-as-empty: give one of them (leave out the references"
                          " without a prediction, or score them as empty predictions)")
    matched, missing = match(preds, refs)
    used = {p for p in matched.values() if p is not None}
    unmatched = [p.name for p in preds.values() if p not in used]
    not_predicted: list[str] = []
    if predicted_only:
        if not used:
            raise MissingPredictions(missing, unmatched)
        not_predicted, missing = missing, []
        matched = {c: p for c, p in matched.items() if p is not None}
    if missing and not missing_as_empty:
        raise MissingPredictions(missing, unmatched)
    work = [CaseJob(c, p, refs[c], classes, tolerance_mm, resample, worst_mm) for c, p in matched.items()]
    workers = min(jobs or os.cpu_count() or 1, len(work))
    per_case: dict[str, dict] = {}
    outside_fov: dict[str, tuple[int, int]] = {}

    def collect(case: str, result: dict, outside: tuple[int, int]) -> None:
        per_case[case] = result
        if outside[0]:
            outside_fov[case] = outside
        if on_case is not None:
            on_case(case, len(per_case), len(work))

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for scored in pool.map(score_case, work):
                collect(*scored)
    else:
        for job in work:
            collect(*score_case(job))
    if classes is None:  # each case has a class per label value of its own two masks: the others are both empty there
        names = sorted({c for result in per_case.values() for c in result}, key=lambda n: int(n.split("_", 1)[1]))
        empty = binary_metrics(np.zeros(1, bool), np.zeros(1, bool), (1.0,))
        per_case = {case: {n: result.get(n, empty) for n in names} for case, result in per_case.items()}
    summary = summarise(per_case)
    output = Path(output)
    json_path, csv_path = write_reports(per_case, summary, output)
    unit = _distance_unit([refs[case] for case in matched] or list(refs.values()))
    png = boxplot(per_case, output / "metrics_boxplot.png", "mm" if unit == "mixed" else unit)
    return EvaluationResult(summary, per_case, missing, not_predicted, unmatched,
                            {"csv": csv_path, "json": json_path, "boxplot": png}, outside_fov, unit)


def _check_options(tolerance_mm: float, worst_mm: float | None, jobs: int | None) -> None:
    """One line, before any work, for a tolerance, worst distance or process count that cannot be meant."""
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise MedsegError(f"--tolerance-mm {tolerance_mm}: expected a distance of 0 mm or more, e.g. 2")
    if worst_mm is not None and not (math.isfinite(worst_mm) and worst_mm > 0):
        raise MedsegError(f"--worst-mm {worst_mm}: expected a positive finite distance in mm, e.g. 100"
                          " (leave it out for the image diagonal)")
    if jobs is not None and jobs < 1:
        raise MedsegError(f"--jobs {jobs}: expected 1 or more processes")


def _distance_unit(references: list[Path]) -> str:
    """What the scored references' spacing is in: pictures (PNG, JPEG, TIFF) are read with medseg's pixel size
    (:mod:`medseg.data.tiff_units`): micrometres where a TIFF states it, else 1 per pixel; volumes in mm."""
    if not references or not all(is_picture(path) for path in references):
        return "mm"
    stated = [tiff_pixel_size(path)[1] for path in references]
    return "µm" if all(stated) else "px" if not any(stated) else "mixed"


def _semantic(reference: np.ndarray) -> bool:
    """A reference with a single foreground value whose pixels form more than one object (4/6-connected)."""
    values = np.unique(reference)
    if len(values[values != 0]) != 1:
        return False
    import cc3d  # deferred: only instance evaluation needs it

    mask = np.ascontiguousarray(reference != 0).astype(np.uint8)
    return int(cc3d.connected_components(mask, connectivity=4 if mask.ndim == 2 else 6).max()) > 1


def run_instances(pred_dir: str | Path, ref_dir: str | Path, output: str | Path = "evaluation",
                  threshold: float = 0.5, membranes: bool = False, missing_as_empty: bool = False,
                  predicted_only: bool = False) -> dict[str, dict[str, float]]:
    """Instance metrics (:func:`medseg.evaluation.instances.instance_metrics`) of predicted instance images
    (``<case>_instances.tif`` from ``medseg.predict --instances``, or ``<case>.<ext>``) against reference instance
    label images (``<case>.<ext>``); writes ``instance_metrics.csv`` (per case) and ``instance_metrics.json``
    (per case and the mean). Returns ``{case: metrics, ..., "mean": metrics}``.

    ``membranes``: membrane/cell masks instead (EM, ISBI 2012; 0 = membrane, any other value = cell), predicted
    ``<case>_seg.<ext>`` (or ``<case>.<ext>``) against reference masks, scored by
    :func:`medseg.evaluation.instances.membrane_metrics` (pixel error, adapted Rand error on the cell regions).

    Only image files are cases (not notes or hidden files). A reference case without a prediction: scored as an
    empty prediction with ``missing_as_empty``, left out with ``predicted_only``, else :class:`MissingPredictions`.
    A reference that holds one foreground value in several separate objects is a semantic mask, not instance
    labels: a warning says so (its objects all count as one)."""
    def read(path: Path) -> np.ndarray:
        return read_picture(path)[0] if is_picture(path) else np.asarray(read_image(path).array)

    check_output_folder(Path(output), "the metrics files")
    for folder, what in ((Path(ref_dir), "reference"), (Path(pred_dir), "prediction")):
        if not folder.is_dir():
            state = "is a file" if folder.exists() else "does not exist"
            raise MedsegError(f"{what} folder {folder} {state}; give the folder that holds the {what} images")
    suffix = "_seg" if membranes else "_instances"
    def images(folder: str | Path) -> list[Path]:  # label images only: not notes.txt, .DS_Store, a CSV
        return [p for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".")
                and p.name.lower().endswith(IMAGE_SUFFIXES)]

    refs = {case_key(p): p for p in images(ref_dir)}
    preds = {}
    for p in images(pred_dir):
        name = case_key(p)
        if name.endswith(suffix):
            preds[name[: -len(suffix)]] = p
        elif name not in preds and name in refs:
            preds[name] = p
    missing = sorted(set(refs) - set(preds))
    if missing and predicted_only:
        logger.warning("%d reference case(s) without a prediction left out (--predicted-only): %s", len(missing),
                       ", ".join(missing[:10]))
        refs = {case: ref for case, ref in refs.items() if case in preds}
    elif missing and not missing_as_empty:
        raise MissingPredictions(missing)
    if not refs:
        raise MedsegError(f"reference folder {ref_dir}: no reference image with a prediction to score")
    per_case = {}
    for case, ref in refs.items():
        reference = read(ref)
        predicted = read(preds[case]) if case in preds else np.zeros_like(reference)  # missing: empty
        if not membranes and _semantic(reference):
            logger.warning("%s: one foreground value in several separate objects: a semantic mask, not instance"
                           " labels (each object its own value); its objects are scored as one", ref.name)
        if reference.shape != predicted.shape:
            raise MedsegError(f"{preds[case]}: shape {predicted.shape} differs from the reference {ref} {reference.shape}")
        per_case[case] = (membrane_metrics(reference, predicted) if membranes
                          else instance_metrics(reference, predicted, threshold))
    keys = list(next(iter(per_case.values()))) if per_case else []
    mean = {k: float(np.mean([m[k] for m in per_case.values()])) for k in keys}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    stem = "membrane_metrics" if membranes else "instance_metrics"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", *keys])
    for case, m in per_case.items():
        writer.writerow([case, *(f"{m[k]:.6g}" for k in keys)])
    atomic_write_text(out / f"{stem}.csv", buffer.getvalue())
    result = {**per_case, "mean": mean}
    atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=2) + "\n")
    return result
