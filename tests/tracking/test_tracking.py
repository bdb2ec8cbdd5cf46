"""MLflow against a real tracking server on loopback: what a run logs, the registry, outages, bad stores."""

from __future__ import annotations

import json
import os
import re
import shutil
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

from tests.conftest import CHROMEDRIVER, CHROMIUM, FAST, needs_chromium, write_msd


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


def _args(work: Path, epochs: int = 2, extra: list[str] | None = None) -> list[str]:
    args = ["liver", "--epochs", str(epochs), "--data-dir", str(work / "data"), "--output-dir", str(work / "run")]
    return args + [a for o in FAST + ["data.dataset=Synthetic", f"bundle.dir={work / 'bundles'}"] + (extra or [])
                   for a in ("--set", o)]


def _train_tracked(work: Path, uri: str) -> dict:
    """One tiny training with --register against ``uri``, system metrics sampled every 0.3 s."""
    dataset = write_msd(work / "data" / "Synthetic")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.3")
    mp.chdir(work)
    try:
        assert train_main(_args(work) + ["--register"]) == 0
    finally:
        mp.undo()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("medseg")
    run = client.search_runs([exp.experiment_id])[0]
    return {"work": work, "uri": uri, "client": client, "experiment": exp, "run": run, "dataset": dataset,
            "run_dir": work / "run", "bundle": work / "bundles" / "liver_ct_segmentation"}


@pytest.fixture(scope="module")
def sqlite_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("sqlite")
    return _train_tracked(work, f"sqlite:///{work / 'mlflow.db'}")


@pytest.fixture(scope="module")
def server_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    proc, uri = start_server(work)
    try:
        yield _train_tracked(work, uri)
    finally:
        stop(proc)


@pytest.fixture(params=["sqlite", "server"])
def tracked(request):
    """The same checks on both stores: SQLite, and a real ``mlflow server`` on loopback."""
    return request.getfixturevalue(f"{request.param}_run")


@pytest.mark.slow
def test_run_params_metrics_and_artifacts(tracked):
    client, run = tracked["client"], tracked["run"]
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
            "validation_overlays.png", "augmentation_preview.png", "report.md"} <= top
    local = client.download_artifacts(run.info.run_id, "training_curves.png", str(tracked["work"] / "dl"))
    assert Image.open(local).size == (1500, 400)


