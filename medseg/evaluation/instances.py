"""Instance segmentation metrics (cells, nuclei): object matching at IoU 0.5, AJI, adapted Rand error, VI.

All from one IoU matrix between reference and predicted objects (a contingency table of the two label
images: ``np.bincount`` over pixel pairs):

- object precision / recall / F1 at IoU > 0.5: above 0.5 a match is unique on both sides (no assignment step);
- mean matched IoU: over those matches (0 when none);
- aggregated Jaccard index (Kumar et al., IEEE TMI 2017): each reference object with its best-IoU prediction,
  summed intersections over summed unions, plus the area of predictions matched to no reference object;
- adapted Rand error and variation of information (split + merge): scikit-image's ``skimage.metrics``
  (the ISBI 2012 challenge's Rand measure; background pixels of the reference left out, as there). A predicted
  background pixel inside a reference object is not left out: all of them together are one predicted segment,
  so objects predicted too small cost Rand error (scikit-image's semantics: ``ignore_labels`` on the reference).

:func:`membrane_metrics` scores membrane/cell masks (EM sections, ISBI 2012): pixel error and the adapted Rand
error on the cell regions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information

from medseg.inference.instances import label_instances


def _relabel(instances: np.ndarray) -> np.ndarray:
    """Objects numbered 1..n (0 stays background)."""
    values, inverse = np.unique(np.asarray(instances), return_inverse=True)
    inverse = inverse.reshape(np.asarray(instances).shape)
    return inverse if values[0] == 0 else inverse + 1


def iou_matrix(reference: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(iou, intersection, union)``, each ``(n_reference, n_predicted)``, objects in label order (background out)."""
    ref, pred = _relabel(reference).ravel(), _relabel(predicted).ravel()
    n_ref, n_pred = int(ref.max()) + 1, int(pred.max()) + 1
    inter = np.bincount(ref.astype(np.int64) * n_pred + pred, minlength=n_ref * n_pred).reshape(n_ref, n_pred)
    area_ref, area_pred = inter.sum(1), inter.sum(0)
    inter = inter[1:, 1:].astype(np.float64)
    union = area_ref[1:, None] + area_pred[None, 1:] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou, inter, union


def instance_metrics(reference: np.ndarray, predicted: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Object precision/recall/F1 at IoU > ``threshold``, mean matched IoU, AJI, adapted Rand error, VI.

    Example:
        >>> instance_metrics(reference_instances, predicted_instances)["object_f1"]
    """
    reference, predicted = np.asarray(reference), np.asarray(predicted)
    iou, inter, union = iou_matrix(reference, predicted)
    n_ref, n_pred = iou.shape
    matched = iou > threshold
    tp = int(matched.sum())
    precision = tp / n_pred if n_pred else float(n_ref == 0)
    recall = tp / n_ref if n_ref else float(n_pred == 0)
    f1 = 2 * tp / (n_ref + n_pred) if n_ref + n_pred else 1.0
    mean_iou = float(iou[matched].mean()) if tp else 0.0
    ref_areas = np.bincount(_relabel(reference).ravel(), minlength=n_ref + 1)[1:]
    pred_areas = np.bincount(_relabel(predicted).ravel(), minlength=n_pred + 1)[1:]
    if n_ref and n_pred:
        rows = np.arange(n_ref)
        best = iou.argmax(1)
        has = iou[rows, best] > 0  # reference objects overlapping some prediction
        inter_sum = inter[rows[has], best[has]].sum()
        union_sum = union[rows[has], best[has]].sum() + ref_areas[~has].sum()
        union_sum += pred_areas[np.setdiff1d(np.arange(n_pred), best[has])].sum()  # predictions nobody chose
        aji = float(inter_sum / union_sum) if union_sum else 1.0
    else:
        aji = 1.0 if n_ref == n_pred == 0 else 0.0
    are, _, _ = adapted_rand_error(_relabel(reference).astype(np.int64), _relabel(predicted).astype(np.int64))
    split, merge = variation_of_information(_relabel(reference).astype(np.int64), _relabel(predicted).astype(np.int64))
    return {"objects_reference": n_ref, "objects_predicted": n_pred, "object_precision": precision,
            "object_recall": recall, "object_f1": f1, "mean_matched_iou": mean_iou, "aji": aji,
            "adapted_rand_error": float(are), "vi_split": float(split), "vi_merge": float(merge),
            "vi": float(split + merge)}


def membrane_metrics(reference: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """ISBI 2012 scores of a membrane mask (0 = membrane, any other value = cell) against the reference mask.

    - ``pixel_error``: the share of pixels whose class (membrane or cell) differs (the challenge's pixel error as
      the squared Euclidean distance between the binary labels, per pixel);
    - ``adapted_rand_error`` (and ``vi``): on the cell regions, scikit-image's adapted Rand error of the predicted
      cells against the reference cells (4-connected components of the cell pixels; reference membranes left
      out, the challenge's foreground-restricted Rand). The predicted membranes are given to the cells around
      them first (the seeded watershed of :func:`medseg.inference.instances.label_instances`; the challenge thins
      them to one pixel), so a membrane drawn thicker than the reference costs pixel error but no Rand error;
      a membrane broken by a gap merges its two cells and costs both.

    Example:
        >>> membrane_metrics(reference_mask, predicted_mask)["adapted_rand_error"]
    """
    ref_cells, pred_cells = np.asarray(reference) > 0, np.asarray(predicted) > 0
    if ref_cells.shape != pred_cells.shape:
        raise ValueError(f"reference {ref_cells.shape} and prediction {pred_cells.shape} differ in shape")
    ref = ndimage.label(ref_cells)[0].astype(np.int64)
    pred = label_instances(pred_cells.astype(np.uint8), interior=1, method="watershed").astype(np.int64)
    are = adapted_rand_error(ref, pred)[0]
    split, merge = variation_of_information(ref, pred, ignore_labels=(0,))
    return {"pixel_error": float((ref_cells != pred_cells).mean()), "adapted_rand_error": float(are),
            "cells_reference": int(ref.max()),
            "cells_predicted": int(pred.max()), "vi_split": float(split), "vi_merge": float(merge),
            "vi": float(split + merge)}
