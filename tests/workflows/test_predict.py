"""medseg.predict against the stock-MONAI bundle run (the same chain: identical masks), geometry of outputs, TTA,
DICOM in and DICOM SEG out, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.dicom_seg import read_series, series_grid
from medseg.predict import main as predict_main

from tests.conftest import synthetic_case
from tests.evaluation.test_evaluate import _ct_series
from tests.workflows.test_train import stock_monai



def oblique_affine(spacing=(1.3, 1.1, 2.4), angle=0.35):
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)],
                                                                      [0, np.sin(0.2), np.cos(0.2)]])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array(spacing)
    affine[:3, 3] = (-40.0, 12.5, 80.0)
    return affine


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    image, _, _ = synthetic_case(shape=(34, 30, 22), seed=11)
    nib.save(nib.Nifti1Image(image, oblique_affine()), folder / "oblique.nii.gz")
    image2, _, affine2 = synthetic_case(shape=(28, 32, 20), spacing=(0.9, 0.9, 3.0), seed=12)
    nib.save(nib.Nifti1Image(image2, affine2), folder / "second.nii.gz")
    return folder


def _untrained_copy(bundle: Path, folder: Path) -> Path:
    """The bundle with seeded random weights: varied classes to compare (the short training predicts mostly liver)."""
    import torch

    from medseg.networks import build_network

    shutil.copytree(bundle, folder)
    cfg = json.loads((folder / "configs" / "medseg_task.json").read_text())
    torch.manual_seed(3)
    net = build_network(cfg["network"], 1, 3)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def test_predict_keeps_geometry_and_equals_the_stock_bundle_run(trained, scans, tmp_path: Path):
    bundle = _untrained_copy(trained["bundle"], tmp_path / "bundle")
    out = tmp_path / "medseg"
    assert predict_main(["--bundle", str(bundle), "--input", str(scans), "--output", str(out)]) == 0
    stock = tmp_path / "stock"
    proc = stock_monai(tmp_path, "run", "--config_file", str(bundle / "configs" / "inference.json"),
                       "--bundle_root", str(bundle), "--dataset_dir", str(scans), "--output_dir", str(stock))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("oblique", "second"):
        source = nib.load(scans / f"{name}.nii.gz")
        ours = nib.load(out / f"{name}_seg.nii.gz")
        theirs = nib.load(stock / f"{name}_seg.nii.gz")
        assert ours.shape == source.shape
        np.testing.assert_array_equal(ours.affine, source.affine)  # bit for bit, oblique included
        np.testing.assert_array_equal(theirs.affine, source.affine)
        a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj).reshape(ours.shape)
        assert a.dtype == np.uint8 and set(np.unique(a)) == {0, 1, 2}  # something to compare: both classes found
        np.testing.assert_array_equal(a, b)  # the same chain: identical masks


def test_tta_averages_the_mirrored_copies(trained, scans, tmp_path: Path):
    """--tta runs the network on all 8 mirrored copies and averages their softmax, flipped back."""
    import itertools

    import torch

    from medseg.bundle.load import load_bundle
    from medseg.inference import run_case

    folder = _untrained_copy(trained["bundle"], tmp_path / "bundle")
    bundle = load_bundle(folder, torch.device("cpu"))
    chain, net = bundle.chain, bundle.network
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    item = {"image": str(scans / "second.nii.gz")}
    plain = run_case(chain, net, item)
    plain_windows = list(seen)
    seen.clear()
    tta = run_case(chain, net, item, tta=True)
    assert len(seen) == 8 * len(plain_windows) > 0  # every window of every mirrored copy

    data = chain.preprocessing(dict(item))  # by hand: mean of the flipped-back softmax over the 8 flips
    x = data["image"].unsqueeze(0).as_tensor()
    probs = torch.zeros((3, *x.shape[2:]))
    with torch.no_grad():
        for axes in [list(c) for r in range(4) for c in itertools.combinations([2, 3, 4], r)]:
            logits = chain.inferer(torch.flip(x, axes) if axes else x, net)
            probs += torch.softmax(torch.flip(logits, axes) if axes else logits, 1)[0]
    rest = chain.postprocessing.transforms[1:]  # after the softmax: inversion to labels, largest component
    expected = data | {"pred": probs / 8}
    for step in rest:
        expected = step(expected)
    assert torch.equal(tta.as_tensor(), expected["pred"].as_tensor()) and torch.equal(tta.affine, plain.affine)
    assert not torch.equal(tta.as_tensor(), plain.as_tensor())  # the average is not the plain prediction

    out = tmp_path / "tta"
    assert predict_main(["--bundle", str(folder), "--input", item["image"], "--output", str(out), "--tta"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out / "second_seg.nii.gz").dataobj), tta[0].numpy())


def _write_series(folder: Path, hu: np.ndarray, spacing=(2.5, 0.8, 0.7)) -> None:
    """A CT series whose pixels are ``hu`` (slice, row, column), files named in shuffled order."""
    folder.mkdir(parents=True)
    series = _ct_series(hu.shape, spacing)
    order = np.random.default_rng(0).permutation(len(series))
    for i, ds in zip(order, series):
        ds.PixelData = (hu[int(ds.InstanceNumber) - 1] + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"im{i:03d}.dcm", enforce_file_format=True)


def seg_on_series(seg, grid):
    """A DICOM SEG's label map on its source series grid (highdicom leaves out empty frames)."""
    from medseg.data.labelmaps import LabelMap, onto_grid

    volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.int64)
    return onto_grid(LabelMap(volume.array, volume.affine), grid, False, "seg")


