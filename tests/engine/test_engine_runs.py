"""Training engine end to end on tiny synthetic runs: kill and resume, atomic checkpoints, early stopping,
time budget, NaN stop, k-fold cross-validation, and torchrun with 2 gloo processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from medseg.engine.checkpoint import load_checkpoint, save_checkpoint
from medseg.errors import MedsegError

from tests.conftest import FAST, REPO, write_msd

BASE = FAST + ["data.dataset=Synthetic", "bundle.enabled=false", "tracking.enabled=false", "training.threads=1"]


def cli(data: Path, out: Path, *extra: str, sets: list[str] = BASE) -> list[str]:
    return ["liver", "--data-dir", str(data), "--output-dir", str(out), *[a for s in sets for a in ("--set", s)], *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine_data")
    write_msd(root / "Synthetic", n_cases=4)
    return root


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


KILLER = """
import os, signal, sys
from ignite.engine import Events
import medseg.engine.builders as b

class Killed(b.SupervisedTrainer):  # SIGKILL at a fixed iteration, mid-epoch
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        event = Events.ITERATION_STARTED if os.environ.get("KILL_BEFORE") else Events.ITERATION_COMPLETED
        self.add_event_handler(event(once=int(os.environ["KILL_AT"])),
                               lambda _: os.kill(os.getpid(), signal.SIGKILL))
