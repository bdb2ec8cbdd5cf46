"""Long-running training control as a user meets it: --resume after a time-budget stop, of a finished run, of a
damaged folder; k-fold folders and the cross-validation table; torchrun resumes (found by a user-level audit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from medseg.config import load_config
from medseg.engine.checkpoint import load_checkpoint, remove_stale_temporaries
from medseg.engine.folds import make_folds
from medseg.engine.resume import check_not_finished
from medseg.errors import MedsegError

from tests.conftest import REPO
from tests.engine.test_engine_runs import BASE, cli, data  # noqa: F401 (data: a fixture)

SETS = BASE  # the engine tests' tiny synthetic runs, their command line and their 4-case dataset (fixture)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def crafted_run(folder: Path, run: dict | None = None) -> Path:
    """A run folder as medseg.train leaves it, without training: config, state, split (and ``run``.json)."""
    folder.mkdir(parents=True)
    cfg = load_config("liver", ["tracking.enabled=false", "bundle.enabled=false"]).to_dict()
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (folder / "resume.json").write_text(json.dumps({"requested_config": cfg, "fold": None}))
    case = {"case": "a", "image": str(folder / "a.nii.gz"), "label": str(folder / "a_seg.nii.gz")}
    (folder / "cases.json").write_text(json.dumps({"train": [case], "val": [case]}))
    if run is not None:
        (folder / "run.json").write_text(json.dumps(run))
    return folder


@pytest.mark.slow
def test_resume_after_a_time_budget_stop_goes_on_with_the_next_epoch_then_refuses_the_finished_run(
        data, tmp_path, capsys):
    from medseg.train import main

    run = tmp_path / "run"
    # the budget passes in the first step: epoch 1 is cut after 1 of its 2 steps, validated and checkpointed
    assert main(cli(data, run, "--epochs", "3", "--max-minutes", "0.0001")) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]["iteration"] == 1
    (run / "checkpoints" / ".last.pt.killed.tmp").write_bytes(b"x" * 100)  # a write a kill interrupted
    capsys.readouterr()
    assert main(["--resume", str(run)]) == 0  # a new budget (none): on to the end
    assert "at epoch 1/3" in (run / "train.log").read_text()
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3] and history["val_epoch"] == [1, 2, 3]  # epoch 1 not repeated
    assert len(history["lr"]) == 3 and history["lr"][-1] == pytest.approx(1e-5)  # the cosine schedule's end
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["trainer"]["iteration"] == 6 and state["trainer"]["max_epochs"] == 3
    report = json.loads((run / "run.json").read_text())
    assert report["epochs_run"] == 3 and report["stop_reason"] == ""
    assert not list((run / "checkpoints").glob(".*.tmp"))
    # the run has finished: --resume would only evaluate and export it again; one line, nothing rewritten
    written = (run / "run.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["--resume", str(run)]) == 2
    err = one_error_line(capsys)
    assert "has finished (run.json: 3/3 epochs)" in err and f"python -m medseg.export {run}" in err
    assert (run / "run.json").stat().st_mtime_ns == written


def test_only_a_run_the_time_budget_stopped_short_may_be_resumed_after_run_json(tmp_path, capsys):
    from medseg.train import main

    check_not_finished(tmp_path, {}, 40)  # no run.json: killed, resumable
    (tmp_path / "run.json").write_text(json.dumps({"epochs_run": 12, "stop_reason": "time budget"}))
    check_not_finished(tmp_path, {}, 40)
    for report in ({"epochs_run": 40, "stop_reason": "time budget"}, {"epochs_run": 9, "stop_reason": "early stopping"}):
        (tmp_path / "run.json").write_text(json.dumps(report))
        with pytest.raises(MedsegError, match="has finished"):
            check_not_finished(tmp_path, {}, 40)
    run = crafted_run(tmp_path / "done", {"epochs_run": 40, "stop_reason": ""})
    assert main(["--resume", str(run)]) == 2
    assert "this run has finished (run.json: 40/40 epochs)" in one_error_line(capsys)
    # a cross-validation whose every fold finished, its summary written
    cv = tmp_path / "cv"
    cv.mkdir()
    cfg = load_config("liver", ["tracking.enabled=false", "training.folds=2"]).to_dict()
    (cv / "resume.json").write_text(json.dumps({"requested_config": cfg, "folds": "all"}))
    (cv / "folds.json").write_text(json.dumps({"k": 2, "seed": 0, "val_cases": [["a"], ["b"]]}))
    for k in range(2):
        (cv / f"fold_{k}").mkdir()
        (cv / f"fold_{k}" / "run.json").write_text(json.dumps({"epochs_run": 40, "stop_reason": ""}))
    (cv / "cv_summary.json").write_text("{}")
    assert main(["--resume", str(cv)]) == 2
    assert "this cross-validation has finished" in one_error_line(capsys)
    # one fold the time budget stopped short: the cross-validation may go on
    (cv / "fold_1" / "run.json").write_text(json.dumps({"epochs_run": 12, "stop_reason": "time budget"}))
    check_not_finished(cv, {"folds": "all"}, 40)


def test_a_cross_validation_resume_trains_on_the_fold_the_time_budget_stopped_short(tmp_path, monkeypatch):
    """Every fold with a run.json was skipped, so a fold the budget stopped before its last epoch never went on."""
    from medseg.workflows import train

    for k, report in enumerate(({"epochs_run": 40, "stop_reason": ""}, {"epochs_run": 12, "stop_reason": "time budget"},
                                {"epochs_run": 9, "stop_reason": "early stopping"})):
        (tmp_path / f"fold_{k}" / "checkpoints").mkdir(parents=True)
        (tmp_path / f"fold_{k}" / "run.json").write_text(json.dumps(report))
        (tmp_path / f"fold_{k}" / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "fold_3").mkdir()  # never started
    trained = []
    monkeypatch.setattr(train, "all_cases", lambda cfg, root: [])
    monkeypatch.setattr(train, "locate_dataset", lambda cfg, root, explicit: root)
    monkeypatch.setattr(train, "make_folds", lambda cases, k, seed, folder: [[]] * k)
    monkeypatch.setattr(train, "fold_split", lambda cases, parts, i: ([], []))
    monkeypatch.setattr(train, "stored_config", lambda path: "stored")
    monkeypatch.setattr(train, "train_one", lambda opts, cfg, req, tr, va, fold_dir, ctx, resume, fold:
                        trained.append((fold, resume, cfg)))
    monkeypatch.setattr(train, "_fold_summary", lambda parent, k, ctx, outcomes: outcomes)
    cfg = SimpleNamespace(training=SimpleNamespace(folds=4, seed=0, epochs=40))
    opts = SimpleNamespace(resume=tmp_path, data_root=tmp_path, data_dir=None)
    train._resume_folds(opts, cfg, cfg, None)
    assert trained == [(1, True, "stored"), (3, False, cfg)]


def test_damaged_run_files_are_one_line_naming_the_file(tmp_path, capsys):
    from medseg.train import main

    for name, text in (("resume.json", '{"requested'), ("cases.json", "["), ("cases.json", '{"train": 3}'),
                       ("config.yaml", "training: ["), ("resume.json", "[]")):
        run = crafted_run(tmp_path / f"{name}-{len(text)}")
        (run / name).write_text(text)
        assert main(["--resume", str(run)]) == 2, name
        err = one_error_line(capsys)
        assert f"{run / name}:" in err and "restore the file from a copy, or start a new run" in err
    cv = tmp_path / "cv"
    cv.mkdir()
    cfg = load_config("liver", ["tracking.enabled=false", "training.folds=2"]).to_dict()
    (cv / "resume.json").write_text(json.dumps({"requested_config": cfg, "folds": "all"}))
    (cv / "folds.json").write_text("{")
    assert main(["--resume", str(cv)]) == 2
    assert f"{cv / 'folds.json'}: not readable JSON" in one_error_line(capsys)
    (tmp_path / "a_file").write_text("x")
    assert main(["--resume", str(tmp_path / "a_file")]) == 2
    assert "a file, not a run folder" in one_error_line(capsys)
    good = tmp_path / "last.pt"
    torch.save({"epoch": 1, "w": torch.ones(2000)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(MedsegError) as err:
        load_checkpoint(tmp_path / "cut.pt")
    text = str(err.value)
    assert "not a readable checkpoint" in text and "restore the file" in text
    assert len(text) < 400 and "\n" not in text


def test_a_folds_file_of_another_split_is_refused_and_too_many_folds_say_how_many(tmp_path):
    cases = [SimpleNamespace(name=f"case_{i}") for i in range(5)]
    parts = make_folds(cases, 3, 0, tmp_path)  # written
    assert sorted(i for p in parts for i in p) == list(range(5))
    assert make_folds(cases, 3, 0, tmp_path) == parts  # read back
    with pytest.raises(MedsegError, match="holds a split into 3 folds with seed 0, but training.folds is 2"):
        make_folds(cases, 2, 0, tmp_path)  # left by an earlier attempt in this --output-dir
    with pytest.raises(MedsegError, match="seed 0, but training.folds is 3 and training.seed 7"):
        make_folds(cases, 3, 7, tmp_path)
    (tmp_path / "folds.json").write_text('{"k": 3')
    with pytest.raises(MedsegError, match="not a folds file medseg wrote"):
        make_folds(cases, 3, 0, tmp_path)
    with pytest.raises(MedsegError, match="7 folds need at least 7 labelled cases, the dataset has 5;"
                                          " set training.folds to 2..5"):
        make_folds(cases, 7, 0, tmp_path / "new")


def test_resume_of_a_cross_validation_with_no_fold_left_prints_its_summary(monkeypatch, capsys):
    from medseg.cli.train import run
    from medseg.workflows import train

    summary = {"liver": {m: {"mean": v, "std": s, "folds": [v - s, v + s]} for m, v, s in
                         (("dice", 0.5, 0.1), ("hd95_mm", 7.0, 1.0), ("assd_mm", 2.0, 0.5), ("iou", 0.4, 0.1))}}
    # every fold had finished when the process was killed before cv_summary.json: nothing trained, only summarised
    monkeypatch.setattr(train, "run", lambda *a, **k: train.TrainOutcome(Path("cv"), summary=summary, folds=[]))
    assert run(["--resume", "cv"]) == 0
    out = capsys.readouterr().out
    assert "cross-validation, mean ± std over 2 folds:" in out
    assert "0.500 ± 0.100" in out and "7.00 ± 1.00" in out and "2.00 ± 0.50" in out


def test_stale_checkpoint_temporaries_are_removed(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"keep")
    (tmp_path / ".last.pt.ab12.tmp").write_bytes(b"half")
    (tmp_path / ".best.pt.cd34.tmp").write_bytes(b"half")
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".best.pt.cd34.tmp", ".last.pt.ab12.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


KILL_RANK0_AT = """
import os, signal, sys
from ignite.engine import Events
import medseg.engine.builders as b

