"""Metric definitions against hand-computed values and independent implementations, and the evaluate command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from medseg.evaluate import main as evaluate_main
from medseg.evaluation import binary_metrics

SYMMETRIC = ("dice", "iou", "accuracy", "hd_mm", "hd95_mm", "assd_mm", "masd_mm", "nsd", "boundary_f1")


def test_four_by_four_overlap_example():
    ref = np.zeros((4, 4), bool)
    ref[[0, 0, 1, 2, 3], [0, 1, 1, 2, 3]] = True  # 5 reference pixels
    pred = np.zeros((4, 4), bool)
    pred[[0, 1, 2, 2], [1, 1, 2, 3]] = True  # 4 predicted, 3 shared
    m = binary_metrics(pred, ref, (1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 3 / (5 + 4))
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 5)
    assert m["accuracy"] == pytest.approx(13 / 16)
    assert m["avd_ml"] == pytest.approx(1e-3) and m["rvd"] == pytest.approx(-0.2)


def _surface(mask):
    """Independent surface: a voxel of the mask with a face neighbour outside it (or outside the image)."""
    padded = np.pad(mask, 1)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            inner &= np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return np.argwhere(mask & ~inner)


def _brute(pred, ref, spacing):
    s = np.asarray(spacing, float)
    p, r = _surface(pred) * s, _surface(ref) * s
    d = np.sqrt(((p[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1), d.min(axis=0)


@pytest.mark.parametrize("k", [1, 3])
def test_cubes_shifted_by_k_voxels_under_anisotropic_spacing(k: int):
    spacing = (0.7, 0.9, 2.5)
    ref = np.zeros((16, 16, 14), bool)
    ref[4:10, 4:10, 3:8] = True
    pred = np.roll(ref, k, axis=2)
    m = binary_metrics(pred, ref, spacing)
    assert m["hd_mm"] == pytest.approx(k * 2.5)
    d_pr, d_rp = _brute(pred, ref, spacing)
    assert m["assd_mm"] == pytest.approx((d_pr.sum() + d_rp.sum()) / (d_pr.size + d_rp.size))
    assert m["masd_mm"] == pytest.approx((d_pr.mean() + d_rp.mean()) / 2)
    assert m["hd95_mm"] == pytest.approx(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    assert m["dice"] == pytest.approx((5 - k) / 5)


def random_blob(shape, seed, threshold=0.0):
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=shape), sigma=3)
    return field > threshold + 0.02 * rng.normal()


@pytest.mark.parametrize("seed", range(4))
def test_symmetry_and_flip_invariance(seed: int):
    spacing = (1.1, 0.6, 3.0)
    a, b = random_blob((30, 28, 12), seed), random_blob((30, 28, 12), seed + 100)
    ab, ba = binary_metrics(a, b, spacing), binary_metrics(b, a, spacing)
    for key in SYMMETRIC:
        assert ab[key] == pytest.approx(ba[key]), key
    assert ab["precision"] == pytest.approx(ba["recall"])
    flipped = binary_metrics(a[::-1, ::-1, ::-1], b[::-1, ::-1, ::-1], spacing)
    for key in SYMMETRIC + ("precision", "recall", "rvd"):
        assert flipped[key] == pytest.approx(ab[key]), key


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_medpy_and_monai_on_random_shapes(seed: int):
    import torch
    from medpy.metric import binary as medpy
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    spacing = (0.8, 1.3, 2.5)
    pred, ref = random_blob((40, 36, 20), seed), random_blob((40, 36, 20), seed + 50, 0.05)
    m = binary_metrics(pred, ref, spacing, tolerance_mm=2.0)
    assert abs(m["hd_mm"] - medpy.hd(pred, ref, voxelspacing=spacing)) < 1e-3
    assert abs(m["assd_mm"] - medpy.assd(pred, ref, voxelspacing=spacing)) < 1e-3  # pooled mean, both directions
    directed = (medpy.asd(pred, ref, voxelspacing=spacing) + medpy.asd(ref, pred, voxelspacing=spacing)) / 2
    assert abs(m["masd_mm"] - directed) < 1e-3
    assert m["dice"] == pytest.approx(medpy.dc(pred, ref))
    assert m["precision"] == pytest.approx(medpy.precision(pred, ref))
    p, r = torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None]
    hd95 = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing)).item()
    assd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=list(spacing)).item()
    nsd = compute_surface_dice(p, r, [2.0], include_background=True, spacing=list(spacing)).item()
    assert abs(m["hd95_mm"] - hd95) < 1e-3 and abs(m["assd_mm"] - assd) < 1e-3 and abs(m["nsd"] - nsd) < 1e-6


def test_empty_policy_never_yields_nan():
    empty, blob = np.zeros((10, 10, 10), bool), random_blob((10, 10, 10), 1)
    for pred, ref in ((empty, empty), (empty, blob), (blob, empty)):
        m = binary_metrics(pred, ref, (1.0, 1.0, 1.0))
        assert all(np.isfinite(v) for k, v in m.items() if k != "flag")
    assert binary_metrics(blob, empty, (1, 1, 1))["nsd"] == 0.0
    assert binary_metrics(empty, empty, (1, 1, 1))["boundary_f1"] == 1.0


# ---------------------------------------------------------------- the command


def _save_nifti(array, path, spacing=(1.0, 1.2, 2.0), origin=(0.0, 0.0, 0.0)):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(array, affine), path)


def _save_sitk(array, path, spacing=(1.0, 1.2, 2.0), origin=(0.0, 0.0, 0.0)):
    """Write with SimpleITK in LPS so that it matches _save_nifti's RAS geometry voxel for voxel."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    image.SetSpacing(spacing)
    image.SetOrigin((-origin[0], -origin[1], origin[2]))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(image, str(path))


