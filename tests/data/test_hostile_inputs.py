"""Hostile and broken inputs (issue 16.5, the image and DICOM lines): each gets one line on stderr and exit code 2
from medseg.convert, medseg.train and medseg.predict (a skipped case and exit 1 among several in predict), never a
traceback, a hang or an allocation of what a header claims, and the input file's bytes stay as they were.
Every file is written by the test."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.dicom import write_series
from medseg.errors import MedsegError

from tests.conftest import FAST, synthetic_case, write_msd

AFFINE = synthetic_case(shape=(2, 2, 2))[2]  # the grid of write_msd's cases: a bad image replaces one of them


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, AFFINE), path)
    return path


def truncated_nifti(folder: Path) -> Path:
    path = _nifti(folder / "truncated.nii", synthetic_case(shape=(20, 18, 12))[0])
    path.write_bytes(path.read_bytes()[:-2000])  # valid header, data cut short
    return path


def cut_gzip(folder: Path) -> Path:
    path = _nifti(folder / "cut.nii.gz", synthetic_case(shape=(20, 18, 12))[0])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _huge_header(path: Path, header: nib.Nifti1Header, shape: tuple[int, ...]) -> Path:
    """A float64 header claiming ``shape``, then 64 voxels of data (gzip-compressed for ``.gz``)."""
    header.set_data_shape(shape)
    header.set_data_dtype(np.float64)
    raw = header.binaryblock + b"\0" * 4 + np.zeros(64, np.float64).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def terabyte_nifti1(folder: Path) -> Path:
    return _huge_header(folder / "huge.nii", nib.Nifti1Header(), (32767, 32767, 32767))


def petabyte_nifti2(folder: Path) -> Path:
    return _huge_header(folder / "huge2.nii.gz", nib.Nifti2Header(), (200000, 200000, 100000))


def nan_image(folder: Path) -> Path:
    image = synthetic_case(shape=(20, 18, 12))[0]
    image[3, 4, 5], image[6, 7, 8] = np.nan, np.inf
    return _nifti(folder / "nan.nii.gz", image)


def four_d(folder: Path) -> Path:
    return _nifti(folder / "fourd.nii.gz", np.zeros((20, 18, 12, 3), np.float32))


def one_voxel(folder: Path) -> Path:
    return _nifti(folder / "voxel.nii.gz", np.zeros((1, 1, 1), np.float32))


def colour_png(folder: Path) -> Path:
    from PIL import Image

    path = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def two_patients(folder: Path) -> Path:
    image = np.round(synthetic_case(shape=(20, 18, 6))[0])
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    write_series(folder / "mixed", image, affine, series_uid="1.2.826.0.1.3680043.8.498.71", patient_name="DOE^JANE",
                 patient_id="PID-4711", prefix="a")
    write_series(folder / "mixed", image, affine, series_uid="1.2.826.0.1.3680043.8.498.72", patient_name="ROE^RICHARD",
                 patient_id="PID-0815", prefix="b")
    return folder / "mixed"


def no_pixel_data(folder: Path) -> Path:
    import pydicom

    write_series(folder / "nopix", np.round(synthetic_case(shape=(20, 18, 6))[0]), np.diag([1.5, 1.5, 2.0, 1.0]))
    victim = sorted((folder / "nopix").iterdir())[2]
    ds = pydicom.dcmread(victim)
    del ds.PixelData
    ds.save_as(victim)
    return folder / "nopix"


MIXED = r"holds series of 2 different patients \(patient 1: series-[0-9a-f]{12}; patient 2: series-[0-9a-f]{12}\)"
#: maker, what the one line says (regex), whether medseg.convert refuses it (NaN is converted as it is)
CASES = {
    "truncated NIfTI": (truncated_nifti, r"truncated\.nii: truncated: header and data need \d+ bytes, the file holds \d+( \(decompressed\))?;", True),
    "gzip cut short": (cut_gzip, r"cut\.nii\.gz: gzip stream cut short \(the file ends inside its compressed data", True),
    "32767^3 float64 NIfTI-1": (terabyte_nifti1, r"huge\.nii: header claims 32767x32767x32767 voxels \(281 TB\), more"
                                                 r" than this machine's memory", True),
    "NIfTI-2 of petabytes": (petabyte_nifti2, r"huge2\.nii\.gz: header claims 200000x200000x100000 voxels \(32 PB\)", True),
    "4D image": (four_d, r"fourd\.nii\.gz: 4D image \(shape \(20, 18, 12, 3\)\); medseg reads one 2D or 3D image per file",
                 True),
    "1x1x1 image": (one_voxel, r"voxel\.nii\.gz: an image of 1x1x1 voxels; nothing to segment", True),
    "RGB PNG": (colour_png, r"photo\.png: colour image", True),
    "two patients' series": (two_patients, MIXED, True),
    "DICOM without PixelData": (no_pixel_data, r"slice0002\.dcm: no pixel data \(a DICOM image file without its image\)",
                                True),
    "NaN/inf voxels": (nan_image, r"nan\.nii\.gz: (2 )?NaN/inf voxel", False),
}


def snapshot(path: Path) -> dict[str, bytes]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in files}


def one_line(capsys, pattern: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    for secret in ("DOE", "JANE", "ROE", "RICHARD", "PID-4711", "PID-0815"):
        assert secret not in err
    return lines[0]


@pytest.mark.parametrize("name", [n for n, (_, _, refused) in CASES.items() if refused])
def test_convert_refuses_in_one_line(tmp_path, capsys, name):
    from medseg.convert import main as convert

    make, pattern, _ = CASES[name]
    src = make(tmp_path)
    before = snapshot(src)
    assert convert([str(src), str(tmp_path / "out.nii.gz")]) == 2
    one_line(capsys, pattern)
    assert not (tmp_path / "out.nii.gz").exists()
    assert snapshot(src) == before


def test_float_valued_labels_refused_by_convert(tmp_path, capsys):
    from medseg.convert import main as convert

    label = synthetic_case(shape=(20, 18, 12))[1].astype(np.float32)
    label[label == 2] = 1.5
    src = _nifti(tmp_path / "soft.nii.gz", label)
    before = snapshot(src)
    assert convert([str(src), str(tmp_path / "out.nii.gz"), "--label"]) == 2
    one_line(capsys, r"soft\.nii\.gz: non-integer label value 1\.5; expected a label map of whole numbers")
    assert snapshot(src) == before


# --- medseg.train: the check before training stops with one line naming the case ------------------------------

TRAIN = {
    "truncated NIfTI": "truncated NIfTI", "gzip cut short": "gzip cut short", "NIfTI-1 terabytes": "32767^3 float64 NIfTI-1",
    "4D image": "4D image", "1x1x1 image": "1x1x1 image", "NaN/inf voxels": "NaN/inf voxels",
}


def _dataset_with(tmp_path: Path, image: Path | None = None, label: np.ndarray | None = None) -> Path:
    root = write_msd(tmp_path / "data" / "Synthetic", n_cases=3, shape=(20, 18, 12))
    if image is not None:
        target = root / "imagesTr" / "case_001.nii.gz"
        data = image.read_bytes()  # the hostile bytes under the case's name (gzip-compressed where plain)
        target.write_bytes(gzip.compress(data) if image.name.endswith(".nii") else data)
    if label is not None:
        nib.save(nib.Nifti1Image(label, AFFINE), root / "labelsTr" / "case_001.nii.gz")
    return root


def _train(tmp_path: Path, monkeypatch) -> int:
    from medseg.train import main

    monkeypatch.chdir(tmp_path)
    args = ["liver", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run")]
    return main(args + [a for o in FAST + ["data.dataset=Synthetic", "tracking.enabled=false"] for a in ("--set", o)])


@pytest.mark.parametrize("name", list(TRAIN))
def test_train_stops_before_training_in_one_line(tmp_path, capsys, monkeypatch, name):
    make, pattern, _ = CASES[TRAIN[name]]
    hostile = make(tmp_path)
    root = _dataset_with(tmp_path, image=hostile)
    before = snapshot(root)
    assert _train(tmp_path, monkeypatch) == 2
    line = one_line(capsys, pattern.split(": ", 1)[1] if ": " in pattern else pattern)
    assert "1 bad case(s)" in line and "case_001.nii.gz" in line
    assert snapshot(root) == before
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.pt"))  # nothing trained


def test_train_refuses_float_valued_labels(tmp_path, capsys, monkeypatch):
    label = synthetic_case(shape=(20, 18, 12), seed=1)[1].astype(np.float32)
    label[label == 2] = 0.5
    root = _dataset_with(tmp_path, label=label)
    before = snapshot(root)
    assert _train(tmp_path, monkeypatch) == 2
    one_line(capsys, r"1 bad case\(s\) .*case_001\.nii\.gz: .*non-integer label value 0\.5")
    assert snapshot(root) == before


# --- medseg.predict: one case refused, or skipped among good ones ----------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An exported bundle of an untrained network (what predicts does not matter here, only what it reads)."""
    from medseg.bundle.export import export_bundle
    from medseg.config import load_config
    from medseg.networks import build_network

    work = tmp_path_factory.mktemp("bundle")
    cfg = load_config("liver", FAST + [f"bundle.dir={work / 'bundles'}"])
    summary = {c: {"dice": 0.5, "hd95_mm": 1.0, "assd_mm": 1.0, "cases": 1} for c in ("liver", "tumour")}
    return export_bundle(cfg, work / "run", build_network(cfg.network, 1, 3), summary)


