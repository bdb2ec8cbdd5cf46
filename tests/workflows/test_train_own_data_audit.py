"""medseg.train on a user's own dataset (audit): ``--skip-bad`` reaches the plan of a DATASET_DIR run, and the run
folder's ``config.yaml`` and ``run.json`` are written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medseg.errors import MedsegError
from tests.conftest import FAST, write_msd


@pytest.mark.parametrize("skip_bad", [False, True])
def test_skip_bad_reaches_the_plan_of_a_dataset_folder(tmp_path, monkeypatch, skip_bad):
    from medseg.workflows import train

    root = write_msd(tmp_path / "own", n_cases=2)
    seen = {}

    def planned(dataset, budget_minutes=15.0, device="cpu", skip_bad=False):
        seen.update(dataset=Path(dataset), budget=budget_minutes, skip_bad=skip_bad)
        raise MedsegError("planned")  # the plan's arguments are what this test is about

    monkeypatch.setattr(train, "planned_yaml", planned)
    with pytest.raises(MedsegError, match="planned"):
        train.run(str(root), skip_bad=skip_bad, max_minutes=2, output_dir=tmp_path / "run")
    assert seen == {"dataset": root, "budget": 2.0, "skip_bad": skip_bad}


@pytest.mark.slow
def test_config_yaml_and_run_json_are_written_atomically(tmp_path, monkeypatch):
    from medseg.workflows import train

    write_msd(tmp_path / "data" / "Synthetic", n_cases=3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    written = []
    real = train.atomic_write_text

    def recording(path, text, *args, **kwargs):
        written.append(Path(path).name)
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(train, "atomic_write_text", recording)
    out = train.run("liver", epochs=1, data_dir=tmp_path / "data", output_dir=tmp_path / "run", export=False,
                    tracking_optional=True, overrides=[*FAST, "data.dataset=Synthetic"])
    assert "config.yaml" in written and "run.json" in written, written
    config = yaml.safe_load((out.run_dir / "config.yaml").read_text())
    assert config["task"] == "liver" and config["training"]["patch_size"] == [16, 16, 16]
    report = json.loads((out.run_dir / "run.json").read_text())
    assert report["epochs_run"] == 1 and report["task"] == "liver"
    assert not [p.name for p in out.run_dir.iterdir() if p.name.startswith(".")]  # no temporary left behind
