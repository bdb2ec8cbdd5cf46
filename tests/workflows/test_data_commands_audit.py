"""Data and report commands as a user runs them: a DICOM SEG converted onto its series' grid, check agreeing with
training about SEG labels, one-line errors for unwritable outputs and damaged run files, report.md and figures
from an incomplete run folder, radiological overlays, and check's per-case progress."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.config import load_config
from medseg.data.dicom import write_series
from medseg.data.images import read_image
from medseg.errors import MedsegError
from medseg.workflows import check, convert, preview, report

ROOT = Path(__file__).resolve().parents[2]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _series_and_seg(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A 4-slice oblique CT series and a highdicom SEG of it; returns (series folder, seg file, volume, mask)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    rng = np.random.default_rng(3)
    vol = rng.integers(-200, 1200, (12, 10, 4)).astype(np.int16)
    rot = np.array([[np.cos(0.4), -np.sin(0.4), 0], [np.sin(0.4), np.cos(0.4), 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array([0.8, 0.9, 2.5])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    write_series(tmp_path / "ct", vol, affine, series_uid="1.2.826.0.1.3680043.8.498.1")
    mask = vol > 700
    sources = sorted((pydicom.dcmread(p) for p in (tmp_path / "ct").iterdir()), key=lambda d: d.InstanceNumber)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="hot", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.transpose(2, 1, 0).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[desc],
        series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="t", manufacturer_model_name="t", software_versions="1", device_serial_number="1",
        omit_empty_frames=False)
    seg.save_as(tmp_path / "seg.dcm")
    return tmp_path / "ct", tmp_path / "seg.dcm", vol, mask


def test_converted_dicom_seg_lies_on_the_converted_series_grid(tmp_path):
    """The check's own hint (convert the SEG) gives a label map on the image's grid, voxel for voxel: it was
    written in highdicom's (slice, row, column) order, which check and training refuse against the series."""
    series, seg, vol, mask = _series_and_seg(tmp_path)
    before = _digest(tmp_path)
    ds = tmp_path / "ds"
    (image,) = convert.run(series, ds / "images" / "c1.nii.gz")
    (label,) = convert.run(seg, ds / "labels" / "c1.nii.gz")
    assert _digest(tmp_path / "ct") == {k[3:]: v for k, v in before.items() if k.startswith("ct/")}
    ct, lab = read_image(ds / "images" / "c1.nii.gz"), read_image(ds / "labels" / "c1.nii.gz")
    assert lab.array.shape == ct.array.shape == vol.shape
    np.testing.assert_allclose(lab.affine, ct.affine, atol=1e-4)
    np.testing.assert_array_equal(lab.array, mask.astype(np.uint8))
    assert label.dtype == "uint8" and image.shape == label.shape
    result = check.run(check.open_dataset(ds))
    assert result.bad == [], result.results[0].problems


def test_check_reports_a_dicom_seg_label_as_training_refuses_it(tmp_path):
    series, seg, _, _ = _series_and_seg(tmp_path)
    ds = tmp_path / "ds"
    convert.run(series, ds / "images" / "c1.nii.gz")
    (ds / "labels").mkdir()
    (ds / "labels" / "c1.dcm").write_bytes(seg.read_bytes())
    result = check.run(check.open_dataset(ds))
    assert result.bad == ["c1"]
    (problem,) = result.results[0].problems
    assert "c1.dcm is a DICOM SEG" in problem and str(ds / "labels" / "c1.nii.gz") in problem


