"""``medseg.predict`` and ``medseg.evaluate`` on a researcher's own files: what failed or misled, fixed.

- predict: an image whose NaN/inf voxels the CT window hid (clipped to finite values, or an image of nothing but NaN
  cropped to no voxels) came out as a mask; a DICOM series folder or file given itself as ``--input`` and named by
  the patient (``PID12345/``) gave ``PID12345_seg.nii.gz`` and a log line with the ID; an output folder that cannot
  be written ran every case and then failed each one as a fault.
- evaluate: the distances of an empty prediction (the worst distance) and of cases empty in both masks (0) went
  into the table's means with nothing said; a file name in Unicode NFD (macOS) did not pair with the same name in
  NFC, with both names shown alike in the message.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.bundle.load import LoadedBundle
from medseg.config import load_config
from medseg.evaluate import main as evaluate_main
from medseg.inference import build_chain
from medseg.predict import main as predict_main
from medseg.transforms import input_channels
from tests.conftest import FAST, synthetic_case
from tests.workflows.test_predict_stored_values import ThreeClassNet


@pytest.fixture
def bundle(monkeypatch):
    """``medseg.predict`` with a fixed 1x1 network (liver and tumour from the synthetic case's HU) for any
    ``--bundle``: the chain the liver task exports, no training."""
    from medseg.workflows import predict as workflow

    cfg = load_config("liver", FAST + ["training.device=cpu"])
    loaded = LoadedBundle("three", cfg, ThreeClassNet(input_channels(cfg)).eval(),
                          {0: "background", 1: "liver", 2: "tumour"}, build_chain(cfg))
    monkeypatch.setattr(workflow, "load_bundle", lambda *args, **kwargs: loaded)
    return "fixed-bundle"


def _predict(bundle: str, source: Path, out: Path) -> int:
    return predict_main(["--bundle", bundle, "--input", str(source), "--output", str(out), "--device", "cpu"])


def test_nan_and_inf_voxels_are_refused_where_the_ct_window_would_hide_them(bundle, tmp_path, capsys):
    image, _, affine = synthetic_case(shape=(24, 20, 12))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "clean.nii.gz")
    assert _predict(bundle, tmp_path / "clean.nii.gz", tmp_path / "o") == 0
    assert set(np.unique(np.asarray(nib.load(tmp_path / "o" / "clean_seg.nii.gz").dataobj))) == {0, 1, 2}
    hot = image.copy()
    hot[10, 10, 5:8] = np.inf  # the window clips +inf to its top: finite after preprocessing
    nib.save(nib.Nifti1Image(hot, affine), tmp_path / "hot.nii.gz")
    nib.save(nib.Nifti1Image(np.full((24, 20, 12), np.nan, np.float32), affine), tmp_path / "blank.nii.gz")
    for name, count in (("hot", 3), ("blank", 24 * 20 * 12)):  # blank: cropped to no voxels, an empty mask before
        assert _predict(bundle, tmp_path / f"{name}.nii.gz", tmp_path / "o") == 2
        err = capsys.readouterr().err
        assert f"{name}.nii.gz: {count} NaN/inf voxel(s) in the image; replace them" in err
        assert "Traceback" not in err and not (tmp_path / "o" / f"{name}_seg.nii.gz").exists()


def test_a_dicom_case_named_by_the_patient_gets_a_stand_in_name(bundle, tmp_path, capsys):
    from medseg.data.dicom import write_series

    image, _, _ = synthetic_case(shape=(24, 20, 6))
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])
    series = tmp_path / "PID777"
    write_series(series, image, affine, patient_id="PID777", patient_name="Doe^Jane", prefix="slice")
    single = tmp_path / "single"
    write_series(single, image[..., :1], affine, patient_id="PID777", patient_name="Doe^Jane", prefix="Doe_")
    (one,) = single.iterdir()
    for k, source in enumerate((series, one)):  # the series folder itself, one DICOM file
        out = tmp_path / f"out{k}"
        assert _predict(bundle, source, out) == 0
        captured = capsys.readouterr()
        assert [p.name for p in out.iterdir()] == ["patient1_seg.nii.gz"]
        text = captured.out + captured.err
        assert "PID777" not in text.replace(str(tmp_path), "") and "Doe" not in text.replace(str(tmp_path), "")
    plain = tmp_path / "ct_series"
    write_series(plain, image, affine, patient_id="PID777", patient_name="Doe^Jane")
    assert _predict(bundle, plain, tmp_path / "plain") == 0  # a name that is not the patient's stays
    assert [p.name for p in (tmp_path / "plain").iterdir()] == ["ct_series_seg.nii.gz"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_case(bundle, tmp_path, capsys, monkeypatch):
    from medseg.workflows import predict as workflow

    image, _, affine = synthetic_case(shape=(24, 20, 12))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    # root writes anywhere (chmod 555 does not stop it): the folder is made unwritable where the check asks
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real(p, mode, **kw))
    ran = []
    monkeypatch.setattr(workflow, "predict_one", lambda *a, **k: ran.append(a))
    for out in (locked, locked / "masks"):
        assert _predict(bundle, tmp_path / "ct.nii.gz", out) == 2
        err = capsys.readouterr().err
        assert f"--output {out}: folder {locked} is not writable; give a folder you can write to" in err
    (tmp_path / "afile").write_text("x")
    assert _predict(bundle, tmp_path / "ct.nii.gz", tmp_path / "afile" / "masks") == 2
    assert f"{tmp_path / 'afile'} is a file, not a folder" in capsys.readouterr().err
    assert ran == [] and list(locked.iterdir()) == []


def _label_folders(tmp_path: Path, preds: dict[str, np.ndarray], refs: dict[str, np.ndarray]) -> tuple[Path, Path]:
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    for folder, maps in (("pred", preds), ("ref", refs)):
        (tmp_path / folder).mkdir()
        for name, labels in maps.items():
            nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), tmp_path / folder / name)
    return tmp_path / "pred", tmp_path / "ref"


def test_empty_masks_are_named_under_the_table_with_the_distance_they_were_given(tmp_path, capsys):
    _, ref_a, _ = synthetic_case(shape=(24, 20, 12), seed=1)
    liver_only = np.where(ref_a == 2, 1, ref_a)  # no tumour: in case b in both masks, in case a in the prediction
    pred, ref = _label_folders(tmp_path, {"a_seg.nii.gz": liver_only, "b_seg.nii.gz": liver_only},
                               {"a.nii.gz": ref_a, "b.nii.gz": liver_only})
    args = ["--pred", str(pred), "--ref", str(ref), "--labels", "liver=1+2,tumour=2", "--jobs", "1"]
    assert evaluate_main([*args, "--output", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    diagonal = float(np.sqrt((24 * 1.5) ** 2 + (20 * 1.5) ** 2 + (12 * 2.0) ** 2))
    assert (f"note: class 'tumour': prediction empty in 1 of 2 case(s) (a): Dice 0, and HD, HD95, ASSD and MASD"
            f" there are set to the worst distance, {diagonal:.2f} mm (the image diagonal; --worst-mm sets it), not"
            " measured; the means above include them") in out
    assert "note: class 'tumour': empty in both masks in 1 of 2 case(s) (b): Dice 1 and distances 0 there" in out
    assert "class 'liver'" not in out  # measured in both cases
    rows = (tmp_path / "ev" / "metrics_per_case.csv").read_text().splitlines()
    tumour_a = next(r.split(",") for r in rows if r.startswith("a,tumour,"))
    assert tumour_a[-1] == "prediction empty" and float(tumour_a[8]) == pytest.approx(diagonal, abs=1e-3)
    assert evaluate_main([*args, "--output", str(tmp_path / "ev2"), "--worst-mm", "80"]) == 0
    assert "set to the worst distance, 80.00 mm (--worst-mm), not measured" in capsys.readouterr().out


def test_case_names_pair_in_unicode_nfc_whatever_form_the_file_names_are_in(tmp_path, capsys):
    _, ref, _ = synthetic_case(shape=(24, 20, 12), seed=2)
    nfd = unicodedata.normalize("NFD", "Müller ü")  # as macOS stores it
    pred, refs = _label_folders(tmp_path, {unicodedata.normalize("NFC", "Müller ü") + "_seg.nii.gz": ref},
                                {nfd + ".nii.gz": ref})
    args = ["--pred", str(pred), "--ref", str(refs), "--jobs", "1", "--output", str(tmp_path / "ev")]
    assert evaluate_main(args) == 0
    rows = (tmp_path / "ev" / "metrics_per_case.csv").read_text(encoding="utf-8").splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [[unicodedata.normalize("NFC", "Müller ü"), "label_1", "1"],
                                                    [unicodedata.normalize("NFC", "Müller ü"), "label_2", "1"]]
