from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.evaluation import binary_metrics, evaluate_case, summarise, write_reports

CLASSES = {"liver": [1, 2], "tumour": [2]}


def sphere(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_identical_masks_are_perfect():
    ref = np.zeros((30, 30, 30), np.int64)
    ref[sphere(ref.shape, (15, 15, 15), 9)] = 1
    ref[sphere(ref.shape, (15, 15, 15), 3)] = 2
    out = evaluate_case(ref, ref, (0.8, 0.8, 2.5), CLASSES)
    for name in CLASSES:
        assert out[name]["dice"] == 1.0 and out[name]["hd95_mm"] == 0.0 and out[name]["assd_mm"] == 0.0


def test_shift_along_the_coarse_axis_is_measured_in_mm():
    ref = np.zeros((40, 40, 24), np.int64)
    ref[10:30, 10:30, 5:15] = 1
    pred = np.zeros_like(ref)
    pred[10:30, 10:30, 7:17] = 1  # two slices further along axis 2
    aniso = evaluate_case(pred, ref, (1.0, 1.0, 3.0), {"organ": [1]})["organ"]
    iso = evaluate_case(pred, ref, (1.0, 1.0, 1.0), {"organ": [1]})["organ"]
    assert aniso["dice"] == pytest.approx(2 * 20 * 20 * 8 / (2 * 20 * 20 * 10))
    assert aniso["hd95_mm"] == pytest.approx(6.0)  # 2 slices x 3 mm
    assert iso["hd95_mm"] == pytest.approx(2.0)
    assert aniso["assd_mm"] > iso["assd_mm"] > 0


def test_concentric_spheres_distance_is_the_radius_gap_and_scales_with_spacing():
    shape = (40, 40, 40)
    ref = sphere(shape, (20, 20, 20), 10).astype(np.int64)
    pred = sphere(shape, (20, 20, 20), 13).astype(np.int64)
    one = evaluate_case(pred, ref, (1.0, 1.0, 1.0), {"organ": [1]})["organ"]
    two = evaluate_case(pred, ref, (2.0, 2.0, 2.0), {"organ": [1]})["organ"]
    assert one["dice"] == pytest.approx(2 * ref.sum() / (ref.sum() + pred.sum()))
    assert 2.5 <= one["hd95_mm"] <= 3.6 and 2.5 <= one["assd_mm"] <= 3.5
    assert two["hd95_mm"] == pytest.approx(2 * one["hd95_mm"])
    assert two["assd_mm"] == pytest.approx(2 * one["assd_mm"])
    assert two["dice"] == one["dice"]


def test_merged_classes_follow_lits_convention():
    ref = np.zeros((20, 20, 20), np.int64)
    ref[5:15, 5:15, 5:15] = 1
    ref[8:12, 8:12, 8:12] = 2
    pred = ref.copy()
    pred[pred == 2] = 1  # tumour called liver: liver (1 and 2 merged) is still perfect
    out = evaluate_case(pred, ref, (1, 1, 1), CLASSES)
    assert out["liver"]["dice"] == 1.0
    assert out["tumour"]["dice"] == 0.0 and out["tumour"]["flag"] == "prediction empty"


def test_empty_masks_are_defined_and_finite():
    shape, spacing = (10, 20, 30), (1.0, 2.0, 3.0)
    empty = np.zeros(shape, np.int64)
    some = empty.copy()
    some[2:5, 2:5, 2:5] = 1
    both = evaluate_case(empty, empty, spacing, {"organ": [1]})["organ"]
    assert (both["dice"], both["hd95_mm"], both["assd_mm"], both["flag"]) == (1.0, 0.0, 0.0, "both empty")
    diagonal = math.sqrt(10**2 + 40**2 + 90**2)
    missed = evaluate_case(empty, some, spacing, {"organ": [1]})["organ"]
    assert missed["dice"] == 0.0 and missed["hd95_mm"] == pytest.approx(diagonal)
    assert missed["flag"] == "prediction empty"
    extra = evaluate_case(some, empty, spacing, {"organ": [1]}, worst_mm=123.0)["organ"]
    assert extra["assd_mm"] == 123.0 and extra["flag"] == "reference empty"


def test_summary_and_reports(tmp_path: Path):
    ref = np.zeros((20, 20, 20), bool)
    ref[5:15, 5:15, 5:15] = True
    good = binary_metrics(ref, ref, (1, 1, 1))
    missed = binary_metrics(np.zeros_like(ref), ref, (1, 1, 1), worst_mm=50.0)
    per_case = {"a": {"organ": good}, "b,2": {"organ": missed}}
    summary = summarise(per_case)
    assert summary["organ"]["dice"] == pytest.approx(0.5)
    assert summary["organ"]["dice_std"] == pytest.approx(0.5)
    assert summary["organ"]["hd95_mm_median"] == pytest.approx(25.0)
    assert summary["organ"]["flagged"] == 1.0 and summary["organ"]["cases"] == 2.0
    json_path, csv_path = write_reports(per_case, summary, tmp_path)
    assert json.loads(json_path.read_text())["organ"]["assd_mm"] == pytest.approx(25.0)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["case"] for r in rows] == ["a", "b,2"]
    assert float(rows[1]["hd_mm"]) == 50.0 and rows[1]["flag"] == "prediction empty"
    assert float(rows[0]["volume_ref_ml"]) == pytest.approx(1.0)  # 1000 voxels of 1 mm^3
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_overlay_draws_the_reference_of_0_255_masks(tmp_path):
    """A mask stored as 0/255 (data.label_map {255: 1}) still gets its green reference contour."""
    import nibabel as nib
    from PIL import Image

    from medseg.evaluation.figures import overlay_montage

    image = np.zeros((24, 24, 6), np.float32)
    label = np.zeros((24, 24, 6), np.uint8)
    label[6:18, 6:18, 1:5] = 255
    for name, array in (("img", image), ("lab", label), ("pred", np.zeros_like(label))):
        nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / f"{name}.nii.gz")
    case = {"case": "c", "image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz"),
            "pred": str(tmp_path / "pred.nii.gz"), "dice": 0.0}

    def green_pixels(label_map):
        out = overlay_montage([case], [1], (0.0, 1.0), tmp_path / "o.png", n_slices=1, label_map=label_map)
        rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
        return int(((rgb[..., 1] > 150) & (rgb[..., 0] < 100) & (rgb[..., 2] < 100)).sum())

    assert green_pixels(None) == 0  # 255 is not label 1: nothing to draw
    assert green_pixels({255: 1}) > 20
