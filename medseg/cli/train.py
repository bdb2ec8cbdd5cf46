"""``python -m medseg.train TASK_OR_YAML``: train, evaluate in mm, track in MLflow, export a MONAI Bundle.

Example:
    python -m medseg.train liver --epochs 2 --set training.iterations_per_epoch=4
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medseg.cli import minutes
from medseg.config import available_tasks
from medseg.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.train", description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?",
                        help=f"task name in pipelines/ ({', '.join(available_tasks())}), a path to a YAML, or a dataset"
                        " folder / CSV (planned by medseg.plan, then trained)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run from its last checkpoint (same config, same MLflow run)")
    parser.add_argument("--fold", type=int, metavar="K", help="train fold K (0-based) of training.folds-fold CV")
    parser.add_argument("--folds", choices=["all"], help="train every fold of the cross-validation, then summarise")
    parser.add_argument("--max-minutes", type=minutes(allow_zero=True), default=0.0, metavar="M",
                        help="stop training after M minutes (after that epoch's validation), then evaluate and export; with"
                             " --folds all each fold has M minutes")
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument("--data-dir", type=Path, help="folder holding the datasets (default: ./data)")
    parser.add_argument("--output-dir", type=Path, help="run directory (default: runs/<task>/<timestamp>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set training.learning_rate=1e-3 (repeatable)")
    parser.add_argument("--no-export", action="store_true", help="skip writing the MONAI Bundle")
    parser.add_argument("--register", action="store_true",
                        help="register the bundle in the MLflow model registry under the task's name")
    parser.add_argument("--tracking-optional", action="store_true",
                        help="if the MLflow server is unreachable at the start, train without tracking")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out and list cases whose files are unreadable or off the image grid (data.skip_bad)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # deferred: --help and argument errors answer without importing torch, MONAI and MLflow
    from medseg.evaluation.metrics import format_table
    from medseg.workflows import train

    outcome = train.run(
        args.task, epochs=args.epochs, data_dir=args.data_dir, output_dir=args.output_dir, overrides=args.overrides,
        fold=args.fold, folds=args.folds, resume=args.resume, max_minutes=args.max_minutes,
        export=not args.no_export, register=args.register, tracking_optional=args.tracking_optional,
        skip_bad=args.skip_bad,
    )
    cv = cross_validation_table(outcome.summary)
    for one in outcome.folds or ([] if cv else [outcome]):
        if one.summary:
            print(format_table(one.summary, one.unit))
    if cv:  # --folds all, or --resume of its folder (which may have had no fold left to train)
        k = len(next(iter(next(iter(outcome.summary.values())).values())).get("folds", []))
        print(f"cross-validation, mean ± std over {k} folds:")
        print(format_table(cv, outcome.folds[0].unit if outcome.folds else outcome.unit))
    return 0


def cross_validation_table(summary: dict) -> dict:
    """A ``cv_summary.json``-shaped summary (``{class: {metric: {"mean", "std", "folds"}}}``) as the per-class
    means and stds :func:`medseg.evaluation.metrics.format_table` prints; ``{}`` for a single run's summary."""
    entries = [e for per_class in summary.values() for e in per_class.values()]
    if not entries or not all(isinstance(e, dict) and ("mean" in e or "total" in e) for e in entries):
        return {}
    return {cls: {**{m: e["mean"] for m, e in per_class.items() if "mean" in e},
                  **{f"{m}_std": e["std"] for m, e in per_class.items() if "mean" in e},
                  **{m: e["total"] for m, e in per_class.items() if "total" in e}}
            for cls, per_class in summary.items()}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)