PREDICT = [n for n in CASES if n != "RGB PNG"]


@pytest.mark.parametrize("name", PREDICT)
def test_predict_refuses_a_single_case_in_one_line(bundle, tmp_path, capsys, name):
    from medseg.predict import main as predict

    make, pattern, _ = CASES[name]
    src = make(tmp_path)
    before = snapshot(src)
    assert predict(["--bundle", str(bundle), "--input", str(src), "--output", str(tmp_path / "out")]) == 2
    one_line(capsys, pattern)
    assert snapshot(src) == before
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_predict_skips_bad_cases_among_good_ones(bundle, tmp_path, capsys):
    from medseg.predict import main as predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    _nifti(inputs / "good.nii.gz", synthetic_case(shape=(20, 18, 12))[0])
    for name in ("truncated NIfTI", "NaN/inf voxels", "two patients' series", "DICOM without PixelData"):
        CASES[name][0](inputs)
    before = snapshot(inputs)
    assert predict(["--bundle", str(bundle), "--input", str(inputs), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    skipped = [ln for ln in err.splitlines() if "failed:" in ln]
    assert len(skipped) == 4, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_seg.nii.gz"]
    assert snapshot(inputs) == before


def test_predict_a_folder_of_only_bad_cases_is_a_bad_input(bundle, tmp_path, capsys, monkeypatch):
    """Every case refused for its input: each reason, then one error line naming --input, exit 2, nothing written;
    a fault (not a refusal) in every case stays exit 1 (a report, not the user's input)."""
    from medseg.predict import main as predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("truncated NIfTI", "NaN/inf voxels"):
        CASES[name][0](inputs)
    out = tmp_path / "out"
    assert predict(["--bundle", str(bundle), "--input", str(inputs), "--output", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len([ln for ln in lines if "failed:" in ln]) == 2 and "Traceback" not in captured.err, captured.err
    assert lines[-1] == (f"medseg: error: {inputs}: none of its 2 case(s) could be predicted (each one's reason is "
                         "above); fix or remove them and run again")
    assert "wrote 0" not in captured.out
    assert not out.exists() or not any(out.iterdir())
    from medseg.workflows import predict as workflow

    def faulty(*args, **kwargs):
        raise RuntimeError("kernel fault")

    monkeypatch.setattr(workflow, "predict_one", faulty)
    _nifti(inputs / "good.nii.gz", synthetic_case(shape=(20, 18, 12))[0])
    (inputs / "truncated.nii").unlink()
    (inputs / "nan.nii.gz").unlink()
    assert predict(["--bundle", str(bundle), "--input", str(inputs), "--output", str(out)]) == 1
    assert "--debug stops at the first of these errors" in capsys.readouterr().err


def test_dicom_seg_from_a_series_with_an_empty_sop_class(bundle, tmp_path, capsys, monkeypatch):
    """Anonymisers leave SOPClassUID present but empty: the class comes from the file meta; the input is not touched."""
    import highdicom as hd
    import pydicom

    from medseg.predict import main as predict

    write_series(tmp_path / "ct", np.round(synthetic_case(shape=(20, 18, 6))[0]), np.diag([1.5, 1.5, 2.0, 1.0]))
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ""
        ds.save_as(path)
    assert pydicom.dcmread(next((tmp_path / "ct").iterdir())).SOPClassUID == ""
    before = snapshot(tmp_path / "ct")
    args = ["--bundle", str(bundle), "--input", str(tmp_path / "ct"), "--output", str(tmp_path / "seg")]
    assert predict(args + ["--format", "dicom-seg"]) == 0, capsys.readouterr().err
    seg = hd.seg.segread(str(tmp_path / "seg" / "ct_seg.dcm"))
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {r.ReferencedSOPClassUID for r in refs} == {"1.2.840.10008.5.1.4.1.1.2"} and len(refs) == 6
    assert snapshot(tmp_path / "ct") == before
    # any other reason highdicom refuses the series: one line, exit 2, found from the headers before any inference
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    from medseg.workflows import predict as workflow

    inferred = []
    monkeypatch.setattr(workflow, "run_case", lambda *a, **k: inferred.append(a) or pytest.fail("inference ran"))
    assert predict(args[:-1] + [str(tmp_path / "seg2"), "--format", "dicom-seg"]) == 2
    one_line(capsys, r"ct: DICOM SEG cannot be written from this series \(ValueError: Source images have no Frame Of"
                     r" Reference UID.*\); write NIfTI instead")
    assert inferred == [] and not (tmp_path / "seg2" / "ct_seg.dcm").exists()


def test_library_calls_raise_medseg_error(tmp_path):
    """The same refusals from Python (a notebook): MedsegError, before anything the header claims is allocated."""
    from medseg.data.check import read_header
    from medseg.data.images import read_image

    for name in ("32767^3 float64 NIfTI-1", "gzip cut short", "two patients' series"):
        make, pattern, _ = CASES[name]
        src = make(tmp_path)
        for read in (read_image, read_header):
            with pytest.raises(MedsegError, match=pattern):
                read(src)
    shutil.rmtree(tmp_path / "mixed")


def test_bundle_inference_config_reads_series_with_the_shipped_reader(bundle, tmp_path, monkeypatch):
    """The exported inference.json loads DICOM through scripts/medseg_data (as medseg.predict does in-process) and
    refuses a tilted series instead of letting MONAI's ITKReader stack it."""
    import json
    import sys

    from monai.bundle import ConfigParser

    from medseg.bundle.load import load_bundle
    from medseg.errors import user_error

    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image = np.round(synthetic_case(shape=(20, 18, 6))[0])
    write_series(tmp_path / "ct", image, affine)
    tilt = np.array([affine[:3, 3] + k * affine[:3, 2] + [0.0, 0.6 * k, 0.0] for k in range(6)])
    write_series(tmp_path / "tilted", image, affine, positions=tilt)
    ours = load_bundle(bundle, "cpu").chain.preprocessing({"image": str(tmp_path / "ct")})["image"]
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    load = config["preprocessing"]["transforms"][0]
    assert "scripts.medseg_data.DicomSeriesReader" in str(load["reader"]) and "medseg.data" not in str(load["reader"])
    monkeypatch.syspath_prepend(str(bundle))
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        monkeypatch.delitem(sys.modules, name)
    parser = ConfigParser(config)
    parser["bundle_root"] = str(bundle)
    chain = parser.get_parsed_content("preprocessing")
    theirs = chain({"image": str(tmp_path / "ct")})["image"]
    np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(theirs.affine), np.asarray(ours.affine), atol=1e-6)
    with pytest.raises(Exception) as err:
        chain({"image": str(tmp_path / "tilted")})
    assert "gantry tilt" in str(user_error(err.value) or err.value.__cause__)
