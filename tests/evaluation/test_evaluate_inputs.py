"""``medseg.evaluate`` on a user's mistakes and awkward inputs: which classes are scored, predictions beyond the
reference grid, option values, output paths and names that do not pair."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.evaluate import main as evaluate_main


def _nifti(array, path, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(np.asarray(array, np.uint8), affine), path)


def _rows(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["case"], r["class"]): r for r in csv.DictReader((out / "metrics_per_case.csv").open())}


def _folders(tmp_path: Path) -> tuple[Path, Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    return pred, ref, tmp_path / "out"


def test_default_classes_include_a_label_only_the_prediction_has(tmp_path, capsys):
    """Case b's reference has no tumour (2), its prediction has a false-positive tumour: the tumour class of b is
    scored (Dice 0, flagged), not skipped, so the mean tumour Dice is 0.5 and not 1."""
    pred, ref, out = _folders(tmp_path)
    organ = np.zeros((20, 20, 10), np.uint8)
    organ[5:15, 5:15, 3:7] = 1
    with_tumour = organ.copy()
    with_tumour[8:10, 8:10, 4:6] = 2
    _nifti(with_tumour, ref / "a.nii.gz"), _nifti(with_tumour, pred / "a.nii.gz")
    false_positive = organ.copy()
    false_positive[8:12, 8:12, 4:6] = 2  # 32 voxels
    _nifti(organ, ref / "b.nii.gz"), _nifti(false_positive, pred / "b.nii.gz")
    # a label in the prediction of no reference (7) is reported too, as its own class
    stray = with_tumour.copy()
    stray[0, 0, 0] = 7
    _nifti(with_tumour, ref / "c.nii.gz"), _nifti(stray, pred / "c.nii.gz")
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]) == 0
    rows = _rows(out)
    assert [k for k in rows if k[0] == "a"] == [("a", "label_1"), ("a", "label_2"), ("a", "label_7")]
    b = rows[("b", "label_2")]
    assert b["flag"] == "reference empty" and float(b["dice"]) == 0.0
    assert float(b["volume_pred_ml"]) == pytest.approx(32 / 1000)
    assert rows[("a", "label_7")]["flag"] == "both empty" and float(rows[("a", "label_7")]["accuracy"]) == 1.0
    assert rows[("c", "label_7")]["flag"] == "reference empty"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["label_2"]["cases"] == 3.0 and summary["label_2"]["dice"] == pytest.approx(2 / 3)
    assert summary["label_7"]["flagged"] == 1.0


def test_prediction_beyond_a_dicom_seg_reference_is_scored_on_the_prediction_grid(tmp_path):
    """highdicom stores only the non-empty frames of a SEG: its volume covers slices 1-4 of a 6-slice series.
    False positives of the prediction on slices 0 and 5 count (Dice 0.8), instead of being cropped away (Dice 1)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from tests.evaluation.test_evaluate import _ct_series

    shape, spacing = (6, 16, 20), (2.5, 0.8, 0.7)
    labels = np.zeros(shape, np.uint8)
    labels[1:5, 4:12, 5:15] = 1  # 4 slices x 80 voxels
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="liver", segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=_ct_series(shape, spacing), pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medseg-test", manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    pred, ref, out = _folders(tmp_path)
    seg.save_as(ref / "scan.dcm")
    predicted = labels.copy()
    predicted[[0, 5], 4:12, 5:15] = 1  # 160 false-positive voxels outside the SEG's frames
    image = sitk.GetImageFromArray(predicted)
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    image.SetOrigin((-10.0, -20.0, 30.0))
    sitk.WriteImage(image, str(pred / "scan.nii.gz"))
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--labels", "liver=1", "--output", str(out),
                          "--jobs", "1"]) == 0
    row = _rows(out)[("scan", "liver")]
    voxel_ml = 2.5 * 0.8 * 0.7 / 1000
    assert float(row["dice"]) == pytest.approx(2 * 320 / (480 + 320))
    assert float(row["volume_pred_ml"]) == pytest.approx(480 * voxel_ml)
    assert float(row["volume_ref_ml"]) == pytest.approx(320 * voxel_ml)
    assert float(row["hd_mm"]) == pytest.approx(2.5)  # the extra slices lie one slice (2.5 mm) from the reference


