"""``--resume RUN_DIR``: what a run folder must hold to be continued, and the config check.

A run folder records, besides ``config.yaml`` (the resolved, fitted config) and ``cases.json`` (the split),
``resume.json``: the config as requested (before preprocessing was fitted to the data), the MLflow run id
and the fold. ``--resume`` takes the config from there; a TASK or ``--set`` given with it must resolve to
the same config, or the run stops naming the keys that differ.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from medseg.config import TaskConfig, load_config
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text

STATE = "resume.json"


def _plain(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else cfg


def write_state(run_dir: Path, requested: Any, **extra: Any) -> None:
    """Record (or update) ``resume.json`` in ``run_dir``."""
    path = run_dir / STATE
    state = json.loads(path.read_text()) if path.is_file() else {}
    state.update({"requested_config": _plain(requested), **extra})
    atomic_write_text(path, json.dumps(state, indent=1))


def _damaged(path: Path, what: str) -> MedsegError:
    return MedsegError(f"{path}: {what}; the run folder is damaged: restore the file from a copy, or start a new run")


def read_json(path: Path, kind: type = dict) -> Any:
    """A run file's JSON (a ``kind``: dict or list), or one line naming the file when it is damaged."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _damaged(path, f"not readable JSON ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from err
    if not isinstance(value, kind):
        raise _damaged(path, f"holds a {type(value).__name__}, not a JSON {'object' if kind is dict else 'list'}")
    return value


def read_state(run_dir: Path) -> dict[str, Any]:
    state = read_json(run_dir / STATE)
    if not isinstance(state.get("requested_config"), dict):
        raise _damaged(run_dir / STATE, "no 'requested_config'")
    return state


def stored_config(path: Path) -> TaskConfig:
    """A run folder's ``config.yaml`` (the resolved, fitted config), validated."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise _damaged(path, f"not readable YAML ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from err
    if not isinstance(data, dict):
        raise _damaged(path, "not a YAML mapping of config sections")
    return TaskConfig.from_dict(data, source=str(path))


def _check_cases(path: Path) -> None:
    split = read_json(path)
    for part in ("train", "val"):
        cases = split.get(part)
        if not isinstance(cases, list) or not all(isinstance(c, dict) and "image" in c for c in cases):
            raise _damaged(path, f"no '{part}' list of cases with their 'image'")


def _finished(report: dict[str, Any], epochs: int) -> bool:
    """Whether a run's ``run.json`` marks it as done: only a run the time budget stopped short may go on."""
    return not (report.get("stop_reason") == "time budget" and int(report.get("epochs_run") or 0) < epochs)


def run_finished(run_dir: Path, epochs: int) -> bool:
    """Whether the run (or fold) in ``run_dir`` is done: its ``run.json`` is there and the time budget did not
    stop it before its last epoch."""
    path = run_dir / "run.json"
    return path.is_file() and _finished(read_json(path), epochs)


def check_not_finished(run_dir: Path, state: dict[str, Any], epochs: int) -> None:
    """Refuse ``--resume`` of a run that finished (``run.json``; for a cross-validation every fold's and
    ``cv_summary.json``): it would only evaluate and export the same model again, as a new bundle version."""
    again = (f"nothing to continue: to train longer start a new run (--output-dir NEW_DIR --epochs N); to export it"
             f" again: python -m medseg.export {run_dir}")
    if state.get("folds") == "all":
        k = read_json(run_dir / "folds.json").get("k")
        reports = [run_dir / f"fold_{i}" / "run.json" for i in range(k if isinstance(k, int) else 0)]
        if reports and (run_dir / "cv_summary.json").is_file() and all(run_finished(r.parent, epochs) for r in reports):
            raise MedsegError(f"--resume {run_dir}: this cross-validation has finished (every fold's run.json and"
                              f" cv_summary.json are there); nothing to continue: to train it again start a new run"
                              " (--output-dir NEW_DIR)")
        return
    path = run_dir / "run.json"
    if not path.is_file():
        return
    report = read_json(path)
    if _finished(report, epochs):
        how = f", {report['stop_reason']}" if report.get("stop_reason") else ""
        raise MedsegError(f"--resume {run_dir}: this run has finished (run.json: {report.get('epochs_run')}/{epochs}"
                          f" epochs{how}); {again}")


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            dotted = f"{prefix}{k}"
            if k not in a or k not in b:
                keys.append(dotted)
            else:
                keys += differing_keys(a[k], b[k], dotted + ".")
        return keys
    return [] if a == b else [prefix.rstrip(".") or "(root)"]


def check_run_dir(run_dir: Path) -> None:
    """Refuse a folder that is not a resumable medseg run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MedsegError(f"--resume {run_dir}: a file, not a run folder; pass the folder a run of python -m"
                          " medseg.train wrote (runs/<task>/<time stamp>, or its --output-dir)")
    if not run_dir.is_dir():
        raise MedsegError(f"--resume {run_dir}: no such folder")
    needed = ("config.yaml", STATE, "cases.json")
    if (run_dir / "folds.json").is_file() and (run_dir / STATE).is_file() and read_state(run_dir).get("folds") == "all":
        needed = (STATE, "folds.json")  # the parent of fold_0 ... fold_{k-1}
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise MedsegError(
            f"--resume {run_dir}: not a medseg run folder (no {', '.join(missing)}); pass the folder a run of"
            " python -m medseg.train wrote (runs/<task>/<time stamp>, or its --output-dir)"
        )
    # every file the resume reads, checked here: a damaged one is one line naming it, not a traceback
    read_state(run_dir)
    if "cases.json" in needed:
        _check_cases(run_dir / "cases.json")
        stored_config(run_dir / "config.yaml")
    else:
        read_json(run_dir / "folds.json")


def resume_config(run_dir: Path, task: str | None, overrides: list[str]) -> tuple[TaskConfig, TaskConfig]:
    """(the run's fitted config, its requested config) for ``--resume run_dir``.

    With ``task`` or ``overrides``, the config they resolve to must equal the recorded one.
    """
    check_run_dir(run_dir)
    state = read_state(run_dir)
    requested = state["requested_config"]
    source = str(run_dir / STATE)
    if task or overrides:
        if task:  # both as the schema writes them (a run folder older than a new key holds its default)
            requested = TaskConfig.from_dict(requested, source=source).to_dict()
            fresh = load_config(task, overrides).to_dict()
        else:  # --set on top of the recorded config: any key it changes (or adds) differs
            fresh = copy.deepcopy(requested)
            for item in overrides:
                key, _, text = item.partition("=")
                *parents, last = key.strip().split(".")
                node = fresh
                for part in parents:
                    node = node.setdefault(part, {}) if isinstance(node, dict) else {}
                if isinstance(node, dict):
                    node[last] = yaml.safe_load(text) if text else text
        differ = differing_keys(requested, fresh)
        if differ:
            shown = ", ".join(differ[:12]) + (f" (+{len(differ) - 12} more)" if len(differ) > 12 else "")
            raise MedsegError(
                f"--resume {run_dir}: the config differs from the run's in {shown}; resume without a task and"
                " --set (the run's own config is used), or start a new run"
            )
    as_requested = TaskConfig.from_dict(requested, source=source)
    check_not_finished(run_dir, state, as_requested.training.epochs)
    if state.get("folds") == "all":  # each fold keeps its own fitted config
        return as_requested, as_requested
    return stored_config(run_dir / "config.yaml"), as_requested
