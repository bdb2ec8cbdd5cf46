"""``python -m medseg.train TASK_OR_YAML``: train, evaluate in mm, track in MLflow, export a MONAI Bundle.

Example:
    python -m medseg.train liver --epochs 2 --set training.iterations_per_epoch=4
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from medseg.config import available_tasks, load_config
from medseg.errors import MedsegError, run_cli

logger = logging.getLogger("medseg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.train", description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?",
                        help=f"task name in pipelines/ ({', '.join(available_tasks())}) or a path to a YAML")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run from its last checkpoint (same config, same MLflow run)")
    parser.add_argument("--fold", type=int, metavar="K", help="train fold K (0-based) of training.folds-fold CV")
    parser.add_argument("--folds", choices=["all"], help="train every fold of the cross-validation, then summarise")
    parser.add_argument("--max-minutes", type=float, default=0.0, metavar="M",
                        help="stop training after M minutes (after that epoch's validation), then evaluate and export")
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


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record comes, so a replaced or captured stdout that has
    since been closed (a notebook cell, a test) is never written to."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(run_dir: Path | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("medseg")
    root.setLevel(logging.INFO)
    root.propagate = False
    if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
        console = _ConsoleHandler()
        console.setFormatter(fmt)
        root.addHandler(console)
    if run_dir is not None:
        for old in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(old)
            old.close()
        file_handler = logging.FileHandler(run_dir / "train.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def locate_dataset(cfg: dict, data_dir: Path, explicit: bool) -> Path:
    """The dataset folder, or the built-in sample when the task allows it and no dataset is there."""
    from medseg.data import prepare_lits_sample

    if explicit and not data_dir.is_dir():
        raise MedsegError(f"--data-dir {data_dir}: no such folder")
    root = Path(cfg["data"]["dataset"])
    root = root if root.is_absolute() else data_dir / root
    if cfg["data"]["dataset"] and root.exists():
        return root
    if cfg["data"]["sample"] == "lits117":
        sample = prepare_lits_sample(data_dir)
        where = f"no dataset at {root}" if cfg["data"]["dataset"] else "no dataset configured"
        logger.info("%s: using the built-in LiTS sample (case 117, 128^3 CT crop) at %s", where, sample)
        return sample
    raise MedsegError(f"dataset folder {root} does not exist: put the dataset there or pass --data-dir")


def write_cases(run_dir: Path, train_files: list[dict], val_files: list[dict]) -> None:
    """The split, stored with the run (``cases.json``) so it can be reproduced and reported on."""
    from medseg.engine.inference import case_id
    from medseg.fileio import atomic_write_text

    split = {part: [{"case": case_id(c), **c} for c in files] for part, files in (("train", train_files), ("val", val_files))}
    atomic_write_text(run_dir / "cases.json", json.dumps(split, indent=1))


def augmentation_preview_png(cfg: dict, cases: list[dict], run_dir: Path) -> Path:
    """The grid ``python -m medseg.preview`` draws: training patches before and after augmentation."""
    from medseg.transforms.preview import write_preview

    return write_preview(cfg, cases, run_dir / "augmentation_preview.png", n=8, seed=cfg["training"]["seed"])


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    if args.fold is not None and args.folds:
        raise MedsegError("--fold and --folds: give one of them")
    if args.resume is not None:
        from medseg.engine.resume import resume_config

        cfg, requested = resume_config(args.resume, args.task, overrides)
    elif not args.task:
        raise MedsegError("a task is needed: python -m medseg.train TASK_OR_YAML (or --resume RUN_DIR)")
    else:
        cfg = load_config(args.task, overrides)
        requested = cfg
    setup_logging()
    from medseg.engine import distributed

    ctx = distributed.setup(cfg["training"]["device"])
    if not ctx.main:
        logging.getLogger("medseg").setLevel(logging.WARNING)  # one log: rank 0's
    try:
        return _run_task(args, cfg, requested, ctx)
    finally:
        distributed.teardown()


def _run_task(args: argparse.Namespace, cfg: dict, requested: dict, ctx: Any) -> int:
    """One run, one fold (``--fold``), every fold (``--folds all``), or the continuation of any of them."""
    from medseg.data.layouts import all_cases, load_dataset
    from medseg.engine import distributed
    from medseg.engine.folds import fold_split, make_folds, summarise_folds

    task = cfg["task"]
    k = cfg["training"]["folds"]
    if args.resume is not None:
        from medseg.engine.resume import read_state

        state = read_state(args.resume)
        if args.data_dir is None and state.get("data_dir"):  # the run's own data folder
            args.data_dir = Path(state["data_dir"])
    data_dir = args.data_dir or Path("data")
    if args.resume is not None:
        if state.get("folds") == "all":  # the parent of fold_0 ... fold_{k-1}: finish the folds not finished
            root = locate_dataset(cfg, data_dir, explicit=args.data_dir is not None)
            cases = all_cases(cfg, root)
            parts = make_folds(cases, k, cfg["training"]["seed"], args.resume)
            for fold in range(k):
                fold_dir = args.resume / f"fold_{fold}"
                if (fold_dir / "run.json").is_file():
                    continue
                train_files, val_files = fold_split(cases, parts, fold)
                started = (fold_dir / "checkpoints" / "last.pt").is_file()
                fold_cfg = yaml.safe_load((fold_dir / "config.yaml").read_text()) if started else cfg
                _train_run(args, fold_cfg, requested, train_files, val_files, fold_dir, ctx, resume=started, fold=fold)
            return _fold_summary(args.resume, k, ctx, summarise_folds)
        split = json.loads((args.resume / "cases.json").read_text())
        train_files, val_files = ([{k2: _under(v, state.get("cwd")) for k2, v in c.items() if k2 != "case"}
                                   for c in split[p]] for p in ("train", "val"))
        return _train_run(args, cfg, requested, train_files, val_files, args.resume, ctx,
                          resume=(args.resume / "checkpoints" / "last.pt").is_file(), fold=state.get("fold"))

    root = locate_dataset(cfg, data_dir, explicit=args.data_dir is not None)
    run_dir = args.output_dir or Path("runs") / task / time.strftime("%Y%m%d-%H%M%S")
    run_dir = distributed.broadcast(run_dir, ctx)  # the time stamp of rank 0
    if args.fold is None and not args.folds:
        train_files, val_files = load_dataset(cfg, root, cfg["training"]["seed"])
        return _train_run(args, cfg, requested, train_files, val_files, run_dir, ctx)
    cases = all_cases(cfg, root)
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(ctx)
    parts = make_folds(cases, k, cfg["training"]["seed"], run_dir) if ctx.main else None
    parts = distributed.broadcast(parts, ctx)
    if args.fold is not None:
        train_files, val_files = fold_split(cases, parts, args.fold)
        return _train_run(args, cfg, requested, train_files, val_files, run_dir, ctx, fold=args.fold)
    if ctx.main:
        from medseg.engine.resume import write_state

        write_state(run_dir, requested, folds="all", data_dir=str(data_dir.resolve()), cwd=str(Path.cwd()))
    for fold in range(k):
        train_files, val_files = fold_split(cases, parts, fold)
        _train_run(args, cfg, requested, train_files, val_files, run_dir / f"fold_{fold}", ctx, fold=fold)
    return _fold_summary(run_dir, k, ctx, summarise_folds)


def _under(path: Any, cwd: str | None) -> Any:
    """A case path recorded relative to the working directory of the run's start, made absolute."""
    if isinstance(path, list):
        return [_under(p, cwd) for p in path]
    if isinstance(path, str) and cwd and not Path(path).is_absolute():
        return str(Path(cwd) / path)
    return path


