"""Per-case, per-class segmentation metrics in millimetres, and their summaries.

Definitions (P: predicted mask, R: reference mask, both boolean on the same grid):

- A reported class is a set of label values merged into one mask (LiTS reports ``liver`` as labels
  1 and 2 together, ``tumour`` as label 2).
- Overlap: ``accuracy`` = (TP + TN) / all voxels; ``iou`` = |P∩R| / |P∪R|; ``dice`` = 2|P∩R| / (|P| + |R|);
  ``precision`` = |P∩R| / |P|; ``recall`` = |P∩R| / |R|.
- Volume: ``volume_pred_ml`` and ``volume_ref_ml`` from the voxel volume; ``avd_ml`` = |Vp − Vr| (absolute
  volume difference, mL); ``rvd`` = (Vp − Vr) / Vr (signed relative volume difference).
- Surfaces and distances: see :mod:`medseg.evaluation.surface` (face-connected border voxels; Euclidean
  distances between voxel centres in mm, spacing applied per axis). With d(P→R) the distances from each
  surface voxel of P to the surface of R, and d(R→P) the reverse:
    - ``hd_mm``: Hausdorff distance, max(max d(P→R), max d(R→P));
    - ``hd95_mm``: max of the two directed 95th percentiles (linear interpolation), as MONAI computes it;
    - ``assd_mm``: average symmetric surface distance, the mean of all distances of both directions pooled;
    - ``masd_mm``: mean average surface distance, (mean d(P→R) + mean d(R→P)) / 2 (Metrics Reloaded);
    - ``nsd``: normalised surface Dice at tolerance τ mm, (#d(P→R) ≤ τ + #d(R→P) ≤ τ) / (#P surface + #R surface);
    - ``boundary_f1``: F1 of boundary precision #d(P→R) ≤ τ / #P surface and recall #d(R→P) ≤ τ / #R surface.
- Empty masks: both empty gives Dice, IoU, precision, recall, NSD and boundary F1 of 1 and distances of 0,
  flag "both empty"; exactly one empty gives those overlap scores 0 and every distance ``worst_mm``
  (default: the image diagonal in mm), flag "prediction empty" or "reference empty". ``rvd`` is 0 when
  both are empty and ``worst_rvd`` (default 1.0, i.e. 100 %) when only the reference is. No NaN or inf.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.evaluation.classes import class_mask
from medseg.evaluation.surface import surface_distances
from medseg.fileio import atomic_write_text

METRICS = (
    "dice", "iou", "accuracy", "precision", "recall",
    "hd_mm", "hd95_mm", "assd_mm", "masd_mm", "nsd", "boundary_f1",
    "volume_pred_ml", "volume_ref_ml", "avd_ml", "rvd",
)
DISTANCES = ("hd_mm", "hd95_mm", "assd_mm", "masd_mm")
#: the three columns of the end-of-run table (an overlap and two boundary metrics)
HEADLINE = ("dice", "hd95_mm", "assd_mm")


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image diagonal in mm: the default worst distance for an empty mask."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def binary_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 2.0,
    worst_mm: float | None = None, worst_rvd: float = 1.0,
) -> dict[str, float | str]:
    """All metrics for one pair of boolean masks (see the module docstring for definitions)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {ref.ndim}D mask")
    worst = diagonal_mm(ref.shape, spacing) if worst_mm is None else float(worst_mm)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_p, n_r = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref))
    total = pred.size
    out: dict[str, float | str] = {
        "accuracy": (total - n_p - n_r + 2 * tp) / total,
        "volume_pred_ml": n_p * voxel_ml,
        "volume_ref_ml": n_r * voxel_ml,
        "avd_ml": abs(n_p - n_r) * voxel_ml,
    }
    if n_p == 0 or n_r == 0:
        score = 1.0 if n_p == n_r else 0.0
        dist = 0.0 if n_p == n_r else worst
        out.update({k: score for k in ("dice", "iou", "precision", "recall", "nsd", "boundary_f1")})
        out.update({k: dist for k in DISTANCES})
        out["rvd"] = 0.0 if n_r == 0 and n_p == 0 else (-1.0 if n_p == 0 else worst_rvd)
        out["flag"] = "both empty" if n_p == n_r else ("prediction empty" if n_p == 0 else "reference empty")
        return _ordered(out)
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    within_p = int(np.count_nonzero(d_pr <= tolerance_mm))
    within_r = int(np.count_nonzero(d_rp <= tolerance_mm))
    b_prec, b_rec = within_p / d_pr.size, within_r / d_rp.size
    out.update({
        "dice": 2.0 * tp / (n_p + n_r),
        "iou": tp / (n_p + n_r - tp),
        "precision": tp / n_p,
        "recall": tp / n_r,
        "hd_mm": float(max(d_pr.max(), d_rp.max())),
        "hd95_mm": float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        "assd_mm": float((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size)),
        "masd_mm": float((d_pr.mean() + d_rp.mean()) / 2.0),
        "nsd": (within_p + within_r) / (d_pr.size + d_rp.size),
        "boundary_f1": 0.0 if b_prec + b_rec == 0 else 2 * b_prec * b_rec / (b_prec + b_rec),
        "rvd": (n_p - n_r) / n_r,
        "flag": "",
    })
    return _ordered(out)


