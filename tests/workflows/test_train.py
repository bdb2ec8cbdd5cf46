"""End to end: a short training run yields a checkpoint, metrics in mm, an MLflow run and a verified bundle."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient


from tests.conftest import FAST, synthetic_case


def test_run_directory_holds_config_log_checkpoint_and_metrics(trained):
    run = trained["run"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["training"]["epochs"] == 2 and cfg["network"]["channels"] == [4, 8, 16]
    log = (run / "train.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert any(k.endswith("weight") for k in state) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert (run / "checkpoints" / "last.pt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"liver", "tumour"}
    for entry in metrics.values():
        for key in ("dice", "hd95_mm", "assd_mm"):
            assert math.isfinite(entry[key])
        assert entry["cases"] == 1.0
    # the Dice of the written prediction against the reference label, by hand (liver = labels 1 and 2)
    (val_case,) = json.loads((run / "cases.json").read_text())["val"]
    pred = np.asarray(nib.load(run / "predictions" / f"{val_case['case']}.nii.gz").dataobj)
    ref = np.asarray(nib.load(val_case["label"]).dataobj)
    for cls, values in (("liver", [1, 2]), ("tumour", [2])):
        a, b = np.isin(pred, values), np.isin(ref, values)
        assert metrics[cls]["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6), cls
    rows = (run / "metrics_per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case,class,dice,iou,accuracy,precision,recall,hd_mm,hd95_mm,assd_mm") and len(rows) == 3


def test_prediction_is_written_in_the_label_geometry(trained):
    pred_files = sorted((trained["run"] / "predictions").glob("*.nii.gz"))
    assert len(pred_files) == 1
    label = nib.load(trained["dataset"] / "labelsTr" / pred_files[0].name)
    pred = nib.load(pred_files[0])
    assert pred.shape == label.shape
    np.testing.assert_allclose(pred.affine, label.affine, atol=1e-5)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_mlflow_run_has_params_metrics_and_artifacts(trained):
    client = MlflowClient(tracking_uri=trained["uri"])
    exp = client.get_experiment_by_name("medseg")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "liver-run" and run.info.status == "FINISHED"
    assert run.data.params["training.epochs"] == "2" and run.data.params["network.name"] == "resunet"
    assert run.data.tags["task"] == "liver"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 4  # 2 epochs x 2 iterations
    assert len(client.get_metric_history(run.info.run_id, "val_mean_dice")) == 2
    assert "final_liver_dice" in run.data.metrics and "final_tumour_hd95_mm" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "metrics_per_case.csv", "best.pt", "train.log"} <= artifacts


def stock_monai(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a process where importing medseg fails."""
    blocker = tmp_path / "blocker" / "medseg"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('the bundle must run without medseg')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)


def test_medseg_is_really_blocked(tmp_path: Path):
    blocker = tmp_path / "blocker" / "medseg"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked')\n")
    proc = subprocess.run([sys.executable, "-c", "import medseg"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(blocker.parent)})
    assert proc.returncode != 0 and "blocked" in proc.stderr


def test_torchscript_matches_the_network(trained):
    from medseg.networks import build_network

    bundle = trained["bundle"]
    cfg = json.loads((bundle / "configs" / "medseg_task.json").read_text())
    net = build_network(cfg["network"], 1, 3)
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"))
    x = torch.rand(1, 1, 16, 16, 16)
    best = build_network(cfg["network"], 1, 3)  # the run's best checkpoint is what the bundle holds
    best.load_state_dict(torch.load(trained["run"] / "checkpoints" / "best.pt", weights_only=True))
    best.eval()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        torch.testing.assert_close(best(x), net(x), rtol=0, atol=0)
    assert cfg["task"] == "liver" and cfg["training"]["patch_size"] == [16, 16, 16]