class Killed(b.SupervisedTrainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        if os.environ.get("RANK") == "0":  # one process killed mid-epoch; torchrun ends the other
            self.add_event_handler(Events.ITERATION_COMPLETED(once=int(os.environ["KILL_AT"])),
                                   lambda _: os.kill(os.getpid(), signal.SIGKILL))
b.SupervisedTrainer = Killed
from medseg.train import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_torchrun_run_resumed_under_torchrun_matches_the_run_that_never_stopped(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    sets = SETS + ["training.val_every=1"]  # augmentation on: each rank draws its own random stream
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

    def launch(*args: str, what: list[str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*torchrun, *(what or ["-m", "medseg.train"]), *args], env={**env, "KILL_AT": "3"},
                              cwd=tmp_path, capture_output=True, text=True, timeout=240)

    proc = launch(*cli(data, tmp_path / "straight", "--epochs", "3", sets=sets))
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = tmp_path / "killer.py"
    script.write_text(KILL_RANK0_AT)
    proc = launch(*cli(data, tmp_path / "killed", "--epochs", "3", sets=sets), what=[str(script)])
    assert proc.returncode != 0
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["trainer"]["iteration"] == 2
    proc = launch("--resume", str(tmp_path / "killed"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert a["history"]["loss"] == b["history"]["loss"]  # each rank went on with its own random streams
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key
    assert len(b["ranks"]) == 2 and not torch.equal(b["ranks"][0]["data_generator"], b["ranks"][1]["data_generator"])