@pytest.mark.slow
def test_dataset_inputs_carry_the_split_digest_and_a_profile(tracked):
    from medseg.tracking import split_digest

    cases = json.loads((tracked["run_dir"] / "cases.json").read_text())
    inputs = {i.tags[0].value: i.dataset for i in tracked["run"].inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    for context, part in (("training", "train"), ("validation", "val")):
        ds = inputs[context]
        files = [{k: v for k, v in c.items() if k != "case"} for c in cases[part]]
        assert ds.name == "Synthetic" and ds.digest == split_digest(files) and len(ds.digest) == 12
        assert json.loads(ds.source) == {"uri": str(tracked["dataset"].resolve())}
        profile = json.loads(ds.profile)
        assert profile["cases"] == len(files) and profile["median_spacing_mm"] == [1.5, 1.5, 2.0]
        assert profile["modality"] == "CT" and profile["labels"] == {"background": 0, "liver": 1, "tumour": 2}
        logged = f"{ds.name} {ds.digest} {ds.source} {ds.profile} {ds.schema}"
        assert not any(c["case"] in logged for c in cases["train"] + cases["val"])  # no case names anywhere
    assert tracked["run"].data.params["data.val_sha1"] == inputs["validation"].digest


@pytest.mark.slow
def test_logged_model_is_the_bundle_and_predicts_as_medseg_predict(tracked, tmp_path: Path):
    import mlflow
    import nibabel as nib
    import numpy as np
    import pandas as pd

    from medseg.predict import main as predict_main

    client, run = tracked["client"], tracked["run"]
    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == run.info.run_id and model.experiment_id == tracked["experiment"].experiment_id
    summary = json.loads((tracked["run_dir"] / "metrics.json").read_text())
    linked = {m.key: m for m in model.metrics}
    assert linked["final_liver_dice"].value == pytest.approx(summary["liver"]["dice"])
    assert linked["final_liver_dice"].dataset_name == "Synthetic"
    assert linked["final_liver_dice"].dataset_digest == run.data.params["data.val_sha1"]
    (version,) = client.search_model_versions("name='liver'")
    assert version.source == f"models:/{model.model_id}" and version.run_id == run.info.run_id
    assert float(version.tags["liver_dice"]) == pytest.approx(summary["liver"]["dice"], abs=1e-4)

    mlflow.set_tracking_uri(tracked["uri"])
    loaded = mlflow.pyfunc.load_model(f"models:/liver/{version.version}")
    sig = loaded.metadata.signature
    assert sig.inputs.input_names() == ["image"] and sig.outputs.input_names() == ["image", "mask"]
    assert [p.name for p in sig.params] == ["output_dir"]
    image = tracked["dataset"] / "imagesTr" / "case_002.nii.gz"
    out = loaded.predict(pd.DataFrame({"image": [str(image)]}), params={"output_dir": str(tmp_path / "pyfunc")})
    assert list(out["mask"]) == [str(tmp_path / "pyfunc" / "case_002_seg.nii.gz")]
    assert predict_main(["--bundle", str(tracked["bundle"]), "--input", str(image), "--output",
                         str(tmp_path / "predict")]) == 0
    a, b = nib.load(out["mask"][0]), nib.load(tmp_path / "predict" / "case_002_seg.nii.gz")
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
    assert np.asarray(a.dataobj).shape == nib.load(image).shape and np.asarray(a.dataobj).max() >= 1


@pytest.mark.slow
def test_description_source_and_training_view(tracked):
    tags, run = tracked["run"].data.tags, tracked["run"]
    summary = json.loads((tracked["run_dir"] / "metrics.json").read_text())
    note = tags["mlflow.note.content"]
    assert f"| liver | {summary['liver']['dice']:.3f} | {summary['liver']['hd95_mm']:.2f} |" in note
    assert "**Network**: `resunet`" in note and "2 training / 1 validation cases" in note
    assert "liver_ct_segmentation-v1" in note
    assert tags["mlflow.source.name"] == "medseg.train liver" and tags["mlflow.source.type"] == "LOCAL"
    commit = tags["mlflow.source.git.commit"]
    kind = subprocess.run(["git", "cat-file", "-t", commit], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert len(commit) == 40 and kind.stdout.strip() == "commit" and tags["medseg.git_commit"] == commit
    assert tracked["experiment"].tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_id


@pytest.mark.slow
def test_system_metrics_sampled_during_training(tracked):
    client, run_id = tracked["client"], tracked["run"].info.run_id
    cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    memory = client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
    assert len(cpu) >= 2 and sorted(m.step for m in cpu) == list(range(len(cpu)))
    assert all(0.0 <= m.value <= 100.0 for m in cpu) and all(m.value > 0 for m in memory)


def test_system_metrics_switch(tmp_path: Path, monkeypatch):
    from medseg.config import load_config
    from medseg.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    client = MlflowClient(tracking_uri=uri)
    for on in (True, False):
        cfg = load_config("liver", [f"tracking.system_metrics={str(on).lower()}"])
        tracker = Tracker(cfg, run_name=f"sm-{on}", run_dir=tmp_path)
        assert (tracker.monitor is not None) is on
        deadline = time.monotonic() + 30
        while on and time.monotonic() < deadline and len(
                client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")) < 2:
            time.sleep(0.2)
        tracker.finish()
        keys = client.get_run(tracker.run_id).data.metrics
        assert any(k.startswith("system/") for k in keys) is on


@pytest.mark.slow
@needs_chromium
def test_run_page_shows_the_dataset_in_chromium(server_run, tmp_path: Path):
    """The UI as a researcher opens it: the experiment's runs table (Dataset column) and the run's page."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        exp_id, run_id = server_run["experiment"].experiment_id, server_run["run"].info.run_id
        driver.get(f"{server_run['uri']}/#/experiments/{exp_id}/runs?workflowType=machine_learning")

        def dataset_cell(d):
            headers = [h.text for h in d.find_elements(By.CSS_SELECTOR, "[role=columnheader]")]
            cells = [c.text for c in d.find_elements(By.CSS_SELECTOR, "[role=gridcell], [role=cell]")]
            return "Dataset" in " ".join(headers) and any("Synthetic" in c for c in cells) and (headers, cells)

        headers, cells = WebDriverWait(driver, 60, poll_frequency=0.5).until(dataset_cell)
        driver.save_screenshot(str(tmp_path / "runs_table.png"))
        digest = server_run["run"].data.params["data.train_sha1"]
        assert any(f"Synthetic ({digest})" in c and "Training" in c for c in cells), cells  # the Dataset column
        driver.get(f"{server_run['uri']}/#/experiments/{exp_id}/runs/{run_id}?workflowType=machine_learning")
        WebDriverWait(driver, 60, poll_frequency=0.5).until(
            lambda d: "Synthetic" in d.find_element(By.TAG_NAME, "body").text)
        driver.save_screenshot(str(tmp_path / "run_page.png"))
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "liver-run" in body and "Synthetic" in body
    finally:
        driver.quit()


@pytest.mark.slow
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


@pytest.mark.slow
def test_unreachable_server_fails_fast_or_trains_without_tracking(tmp_path: Path, monkeypatch, capsys):
    write_msd(tmp_path / "data" / "Synthetic")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.chdir(tmp_path)
    assert train_main(_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is unreachable" in err[0] and "--tracking-optional" in err[0]
    # stopped before any training: no checkpoint, no history; one health check, no MLflow retries
    assert not (tmp_path / "run" / "history.json").exists() and not (tmp_path / "run" / "checkpoints").exists()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
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


def test_report_redraws_figures_without_mlflow(trained, tmp_path: Path, capsys):
    from medseg.report import main as report_main

    run = tmp_path / "run"  # a copy: the module's shared run folder stays as training left it
    shutil.copytree(trained["run"], run)
    for name in ("training_curves.png", "validation_overlays.png", "report.md"):
        (run / name).unlink()
    assert report_main([str(run)]) == 0
    assert Image.open(run / "training_curves.png").size == (1500, 400)
    overlay = Image.open(run / "validation_overlays.png")
    assert overlay.size == (960, 320)  # one validation case, three slices
    text = (run / "report.md").read_text()
    assert "| liver |" in text and "![training_curves](training_curves.png)" in text
    assert report_main([str(tmp_path)]) == 2  # not a run folder (no config.yaml)


def _fresh_env() -> dict[str, str]:
    """The environment of a user's shell: the default store (sqlite:///<cwd>/mlflow.db), no test overrides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


@pytest.mark.slow
def test_two_trainings_started_together_in_one_folder(tmp_path: Path):
    """Same working directory, same default SQLite store, same runs/ and bundles/: both finish, both tracked,
    each with its own run folder and bundle version."""
    import torch

    write_msd(tmp_path / "data" / "Synthetic")
    sets = [a for o in FAST + ["data.dataset=Synthetic", "training.iterations_per_epoch=2"] for a in ("--set", o)]
    cmd = [sys.executable, "-m", "medseg.train", "liver", "--epochs", "1", "--data-dir", "data", *sets]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_fresh_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out, out[-3000:]
    run_dirs = sorted((tmp_path / "runs" / "liver").iterdir())
    assert len(run_dirs) == 2
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("medseg").experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(f"liver-{d.name}" for d in run_dirs)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
        assert len(client.get_metric_history(run.info.run_id, "val_dice_liver")) == 1
        assert "final_liver_dice" in run.data.metrics and len(run.inputs.dataset_inputs) == 2
    bundles = tmp_path / "bundles"
    versions = sorted(p.name for p in bundles.iterdir() if not p.name.startswith("."))
    assert versions == ["liver_ct_segmentation", "liver_ct_segmentation-v1", "liver_ct_segmentation-v2"]
    assert (bundles / "liver_ct_segmentation").resolve().name == "liver_ct_segmentation-v2"
    owners = set()
    for run_dir in run_dirs:
        assert not (run_dir / "mlflow_unlogged.jsonl").exists()  # nothing lost to a locked database
        log = (run_dir / "train.log").read_text()
        assert set(re.findall(r"runs/liver/([\w-]+)", log)) == {run_dir.name}  # its own folder, never the other's
        report = json.loads((run_dir / "run.json").read_text())
        assert Path(report["bundle"]).name == "liver_ct_segmentation"
    for version in ("liver_ct_segmentation-v1", "liver_ct_segmentation-v2"):
        meta = json.loads((bundles / version / "configs" / "metadata.json").read_text())
        run_dir = tmp_path / meta["medseg_export"]["run"]
        owners.add(run_dir.name)
        assert meta["version"] == f"0.{version[-1]}.0" and meta["eval_metrics"]["liver_dice"] == pytest.approx(
            json.loads((run_dir / "metrics.json").read_text())["liver"]["dice"], abs=1e-4)
        a = torch.load(bundles / version / "models" / "model.pt", weights_only=True)
        b = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in b)  # each bundle holds its own run's weights, whole
    assert owners == {d.name for d in run_dirs}


def test_store_created_by_several_processes_at_once(tmp_path: Path):
    """MLflow creates a new SQLite store's schema without a lock: three processes opening it at the same instant
    each go through medseg's store lock and all get the one experiment."""
    code = ("import sys, time\n"
            "from medseg.tracking import retry_locked, store_lock\n"
            "from mlflow.tracking import MlflowClient\n"
            "uri, start = sys.argv[1], float(sys.argv[2])\n"
            "time.sleep(max(0.0, start - time.time()))\n"
            "with store_lock(uri):\n"
            "    c = MlflowClient(tracking_uri=uri)\n"
            "    e = c.get_experiment_by_name('x') or c.get_experiment(c.create_experiment('x'))\n"
            "print(retry_locked(lambda: c.create_run(e.experiment_id)).info.experiment_id)\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 15  # after every process has imported MLflow
    procs = [subprocess.Popen([sys.executable, "-c", code, uri, str(start)], env=_fresh_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    client = MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_experiment_by_name("x").experiment_id])) == 3
