"""medseg.rank and medseg.distill as a researcher runs them: mixed folders, masks beside their cases, patient names in
folder names, output paths that cannot be written, reruns over a CSV; a --data-dir without the task's data, 2D data
for a 3D teacher, unknown students, a budget that stops mid-epoch."""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.errors import MedsegError, check_new_run_folder
from medseg.workflows import distill, rank
from tests.conftest import write_msd
from tests.engine.test_interactive import tiny_bundle, write_case


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def fake_bundle(monkeypatch):
    bundle = tiny_bundle(False, seed=3)
    monkeypatch.setattr(rank, "load_bundle", lambda *a, **k: bundle)
    return bundle


# ---- medseg.rank


def test_rank_leaves_out_masks_beside_their_cases(tmp_path, fake_bundle, capsys):
    """medseg.predict into the input folder (or a saved correction there) left ``<case>_seg.nii.gz`` beside the
    image: the label map was ranked as a case of its own (uncertainty 0.01, foreground 0)."""
    from medseg.cli.rank import run as rank_cli

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_case(folder / "ct.nii.gz")
    write_case(folder / "other.nii.gz", seed=1)
    image, label, affine = __import__("tests.conftest", fromlist=["synthetic_case"]).synthetic_case()
    nib.save(nib.Nifti1Image(label, affine), folder / "ct_seg.nii.gz")
    before = _tree(folder)
    out = tmp_path / "ranking.csv"
    assert rank_cli(["--bundle", "b", "--input", str(folder), "--output", str(out)]) == 0  # nothing failed
    captured = capsys.readouterr()
    assert [r["case"] for r in _csv(out)] and {r["case"] for r in _csv(out)} == {"ct", "other"}
    assert "ct_seg left out: ct_seg.nii.gz is a mask of case 'ct'" in captured.err
    assert "skipped" not in captured.out
    assert _tree(folder) == before  # the input folder is read only
    # a file merely ending in _seg with no case of that name beside it is still a case
    (folder / "ct.nii.gz").unlink()
    rows = rank.run("b", folder, out)
    assert {r["case"] for r in rows} == {"ct_seg", "other"}