def _ordered(values: dict[str, float | str]) -> dict[str, float | str]:
    return {**{k: float(values[k]) for k in METRICS}, "flag": values["flag"]}


def evaluate_case(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], classes: dict[str, list[int]],
    tolerance_mm: float = 2.0, worst_mm: float | None = None,
) -> dict[str, dict[str, float | str]]:
    """Metrics for one case and every reported class.

    Args:
        pred: predicted label map (integers), same shape as ``ref``.
        ref: reference label map.
        spacing: voxel size in mm per axis.
        classes: reported class name -> label values merged into its mask.
        tolerance_mm: tolerance τ for NSD and boundary F1.
        worst_mm: distance given when exactly one mask is empty (default: image diagonal in mm).

    Returns:
        ``{class: {metric: value, ..., "flag": ""|"both empty"|"prediction empty"|"reference empty"}}``.

    Example:
        >>> evaluate_case(p, r, (0.8, 0.8, 2.5), {"liver": [1, 2], "tumour": [2]})["liver"]["hd95_mm"]
    """
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return {
        name: binary_metrics(class_mask(pred, members), class_mask(ref, members), spacing, tolerance_mm, worst_mm)
        for name, members in classes.items()
    }


def summarise(per_case: dict[str, dict[str, dict[str, float | str]]]) -> dict[str, dict[str, float]]:
    """Mean, std and median of each metric per class over cases, with the case and flag counts."""
    summary: dict[str, dict[str, float]] = {}
    names = list(dict.fromkeys(c for case in per_case.values() for c in case))
    for name in names:
        rows = [case[name] for case in per_case.values() if name in case]
        entry: dict[str, float] = {}
        for metric in METRICS:
            values = np.array([float(r[metric]) for r in rows])
            entry[metric] = float(values.mean())
            entry[f"{metric}_std"] = float(values.std())
            entry[f"{metric}_median"] = float(np.median(values))
        entry["cases"] = float(len(rows))
        entry["flagged"] = float(sum(1 for r in rows if r["flag"] not in ("", "both empty")))
        summary[name] = entry
    return summary


def write_reports(per_case: dict, summary: dict, out_dir: Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` (summary per class) and ``metrics_per_case.csv`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "class", *METRICS, "flag"])
    for case, classes in per_case.items():
        for name, vals in classes.items():
            writer.writerow([case, name, *[f"{float(vals[m]):.6g}" for m in METRICS], vals["flag"]])
    csv_path, json_path = out_dir / "metrics_per_case.csv", out_dir / "metrics.json"
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return json_path, csv_path


def distance_unit(cfg: object) -> str:
    """:meth:`medseg.config.TaskConfig.distance_unit` of ``cfg`` ("mm" for anything else)."""
    return cfg.distance_unit() if hasattr(cfg, "distance_unit") else "mm"


def format_table(summary: dict[str, dict[str, float]], unit: str = "mm") -> str:
    """A plain-text table of mean ± std per class (Dice, HD95, ASSD), for the end of a run; ``unit``: the
    distances' (``px`` for pictures that state no pixel size)."""
    header = f"{'class':<10} {'Dice':>15} {f'HD95 ({unit})':>17} {f'ASSD ({unit})':>17}"
    lines = [header, "-" * len(header)]
    for name, e in summary.items():
        cells = [f"{e[m]:.3f} ± {e[m + '_std']:.3f}" if m == "dice" else f"{e[m]:.2f} ± {e[m + '_std']:.2f}"
                 for m in HEADLINE]
        lines.append(f"{name:<10} {cells[0]:>15} {cells[1]:>17} {cells[2]:>17}")
    return "\n".join(lines)
