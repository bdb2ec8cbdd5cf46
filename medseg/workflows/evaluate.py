"""Evaluate a folder of predictions against a folder of references, as a plain function (the command's body).

Example (a notebook):
    >>> from medseg.workflows import evaluate
    >>> result = evaluate.run("runs/liver/x/predictions", "data/Task03_Liver/labelsTr",
    ...                       labels={"liver": [1, 2], "tumour": [2]}, output="eval")
    >>> result.summary["liver"]["dice"]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError
from medseg.evaluation import summarise, write_reports
from medseg.evaluation.classes import parse_classes
from medseg.evaluation.pairing import find_cases, match
from medseg.evaluation.plots import boxplot
from medseg.evaluation.scoring import CaseJob, score_case


class MissingPredictions(MedsegError):
    """Reference cases without a prediction (and ``missing_as_empty`` not set)."""

    def __init__(self, cases: list[str]):
        self.cases = cases
        super().__init__(f"no prediction for {len(cases)} reference case(s): {', '.join(cases)};"
                         " pass --missing-as-empty (missing_as_empty=True) to score them as empty predictions")


@dataclass
class EvaluationResult:
    summary: dict[str, dict[str, float]]  # class -> metric (mean), metric_std, metric_median, cases, flagged
    per_case: dict[str, dict[str, dict]]  # case -> class -> metric -> value (and "flag")
    missing: list[str] = field(default_factory=list)  # reference cases scored as empty predictions
    files: dict[str, Path] = field(default_factory=dict)  # "csv", "json", "boxplot" -> written path


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
        worst_mm: distance given when exactly one mask is empty (default: the image diagonal).
        jobs: worker processes, one case each (default: CPU count).
        on_case: called as ``on_case(case, done, total)`` after each case.
    """
    classes = parse_classes(labels) if isinstance(labels, str) else labels
    refs = find_cases(Path(ref_dir), "reference")
    preds = find_cases(Path(pred_dir), "prediction")
    matched, missing = match(preds, refs)
    if missing and not missing_as_empty:
        raise MissingPredictions(missing)
    work = [CaseJob(c, p, refs[c], classes, tolerance_mm, resample, worst_mm) for c, p in matched.items()]
    workers = min(jobs or os.cpu_count() or 1, len(work))
    per_case: dict[str, dict] = {}

    def collect(case: str, result: dict) -> None:
        per_case[case] = result
        if on_case is not None:
            on_case(case, len(per_case), len(work))

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for case, result in pool.map(score_case, work):
                collect(case, result)
    else:
        for job in work:
            collect(*score_case(job))
    summary = summarise(per_case)
    output = Path(output)
    json_path, csv_path = write_reports(per_case, summary, output)
    png = boxplot(per_case, output / "metrics_boxplot.png")
    return EvaluationResult(summary, per_case, missing, {"csv": csv_path, "json": json_path, "boxplot": png})
