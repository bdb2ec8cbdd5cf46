"""k-fold cross-validation: reproducible splits stored with the run, and the summary across folds.

The labelled cases (``medseg.data.layouts.all_cases``, stable order) are shuffled once with
``training.seed`` and cut into ``training.folds`` near-equal parts; fold k validates on part k and trains
on the rest. ``folds.json`` in the run folder lists every fold's validation cases, so the split can be
reproduced and checked without re-deriving it. ``--folds all`` trains fold_0 ... fold_{k-1} as
sub-runs and writes ``cv_summary.json`` / ``cv_summary.md``: per class and metric, the mean and sample
standard deviation over the folds of each fold's mean.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
import numpy as np

from medseg.data.case import Case
from medseg.data.split import fold_split, kfold_parts
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text

__all__ = ["FOLDS_FILE", "fold_split", "kfold_parts", "make_folds", "summarise_folds"]

FOLDS_FILE = "folds.json"


def make_folds(cases: list[Case], k: int, seed: int, run_dir: Path) -> list[list[int]]:
    """The fold parts (:func:`medseg.data.split.kfold_parts`), written to (or, when present, read back from and
    checked against) ``run_dir/folds.json``."""
    ids = [c.name for c in cases]
    path = run_dir / FOLDS_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            parts = stored["val_cases"]
            stored_k, stored_seed = int(stored["k"]), int(stored["seed"])
            named = sorted(str(i) for part in parts for i in part)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise MedsegError(f"{path}: not a folds file medseg wrote ({type(err).__name__}: {err}); use a new run"
                              " folder, or remove the file to split anew") from err
        if (stored_k, stored_seed) != (k, seed):  # e.g. left by an earlier attempt in the same --output-dir
            raise MedsegError(f"{path}: holds a split into {stored_k} folds with seed {stored_seed}, but"
                              f" training.folds is {k} and training.seed {seed}; use a new run folder, or set the"
                              " same values")
        if sorted(ids) != named:
            raise MedsegError(f"{path}: its cases differ from the dataset's; use a new run folder")
        index = {cid: n for n, cid in enumerate(ids)}
        return [sorted(index[c] for c in part) for part in stored["val_cases"]]
    if k > len(cases):  # before kfold_parts, whose line names the range, not the remedy
        raise MedsegError(f"training.folds: {k} folds need at least {k} labelled cases, the dataset has {len(cases)};"
                          f" set training.folds to 2..{len(cases)}" if len(cases) >= 2 else
                          f"training.folds: cross-validation needs at least 2 labelled cases, the dataset has"
                          f" {len(cases)}")
    parts = kfold_parts(len(cases), k, seed)
    atomic_write_text(path, json.dumps({"k": k, "seed": seed, "val_cases": [[ids[i] for i in p] for p in parts]},
                                       indent=1))
    return parts


#: per-fold case counts of ``metrics.json``: summed over the folds, not averaged
COUNTS = ("cases", "flagged")


def summarise_folds(parent: Path, k: int) -> dict[str, dict[str, dict[str, float]]]:
    """``{class: {metric: {"mean", "std", "folds"}}}`` over the folds' ``metrics.json`` (the case counts
    ``cases`` and ``flagged``: ``{"total", "folds"}``); written as
    ``cv_summary.json`` and a Markdown table ``cv_summary.md`` in ``parent``."""
    per_fold = []
    for fold in range(k):
        path = parent / f"fold_{fold}" / "metrics.json"
        if not path.is_file():
            raise MedsegError(f"{path}: missing; fold {fold} did not finish (resume it with --resume {parent})")
        try:
            per_fold.append(json.loads(path.read_text()))
        except ValueError as err:
            raise MedsegError(f"{path}: not readable JSON ({err}); to train fold {fold} again remove"
                              f" {path.parent} and run --resume {parent}") from err
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for cls, metrics in per_fold[0].items():
        for metric in metrics:
            if metric.endswith(("_std", "_median")):
                continue
            values = [float(f[cls][metric]) for f in per_fold if metric in f.get(cls, {})]
            if metric in COUNTS:  # case counts add up over the folds (a mean of 1.5 flagged cases means nothing)
                summary.setdefault(cls, {})[metric] = {"total": float(sum(values)), "folds": values}
                continue
            finite = [v for v in values if math.isfinite(v)]
            mean = float(np.mean(finite)) if finite else float("nan")
            std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
            summary.setdefault(cls, {})[metric] = {"mean": mean, "std": std, "folds": values}
    atomic_write_text(parent / "cv_summary.json", json.dumps(summary, indent=1))
    metrics = [m for m in next(iter(summary.values())) if m not in COUNTS]
    lines = [f"# Cross-validation: {k} folds", "", "| class | " + " | ".join(metrics) + " | flagged cases |",
             "|---|" + "---|" * (len(metrics) + 1)]
    for cls, entry in summary.items():
        counts = {c: int(entry[c]["total"]) if c in entry else "?" for c in COUNTS}
        lines.append(f"| {cls} | " + " | ".join(f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" for m in metrics)
                     + f" | {counts['flagged']} of {counts['cases']} |")
    atomic_write_text(parent / "cv_summary.md", "\n".join(lines) + "\n")
    return summary
