"""``python -m medseg.report RUN_DIR``: redraw a finished run's figures and ``report.md`` (no MLflow needed).

Writes ``training_curves.png``, ``validation_overlays.png`` and ``report.md`` into the run directory
from its ``history.json``, ``cases.json``, ``metrics.json``, ``metrics_per_case.csv`` and predictions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import yaml

from medseg.errors import MedsegError, run_cli


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medseg.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a training run directory (runs/<task>/<timestamp>)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    config = args.run_dir / "config.yaml"
    if not config.is_file():
        raise MedsegError(f"{args.run_dir}: not a medseg run directory (no config.yaml)")
    for needed in ("history.json", "metrics.json"):
        if not (args.run_dir / needed).is_file():
            raise MedsegError(f"{args.run_dir / needed}: missing; the run did not finish, so there is nothing to report")
    from medseg.reporting import redraw

    for path in redraw(args.run_dir, yaml.safe_load(config.read_text())):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
