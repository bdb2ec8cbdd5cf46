"""MLflow against a real tracking server on loopback: what a run logs, the registry, outages, bad stores."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from medseg.train import main as train_main

from .conftest import FAST, write_msd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    stop(proc, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start within 90 s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the server's whole process group (uvicorn workers included)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path):
    proc, uri = start_server(tmp_path)
    yield uri
    stop(proc)


def _args(work: Path, epochs: int = 2, extra: list[str] | None = None) -> list[str]:
    args = ["liver", "--epochs", str(epochs), "--data-dir", str(work / "data"), "--output-dir", str(work / "run")]
    return args + [a for o in FAST + ["data.dataset=Synthetic", f"bundle.dir={work / 'bundles'}"] + (extra or [])
                   for a in ("--set", o)]


def test_training_against_a_real_server_logs_everything(server, tmp_path: Path, monkeypatch):
    write_msd(tmp_path / "data" / "Synthetic")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.chdir(tmp_path)
    assert train_main(_args(tmp_path) + ["--register"]) == 0
    client = MlflowClient(tracking_uri=server)
    run = client.search_runs([client.get_experiment_by_name("medseg").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "liver-run"
    params, tags = run.data.params, run.data.tags
    assert params["training.epochs"] == "2" and params["data.n_train"] == "2" and params["data.n_val"] == "1"
    assert "data.median_spacing_mm" in params and tags["network"] == "resunet" and tags["fold"] == "none"
    assert tags["monai.version"] and tags["torch.version"] and tags["medseg.git_commit"]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4
    assert len(client.get_metric_history(run.info.run_id, "lr_group_0")) == 4
    assert len(client.get_metric_history(run.info.run_id, "val_dice_liver")) == 2
    assert len(client.get_metric_history(run.info.run_id, "val_iou_tumour")) == 2
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "metrics_per_case.csv", "history.json", "training_curves.png",
            "validation_overlays.png", "augmentation_preview.png", "report.md", "bundle"} <= top
    local = client.download_artifacts(run.info.run_id, "training_curves.png", str(tmp_path))
    assert Image.open(local).size == (1500, 400)
    bundle = {a.path for a in client.list_artifacts(run.info.run_id, "bundle/configs")}
    assert "bundle/configs/metadata.json" in bundle
    versions = client.search_model_versions("name='liver'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id and versions[0].source.endswith("/bundle")
    assert float(versions[0].tags["liver_dice"]) == pytest.approx(json.loads((tmp_path / "run" / "metrics.json")
                                                                             .read_text())["liver"]["dice"], abs=1e-4)


def test_server_stopped_mid_run(tmp_path: Path):
    proc, uri = start_server(tmp_path)
    write_msd(tmp_path / "data" / "Synthetic")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "medseg.train", *_args(tmp_path, epochs=25, extra=["training.iterations_per_epoch=4"])]
    train = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    history = tmp_path / "run" / "history.json"
    deadline = time.monotonic() + 120
    while not history.exists() and time.monotonic() < deadline and train.poll() is None:
        time.sleep(0.2)
    stop(proc, signal.SIGKILL)  # the server and its workers go away after the first epoch
    out, _ = train.communicate(timeout=600)
    assert train.returncode == 0, out[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "metrics.json").is_file()
    assert len(json.loads(history.read_text())["epoch"]) == 25
    unlogged = [json.loads(line) for line in (run / "mlflow_unlogged.jsonl").read_text().splitlines()]
    assert unlogged and any(e["what"] == "metrics" for e in unlogged)
    assert "MLflow call(s) failed and were not logged" in out


def test_unreachable_server_fails_fast_or_trains_without_tracking(tmp_path: Path, monkeypatch, capsys):
    write_msd(tmp_path / "data" / "Synthetic")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    assert train_main(_args(tmp_path)) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unreachable" in err[0] and "--tracking-optional" in err[0]
    assert train_main(_args(tmp_path) + ["--tracking-optional"]) == 0
    assert "training WITHOUT tracking" in (tmp_path / "run" / "train.log").read_text() + capsys.readouterr().out


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "ftp://example/x", "just-a-folder"])
def test_invalid_tracking_uri(tmp_path: Path, monkeypatch, capsys, uri: str):
    write_msd(tmp_path / "data" / "Synthetic")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert train_main(_args(tmp_path)) == 2
    assert "is not a usable tracking store" in capsys.readouterr().err


def test_deleted_experiment(tmp_path: Path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.create_experiment("medseg"))
    write_msd(tmp_path / "data" / "Synthetic")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert train_main(_args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "experiment 'medseg' is deleted" in err and "tracking.experiment" in err


def test_report_redraws_figures_without_mlflow(trained, capsys):
    from medseg.report import main as report_main

    run = trained["run"]
    for name in ("training_curves.png", "validation_overlays.png", "report.md"):
        (run / name).unlink()
    assert report_main([str(run)]) == 0
    assert Image.open(run / "training_curves.png").size == (1500, 400)
    overlay = Image.open(run / "validation_overlays.png")
    assert overlay.size == (960, 320)  # one validation case, three slices
    text = (run / "report.md").read_text()
    assert "| liver |" in text and "![training_curves](training_curves.png)" in text
    assert report_main([str(run.parent)]) == 2