def _fold_summary(parent: Path, k: int, ctx: Any, summarise_folds: Any) -> int:
    if ctx.main:
        summary = summarise_folds(parent, k)
        for cls, entry in summary.items():
            logger.info("cross-validation %s: Dice %.3f ± %.3f over %d folds", cls, entry["dice"]["mean"],
                        entry["dice"]["std"], k)
        logger.info("cross-validation summary in %s", parent / "cv_summary.md")
    return 0


def _train_run(
    args: argparse.Namespace,
    cfg: dict,
    requested: dict,
    train_files: list[dict],
    val_files: list[dict],
    run_dir: Path,
    ctx: Any,
    resume: bool = False,
    fold: int | None = None,
) -> int:
    """Train (or continue), evaluate, report and export one run in ``run_dir``."""
    from medseg.engine import distributed, evaluate_cases, train
    from medseg.engine.resume import read_state, write_state
    from medseg.evaluation import summarise, write_reports
    from medseg.evaluation.metrics import format_table

    task = cfg["task"]
    started = time.monotonic()
    if not ctx.main:  # the other ranks train their share with rank 0's fitted config; rank 0 writes everything
        cfg = distributed.broadcast(None, ctx)
        train(cfg, run_dir, train_files, val_files, None, resume=resume, max_minutes=args.max_minutes)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    if resume:
        logger.info("resuming run %s", run_dir)
    else:
        from medseg.transforms import fit_preprocessing

        cfg = fit_preprocessing(cfg, train_files)  # spacing: auto, histogram landmarks: learned on the training set
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        logger.info("run directory %s", run_dir)
        logger.info("dataset: %d training, %d validation cases%s", len(train_files), len(val_files),
                    "" if fold is None else f" (fold {fold})")
        write_cases(run_dir, train_files, val_files)
        write_state(run_dir, requested, fold=fold, data_dir=str((args.data_dir or Path("data")).resolve()),
                    cwd=str(Path.cwd()))
    distributed.broadcast(cfg, ctx)

    tracker = None
    if cfg["tracking"]["enabled"]:
        from medseg.tracking import Tracker, dataset_fingerprint

        run_name = f"{task}-{run_dir.name}" if fold is None else f"{task}-{run_dir.resolve().parent.name}-{run_dir.name}"
        # --resume goes on in the run's MLflow run (also when it was killed before its first checkpoint)
        run_id = read_state(run_dir).get("mlflow_run_id") if args.resume is not None else None
        tracker = Tracker(cfg, run_name=run_name, run_dir=run_dir, optional=args.tracking_optional, run_id=run_id)
        if tracker.active:
            write_state(run_dir, requested, mlflow_run_id=tracker.run_id)
            if fold is not None:
                tracker.guard("tag", lambda: tracker.client.set_tag(tracker.run_id, "fold", str(fold)))
        if not resume:
            tracker.log_params(dataset_fingerprint(train_files, val_files))
    status = "FAILED"
    try:
        if not resume:
            preview = augmentation_preview_png(cfg, train_files, run_dir)
            if tracker is not None:
                tracker.log_artifact(preview)
        result = train(cfg, run_dir, train_files, val_files, tracker, resume=resume, max_minutes=args.max_minutes)
        if result.stop_reason:
            logger.info("training stopped at epoch %d/%d by the %s", result.epochs_run, cfg["training"]["epochs"],
                        result.stop_reason)
        logger.info(
            "training done in %.0fs; best validation mean Dice %.3f at epoch %d",
            result.seconds, result.best_val_dice, result.best_epoch,
        )
        logger.info("final evaluation on the original grid of %d validation case(s)", len(val_files))
        per_case = evaluate_cases(cfg, result.network, val_files, result.device, run_dir / "predictions")
        summary = summarise(per_case)
        json_path, csv_path = write_reports(per_case, summary, run_dir)
        print(format_table(summary))
        bundle_dir = None
        if cfg["bundle"]["enabled"] and not args.no_export:
            from medseg.bundle import export_bundle

            bundle_dir = export_bundle(cfg, run_dir, result.network, summary, time.monotonic() - started)
            logger.info("MONAI Bundle written to %s", bundle_dir)
        elapsed = time.monotonic() - started
        (run_dir / "run.json").write_text(json.dumps(
            {"task": task, "seconds": round(elapsed, 1), "best_val_mean_dice": result.best_val_dice,
             "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stop_reason": result.stop_reason,
             "fold": fold, "bundle": str(bundle_dir) if bundle_dir else None}, indent=2))
        from medseg.reporting import redraw

        figures = redraw(run_dir, cfg)
        if tracker is not None:
            tracker.log_metrics({f"final_{c}_{m}": v for c, e in summary.items() for m, v in e.items()
                                 if not m.endswith(("_std", "_median"))})
            tracker.log_metrics({"run_seconds": elapsed})
            for path in (run_dir / "config.yaml", json_path, csv_path, result.best_checkpoint, run_dir / "train.log",
                         run_dir / "history.json", *figures):
                tracker.log_artifact(path)
            if bundle_dir is not None:
                tracker.log_artifact(bundle_dir, "bundle")
                if args.register:
                    tracker.register(task, {f"{c}_{m}": e[m] for c, e in summary.items() for m in ("dice", "hd95_mm")})
        logger.info("finished in %.0fs; results in %s", elapsed, run_dir)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.finish(status)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