def test_prediction_and_reference_each_beyond_the_other_are_refused(tmp_path, capsys):
    pred, ref, out = _folders(tmp_path)
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:9, 1:9, 1:9] = 1
    _nifti(mask, ref / "a.nii.gz")
    _nifti(mask, pred / "a.nii.gz", origin=(5.0, 0.0, 0.0))  # same lattice, shifted by 5 voxels: half outside
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medseg: error: case 'a': 256 labelled voxel(s) of a.nii.gz lie outside")
    assert "reference that covers the prediction" in err[0] and not out.exists()
    # a prediction on a larger field of view that holds the reference's: scored on the prediction's grid
    big = np.zeros((14, 10, 10), np.uint8)
    big[1:13, 1:9, 1:9] = 1  # the reference's 8 x 8 x 8 cube shifted by 2 voxels plus 4 more columns
    _nifti(big, pred / "a.nii.gz", origin=(-2.0, 0.0, 0.0))
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]) == 0
    row = _rows(out)[("a", "label_1")]
    assert float(row["dice"]) == pytest.approx(2 * 512 / (768 + 512)) and float(row["hd_mm"]) == pytest.approx(2.0)


def test_bad_labels_and_an_absent_class(tmp_path, capsys):
    pred, ref, out = _folders(tmp_path)
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:6, 2:6, 1:3] = 1
    _nifti(mask, ref / "a.nii.gz"), _nifti(mask, pred / "a.nii.gz")
    base = ["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]
    assert evaluate_main([*base, "--labels", "liver=1,liver=2"]) == 2
    err = capsys.readouterr().err
    assert err == ("medseg: error: --labels 'liver=1,liver=2': class 'liver' is given twice; merge its values as"
                   " liver=V1+V2 or give each class its own name\n")
    assert evaluate_main([*base, "--labels", "liver=1,tumour=3"]) == 0
    err = capsys.readouterr().err
    assert "medseg: warning: class 'tumour' (label 3) is empty in every reference and prediction" in err
    assert "liver" not in err
    assert _rows(out)[("a", "tumour")]["flag"] == "both empty"


@pytest.mark.parametrize("option, message", [
    (["--tolerance-mm", "-1"], "--tolerance-mm -1.0: expected a distance of 0 mm or more"),
    (["--tolerance-mm", "nan"], "--tolerance-mm nan: expected a distance of 0 mm or more"),
    (["--worst-mm", "inf"], "--worst-mm inf: expected a positive finite distance in mm"),
    (["--worst-mm", "-5"], "--worst-mm -5.0: expected a positive finite distance in mm"),
    (["--jobs", "0"], "--jobs 0: expected 1 or more processes"),
])
def test_option_values_that_cannot_be_meant_are_refused(tmp_path, capsys, option, message):
    pred, ref, out = _folders(tmp_path)
    mask = np.zeros((8, 8, 4), np.uint8)
    _nifti(mask, ref / "a.nii.gz"), _nifti(mask, pred / "a.nii.gz")
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), *option]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"medseg: error: {message}") and not out.exists()


@pytest.mark.parametrize("instances", [False, True])
def test_output_that_is_a_file_or_under_one_is_refused_before_any_work(tmp_path, capsys, instances):
    pred, ref, _ = _folders(tmp_path)
    mask = np.zeros((8, 8, 4), np.uint8)
    _nifti(mask, ref / "a.nii.gz"), _nifti(mask, pred / "a.nii.gz")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep\n")
    for output in (blocker, blocker / "eval"):
        argv = ["--pred", str(pred), "--ref", str(ref), "--output", str(output), *(["--instances"] * instances)]
        assert evaluate_main(argv) == 2
        assert capsys.readouterr().err == (f"medseg: error: --output {output}: {blocker} is a file, not a folder;"
                                           " give a folder for the metrics files\n")
    assert blocker.read_text() == "keep\n"


