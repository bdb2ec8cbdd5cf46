"""A finished run's figures and ``report.md`` redrawn from its run directory, as a plain function (the body of
``python -m medseg.report``; no MLflow needed).

Example (a notebook):
    >>> from medseg.workflows import report
    >>> report.run("runs/liver/20260101-120000")
    [PosixPath('runs/liver/20260101-120000/training_curves.png'), ...]
"""

from __future__ import annotations

from pathlib import Path

import yaml

from medseg.config import TaskConfig
from medseg.errors import MedsegError
from medseg.data.images import check_can_write
from medseg.evaluation.reports import OUTPUTS, redraw


def run(run_dir: str | Path) -> list[Path]:
    """Write ``training_curves.png``, ``validation_overlays.png`` and ``report.md`` into ``run_dir`` from its
    ``history.json``, ``cases.json``, ``metrics.json``, ``metrics_per_case.csv`` and predictions; returns the
    paths written. A folder that is not a finished run raises :class:`medseg.errors.MedsegError` (one line)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise MedsegError(f"{run_dir}: not a medseg run directory (no config.yaml)")
    for needed in ("history.json", "metrics.json"):
        if not (run_dir / needed).is_file():
            raise MedsegError(f"{run_dir / needed}: missing; the run did not finish, so there is nothing to report")
    try:
        stored = yaml.safe_load(config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MedsegError(f"{config}: not readable as YAML ({reason}); the run's file is damaged: restore it from a"
                          " copy, or train again") from err
    cfg = TaskConfig.from_dict(stored, source=str(config))
    for name in OUTPUTS:  # before any figure is redrawn: a folder in a file's place would stop it half-way
        if (run_dir / name).exists() and not (run_dir / name).is_file():
            raise MedsegError(f"{run_dir / name}: not a file, where the report writes its {name}; move it out of the"
                              " run folder and run again")
    check_can_write(run_dir, str(run_dir))
    return redraw(run_dir, cfg)