@pytest.fixture
def folders(tmp_path: Path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir(), ref.mkdir()
    for i in range(3):
        lab = random_blob((24, 22, 10), i).astype(np.uint8)
        lab[random_blob((24, 22, 10), i + 7, 0.4) & (lab == 1)] = 2
        noisy = lab.copy()
        noisy[:, :, 0] = 0
        _save_sitk(lab, ref / f"case_{i}.nrrd")
        _save_nifti(noisy, pred / f"case_{i}.nii.gz")
    return pred, ref, tmp_path / "out"


def test_evaluate_command_writes_csv_json_and_boxplot(folders, capsys):
    pred, ref, out = folders
    code = evaluate_main(["--pred", str(pred), "--ref", str(ref), "--labels", "organ=1+2,core=2",
                          "--output", str(out), "--jobs", "2"])
    assert code == 0
    rows = list(csv.DictReader((out / "metrics_per_case.csv").open()))
    assert len(rows) == 6 and {r["class"] for r in rows} == {"organ", "core"}
    summary = json.loads((out / "metrics.json").read_text())
    assert 0.5 < summary["organ"]["dice"] < 1.0 and summary["organ"]["cases"] == 3
    # same numbers as scoring the arrays directly
    lab = np.asarray(nib.load(pred / "case_0.nii.gz").dataobj)
    refarr = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "case_0.nrrd"))).transpose()
    direct = binary_metrics(np.isin(lab, [1, 2]), np.isin(refarr, [1, 2]), (1.0, 1.2, 2.0))
    row = next(r for r in rows if r["case"] == "case_0" and r["class"] == "organ")
    assert float(row["hd95_mm"]) == pytest.approx(direct["hd95_mm"], rel=1e-5)
    png = out / "metrics_boxplot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(png).size == (1600, 400)
    assert "organ" in capsys.readouterr().out


def test_missing_predictions(folders, capsys):
    pred, ref, out = folders
    (pred / "case_2.nii.gz").unlink()
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out)]) == 2
    assert "no prediction for 1 reference case(s): case_2" in capsys.readouterr().err
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--missing-as-empty",
                          "--jobs", "1"]) == 0
    rows = [r for r in csv.DictReader((out / "metrics_per_case.csv").open()) if r["case"] == "case_2"]
    assert rows and all(r["flag"] == "prediction empty" and float(r["dice"]) == 0.0 for r in rows)


