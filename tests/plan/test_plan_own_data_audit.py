"""medseg.plan on a user's own folder of cases (audit): input that ``medseg.train`` would refuse is refused by the
plan too, in one line and before any step is timed; a short coarse axis is never padded by the patch; ``--out``
and ``--labels`` mistakes stop before the work."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.plan import fingerprint, rules
from medseg.plan.planner import _fingerprint_dataset, dataset_cases, parse_labels
from tests.conftest import synthetic_case


def _folders(root: Path, n: int = 3, shape=(24, 20, 16)) -> Path:
    """A folders-layout dataset (images/ + labels/, no dataset.json) of ``n`` synthetic CT cases."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        image, label, affine = synthetic_case(shape=shape, spacing=(1.5, 1.5, 2.0), seed=i)
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), root / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labels" / f"c{i}.nii.gz")
    return root


def _files(root: Path) -> list[tuple[Path, int, int]]:
    return sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def no_timing(monkeypatch):
    """Planning that reaches the step timing fails the test: every refusal here comes before it."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a step was timed: the bad input was not refused first")

    monkeypatch.setattr("medseg.plan.planner.measure_step", refuse)


def _plan(args: list[str]) -> int:
    from medseg.cli.plan import main

    return main(args)


def test_a_label_off_its_image_grid_is_refused_before_any_step_is_timed(tmp_path, capsys, no_timing):
    root = _folders(tmp_path / "own")
    shifted = root / "labels" / "c1.nii.gz"
    img = nib.load(shifted)
    affine = img.affine.copy()
    affine[:3, 3] += 10.0  # the same shape, 10 mm off (a label exported from another frame)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), shifted)
    before = _files(root)
    assert _plan([str(root), "--budget-minutes", "1", "--out", str(tmp_path / "out" / "own.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"medseg: error: 1 bad case(s) in {root}: c1: label c1.nii.gz"), err
    assert "origin (-20.00, 10.00, 15.00)" in err and "origin (-10.00, 20.00, 5.00)" in err  # both, in LPS
    assert "move them out of the dataset" in err and "--skip-bad" in err
    assert _files(root) == before and not (tmp_path / "out").exists()


def test_skip_bad_leaves_the_off_grid_case_out_of_the_fingerprint(tmp_path):
    root = _folders(tmp_path / "own", n=4)
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 12), np.uint8), np.diag([1.5, 1.5, 2.0, 1.0])),
             root / "labels" / "c2.nii.gz")  # another shape
    with pytest.raises(MedsegError, match=r"1 bad case\(s\) .*c2: label c2.nii.gz \(shape \(24, 20, 12\)"):
        _fingerprint_dataset(root, "CT", None, {})
    _, cases, fp, _ = _fingerprint_dataset(root, "CT", None, {}, skip_bad=True)
    assert [c.name for c in cases] == ["c0", "c1", "c3"] and fp["n_cases"] == 3
    assert [e["case"] for e in fp["cases"]] == ["c0", "c1", "c3"]


def test_an_interpolated_float_label_is_refused_in_one_line_not_planned_per_fraction(tmp_path):
    root = _folders(tmp_path / "own")
    path = root / "labels" / "c0.nii.gz"
    img = nib.load(path)
    smooth = ndimage.gaussian_filter(np.asarray(img.dataobj).astype(np.float32), 0.7)  # linear resampling's look
    nib.save(nib.Nifti1Image(smooth, img.affine), path)
    _, cases, labels = dataset_cases(root, None)
    with pytest.raises(MedsegError) as err:
        fingerprint(cases, labels, "CT")
    text = str(err.value)
    assert text.startswith(f"{path}: non-integer label value") and "nearest neighbour" in text, text


def test_whole_number_float_labels_are_planned_as_integers(tmp_path):
    root = _folders(tmp_path / "own")
    for path in (root / "labels").iterdir():
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.float32), img.affine), path)
    _, cases, labels = dataset_cases(root, None)
    fp = fingerprint(cases, labels, "CT")
    assert fp["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert all(e["label_values"] == [0, 1, 2] for e in fp["cases"])


def test_nan_voxels_are_refused_as_training_refuses_them(tmp_path):
    root = _folders(tmp_path / "own")
    path = root / "images" / "c2.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, :3] = np.nan  # SimpleITK reads these as 0: the plan saw nothing wrong
    nib.save(nib.Nifti1Image(data, img.affine), path)
    _, cases, labels = dataset_cases(root, None)
    with pytest.raises(MedsegError, match=r"^c2.nii.gz: 3 NaN/inf voxel\(s\); replace them"):
        fingerprint(cases, labels, "CT")


def test_the_patch_never_grows_past_a_short_coarse_axis():
    # 26 slices of 5 mm (a 5 mm copy of a 128-slice CT): five in-plane poolings' multiple, 32, would round the
    # capped 26 up to 32 slices, 6 of them padding in every patch
    cases = [{"case": f"c{i}", "shape": [40, 128, 26], "spacing": [1.0, 1.0, 5.0], "dims": 3} for i in range(4)]
    fp = {"n_cases": 4, "dims": 3, "cases": cases}
    patch = rules.patch_size(fp, [1.0, 1.0, 5.0], 64 * 96 * 96, 3)
    assert patch.value == [40, 128, 24], patch
    assert all(p <= n for p, n in zip(patch.value, [40, 128, 26]))
    strides = rules.pooling(patch.value, [1.0, 1.0, 5.0])
    assert all(p % max(rules.total_stride(strides, 3)) == 0 for p in patch.value)
    assert "multiples of 8" in patch.reason and "40x128x120 mm" in patch.reason


@pytest.mark.parametrize("out, expect", [
    ("folder", "a folder; give the pipeline YAML file to write (e.g. --out {tmp}/folder/own.yaml)"),
    ("x.json", "not a .yaml file name"),
    ("file/x.yaml", "is a file, not a folder"),
])
def test_a_bad_out_is_one_line_before_any_case_is_read(tmp_path, capsys, monkeypatch, out, expect):
    root = _folders(tmp_path / "own", n=2)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")

    def unread(*_args, **_kwargs):
        raise AssertionError("the dataset was read before --out was checked")

    monkeypatch.setattr("medseg.plan.planner.fingerprint", unread)
    assert _plan([str(root), "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect.format(tmp=tmp_path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder", "own"]


@pytest.mark.parametrize("text, expect", [
    ("background=0,liver=1,tumour=2,liver=3", "name 'liver' given twice"),
    ("liver=1,tumour=1", "value 1 given twice"),
])
def test_labels_named_or_numbered_twice_are_refused(text, expect):
    with pytest.raises(MedsegError, match=expect):
        parse_labels(text)
    assert parse_labels("liver=1,tumour=2") == {"background": 0, "liver": 1, "tumour": 2}


@pytest.mark.parametrize("manifest, expect", [
    ({"modality": {"0": "T2", "1": "ADC"}}, "MR"),  # MSD Task05 (prostate)
    ({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}, "MR"),  # MSD Task01 (brain tumours)
    ({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz"}, "MR"),
    ({"channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}, "CT"),
    ({"channel_names": {"0": "noNorm"}, "file_ending": ".nii.gz"}, None),  # a normalisation, not a modality: guessed
])
def test_dataset_json_mr_sequence_names_give_the_mr_modality(tmp_path, manifest, expect):
    import json

    from medseg.plan.planner import manifest_modality

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}, **manifest}))
    assert manifest_modality(tmp_path) == expect


def _relabel(root: Path, mapping: dict[int, int]) -> None:
    for path in (root / "labels").iterdir():
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        out = data.copy()
        for src, dst in mapping.items():
            out[data == src] = dst
        nib.save(nib.Nifti1Image(out.astype(np.uint8), img.affine), path)


def test_volumes_stored_as_0_255_are_planned_with_consecutive_values_and_a_label_map(tmp_path):
    from medseg.plan.planner import _first_decisions, _pipeline

    root = _folders(tmp_path / "own")
    _relabel(root, {2: 255, 1: 255})  # one organ stored as 0/255 in NIfTI (the 0/255 detection is for 2D pictures)
    layout, cases, fp, mod = _fingerprint_dataset(root, "CT", None, {})
    assert fp["labels"] == {"background": 0, "label_255": 1} and fp["label_map"] == {"255": 1}
    assert fp["classes"]["label_255"]["value"] == 1 and fp["classes"]["label_255"]["cases_present"] == 3
    assert all(e["label_values"] == [0, 1] for e in fp["cases"])
    d, _, _ = _first_decisions(fp, mod, "resunet", {})
    assert d["data.label_map"].value == {255: 1}
    assert "predicted volumes hold the new values" in d["data.label_map"].reason
    data = _pipeline("own", layout, root, fp, d)["data"]
    assert data["labels"] == {"background": 0, "label_255": 1} and data["label_map"] == {255: 1}


def test_declared_labels_with_a_gap_are_renumbered(tmp_path):
    root = _folders(tmp_path / "own")
    _relabel(root, {2: 4})  # BraTS-style values 0, 1, 4
    _, _, fp, _ = _fingerprint_dataset(root, "CT", parse_labels("liver=1,tumour=4"), {})
    assert fp["labels"] == {"background": 0, "liver": 1, "tumour": 2} and fp["label_map"] == {"4": 2}
    assert fp["classes"]["tumour"]["value"] == 2 and fp["classes"]["tumour"]["median_border"]["liver"] > 0.5
    _, _, plain, _ = _fingerprint_dataset(_folders(tmp_path / "plain"), "CT", None, {})
    assert plain["label_map"] == {} and "relabelled" not in plain


def test_a_yaml_with_label_values_past_the_network_outputs_is_one_line():
    from medseg.config import load_config

    with pytest.raises(MedsegError) as err:
        load_config("liver", ["data.labels={background: 0, liver: 1, tumour: 4}"])
    text = str(err.value)
    assert "data.labels" in text and "must be 0..2" in text and "data.label_map: {4: 2}" in text, text
    assert "\n" not in text
    assert load_config("liver").data.labels == {"background": 0, "liver": 1, "tumour": 2}


def gap_dataset(tmp_path):
    """An MSD folder of 3 cases whose label files store the tumour as 4 and whose manifest declares 0, 1, 4."""
    import json

    from tests.conftest import write_msd

    root = write_msd(tmp_path / "gap", n_cases=3)
    for path in (root / "labelsTr").iterdir():
        img = nib.load(path)
        data = np.asarray(img.dataobj).copy()
        data[data == 2] = 4
        nib.save(nib.Nifti1Image(data, img.affine), path)
    manifest = json.loads((root / "dataset.json").read_text())
    manifest["labels"] = {"0": "background", "1": "liver", "4": "tumour"}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root


def test_an_msd_manifest_declaring_values_with_a_gap_plans_and_passes_trainings_checks(tmp_path):
    from medseg.config import TaskConfig
    from medseg.data.layouts import load_dataset

    root = gap_dataset(tmp_path)
    _, cases, fp, _ = _fingerprint_dataset(root, "CT", None, {})
    assert fp["labels"] == {"background": 0, "liver": 1, "tumour": 2} and fp["label_map"] == {"4": 2}
    cfg = TaskConfig.from_dict({"task": "gap", "data": {"layout": "msd", "labels": fp["labels"],
                                                        "label_map": {4: 2}}}, source="gap.yaml")
    train, val = load_dataset(cfg, root, 0)  # the manifest's 4 stands for the trained 2; every label checked
    assert sorted(c.name for c in train + val) == ["case_000", "case_001", "case_002"]


def test_auto_keys_plan_with_the_yamls_own_label_map(tmp_path, monkeypatch):
    from medseg.config import load_config
    from medseg.plan.auto import AutoFill

    root = gap_dataset(tmp_path)
    labels = {"background": 0, "liver": 1, "tumour": 2}
    # the fingerprint of the YAML's labels and map: the files' 4 is the trained 2, nothing renumbered again
    _, _, fp, _ = _fingerprint_dataset(root, "CT", labels, {}, label_map={4: 2})
    assert fp["labels"] == labels and fp["label_map"] == {"4": 2} and "relabelled" not in fp
    assert fp["classes"]["tumour"]["cases_present"] == 3
    seen = {}

    def planned(dataset, **kwargs):
        seen.update(kwargs)
        raise MedsegError("planned")

    monkeypatch.setattr("medseg.plan.auto.plan_dataset", planned)
    yaml_path = tmp_path / "gap.yaml"
    yaml_path.write_text(f"task: gap\ndata:\n  layout: msd\n  dataset: {root}\n"
                         "  labels: {background: 0, liver: 1, tumour: 2}\n  label_map: {4: 2}\n"
                         "training:\n  patch_size: auto\n")
    with pytest.raises(MedsegError, match="planned"):
        load_config(str(yaml_path), fill=AutoFill(tmp_path))
    assert seen["label_map"] == {4: 2} and seen["labels"] == labels


def _planned_text(root: Path) -> tuple[dict, str]:
    """(fingerprint, every reason and the YAML's header) of a plan of ``root``, up to the timed steps."""
    from medseg.plan.planner import Plan, _first_decisions, _layout_decisions, _pipeline, render_yaml

    layout, _, fp, mod = _fingerprint_dataset(root, None, None, {})
    d, spacing, mode = _first_decisions(fp, mod, "resunet", {})
    dims = 3 if mode.value == "3d" else 2
    _layout_decisions(d, fp, spacing.value, mode, rules.START_VOXELS[("cpu", dims)], {"device": "cpu"}, "resunet", {})
    plan = Plan(root.name, d, _pipeline(root.name, layout, root, fp, d), fp, {"device": "cpu"}, 15.0)
    return fp, render_yaml(plan)


def test_a_png_dataset_is_planned_in_pixels_not_millimetres(tmp_path):
    """PNG pictures store no pixel size (every reader gives 1): the plan said "median spacing 1x1 mm" and a patch
    of "... mm"; it says px there. A NIfTI dataset keeps mm."""
    import re

    from tests.conftest import write_png_folder

    fp, text = _planned_text(write_png_folder(tmp_path / "pictures", n=4, shape=(40, 48)))
    assert fp["spacing_unit"] == "px" and fp["dims"] == 2
    assert re.findall(r"\bmm\b", text) == [], text
    assert "# Fingerprint: 4 cases, 2D, 1 channel(s), median spacing 1x1 px, median shape 48x40," in text
    assert "spacing: [1.0, 1.0]  # median spacing of 4 cases (1x1 px); no axis is more than 3x coarser" in text
    assert "patch_size: [48, 40]  # 48x40 voxels (48x40 px): equal px per axis within 65,536 voxels" in text
    from medseg.data.case import Case
    from medseg.plan.fingerprint import spacing_unit

    tiff = Case.of([tmp_path / "a.tif"], tmp_path / "a_mask.tif")  # resolution tags: a physical pixel size
    assert spacing_unit([tiff], [{"spacing": [0.5, 0.5]}]) == "mm"
    assert spacing_unit([tiff], [{"spacing": [1.0, 1.0]}]) == "px"
    fp, text = _planned_text(_folders(tmp_path / "volumes"))
    assert fp["spacing_unit"] == "mm" and "median spacing 1.5x1.5x2 mm" in text and not re.findall(r"\bpx\b", text)