def test_predictions_whose_names_match_no_reference_are_named(tmp_path, capsys):
    pred, ref, out = _folders(tmp_path)
    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:6, 2:6, 1:3] = 1
    _nifti(mask, ref / "case1.nii.gz"), _nifti(mask, ref / "case2.nii.gz")
    _nifti(mask, pred / "case1.nii.gz"), _nifti(mask, pred / "Case2.nii.gz")
    base = ["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]
    assert evaluate_main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("medseg: error: no prediction for 1 reference case(s): case2; 1 prediction file(s) match"
                          " no reference case (Case2.nii.gz): files pair by name without the suffix")
    assert evaluate_main([*base, "--missing-as-empty"]) == 0
    assert "1 prediction file(s) match no reference case, not scored: Case2.nii.gz" in capsys.readouterr().out
    assert _rows(out)[("case2", "label_1")]["flag"] == "prediction empty"


@pytest.mark.parametrize("instances", [False, True])
def test_input_folder_that_is_a_file_or_missing(tmp_path, capsys, instances):
    pred, ref, out = _folders(tmp_path)
    _nifti(np.zeros((8, 8, 4), np.uint8), ref / "a.nii.gz")
    afile = tmp_path / "preds.nii.gz"
    afile.write_bytes(b"")
    extra = ["--instances"] if instances else []
    what = "images" if instances else "label files"
    assert evaluate_main(["--pred", str(afile), "--ref", str(ref), "--output", str(out), *extra]) == 2
    assert capsys.readouterr().err == (f"medseg: error: prediction folder {afile} is a file; give the folder that"
                                       f" holds the prediction {what}\n")
    assert evaluate_main(["--pred", str(pred), "--ref", str(tmp_path / "nope"), "--output", str(out), *extra]) == 2
    assert capsys.readouterr().err == (f"medseg: error: reference folder {tmp_path / 'nope'} does not exist; give"
                                       f" the folder that holds the reference {what}\n")


def test_help_describes_the_command_without_markup(capsys):
    with pytest.raises(SystemExit):
        evaluate_main(["--help"])
    out = capsys.readouterr().out
    assert "python -m medseg.evaluate: score a folder of predictions" in out and "``" not in out


def test_a_2d_prediction_against_a_3d_reference_names_both_grids(tmp_path, capsys):
    pred, ref, out = _folders(tmp_path)
    organ = np.zeros((20, 20, 10), np.uint8)
    organ[5:15, 5:15, 3:7] = 1
    _nifti(organ, ref / "a.nii.gz")
    nib.save(nib.Nifti1Image(organ[:, :, 5].copy(), np.eye(4)), pred / "a.nii.gz")
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "case 'a': 2D prediction (shape (20, 20)," in err and "against a 3D reference (shape (20, 20, 10)," in err
    assert "network of the reference's dimensions" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()


def test_predicted_only_scores_the_predicted_cases_and_lists_the_rest(tmp_path, capsys):
    """A reference folder with training and validation cases, predictions of the validation case only: without an
    option the command stops (naming both remedies); --missing-as-empty would count the training cases as Dice 0;
    --predicted-only scores the one predicted case and lists the two left out."""
    pred, ref, out = _folders(tmp_path)
    organ = np.zeros((20, 20, 10), np.uint8)
    organ[5:15, 5:15, 3:7] = 1
    for name in ("train_a", "train_b", "val_c"):
        _nifti(organ, ref / f"{name}.nii.gz")
    half = organ.copy()
    half[5:10] = 0  # 200 of the 400 reference voxels: Dice 2 * 200 / 600
    _nifti(half, pred / "val_c_seg.nii.gz")
    base = ["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]
    assert evaluate_main(base) == 2
    assert "--predicted-only" in capsys.readouterr().err
    assert evaluate_main(base + ["--predicted-only", "--missing-as-empty"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert evaluate_main(base + ["--predicted-only"]) == 0
    printed = capsys.readouterr().out
    assert "2 reference case(s) without a prediction left out (--predicted-only): train_a, train_b" in printed
    rows = _rows(out)
    assert sorted({case for case, _ in rows}) == ["val_c"]
    assert float(rows[("val_c", "label_1")]["dice"]) == pytest.approx(2 * 200 / 600)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["label_1"]["dice"] == pytest.approx(2 * 200 / 600)
    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "other.nii.gz").write_bytes((pred / "val_c_seg.nii.gz").read_bytes())
    assert evaluate_main(["--pred", str(empty), "--ref", str(ref), "--output", str(out), "--predicted-only"]) == 2
    assert "match no reference case (other.nii.gz)" in capsys.readouterr().err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_prediction_on_a_smaller_field_of_view_is_scored_with_a_warning(tmp_path, capsys, jobs):
    """The reference's labelled voxels outside the prediction's grid are scored as missed (as an empty
    prediction there), and the command says how many, per case; a case on the reference's grid gets no word."""
    pred, ref, out = _folders(tmp_path)
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[1:9, 1:9, 1:9] = 1  # 512 voxels
    _nifti(mask, ref / "a.nii.gz")
    _nifti(mask, ref / "b.nii.gz")
    _nifti(mask[:, :, 3:], pred / "a.nii.gz", origin=(0.0, 0.0, 3.0))  # slices 0-2 not predicted: 128 voxels lost
    _nifti(mask, pred / "b.nii.gz")
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", jobs]) == 0
    err = capsys.readouterr().err
    assert ("medseg: warning: 1 case(s) have labelled reference voxels outside the prediction's field of view, "
            "scored as missed: a (128 of 512 voxels); predict on the reference's whole image") in err
    assert "b (" not in err
    rows = _rows(out)
    assert float(rows[("a", "label_1")]["dice"]) == pytest.approx(2 * 384 / (384 + 512))
    assert float(rows[("b", "label_1")]["dice"]) == 1.0
