"""Per-class Dice, HD95 and average symmetric surface distance, in millimetres.

Definitions:
    - A reported class is a set of label values merged into one binary mask (LiTS reports ``liver``
      as labels 1 and 2 together, ``tumour`` as label 2).
    - Dice = 2|P∩R| / (|P| + |R|).
    - Surfaces and distances come from MONAI's ``compute_hausdorff_distance`` (95th percentile of
      the symmetric surface distances) and ``compute_average_surface_distance`` (symmetric: the mean
      over both surfaces' point-to-surface distances), given the voxel spacing so results are in mm.
    - Empty masks: both empty gives Dice 1 and distances 0; exactly one empty gives Dice 0 and
      distances equal to ``worst_mm`` (default the image diagonal in mm), and the case is flagged.
      No NaN or inf ever reaches a summary.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

METRICS = ("dice", "hd95_mm", "assd_mm")


def _diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    classes: dict[str, list[int]],
    worst_mm: float | None = None,
) -> dict[str, dict[str, float | str]]:
    """Metrics for one case.

    Args:
        pred: predicted label map (integers), same shape as ``ref``.
        ref: reference label map.
        spacing: voxel size in mm per axis.
        classes: reported class name -> label values merged into its mask.
        worst_mm: distance given when exactly one mask is empty (default: image diagonal in mm).

    Returns:
        ``{class: {"dice", "hd95_mm", "assd_mm", "flag"}}``; ``flag`` is "" or says which mask is empty.

    Example:
        >>> evaluate_case(p, r, (0.8, 0.8, 2.5), {"liver": [1, 2], "tumour": [2]})["liver"]["dice"]
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    worst = _diagonal_mm(ref.shape, spacing) if worst_mm is None else float(worst_mm)
    out: dict[str, dict[str, float | str]] = {}
    for name, members in classes.items():
        p = np.isin(pred, members)
        r = np.isin(ref, members)
        np_, nr = int(p.sum()), int(r.sum())
        if np_ == 0 and nr == 0:
            out[name] = {"dice": 1.0, "hd95_mm": 0.0, "assd_mm": 0.0, "flag": "both empty"}
            continue
        if np_ == 0 or nr == 0:
            flag = "prediction empty" if np_ == 0 else "reference empty"
            out[name] = {"dice": 0.0, "hd95_mm": worst, "assd_mm": worst, "flag": flag}
            continue
        dice = 2.0 * float(np.logical_and(p, r).sum()) / (np_ + nr)
        pt = torch.from_numpy(p)[None, None]
        rt = torch.from_numpy(r)[None, None]
        sp = [float(s) for s in spacing]
        hd95 = compute_hausdorff_distance(pt, rt, include_background=True, percentile=95, spacing=sp)
        assd = compute_average_surface_distance(pt, rt, include_background=True, symmetric=True, spacing=sp)
        out[name] = {"dice": dice, "hd95_mm": float(hd95.item()), "assd_mm": float(assd.item()), "flag": ""}
    return out


def summarise(per_case: dict[str, dict[str, dict[str, float | str]]]) -> dict[str, dict[str, float]]:
    """Mean, std and median of each metric per class over cases (finite values only, as computed)."""
    summary: dict[str, dict[str, float]] = {}
    classes = sorted({c for case in per_case.values() for c in case}, key=lambda c: list(next(iter(per_case.values()))).index(c))
    for name in classes:
        entry: dict[str, float] = {}
        for metric in METRICS:
            values = np.array([float(case[name][metric]) for case in per_case.values() if name in case])
            entry[metric] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std())
            entry[f"{metric}_median"] = float(np.median(values))
        entry["cases"] = float(len(per_case))
        entry["flagged"] = float(sum(1 for case in per_case.values() if case[name]["flag"] not in ("", "both empty")))
        summary[name] = entry
    return summary


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_reports(per_case: dict, summary: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` (summary per class) and ``metrics_per_case.csv`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = ["case,class," + ",".join(METRICS) + ",flag"]
    for case, classes in per_case.items():
        for name, vals in classes.items():
            rows.append(",".join([case, name] + [f"{float(vals[m]):.6g}" for m in METRICS] + [str(vals["flag"])]))
    csv_path, json_path = out_dir / "metrics_per_case.csv", out_dir / "metrics.json"
    _atomic_write(csv_path, "\n".join(rows) + "\n")
    _atomic_write(json_path, json.dumps(summary, indent=2) + "\n")
    return json_path, csv_path


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """A plain-text table of mean ± std per class, for the end of a run."""
    header = f"{'class':<10} {'Dice':>15} {'HD95 (mm)':>17} {'ASSD (mm)':>17}"
    lines = [header, "-" * len(header)]
    for name, e in summary.items():
        cells = [f"{e[m]:.3f} ± {e[m + '_std']:.3f}" if m == "dice" else f"{e[m]:.2f} ± {e[m + '_std']:.2f}" for m in METRICS]
        lines.append(f"{name:<10} {cells[0]:>15} {cells[1]:>17} {cells[2]:>17}")
    return "\n".join(lines)