b.SupervisedTrainer = Killed
from medseg.train import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_killed_and_resumed_run_ends_with_the_same_weights(data, tmp_path):
    from medseg.train import main

    assert main(cli(data, tmp_path / "straight", "--epochs", "3")) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # epoch 3 of 3, as its second step starts: its first step is done and logged to MLflow
    env = subprocess_env(KILL_AT="6", KILL_BEFORE="1", MLFLOW_TRACKING_URI=uri)
    tracked = [s for s in BASE if not s.startswith("tracking.")]
    run = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLER, *cli(data, run, "--epochs", "3", sets=tracked)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["trainer"]["iteration"] == 4  # end of epoch 2
    assert not (run / "run.json").exists()

    proc = subprocess.run([sys.executable, "-m", "medseg.train", "--resume", str(run)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming from" in proc.stdout and "at epoch 2/3" in proc.stdout
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 6
    for key, value in a["network"].items():
        assert torch.equal(value, b["network"][key]), key  # bit-identical on CPU with a fixed seed
    for key in ("loss", "lr"):
        assert a["history"][key] == b["history"][key]
    assert a["history"]["val"] == b["history"]["val"]
    assert json.loads((run / "run.json").read_text())["epochs_run"] == 3

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("medseg").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, finished by the resume
    assert json.loads((run / "resume.json").read_text())["mlflow_run_id"] == runs[0].info.run_id
    history = client.get_metric_history(runs[0].info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # step 5, trained again after the kill, once
    # the share of each epoch's step time spent waiting for the data loader, per epoch, resumed run included
    waits = client.get_metric_history(runs[0].info.run_id, "data_wait_share")
    assert sorted(m.step for m in waits) == [1, 2, 3] and all(0.0 < m.value < 1.0 for m in waits)
    assert [round(m.value, 4) for m in sorted(waits, key=lambda m: m.step)] == b["history"]["data_wait"]
    assert "data wait" in proc.stdout

    # the same folder with another config is refused, naming the key
    assert main(["--resume", str(run), "--set", "training.learning_rate=0.5"]) == 2
    assert main(["liver", "--resume", str(run), "--epochs", "4"]) == 2


def test_resume_refuses_bad_folders_and_differing_configs(data, tmp_path, capsys):
    from medseg.train import main

    assert main(["--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a medseg run folder" in err and "config.yaml" in err
    run = tmp_path / "run"
    assert main(cli(data, run, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(["--resume", str(run), "--set", "training.learning_rate=0.5", "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training.epochs, training.learning_rate" in err
    assert main(["--resume", str(tmp_path / "missing")]) == 2


KILL_DURING_SAVE = """
import os, signal, sys, torch
from pathlib import Path
from medseg.engine.checkpoint import save_checkpoint
path = Path(sys.argv[1])
save_checkpoint(path, {"weights": torch.ones(1000), "epoch": 1})
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # killed after the temp file, before the rename
save_checkpoint(path, {"weights": torch.zeros(1000), "epoch": 2})
"""


def test_kill_between_temp_file_and_rename_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p for p in path.parent.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 4000  # the complete new file, never renamed
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.ones(1000))
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(MedsegError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    save_checkpoint(path, {"epoch": 3})
    assert load_checkpoint(path)["epoch"] == 3


def test_persistent_workers_are_reproducible_and_kept_across_epochs(data, tmp_path):
    from medseg.train import main

    workers = [s for s in BASE if s != "training.num_workers=0"] + ["training.num_workers=1"]
    runs = {}
    for name, persistent in (("a", True), ("b", True), ("fresh", False)):
        sets = workers + [f"training.persistent_workers={str(persistent).lower()}"]
        assert main(cli(data, tmp_path / name, "--epochs", "2", sets=sets)) == 0
        runs[name] = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
    a, b, fresh = runs["a"], runs["b"], runs["fresh"]
    assert a["history"]["loss"] == b["history"]["loss"]  # the same seed, the same batches from the worker
    assert all(torch.equal(v, b["network"][k]) for k, v in a["network"].items())
    # a worker started anew for epoch 2 is seeded anew; a kept one goes on with its stream: other batches
    assert a["history"]["loss"][0] == fresh["history"]["loss"][0]
    assert a["history"]["loss"][1] != fresh["history"]["loss"][1]


def test_early_stopping_fires_on_a_plateau(data, tmp_path):
    from medseg.train import main

    run = tmp_path / "run"
    # a learning rate of 1e-12 leaves the network as it is: the validation Dice cannot gain 0.01
    sets = BASE + ["training.learning_rate=1e-12", "training.early_stopping_patience=2",
                   "training.early_stopping_min_delta=0.01"]
    assert main(cli(data, run, "--epochs", "8", sets=sets)) == 0
    report = json.loads((run / "run.json").read_text())
    assert report["stop_reason"] == "early stopping" and report["epochs_run"] == 3  # best at 1, then 2 without gain
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3] and history["val_epoch"] == [1, 2, 3]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["early_stopping"]["counter"] == 2
    assert (run / "metrics.json").is_file()


def test_time_budget_stops_saves_validates_and_exports_with_bf16_accumulation_and_clipping(data, tmp_path):
    from medseg.train import main

    run = tmp_path / "run"
    sets = [s for s in BASE if s != "bundle.enabled=false"] + [
        "training.val_every=5", "training.amp=bf16", "training.accumulation_steps=2", "training.grad_clip=0.5",
        "training.activation_checkpointing=true", f"bundle.dir={tmp_path / 'bundles'}"]
    assert main(cli(data, run, "--epochs", "5", "--max-minutes", "0.0001", sets=sets)) == 0
    report = json.loads((run / "run.json").read_text())
    assert report["stop_reason"] == "time budget" and report["epochs_run"] == 1
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1] and history["val_epoch"] == [1]  # validated although val_every is 5
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["trainer"]["iteration"] == 1 and state["stop_reason"] == "time budget"
    assert all(torch.isfinite(v).all() for v in state["network"].values() if v.is_floating_point())
    assert (run / "metrics.json").is_file() and (tmp_path / "bundles" / "liver_ct_segmentation" / "models" / "model.ts").is_file()


def test_non_finite_loss_stops_with_epoch_and_step_keeping_the_last_checkpoint(data, tmp_path, monkeypatch, capsys):
    import medseg.engine.builders as builders
    from medseg.train import main

    real = builders.build_loss
    calls = {"n": 0}

    def poisoned(tr):
        loss = real(tr)

        def forward(pred, label):
            calls["n"] += 1
            value = loss(pred, label)
            return value * float("nan") if calls["n"] == 4 else value  # epoch 2, step 2

        return forward

    monkeypatch.setattr(builders, "build_loss", poisoned)
    run = tmp_path / "run"
    assert main(cli(data, run, "--epochs", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "loss is nan at epoch 2, step 2/2" in err and "last.pt" in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["trainer"]["iteration"] == 2  # epoch 1's checkpoint
    assert all(torch.isfinite(v).all() for v in state["network"].values() if v.is_floating_point())
    assert not (run / "run.json").exists()


def test_all_folds_and_their_summary(data, tmp_path):
    from medseg.train import main

    run = tmp_path / "cv"
    assert main(cli(data, run, "--epochs", "1", "--folds", "all", sets=BASE + ["training.folds=2"])) == 0
    folds = json.loads((run / "folds.json").read_text())
    assert folds["k"] == 2 and sorted(sum(folds["val_cases"], [])) == [f"case_{i:03d}" for i in range(4)]
    dice = []
    for k in range(2):
        cases = json.loads((run / f"fold_{k}" / "cases.json").read_text())
        assert [c["case"] for c in cases["val"]] == folds["val_cases"][k]
        assert not {c["case"] for c in cases["train"]} & set(folds["val_cases"][k])
        dice.append(json.loads((run / f"fold_{k}" / "metrics.json").read_text())["liver"]["dice"])
    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["liver"]["dice"]["folds"] == dice
    assert summary["liver"]["dice"]["mean"] == pytest.approx(sum(dice) / 2)
    assert summary["liver"]["dice"]["std"] == pytest.approx(abs(dice[0] - dice[1]) / 2 ** 0.5)
    counts = [json.loads((run / f"fold_{k}" / "metrics.json").read_text())["liver"] for k in range(2)]
    assert summary["liver"]["cases"] == {"total": 4.0, "folds": [2.0, 2.0]}
    assert summary["liver"]["flagged"]["total"] == counts[0]["flagged"] + counts[1]["flagged"]
    table = (run / "cv_summary.md").read_text()
    assert "± " in table and f"| {int(summary['liver']['flagged']['total'])} of 4 |" in table and "| cases |" not in table
    # an interrupted cross-validation: --resume on its folder trains the missing fold, the same way again
    import shutil

    shutil.rmtree(run / "fold_1")
    (run / "cv_summary.json").unlink()
    assert main(["--resume", str(run)]) == 0
    assert json.loads((run / "cv_summary.json").read_text())["liver"]["dice"]["folds"] == dice
    # one fold alone: the same split
    assert main(cli(data, tmp_path / "one", "--epochs", "1", "--fold", "1", sets=BASE + ["training.folds=2"])) == 0
    one = json.loads((tmp_path / "one" / "cases.json").read_text())
    assert [c["case"] for c in one["val"]] == folds["val_cases"][1]
    assert main(cli(data, tmp_path / "bad", "--fold", "2", sets=BASE + ["training.folds=2"])) == 2


DDP_SETS = [s for s in BASE if not s.startswith(("training.patch_size", "training.batch_size", "data.val_fraction"))] + [
    "training.patch_size=[32,32,32]",  # larger than the volumes: every patch is the whole padded volume
    "network.norm=instance", "data.val_fraction=0.5", "training.optimizer=sgd", "training.learning_rate=0.1",
    "augmentation.elastic.prob=0", "augmentation.rotate_prob=0", "augmentation.scale_prob=0",
    "augmentation.flip_prob=0", "augmentation.intensity_prob=0",
]


def test_two_gloo_processes_match_one_process_on_the_doubled_batch(data, tmp_path):
    from medseg.train import main

    assert main(cli(data, tmp_path / "one", "--epochs", "2", sets=DDP_SETS + ["training.batch_size=4"])) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "medseg.train",
         *cli(data, tmp_path / "two", "--epochs", "2", sets=DDP_SETS + ["training.batch_size=2"])],
        env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 2 x 2 processes" in proc.stdout
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")
    diff = max(float((a["network"][k] - b["network"][k]).abs().max()) for k in a["network"] if a["network"][k].is_floating_point())
    assert diff < 1e-4
    la, lb = a["history"]["loss"], b["history"]["loss"]
    assert la == pytest.approx(lb, abs=1e-5) and abs(la[1] - la[0]) > 1e-2  # it learned, and learned the same
    for key, values in a["history"]["val"].items():  # validation metrics gathered from both ranks' cases
        assert values == pytest.approx(b["history"]["val"][key], abs=1e-4), key
    assert not list((tmp_path / "two").glob("**/.*.tmp"))  # one writer: no stray temp files