def test_convert_output_below_a_file_is_one_line_before_reading(tmp_path, capsys, lits_sample):
    from medseg.convert import main

    src = lits_sample / "labelsTr" / "lits_sample_val.nii.gz"  # the real LiTS crop (from its PyPI wheel)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    (tmp_path / "taken").write_text("x")
    for target in (tmp_path / "taken" / "out.nrrd", tmp_path / "taken" / "sub" / "out.mha"):
        assert main([str(src), str(target)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "taken is a file, not a folder" in err and "Traceback" not in err
    series, _, _, _ = _series_and_seg(tmp_path)
    assert main([str(series), str(tmp_path / "taken") + "/"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest


def test_convert_folder_output_refuses_before_writing_any_series(tmp_path):
    vol = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3)
    write_series(tmp_path / "study", vol, np.diag([1.0, 1.0, 2.0, 1.0]), series_uid="1.2.3.10", prefix="a")
    write_series(tmp_path / "study", vol + 5, np.diag([1.0, 1.0, 3.0, 1.0]), series_uid="1.2.3.11", prefix="b")
    out = tmp_path / "out"
    written = convert.run(tmp_path / "study", str(out) + "/")
    first, second = sorted(written, key=lambda c: c.series)
    second.path.unlink()
    stamp = first.path.stat().st_mtime_ns
    with pytest.raises(MedsegError, match=r"already holds series-[0-9a-f]+\.nii\.gz; pass --force"):
        convert.run(tmp_path / "study", out)
    assert not second.path.exists() and first.path.stat().st_mtime_ns == stamp  # nothing written
    assert len(convert.run(tmp_path / "study", out, force=True)) == 2


def _run_folder(tmp_path: Path) -> Path:
    """A finished run folder with one validation case (image, label, prediction) and its per-case CSV."""
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    cfg = load_config("liver").to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "history.json").write_text(json.dumps({
        "epoch": [1, 2], "loss": [1.0, 0.5], "lr": [1e-3, 1e-4], "val_epoch": [2],
        "val": {"val_dice_liver": [0.8], "val_iou_liver": [0.7]}}))
    (run / "metrics.json").write_text(json.dumps({"liver": {
        "dice": 0.8, "dice_std": 0.0, "iou": 0.7, "hd95_mm": 3.0, "assd_mm": 1.0, "nsd": 0.9, "cases": 1}}))
    label = np.zeros((12, 10, 6), np.uint8)
    label[3:9, 2:8, 1:5] = 1
    image = np.random.default_rng(0).normal(0, 50, label.shape).astype(np.float32)
    for path, array in ((tmp_path / "img.nii.gz", image), (tmp_path / "lab.nii.gz", label),
                        (run / "predictions" / "c1.nii.gz", label)):
        nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    (run / "cases.json").write_text(json.dumps({"train": [], "val": [
        {"case": "c1", "image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}]}))
    with (run / "metrics_per_case.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "class", "dice"])
        writer.writerow(["c1", "liver", "0.8"])
    return run


def test_report_of_a_run_copied_without_predictions_still_writes_curves_and_table(tmp_path, caplog):
    run = _run_folder(tmp_path)
    assert [p.name for p in report.run(run)] == ["training_curves.png", "validation_overlays.png", "report.md"]
    (run / "validation_overlays.png").unlink()
    (run / "predictions" / "c1.nii.gz").unlink()
    written = report.run(run)
    assert [p.name for p in written] == ["training_curves.png", "report.md"]
    assert "case c1 left out" in caplog.text and "predictions/c1.nii.gz missing" in caplog.text
    assert "| liver | 0.800 ± 0.000 | 0.700 | 3.00 | 1.00 | 0.900 | 1 |" in (run / "report.md").read_text()


def test_report_of_damaged_or_older_run_files(tmp_path):
    run = _run_folder(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["liver"]["dice_std"], metrics["liver"]["nsd"]  # an older run's metrics.json
    (run / "metrics.json").write_text(json.dumps(metrics))
    report.run(run)
    assert "| liver | 0.800 ± n/a | 0.700 | 3.00 | 1.00 | n/a | 1 |" in (run / "report.md").read_text()
    (run / "run.json").write_text('{"seconds": null, "best_val_mean_dice": null}')  # values missing: n/a
    report.run(run)
    assert "- Wall time: n/a s; best validation mean Dice n/a at epoch n/a" in (run / "report.md").read_text()
    (run / "run.json").write_text("[1, 2]")  # not what training writes
    with pytest.raises(MedsegError, match=r"run\.json: expected a JSON object .*restore it from a copy"):
        report.run(run)
    (run / "run.json").unlink()
    (run / "history.json").write_text('{"epoch": [1, 2')  # cut short
    with pytest.raises(MedsegError, match=r"history\.json: not readable as JSON .*restore it from a copy"):
        report.run(run)
    (run / "history.json").write_text('{"epoch": [1, 2]}')
    with pytest.raises(MedsegError, match=r"history\.json: not a training history"):
        report.run(run)
    (run / "config.yaml").write_text("task: [liver\n")
    with pytest.raises(MedsegError, match=r"config\.yaml: not readable as YAML"):
        report.run(run)


def test_report_refuses_a_damaged_run_before_redrawing_anything(tmp_path):
    """An empty metrics.json or a folder where report.md goes is refused before the figures are rewritten."""
    run = _run_folder(tmp_path)
    (run / "metrics.json").write_text("{}")
    with pytest.raises(MedsegError, match=r"metrics\.json: holds no class .*restore it from a copy"):
        report.run(run)
    (run / "metrics.json").write_text('{"liver": {"dice": 0.8}}')
    (run / "report.md").mkdir()
    with pytest.raises(MedsegError, match=r"report\.md: not a file, where the report writes its report\.md; move it"):
        report.run(run)
    assert sorted(p.name for p in run.glob("*.png")) == []  # nothing drawn before either refusal
    (run / "report.md").rmdir()
    assert [p.name for p in report.run(run)] == ["training_curves.png", "validation_overlays.png", "report.md"]
    assert "| liver | 0.800 ± n/a | n/a | n/a | n/a | n/a | n/a |" in (run / "report.md").read_text()


def test_report_of_a_run_with_no_foreground_class_draws_no_overlays(tmp_path, caplog):
    run = _run_folder(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["labels"] = {"background": 0}
    cfg["evaluation"].update(classes={}, keep_largest_component=[])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert [p.name for p in report.run(run)] == ["training_curves.png", "report.md"]
    assert "validation_overlays.png not drawn: the run's config.yaml names no foreground class" in caplog.text
    assert (run / "report.md").read_text().startswith("# liver: ")


@pytest.mark.slow
def test_report_command_on_a_damaged_run_is_one_line_exit_2(tmp_path):
    run = _run_folder(tmp_path)
    (run / "metrics.json").write_text("{")
    proc = subprocess.run([sys.executable, "-m", "medseg.report", str(run)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "metrics.json: not readable as JSON" in proc.stderr


def test_preview_output_below_a_file_stops_before_any_work_and_new_folders_are_made(tmp_path):
    from medseg.evaluation.figures import preview_figure

    (tmp_path / "taken").write_text("x")
    with pytest.raises(MedsegError, match=r"--out .*taken is a file, not a folder"):
        preview.run("liver", out=tmp_path / "taken" / "p.png", data_dir=tmp_path / "nowhere")  # no data needed
    patch = np.zeros((8, 8, 4), np.float32)
    label = np.zeros((8, 8, 4), np.uint8)
    label[2:6, 2:6, 1:3] = 1
    out = preview_figure([(patch, label, patch, label)], tmp_path / "new" / "folder" / "p.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("axes, signs", [((0, 1, 2), (1, 1, 1)), ((0, 1, 2), (-1, 1, -1)), ((2, 0, 1), (1, -1, 1))])
def test_overlays_show_axial_slices_in_radiological_view(axes, signs):
    """Whatever order a file stores its axes in, the overlay turns them to (patient's left, posterior, superior):
    ``slice.T`` drawn from the top-left is patient's right on the left, anterior at the top."""
    from medseg.evaluation.figures import _axial

    shape = (6, 7, 5)
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    spacing = (0.5, 0.7, 3.0)
    for i, (world, sign) in enumerate(zip(axes, signs)):
        affine[world, i] = sign * spacing[i]
    array = np.zeros(shape)
    world = np.array(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")).reshape(3, -1)
    lps = affine[:3, :3] @ world
    # the voxel furthest to the patient's right (-L), anterior (-P) and superior (+S)
    corner = np.argmax(-lps[0] - lps[1] + lps[2])
    array.reshape(-1)[corner] = 1
    (turned,), aspect = _axial(affine, array)
    new_spacing = {axes[i]: spacing[i] for i in range(3)}
    assert turned.shape == tuple(shape[axes.index(w)] for w in range(3))
    assert np.argwhere(turned == 1).tolist() == [[0, 0, turned.shape[2] - 1]]
    assert aspect == pytest.approx(new_spacing[1] / new_spacing[0])


def test_check_command_prints_a_line_per_case_when_not_on_a_terminal(tmp_path, capsys):
    from medseg.cli.data import main

    from tests.conftest import write_msd

    root = write_msd(tmp_path / "Task", n_cases=2, shape=(12, 10, 8))
    assert main(["check", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == ["[1/2] case_000: ok", "[2/2] case_001: ok"] and out[-1].startswith("OK: 0 of 2")


def test_check_of_a_csv_lists_every_missing_file_then_exits_2(tmp_path, capsys):
    """A CSV naming files that are not there stopped at the first one: fixing a list of 500 cases took 500 runs."""
    from medseg.cli.data import main

    from tests.conftest import write_msd

    write_msd(tmp_path / "ds", n_cases=1, shape=(12, 10, 8))
    rows = ["image,label", "ds/imagesTr/case_000.nii.gz,ds/labelsTr/case_000.nii.gz"]
    rows += [f"ds/imagesTr/gone_{i:02d}.nii.gz,ds/labelsTr/case_000.nii.gz" for i in range(11)]  # lines 3-13
    rows.append("ds/imagesTr/case_000.nii.gz;ds/imagesTr/gone_ch2.nii.gz,ds/labelsTr/gone_lab.nii.gz")  # line 14
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    assert main(["check", str(tmp_path / "cases.csv")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    lines = captured.err.rstrip("\n").split("\n")
    images = tmp_path / "ds" / "imagesTr"
    assert lines[0] == (f"medseg: error: {tmp_path / 'cases.csv'}: 13 listed file(s) do not exist (paths are relative"
                        f" to the CSV's folder, {tmp_path}); fix or remove their rows:")
    assert lines[1:11] == [f"  line {3 + i}: {images / f'gone_{i:02d}.nii.gz'} does not exist" for i in range(10)]
    assert lines[11:] == ["  ... and 3 more"]
    with pytest.raises(MedsegError) as err:  # the same list from Python, and training's load_dataset
        check.open_dataset(tmp_path / "cases.csv")
    assert str(err.value).count(" does not exist") == 10 and "gone_lab" not in str(err.value)


def test_mhd_output_is_a_header_and_data_pair_renamed_into_place(tmp_path, monkeypatch):
    """convert to .mhd wrote the header and its data file under their final names: a killed run left a pair whose
    data file was cut short (or a header naming a file not yet written)."""
    import SimpleITK as sitk

    vol = np.random.default_rng(5).integers(-1000, 2000, (9, 7, 5)).astype(np.int16)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    src = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine), src)  # RAS in the file
    out = tmp_path / "out"
    out.mkdir()
    (written,) = convert.run(src, out / "ct.mhd")
    assert sorted(p.name for p in out.iterdir()) == ["ct.mhd", "ct.zraw"]  # no temporary file left
    assert "ElementDataFile = ct.zraw" in (out / "ct.mhd").read_text().splitlines()
    back = read_image(out / "ct.mhd")
    np.testing.assert_array_equal(back.array, vol)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert written.shape == vol.shape and written.dtype == "int16"
    before = _digest(out)

    real = sitk.WriteImage

    def killed(image, name, *args):  # the writer stops after writing its files under the temporary names
        real(image, name, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", killed)
    with pytest.raises(KeyboardInterrupt):
        convert.run(src, out / "ct.mhd", force=True)
    assert _digest(out) == before  # the earlier pair untouched, nothing half-written beside it
    monkeypatch.setattr(sitk, "WriteImage", real)
    convert.run(tmp_path / "ct.nii.gz", out / "ct.mhd", force=True)
    assert sorted(p.name for p in out.iterdir()) == ["ct.mhd", "ct.zraw"]
    np.testing.assert_array_equal(read_image(out / "ct.mhd").array, vol)


def test_series_listing_shows_the_grid_and_never_the_series_description(tmp_path):
    """The listing of a folder's series (the several-series refusal, and a folder output's lines) showed each
    SeriesDescription, free text staff type that can hold a patient's name; it shows the grid instead."""
    vol = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3)
    write_series(tmp_path / "study", vol, np.diag([0.7, 0.8, 2.0, 1.0]), series_uid="1.2.3.10", prefix="a",
                 description="Smith^John venous 1234567")
    write_series(tmp_path / "study", vol[:, :, :2], np.diag([1.0, 1.0, 5.0, 1.0]), series_uid="1.2.3.11",
                 prefix="b", description="arterial for Dr Jones")
    with pytest.raises(MedsegError) as err:
        convert.run(tmp_path / "study", tmp_path / "one.nii.gz")
    text = str(err.value)
    assert ("holds 2 series: 1.2.3.10 (CT, 3 slices, 6x5 px of 0.7x0.8 mm, slice 2 mm); 1.2.3.11 (CT, 2 slices,"
            " 6x5 px of 1x1 mm, slice 5 mm); choose one with --series UID") in text
    written = convert.run(tmp_path / "study", str(tmp_path / "all") + "/")
    shown = " ".join([text, *(c.series for c in written)])
    assert sorted(c.series for c in written) == ["1.2.3.10 (CT, 3 slices, 6x5 px of 0.7x0.8 mm, slice 2 mm)",
                                                 "1.2.3.11 (CT, 2 slices, 6x5 px of 1x1 mm, slice 5 mm)"]
    for word in ("Smith", "John", "1234567", "venous", "arterial", "Jones", "ANON"):
        assert word not in shown


def test_training_curves_legend_names_the_learning_rate():
    from medseg.evaluation.figures import curves_figure

    history = {"epoch": [1, 2, 3], "loss": [1.0, 0.6, 0.4], "lr": [1e-3, 5e-4, 1e-4], "val_epoch": [2, 3],
               "val": {"val_dice_liver": [0.7, 0.8], "val_iou_liver": [0.6, 0.7]}}
    fig = curves_figure(history)
    loss_ax = fig.axes[0]
    twin = next(ax for ax in fig.axes if ax is not loss_ax and ax.bbox.bounds == loss_ax.bbox.bounds)
    legends = [ax.get_legend() for ax in (loss_ax, twin) if ax.get_legend() is not None]
    assert [[t.get_text() for t in legend.get_texts()] for legend in legends] == [["training loss", "learning rate"]]
    assert twin.get_ylabel() == "learning rate"
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["liver"]


def test_report_removes_its_stale_overlays_and_leaves_other_files(tmp_path, caplog):
    """A redraw that can no longer draw the overlays (the predictions gone) left the earlier montage in place, and
    report.md showed that old picture as this run's."""
    run = _run_folder(tmp_path)
    report.run(run)
    assert (run / "validation_overlays.png").is_file()
    (run / "augmentation_preview.png").write_bytes(b"\x89PNG training's")  # written by training, not by the report
    (run / "notes.png").write_bytes(b"\x89PNG a user's")
    (run / "predictions" / "c1.nii.gz").unlink()
    written = report.run(run)
    assert [p.name for p in written] == ["training_curves.png", "report.md"]
    assert not (run / "validation_overlays.png").exists()
    assert "removed the earlier validation_overlays.png (not drawn this time)" in caplog.text
    text = (run / "report.md").read_text()
    assert "validation_overlays" not in text and "![training_curves](training_curves.png)" in text
    assert (run / "augmentation_preview.png").read_bytes() == b"\x89PNG training's"
    assert (run / "notes.png").read_bytes() == b"\x89PNG a user's"
    assert sorted(p.name for p in (run / "predictions").iterdir()) == []


@pytest.mark.parametrize("value, ok", [("0.5", True), ("20", True), ("20.5", False), ("100", False), ("0", False)])
def test_interactive_sigma_is_bounded(value, ok):
    if ok:
        assert load_config("liver_interactive", [f"interactive.sigma={value}"]).interactive.sigma == float(value)
        return
    with pytest.raises(MedsegError) as err:
        load_config("liver_interactive", [f"interactive.sigma={value}"])
    assert str(err.value) == (f"--set interactive.sigma: key 'interactive.sigma' is {float(value)!r}; the click map's"
                              " Gaussian width is in voxels of the preprocessed grid and must be above 0 and at most"
                              " 20 (typically 1-5)")


def test_preview_output_in_a_folder_nothing_can_be_written_to_stops_before_any_work(tmp_path):
    """/proc takes no new file, even from root (who ignores permission bits): one line, before the data are read."""
    with pytest.raises(MedsegError, match=r"--out /proc/p\.png: cannot write in /proc \(.*\); give a path in a folder"
                                          r" you can write to"):
        preview.run("liver", out=Path("/proc/p.png"), data_dir=tmp_path / "nowhere")  # no data needed
