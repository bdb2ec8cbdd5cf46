"""``python -m medseg.data check DATASET_OR_TASK``: dataset integrity report; exit 1 when a case has a problem.

Checks every case: files readable, image channels and label on the same grid (both geometries shown
otherwise), label values the task declares, empty labels, NaN/inf in floating-point images; then sums
up dimensions, orientations, spacing, shapes and label values. Geometry is read from headers. The body
is :mod:`medseg.workflows.check`.

Example:
    python -m medseg.data check liver --data-dir data
    python -m medseg.data check data/Task03_Liver
    python -m medseg.data check my_pngs/ --layout folders --json report.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="integrity report of a dataset")
    check.add_argument("target", help="a task name or pipeline YAML, or a dataset folder / CSV file")
    check.add_argument("--data-dir", type=Path, help="where task datasets live (default ./data)")
    check.add_argument("--layout", choices=("msd", "nnunet", "csv", "folders"),
                       help="layout of a dataset path (default: detected)")
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a task config key (with a task target)")
    check.add_argument("--json", type=Path, help="also write the report as JSON here")
    check.add_argument("--skip-bad", action="store_true",
                       help="accepted for symmetry with training: bad cases are always listed, never stop the check")
    check.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def check(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: --help and argument errors answer without importing MONAI and the image readers
    from medseg.workflows import check as workflow

    dataset = workflow.open_dataset(args.target, data_dir=args.data_dir, layout=args.layout, overrides=args.overrides)
    total = len(dataset.cases)
    print(f"checking {total} case(s) in {dataset.root} (layout {dataset.layout})", flush=True)
    # progress: a bar on a terminal (stderr), else a line per case, as medseg.evaluate does; every label is read
    # in full, which takes minutes on a full-size CT dataset
    with tqdm(total=total, desc="checking", unit="case", file=sys.stderr, disable=None, leave=False) as bar:
        done = 0

        def show(result) -> None:
            nonlocal done
            done += 1
            if bar.disable:
                state = f"{len(result.problems)} problem(s)" if result.problems else "ok"
                print(f"[{done}/{total}] {result.case}: {state}", flush=True)
            for problem in result.problems:
                bar.write(f"BAD {result.case}: {problem}", file=sys.stdout)
            bar.update()

        report = workflow.run(dataset, on_case=show)
    print("\n".join(report.summary))
    bad = report.bad
    print(f"{'FAILED' if bad else 'OK'}: {len(bad)} of {len(report.results)} case(s) with problems"
          + (f" ({', '.join(bad[:20])}{' ...' if len(bad) > 20 else ''})" if bad else ""))
    if args.json:
        workflow.write_json(report, args.json)
    return 1 if bad else 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    return run_cli(check, argv)
