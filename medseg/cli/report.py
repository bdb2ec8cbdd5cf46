"""``python -m medseg.report RUN_DIR``: redraw a finished run's figures and ``report.md`` (no MLflow needed).

Writes ``training_curves.png``, ``validation_overlays.png`` and ``report.md`` into the run directory
from its ``history.json``, ``cases.json``, ``metrics.json``, ``metrics_per_case.csv`` and predictions.
The body is :func:`medseg.workflows.report.run`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a training run directory (runs/<task>/<timestamp>)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: --help and argument errors answer without importing torch, MONAI and matplotlib
    from medseg.workflows import report

    for path in report.run(args.run_dir):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