def test_train_json_retrains_on_stock_monai(trained, tmp_path: Path):
    bundle = trained["bundle"]
    proc = stock_monai(tmp_path, "run", "--config_file", str(bundle / "configs" / "train.json"),
                       "--bundle_root", str(tmp_path / "retrain"), "--dataset_dir", str(trained["dataset"]),
                       "--epochs", "1", "--iterations_per_epoch", "2", "--val_every", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    weights = tmp_path / "train_output" / "models" / "model.pt"  # where the command ran, never in the bundle
    assert not (tmp_path / "retrain" / "train_output").exists()
    state = torch.load(weights, weights_only=True)
    reference = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert state.keys() == reference.keys()


def test_train_json_carries_mixed_precision_and_accumulation():
    from monai.bundle import ConfigParser

    from medseg.bundle.export import train_config
    from medseg.config import load_config

    plain = train_config(load_config("liver"))["train"]["trainer"]
    assert plain["accumulation_steps"] == 1 and "amp" not in plain
    cfg = load_config("liver", ["training.amp=bf16", "training.accumulation_steps=2"])
    trainer = train_config(cfg)["train"]["trainer"]
    assert trainer["accumulation_steps"] == 2 and trainer["amp"] is True
    parser = ConfigParser({"imports": ["$import torch"], "kwargs": trainer["amp_kwargs"]})
    assert parser.get_parsed_content("kwargs") == {"dtype": torch.bfloat16}


def test_export_command_rewrites_the_bundle(trained, tmp_path: Path):
    from medseg.export import main as export_main

    out = tmp_path / "again" / "liver_bundle"
    assert export_main([str(trained["run"]), "--out", str(out)]) == 0
    assert json.loads((out / "configs" / "metadata.json").read_text())["name"] == "liver_bundle"
    a = torch.load(out / "models" / "model.pt", weights_only=True)
    b = torch.load(trained["run"] / "checkpoints" / "best.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert export_main([str(tmp_path / "nothing")]) == 2


def test_bundle_verifies_and_runs_on_stock_monai(trained, tmp_path: Path):
    from medseg.bundle import verify_bundle

    bundle = trained["bundle"]
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "LICENSE"):
        assert (bundle / rel).is_file(), rel
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert set(meta["eval_metrics"]) >= {"liver_dice", "liver_hd95_mm", "tumour_assd_mm"}
    verify_bundle(bundle)
    assert "| liver |" in (bundle / "docs" / "README.md").read_text()

    images = tmp_path / "images"
    images.mkdir()
    image, _, affine = synthetic_case(shape=(30, 34, 26), spacing=(1.2, 1.4, 2.5), seed=7)
    nib.save(nib.Nifti1Image(image, affine), images / "scan.nii.gz")
    out = tmp_path / "out"
    proc = stock_monai(tmp_path, "run", "--config_file", str(bundle / "configs" / "inference.json"),
                       "--bundle_root", str(bundle), "--dataset_dir", str(images), "--output_dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(out.rglob("*.nii.gz"))
    assert [p.name for p in written] == ["scan_seg.nii.gz"]
    seg = nib.load(written[0])
    assert seg.shape[:3] == image.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-4)


def test_train_workflow_runs_as_a_python_function(msd_dataset, tmp_path, monkeypatch):
    from medseg.workflows import train

    monkeypatch.chdir(tmp_path)
    # no evaluation.classes in the YAML: one reported class per foreground label (liver 1, tumour 2)
    sets = FAST + ["data.dataset=Synthetic", "bundle.enabled=false", "tracking.enabled=false",
                   "evaluation.classes={}", "evaluation.keep_largest_component=[]"]
    outcome = train.run("liver", epochs=1, data_dir=msd_dataset.parent, output_dir=tmp_path / "nb", overrides=sets)
    assert outcome.run_dir == tmp_path / "nb" and outcome.folds == []
    assert outcome.summary == json.loads((tmp_path / "nb" / "metrics.json").read_text())
    assert set(outcome.summary) == {"liver", "tumour"}
    assert outcome.report == json.loads((tmp_path / "nb" / "run.json").read_text())
    assert outcome.report["epochs_run"] == 1 and outcome.report["bundle"] is None
    cases = json.loads((tmp_path / "nb" / "cases.json").read_text())
    assert [c["case"] for c in cases["val"]] == ["case_000"] and [c["case"] for c in cases["train"]] == [
        "case_001", "case_002"]  # data.val_fraction 0.34 of 3 cases, training.seed 0
    assert cases["val"][0]["image"] == str(msd_dataset / "imagesTr" / "case_000.nii.gz")