def test_rank_csv_ordering_columns_and_progress(tmp_path, fake_bundle, capsys, monkeypatch):
    """Rows most uncertain first with ranks 1..n, the documented columns only (no paths), and a progress line per
    case that says how far it is (n of N) from the start."""
    from medseg.cli.rank import run as rank_cli

    folder = tmp_path / "in"
    folder.mkdir()
    sharpness = {"a": 0.95, "b": 0.5, "c": 0.75}
    for name in sharpness:
        write_case(folder / f"{name}.nii.gz")
    (folder / "junk.nii.gz").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not an image")

    def fake(loaded, path, device="cpu", series=None):
        if path.name == "junk.nii.gz":
            return rank.probabilities(loaded, path)
        p = torch.full((3, 6, 6, 6), (1 - sharpness[path.name[0]]) / 2)
        p[1] = sharpness[path.name[0]]
        return p

    monkeypatch.setattr(rank, "probabilities", fake)
    out = tmp_path / "r.csv"
    assert rank_cli(["--bundle", "b", "--input", str(folder), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert out.read_text().splitlines()[0] == "rank,case,uncertainty,foreground_voxels"
    table = _csv(out)
    assert [(r["rank"], r["case"]) for r in table] == [("1", "b"), ("2", "c"), ("3", "a")]
    scores = [float(r["uncertainty"]) for r in table]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert table[0]["foreground_voxels"] == str(6 ** 3)
    assert str(folder) not in out.read_text()
    lines = err.splitlines()
    assert lines[0] == "scoring 4 case(s) with b"
    assert "scored 1/4 a: " in lines[1] and "case 'junk' skipped (4/4)" in err and "scored 3/4 c: " in err


def test_rank_rerun_replaces_the_csv_atomically(tmp_path, fake_bundle):
    folder = tmp_path / "in"
    folder.mkdir()
    write_case(folder / "one.nii.gz")
    write_case(folder / "two.nii.gz", noise=300.0)
    out = tmp_path / "ranking.csv"
    out.write_text("rank,case\n1,stale_case_from_an_old_run\n")
    rank.run("b", folder, out)
    assert {r["case"] for r in _csv(out)} == {"one", "two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "ranking.csv"]  # no temporary file left
    # a rerun that ranks nothing keeps the earlier CSV whole
    (folder / "one.nii.gz").write_bytes(b"x")
    (folder / "two.nii.gz").write_bytes(b"x")
    text = out.read_text()
    with pytest.raises(MedsegError, match="no case could be ranked"):
        rank.run("b", folder, out)
    assert out.read_text() == text


def test_rank_output_in_a_missing_folder_or_one_that_cannot_be_made(tmp_path, fake_bundle, monkeypatch):
    """A missing folder is made; one that cannot be made ended in a FileNotFoundError traceback, after every case
    had been scored."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_case(folder / "one.nii.gz")
    rows = rank.run("b", folder, tmp_path / "new" / "deeper" / "r.csv")
    assert [r["case"] for r in _csv(tmp_path / "new" / "deeper" / "r.csv")] == [rows[0]["case"]] == ["one"]
    monkeypatch.setattr(rank, "probabilities", lambda *a, **k: pytest.fail("scored before the output was checked"))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(MedsegError, match=r"--output .*r\.csv: cannot write in .*locked \(Permission denied\); give a"):
        rank.run("b", folder, tmp_path / "locked" / "r.csv")


def test_rank_cli_one_line_for_an_output_that_cannot_be_written(tmp_path, fake_bundle, capsys):
    from medseg.cli.rank import run as rank_cli
    from medseg.errors import run_cli

    folder = tmp_path / "in"
    folder.mkdir()
    write_case(folder / "one.nii.gz")
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc (a folder nothing can be created in)")
    assert run_cli(rank_cli, ["--bundle", "b", "--input", str(folder), "--output", "/proc/medseg_nope/r.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medseg: error: --output /proc/medseg_nope/r.csv: cannot make its folder (")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_rank_keeps_patient_names_out_of_a_series_folder_given_itself(tmp_path, fake_bundle, capsys):
    """``--input Doe^John/`` (a series folder named by the export after the patient) gave the case name
    ``Doe^John`` in the CSV and on screen; series folders further down were already ``patientN``."""
    from medseg.cli.rank import run as rank_cli
    from medseg.data.dicom import write_series

    volume = np.full((20, 18, 6), 40.0, np.float32)
    series = tmp_path / "Doe^John"
    write_series(series, volume, np.diag([-1.5, -1.5, 3.0, 1.0]), series_uid="1.2.3.4")
    import pydicom

    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID = "Doe^John", "PID0042"
        ds.save_as(f)
    out = tmp_path / "r.csv"
    assert rank_cli(["--bundle", "b", "--input", str(series), "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert [r["case"] for r in _csv(out)] == ["patient1"]
    text = out.read_text() + captured.out + captured.err
    assert "Doe" not in text and "John" not in text and "PID0042" not in text
    # a folder of series: the one named by the patient ID is patientN too; the others keep their names
    top = tmp_path / "export"
    shutil.copytree(series, top / "PID0042")
    shutil.copytree(series, top / "CT_abdomen")
    rows = rank.run("b", top, out)
    assert sorted(r["case"] for r in rows) == ["CT_abdomen", "patient1"]
    assert "PID0042" not in out.read_text()


def test_rank_odd_file_names_are_quoted_in_the_csv(tmp_path, fake_bundle):
    folder = tmp_path / "in"
    folder.mkdir()
    write_case(folder / 'größe, "x" (CT).nii.gz')
    rows = rank.run("b", folder, tmp_path / "r.csv")
    assert [r["case"] for r in _csv(tmp_path / "r.csv")] == [rows[0]["case"]] == ['größe, "x" (CT)']


# ---- medseg.distill


@pytest.fixture
def fake_teacher(tmp_path, monkeypatch):
    """A tiny 3D liver bundle stands in for a trained teacher (nothing is trained in these tests)."""
    bundle = tiny_bundle(False, seed=1, pipeline="liver.yaml")
    teacher = tmp_path / "bundles" / "liver_ct_segmentation"
    teacher.mkdir(parents=True)
    monkeypatch.setattr(distill, "load_bundle", lambda *a, **k: bundle)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return teacher


@pytest.mark.parametrize("content", ["empty", "images"])
def test_distill_refuses_a_data_dir_without_the_tasks_data_and_writes_nothing_there(tmp_path, fake_teacher, capsys,
                                                                                  content):
    """An explicit --data-dir that held neither Task03_Liver nor a dataset: the built-in sample was fetched and
    written into that folder (``downloads/``, ``lits_sample/``) and the student trained on it, exit 0."""
    from medseg.distill import main as distill_main

    data = tmp_path / "my_scans"
    data.mkdir()
    if content == "images":
        write_case(data / "scan1.nii.gz")
    before = _tree(data)
    code = distill_main(["--teacher", str(fake_teacher), "--data-dir", str(data), "--budget-minutes", "0.01",
                         "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--data-dir {data}: holds neither the task's dataset Task03_Liver (data.dataset) nor a dataset" in err
    assert "leave out --data-dir to use the built-in sample" in err and "Traceback" not in err
    assert _tree(data) == before and sorted(p.name for p in data.iterdir()) == sorted(Path(k).name for k in before)
    assert not (tmp_path / "run").exists()


def test_distill_data_dir_check_takes_the_dataset_the_folder_holding_it_or_the_prepared_sample(tmp_path):
    cfg = tiny_bundle(False, pipeline="liver.yaml").cfg
    holder = tmp_path / "holder"
    write_msd(holder / "Task03_Liver", 1)
    distill.check_data_dir(cfg, holder)  # the folder holding data.dataset
    distill.check_data_dir(cfg, holder / "Task03_Liver")  # the dataset's own folder
    (tmp_path / "prepared" / "lits_sample").mkdir(parents=True)
    (tmp_path / "prepared" / "lits_sample" / "dataset.json").write_text("{}")
    distill.check_data_dir(cfg, tmp_path / "prepared")  # the sample already there (the repository's data/)
    (tmp_path / "other").mkdir()
    with pytest.raises(MedsegError, match="holds neither"):
        distill.check_data_dir(cfg, tmp_path / "other")


def test_distill_refuses_2d_data_for_a_3d_teacher_before_the_run_folder(tmp_path, fake_teacher, capsys):
    """2D NIfTI cases for a 3D teacher ended in MONAI's 'applying transform <SpatialPadd ...>' traceback, leaving
    a run folder with an empty checkpoints/ that a rerun into it was refused as an earlier run."""
    from medseg.distill import main as distill_main

    data = write_msd(tmp_path / "flat", 3, shape=(40, 36, 1))
    for f in data.rglob("*.nii.gz"):
        im = nib.load(f)
        nib.save(nib.Nifti1Image(np.asarray(im.dataobj)[:, :, 0], im.affine), f)
    code = distill_main(["--teacher", str(fake_teacher), "--data-dir", str(data), "--budget-minutes", "0.01",
                         "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"medseg: error: {data}/imagesTr/case_00") and "a 2D image (40, 36)" in line
    assert "teacher" in line and "3D network" in line and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_distill_failed_start_leaves_a_folder_that_can_be_run_again(tmp_path, fake_teacher, monkeypatch):
    """The run folder's checkpoints/ was made before training started: any failure on the way marked the folder as
    holding an earlier run, and the same --output-dir was then refused."""
    data = write_msd(tmp_path / "Synthetic", 3)

    def fail(*args, **kwargs):
        raise MedsegError("stopped here")

    monkeypatch.setattr(distill.builders, "training_dataset", fail)
    with pytest.raises(MedsegError, match="stopped here"):
        distill.run(fake_teacher, data_dir=data, budget_minutes=0.01, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    check_new_run_folder(tmp_path / "run", "--output-dir")  # no earlier run there: a rerun may use it


@pytest.mark.parametrize("name", ["nonet", "UNet", ""])
def test_distill_unknown_student_lists_the_networks_before_loading_the_teacher(tmp_path, capsys, monkeypatch, name):
    from medseg.distill import main as distill_main

    monkeypatch.setattr(distill, "load_bundle", lambda *a, **k: pytest.fail("teacher loaded before the check"))
    assert distill_main(["--teacher", str(tmp_path), "--student", name, "--budget-minutes", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medseg: error: --student {name}: not a known network; choose one of ")
    assert "light_unet" in err and "resunet" in err and "network.name" not in err and len(err.splitlines()) == 1


def test_distill_budget_that_stops_mid_epoch_still_logs_progress(monkeypatch, caplog):
    """A budget shorter than an epoch (20 iterations of 64x96x96 patches: minutes on a CPU) logged no training line
    at all: the per-epoch line never came, as the stop ends the epoch early."""
    from ignite.engine import Engine

    clock = [0.0]
    monkeypatch.setattr(distill.time, "monotonic", lambda: clock[0])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    def step(engine, batch):
        clock[0] += 6.0
        return {"loss": torch.tensor(0.5)}

    trainer = Engine(step)
    distill._budget(trainer, optimizer, 0.25, 0.01)  # 15 s: stops after the third of 20 iterations
    with caplog.at_level(logging.INFO, logger="medseg"):
        trainer.run([0] * 20, max_epochs=3)
    assert trainer.state.iteration == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("epoch 1 | loss 0.5000 | lr ") and "| 3 iterations |" in m for m in messages)
    assert "time budget of 0.25 min reached after 3 iterations: stopping" in messages