def test_dicom_series_in_nifti_and_dicom_seg_out(trained, tmp_path: Path):
    import highdicom as hd
    from monai.transforms import LoadImage

    from medseg.data.labelmaps import LabelMap, onto_grid

    image, _, _ = synthetic_case(shape=(12, 40, 44), seed=5)
    _write_series(tmp_path / "in" / "study1", image)
    args = ["--bundle", str(trained["bundle"]), "--input", str(tmp_path / "in")]
    assert predict_main(args + ["--output", str(tmp_path / "nii")]) == 0
    nifti = nib.load(tmp_path / "nii" / "study1_seg.nii.gz")
    loaded = LoadImage(image_only=True)(str(tmp_path / "in" / "study1"))
    np.testing.assert_allclose(nifti.affine, loaded.affine.numpy(), atol=1e-5)
    assert nifti.shape == tuple(loaded.shape)

    assert predict_main(args + ["--output", str(tmp_path / "seg"), "--format", "dicom-seg"]) == 0
    seg = hd.seg.segread(str(tmp_path / "seg" / "study1_seg.dcm"))
    assert [s.segment_label for s in seg.SegmentSequence] == ["liver", "tumour"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Liver"
    refs = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert len(refs) == 12
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ nifti.affine
    grid = series_grid(read_series(tmp_path / "in" / "study1"))
    expected = onto_grid(LabelMap(np.asarray(nifti.dataobj).astype(np.int64), lps), grid, False, "test")
    np.testing.assert_array_equal(seg_on_series(seg, grid), expected)


def test_dicom_seg_round_trip_of_a_known_mask(tmp_path: Path):
    import highdicom as hd

    from medseg.data.dicom_seg import write_dicom_seg

    image = np.zeros((6, 16, 20), np.float32)
    _write_series(tmp_path / "ct", image)
    labels_src = np.zeros((6, 16, 20), np.int64)  # (slice, row, column)
    labels_src[1:5, 3:12, 4:15] = 1
    labels_src[2:4, 5:8, 6:9] = 2
    # the same mask indexed (column, row, slice) with an RAS affine, as MONAI returns it
    ras = np.array([[-0.7, 0, 0, 10.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    out = write_dicom_seg(labels_src.transpose(2, 1, 0), ras, tmp_path / "ct", tmp_path / "mask.dcm",
                          {1: "liver", 2: "tumour"}, "test-model", "0.1")
    grid = series_grid(read_series(tmp_path / "ct"))
    np.testing.assert_array_equal(seg_on_series(hd.seg.segread(str(out)), grid), labels_src)


def test_foreign_bundle_needs_trust(trained, scans, tmp_path: Path, capsys):
    foreign = tmp_path / "foreign"
    shutil.copytree(trained["bundle"], foreign)
    (foreign / "configs" / "medseg_task.json").unlink()
    args = ["--bundle", str(foreign), "--input", str(scans / "second.nii.gz"), "--output", str(tmp_path / "o")]
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    assert "was not written by medseg" in err and "--trust" in err and not (tmp_path / "o").exists()
    assert predict_main(args + ["--trust"]) == 0
    trusted = np.asarray(nib.load(tmp_path / "o" / "second_seg.nii.gz").dataobj)
    assert predict_main(["--bundle", str(trained["bundle"]), "--input", str(scans / "second.nii.gz"),
                         "--output", str(tmp_path / "own")]) == 0
    own = np.asarray(nib.load(tmp_path / "own" / "second_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(trusted, own)  # its inference.json is the chain medseg builds


def test_bad_inputs(trained, scans, tmp_path: Path, capsys):
    out = str(tmp_path / "o")
    assert predict_main(["--bundle", str(tmp_path), "--input", str(scans), "--output", out]) == 2
    assert "not a MONAI Bundle" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(trained["bundle"], broken)
    task = json.loads((broken / "configs" / "medseg_task.json").read_text())
    task["network"]["channels"] = [8, 16, 32]
    (broken / "configs" / "medseg_task.json").write_text(json.dumps(task))
    assert predict_main(["--bundle", str(broken), "--input", str(scans), "--output", out]) == 2
    assert "weights do not match the bundle's network" in capsys.readouterr().err
    (broken / "configs" / "medseg_task.json").write_text("{ cut off")  # a damaged config: one line, no traceback
    assert predict_main(["--bundle", str(broken), "--input", str(scans), "--output", out]) == 2
    err = capsys.readouterr().err
    assert "medseg_task.json: not valid JSON" in err and "Traceback" not in err
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 12, 2), np.float32), np.eye(4)), two)
    assert predict_main(["--bundle", str(trained["bundle"]), "--input", str(two), "--output", out]) == 2
    assert "two.nii.gz: 4D image" in capsys.readouterr().err  # refused from its header, before any voxel is read
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(scans / "second.nii.gz", mixed / "good.nii.gz")
    (mixed / "bad.nii.gz").write_bytes(b"not a nifti file")
    assert predict_main(["--bundle", str(trained["bundle"]), "--input", str(mixed), "--output", out]) == 1
    captured = capsys.readouterr()
    assert "case 'bad' failed" in captured.err and "1 failed: bad" in captured.out
    assert (tmp_path / "o" / "good_seg.nii.gz").is_file()


def test_a_fault_in_one_case_says_failed_and_debug_raises_it(trained, scans, tmp_path: Path, capsys, monkeypatch):
    """An error that is not a refusal of the input (a fault in medseg or a library): the case is reported as failed,
    the others are written, the summary points at --debug; with --debug the error itself comes out."""
    from medseg.workflows import predict as workflow

    real = workflow.predict_one

    def faulty(loaded, path, *args, **kwargs):
        if "oblique" in str(path):
            raise RuntimeError("kernel fault\nsecond line")
        return real(loaded, path, *args, **kwargs)

    monkeypatch.setattr(workflow, "predict_one", faulty)
    out = tmp_path / "o"
    assert predict_main(["--bundle", str(trained["bundle"]), "--input", str(scans), "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "medseg: case 'oblique' failed: RuntimeError: kernel fault\n" in captured.err
    assert "second line" not in captured.err and "Traceback" not in captured.err
    assert "--debug stops at the first of these errors with its traceback (oblique)" in captured.err
    assert "wrote 1 segmentation(s)" in captured.out and "1 failed: oblique" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["second_seg.nii.gz"]
    single = ["--bundle", str(trained["bundle"]), "--input", str(scans / "oblique.nii.gz"), "--output", str(out)]
    assert predict_main(single) == 1
    assert "skipped" not in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="kernel fault"):
        predict_main([*single, "--debug"])


def test_tilted_series_refused_alone_and_skipped_among_others(trained, scans, tmp_path: Path, capsys):
    from medseg.data.dicom import write_series

    affine = np.diag([-0.9, -0.9, 2.5, 1.0])
    affine[:3, 3] = (100.0, 80.0, -30.0)
    shape = (24, 20, 8)
    tilt = np.array([affine[:3, 3] + k * affine[:3, 2] + [0.0, 0.6 * k, 0.0] for k in range(shape[2])])
    folder = tmp_path / "cases"
    write_series(folder / "tilted", np.full(shape, 40.0, np.float32), affine, positions=tilt)
    out = tmp_path / "o"
    assert predict_main(["--bundle", str(trained["bundle"]), "--input", str(folder / "tilted"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gantry tilt" in err and "Traceback" not in err
    shutil.copy(scans / "second.nii.gz", folder / "good.nii.gz")
    assert predict_main(["--bundle", str(trained["bundle"]), "--input", str(folder), "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert "case 'tilted' failed" in captured.err and "gantry tilt" in captured.err
    assert (out / "good_seg.nii.gz").is_file() and not (out / "tilted_seg.nii.gz").exists()


def test_bundle_from_an_older_medseg_gets_one_line(trained, scans, tmp_path: Path, capsys):
    old = tmp_path / "old"
    shutil.copytree(trained["bundle"], old)
    task = json.loads((old / "configs" / "medseg_task.json").read_text())
    # a key this medseg does not know (another medseg's name for preprocessing.intensity); a key it merely
    # lacks would take today's default
    task["preprocessing"]["normalisation"] = task["preprocessing"].pop("intensity")
    (old / "configs" / "medseg_task.json").write_text(json.dumps(task))
    args = ["--bundle", str(old), "--input", str(scans / "second.nii.gz"), "--output", str(tmp_path / "o")]
    assert predict_main(args) == 2
    err = capsys.readouterr().err
    assert "does not fit medseg" in err and "python -m medseg.export" in err and "Traceback" not in err


def test_series_picks_one_of_several_in_a_folder(trained, tmp_path: Path, capsys):
    from medseg.data.dicom import write_series

    folder = tmp_path / "in" / "two"
    big = np.diag([-0.9, -0.9, 2.5, 1.0])
    write_series(folder, np.full((30, 28, 10), 40.0, np.float32), big, series_uid="1.2.3.4", prefix="a")
    write_series(folder, np.full((20, 24, 6), 40.0, np.float32), np.diag([-1.0, -1.0, 3.0, 1.0]),
                 series_uid="1.2.3.5", prefix="b")
    args = ["--bundle", str(trained["bundle"]), "--input", str(folder), "--output", str(tmp_path / "o")]
    assert predict_main(args) == 2  # which one: the user says
    assert "1.2.3.4" in capsys.readouterr().err
    for uid, shape in (("1.2.3.5", (20, 24, 6)), ("1.2.3.4", (30, 28, 10))):
        assert predict_main(args + ["--series", uid]) == 0
        assert nib.load(tmp_path / "o" / "two_seg.nii.gz").shape == shape


def test_output_checks_2d_input_rerun_into_the_input_folder_and_enhanced_file_to_dicom_seg(trained, scans,
                                                                                           tmp_path: Path, capsys):
    import highdicom as hd
    import pydicom
    from pydicom.data import get_testdata_file

    bundle = str(trained["bundle"])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):  # an existing file, a folder under one: one line, exit 2
        assert predict_main(["--bundle", bundle, "--input", str(scans), "--output", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--output {out}" in err[0], err
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((30, 28), np.float32), np.eye(4)), flat)
    assert predict_main(["--bundle", bundle, "--input", str(flat), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a 2D image (30, 28), and this bundle's network is 3D" in err[0], err
    # the output folder is the input folder: a second run does not segment the first run's masks
    same = tmp_path / "same"
    shutil.copytree(scans, same)
    for _ in range(2):
        assert predict_main(["--bundle", bundle, "--input", str(same), "--output", str(same)]) == 0
        out = capsys.readouterr().out
        assert "[1] oblique -> oblique_seg.nii.gz" in out and "[2] second -> second_seg.nii.gz" in out, out
    assert sorted(p.name for p in same.iterdir()) == ["oblique.nii.gz", "oblique_seg.nii.gz", "second.nii.gz",
                                                      "second_seg.nii.gz"]
    # one enhanced multi-frame CT file (pydicom-data) as DICOM SEG, referencing its frames
    ect = Path(get_testdata_file("eCT_Supplemental.dcm"))
    assert predict_main(["--bundle", bundle, "--input", str(ect), "--output", str(tmp_path / "seg"),
                         "--format", "dicom-seg"]) == 0, capsys.readouterr().err
    seg = hd.seg.segread(str(tmp_path / "seg" / "eCT_Supplemental_seg.dcm"))
    source = pydicom.dcmread(ect, stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert [s.segment_label for s in seg.SegmentSequence] == ["liver", "tumour"]
    nifti = tmp_path / "n"
    assert predict_main(["--bundle", bundle, "--input", str(ect), "--output", str(nifti)]) == 0
    expected = np.asarray(nib.load(nifti / "eCT_Supplemental_seg.nii.gz").dataobj)
    assert int(seg.NumberOfFrames) >= 1 and expected.shape[-1] == int(source.NumberOfFrames)


def test_a_folder_of_enhanced_multiframe_files_is_a_case_per_file(tmp_path: Path):
    """Each enhanced CT/MR file is a whole volume: a folder of them (as scanners export) was taken for one series
    and refused as several series; a classic series folder stays one case."""
    from pydicom.data import get_testdata_file

    from medseg.data.dicom import write_series
    from medseg.workflows.predict import find_inputs

    folder = tmp_path / "scanner"
    folder.mkdir()
    ect = Path(get_testdata_file("eCT_Supplemental.dcm"))  # pydicom-data: enhanced CT, 2 frames
    shutil.copy(ect, folder / "study_a.dcm")
    shutil.copy(ect, folder / "study_b.dcm")
    write_series(folder / "classic", np.full((8, 6, 4), 40.0, np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]),
                 series_uid="1.2.3.9", prefix="s")
    assert find_inputs(folder) == [("study_a", folder / "study_a.dcm"), ("study_b", folder / "study_b.dcm"),
                                   ("classic", folder / "classic")]
    assert find_inputs(folder / "classic") == [("classic", folder / "classic")]
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(ect, one / "study.dcm")
    assert find_inputs(one) == [("one", one)]  # one enhanced file alone: the folder is that one case, as before