def test_geometry_mismatch_is_refused_or_resampled(folders, capsys):
    pred, ref, out = folders
    lab = np.asarray(nib.load(pred / "case_1.nii.gz").dataobj)
    _save_nifti(lab, pred / "case_1.nii.gz", origin=(0.5, 0.0, 0.0))
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "case 'case_1': prediction geometry (shape (24, 22, 10), spacing (1, 1.2, 2) mm, origin (-0.50" in err
    assert "differs from the reference (shape (24, 22, 10)" in err and "--resample" in err
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--resample", "--jobs", "1"]) == 0


def test_non_integer_labels_are_refused(folders, capsys):
    pred, ref, out = folders
    _save_nifti(np.full((24, 22, 10), 0.5, np.float32), pred / "case_0.nii.gz")
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--output", str(out), "--jobs", "1"]) == 2
    assert "non-integer label value 0.5" in capsys.readouterr().err


def test_png_masks_in_2d(tmp_path: Path):
    pred, ref = tmp_path / "p", tmp_path / "r"
    pred.mkdir(), ref.mkdir()
    mask = np.zeros((32, 40), np.uint8)
    mask[8:20, 10:30] = 255
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(ref / "slice.png"))
    sitk.WriteImage(sitk.GetImageFromArray(np.roll(mask, 2, axis=0)), str(pred / "slice.png"))
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--labels", "cell=255", "--output",
                          str(tmp_path / "o"), "--jobs", "1"]) == 0
    row = next(csv.DictReader((tmp_path / "o" / "metrics_per_case.csv").open()))
    assert float(row["dice"]) == pytest.approx(10 / 12) and float(row["hd_mm"]) == pytest.approx(2.0)


