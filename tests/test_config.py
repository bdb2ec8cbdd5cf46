from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medseg.config import DEFAULTS, available_tasks, flatten, load_config
from medseg.errors import MedsegError

from .conftest import REPO


def test_liver_task_resolves_with_defaults_and_yaml_values():
    cfg = load_config("liver")
    assert cfg["task"] == "liver"
    assert cfg["data"]["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    assert cfg["evaluation"]["classes"] == {"liver": [1, 2], "tumour": [2]}
    assert cfg["preprocessing"]["window"] == {"level": 60.0, "width": 400.0}
    assert cfg["bundle"]["name"] == "liver_ct_segmentation"
    # a value the YAML does not name comes from DEFAULTS
    assert cfg["training"]["seed"] == DEFAULTS["training"]["seed"]
    assert "liver" in available_tasks()


def test_overrides_are_typed_and_applied():
    cfg = load_config("liver", ["training.epochs=3", "training.learning_rate=1e-3", "network.channels=[8,16,32]",
                                "network.strides=[2,2]", "training.patch_size=[32,32,32]"])
    assert cfg["training"]["epochs"] == 3
    assert cfg["training"]["learning_rate"] == pytest.approx(1e-3)
    assert cfg["network"]["channels"] == [8, 16, 32]
    assert flatten(cfg)["training.epochs"] == "3"


def test_a_yaml_path_works_and_unknown_keys_are_named(tmp_path: Path):
    good = tmp_path / "mine.yaml"
    good.write_text("task: mine\ndata: {labels: {background: 0, organ: 1}}\n")
    assert load_config(str(good))["data"]["labels"] == {"background": 0, "organ": 1}
    bad = tmp_path / "typo.yaml"
    bad.write_text("task: mine\ntraining: {epoch: 3}\n")
    with pytest.raises(MedsegError, match=r"typo\.yaml: unknown key 'training\.epoch'"):
        load_config(str(bad))


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=many", r"'training\.epochs' must be int"),
        ("training.epochs=0", r"'training\.epochs' must be at least 1"),
        ("network.name=vnet", r"'network\.name' is 'vnet'; choose one of attention_unet, .*unet"),
        ("training.patch_size=[30,32,32]", r"must be multiples of 16"),
        ("preprocessing.spacing=[1,1]", r"needs 3 values"),
        ("evaluation.classes={liver: [7]}", r"evaluation\.classes\.liver"),
        ("nosuch.key=1", r"unknown key 'nosuch'"),
        ("training.epochs", r"expected key=value"),
    ],
)
def test_invalid_values_are_refused_with_the_key(override: str, message: str):
    with pytest.raises(MedsegError, match=message):
        load_config("liver", [override])


def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("task: x\ntraining: [unclosed\n")
    with pytest.raises(MedsegError, match=r"broken\.yaml: line \d+ is not valid YAML"):
        load_config(str(bad))


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg.train", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_cli_unknown_task_is_one_line_exit_2():
    proc = _cli("kidney")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "medseg: error: unknown task 'kidney': available tasks are " + ", ".join(available_tasks())
        + "; or pass a path to a pipeline YAML"
    ]
    assert "Traceback" not in proc.stderr


def test_cli_invalid_key_and_debug_traceback():
    proc = _cli("liver", "--set", "training.epochz=2")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "unknown key 'training.epochz'" in proc.stderr
    debug = _cli("liver", "--set", "training.epochz=2", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_missing_data_dir(tmp_path: Path):
    proc = _cli("liver", "--data-dir", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"medseg: error: --data-dir {tmp_path / 'nowhere'}: no such folder"
    assert not (tmp_path / "run").exists()