def _ct_series(shape=(6, 16, 20), spacing=(2.5, 0.8, 0.7)):
    """A synthetic CT series as pydicom datasets (slices, rows, columns)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for z in range(shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.StudyID = "CT", "SYNTH0001", "Synthetic^Phantom", "1"
        ds.PatientBirthDate, ds.PatientSex, ds.AccessionNumber, ds.ReferringPhysicianName = "", "O", "", ""
        ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20260101", "120000", 1, z + 1
        ds.Manufacturer = "test"
        ds.ImagePositionPatient = [-10.0, -20.0, 30.0 + z * spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = shape[1], shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.zeros(shape[1:], np.int16).tobytes()
        slices.append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(_to_bytes(ds))))
    return slices


def _to_bytes(ds) -> bytes:
    from pydicom.filebase import DicomBytesIO

    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_seg_reference_against_nifti_prediction(tmp_path: Path):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    shape, spacing = (6, 16, 20), (2.5, 0.8, 0.7)
    series = _ct_series(shape, spacing)
    labels = np.zeros(shape, np.uint8)  # (slice, row, column)
    labels[1:5, 4:12, 5:15] = 1
    labels[2:4, 6:9, 8:11] = 2
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=name, segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Liver, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, name in ((1, "liver"), (2, "tumour"))
    ]
    seg = hd.seg.Segmentation(
        source_images=series, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medseg-test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0",
    )
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir(), pred.mkdir()
    seg.save_as(ref / "scan.dcm")
    # the same labels as an LPS NIfTI-style image via SimpleITK: index (i, j, k) = (column, row, slice)
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((spacing[2], spacing[1], spacing[0]))
    image.SetOrigin((-10.0, -20.0, 30.0))
    sitk.WriteImage(image, str(pred / "scan.nii.gz"))
    out = tmp_path / "out"
    assert evaluate_main(["--pred", str(pred), "--ref", str(ref), "--labels", "liver=1+2,tumour=2",
                          "--output", str(out), "--jobs", "1"]) == 0
    rows = list(csv.DictReader((out / "metrics_per_case.csv").open()))
    assert [float(r["dice"]) for r in rows] == [1.0, 1.0]
    assert float(rows[0]["volume_ref_ml"]) == pytest.approx(4 * 8 * 10 * 2.5 * 0.8 * 0.7 / 1000)


# ---------------------------------------------------------------- fast paths give the np.isin / SimpleITK answers


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize("order", ["C", "F"])
def test_class_masks_equal_np_isin_on_random_label_maps(dtype, order):
    from medseg.evaluation import evaluate_case
    from medseg.evaluation.classes import class_mask

    rng = np.random.default_rng(7)
    low = -5 if dtype == np.int16 else 0
    labels = np.asarray(rng.integers(low, 40, (30, 26, 12)), dtype=dtype, order=order)  # values 9..39 undeclared
    member_sets = [[1], [1, 2], [0, 3, 5], list(range(1, 10)), [2, 300, -1], [-3, -5, 4], [1000], list(range(0, 36, 3))]
    for members in member_sets:
        expected = np.isin(labels.astype(np.int64), members)
        got = class_mask(labels, members)
        assert got.dtype == bool and got.shape == labels.shape
        assert np.array_equal(got, expected), members
    assert np.array_equal(class_mask(labels[::2, 1:, ::-1], [1, 2]), np.isin(labels[::2, 1:, ::-1], [1, 2]))
    pred = np.roll(labels, 2, axis=0)
    classes = {"a": [1, 2], "b": [3], "many": list(range(1, 10)), "outside": [500]}
    fast = evaluate_case(pred, labels, (0.8, 1.1, 2.5), classes)
    slow = {name: binary_metrics(np.isin(pred.astype(np.int64), m), np.isin(labels.astype(np.int64), m),
                                 (0.8, 1.1, 2.5)) for name, m in classes.items()}
    assert fast == slow
    assert fast["outside"]["flag"] == "both empty"


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_fast_label_reader_matches_simpleitk_reader(tmp_path, suffix, dtype):
    from medseg.data.labelmaps import read_labelmap
    from medseg.data.labels_io import read_labels

    rng = np.random.default_rng(3)
    array = rng.integers(0, 4, (20, 18, 7)).astype(dtype)
    path = tmp_path / f"lab{suffix}"
    if suffix == ".nrrd":
        _save_sitk(array, path, spacing=(0.7, 0.9, 2.5), origin=(3.0, -4.0, 10.0))
    else:  # an oblique affine, so that the qform/sform reading is exercised
        c, s = np.cos(0.3), np.sin(0.3)
        rotation = np.array([[0.0, -c, s], [1.0, 0.0, 0.0], [0.0, s, c]])  # axes swapped, flipped and tilted
        affine = np.eye(4)
        affine[:3, :3], affine[:3, 3] = rotation * np.array([0.7, 0.9, 2.5]), (5.0, -3.0, 12.0)
        nib.save(nib.Nifti1Image(array, affine), path)
    fast, slow = read_labels(path), read_labelmap(path)
    assert np.array_equal(fast.array, slow.array) and fast.array.shape == slow.array.shape
    assert np.array_equal(fast.affine, slow.affine)
    assert fast.array.dtype == (np.int64 if dtype == np.float32 else dtype)  # stored integers stay as they are


def test_fast_label_reader_refusals(tmp_path):
    from medseg.data.labels_io import read_labels
    from medseg.errors import MedsegError

    path = tmp_path / "lab.nii"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 8), np.int16), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])  # header intact, voxel data cut short
    with pytest.raises(MedsegError, match=r"lab.nii: voxel data cannot be read .*truncated") as err:
        read_labels(path)
    assert "\n" not in str(err.value)
    gz = tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 8), np.int16), np.eye(4)), gz)
    gz.write_bytes(gz.read_bytes()[:-40])
    with pytest.raises(MedsegError, match="lab.nii.gz: "):
        read_labels(gz)
    four = tmp_path / "four.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 3), np.uint8), np.eye(4)), four)
    with pytest.raises(MedsegError, match=r"four.nii: 4D image of shape \(8, 8, 4, 3\); a label map is 2D or 3D"):
        read_labels(four)
    single = tmp_path / "single.nii"  # a trailing length-1 dimension is the 3D map it describes
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4, 1), np.uint8), np.eye(4)), single)
    assert read_labels(single).array.shape == (8, 8, 4)


# ---------------------------------------------------------------- outputs written atomically and complete


def test_command_outputs_are_replaced_atomically_and_complete(folders, monkeypatch):
    from PIL import Image

    pred, ref, out = folders
    argv = ["--pred", str(pred), "--ref", str(ref), "--labels", "organ=1+2,core=2", "--output", str(out), "--jobs", "1"]
    assert evaluate_main(argv) == 0
    names = ("metrics_per_case.csv", "metrics.json", "metrics_boxplot.png")
    old = {}
    for name in names:  # a second link to each first-run file: an in-place rewrite would change it
        os_link = out.parent / f"first_{name}"
        os_link.hardlink_to(out / name)
        old[name] = os_link.read_bytes()
    # the second run writes different numbers (one prediction emptied); its box plot fails half-way
    _save_nifti(np.zeros((24, 22, 10), np.uint8), pred / "case_1.nii.gz")
    from matplotlib.figure import Figure

    def broken_savefig(self, fname, **kw):
        fname.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        evaluate_main(argv)
    assert (out / "metrics_boxplot.png").read_bytes() == old["metrics_boxplot.png"]  # untouched, not partial
    monkeypatch.undo()
    assert evaluate_main(argv) == 0
    for name in names:
        assert (out.parent / f"first_{name}").read_bytes() == old[name]  # first run's files never written into
        assert (out / name).read_bytes() != old[name]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary file left behind
    rows = list(csv.DictReader((out / "metrics_per_case.csv").open()))
    assert [(r["case"], r["class"]) for r in rows] == [(f"case_{i}", c) for i in range(3) for c in ("organ", "core")]
    emptied = next(r for r in rows if r["case"] == "case_1" and r["class"] == "organ")
    assert emptied["flag"] == "prediction empty" and float(emptied["dice"]) == 0.0
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary) == {"organ", "core"} and summary["organ"]["cases"] == 3.0
    assert summary["organ"]["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in rows if r["class"] == "organ"]))
    with Image.open(out / "metrics_boxplot.png") as png:
        png.load()  # decodes every byte: a truncated file fails here
        assert png.size == (1600, 400)


def test_workflow_run_is_callable_from_python(folders):
    from medseg.workflows import evaluate

    pred, ref, out = folders
    result = evaluate.run(pred, ref, labels="organ=1+2", output=out, jobs=1)
    assert set(result.per_case) == {"case_0", "case_1", "case_2"}
    assert result.summary["organ"]["cases"] == 3.0 and result.missing == []
    assert json.loads(result.files["json"].read_text())["organ"]["dice"] == pytest.approx(result.summary["organ"]["dice"])
    (pred / "case_2.nii.gz").unlink()
    with pytest.raises(evaluate.MissingPredictions, match="case_2") as err:
        evaluate.run(pred, ref, output=out, jobs=1)
    assert err.value.cases == ["case_2"]


def test_an_evaluation_written_into_the_prediction_folder_is_not_read_as_a_case(folders, capsys):
    """--output the prediction folder: the second run must not take metrics_boxplot.png for a prediction."""
    pred, ref, _ = folders
    args = ["--pred", str(pred), "--ref", str(ref), "--output", str(pred), "--jobs", "1"]
    assert evaluate_main(args) == 0
    assert (pred / "metrics_boxplot.png").is_file()
    first = (pred / "metrics_per_case.csv").read_text()
    capsys.readouterr()
    assert evaluate_main(args) == 0
    out = capsys.readouterr().out
    assert "match no reference case" not in out
    assert (pred / "metrics_per_case.csv").read_text() == first
    rows = list(csv.DictReader((pred / "metrics_per_case.csv").open()))
    assert sorted({r["case"] for r in rows}) == ["case_0", "case_1", "case_2"]
