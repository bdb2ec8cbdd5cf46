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

import yaml

from medseg.config import available_tasks, load_config
from medseg.errors import MedsegError, run_cli

logger = logging.getLogger("medseg")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medseg.train", description=__doc__.splitlines()[0])
    parser.add_argument("task", help=f"task name in pipelines/ ({', '.join(available_tasks())}) or a path to a YAML")
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


def setup_logging(run_dir: Path | None = None) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("medseg")
    root.setLevel(logging.INFO)
    root.propagate = False
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        console = logging.StreamHandler(sys.stdout)
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


def augmentation_preview_png(cfg: dict, case: dict, run_dir: Path) -> Path:
    from medseg.reporting import augmentation_preview
    from medseg.transforms.preview import preview_samples

    image, label, augmented = preview_samples(cfg, case, n=3, seed=cfg["training"]["seed"])
    return augmentation_preview(image, label, augmented, run_dir / "augmentation_preview.png")


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    if args.epochs is not None:
        overrides.append(f"training.epochs={args.epochs}")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    cfg = load_config(args.task, overrides)
    task = cfg["task"]
    setup_logging()
    started = time.monotonic()

    from medseg.data.layouts import load_dataset
    from medseg.engine import evaluate_cases, train
    from medseg.evaluation import summarise, write_reports
    from medseg.evaluation.metrics import format_table

    data_dir = args.data_dir or Path("data")
    root = locate_dataset(cfg, data_dir, explicit=args.data_dir is not None)
    train_files, val_files = load_dataset(cfg, root, cfg["training"]["seed"])
    run_dir = args.output_dir or Path("runs") / task / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    logger.info("run directory %s", run_dir)
    logger.info("dataset %s: %d training, %d validation cases", root, len(train_files), len(val_files))
    write_cases(run_dir, train_files, val_files)

    tracker = None
    if cfg["tracking"]["enabled"]:
        from medseg.tracking import Tracker, dataset_fingerprint

        tracker = Tracker(cfg, run_name=f"{task}-{run_dir.name}", run_dir=run_dir, optional=args.tracking_optional)
        tracker.log_params(dataset_fingerprint(train_files, val_files))
    status = "FAILED"
    try:
        preview = augmentation_preview_png(cfg, train_files[0], run_dir)
        if tracker is not None:
            tracker.log_artifact(preview)
        result = train(cfg, run_dir, train_files, val_files, tracker)
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
             "best_epoch": result.best_epoch, "bundle": str(bundle_dir) if bundle_dir else None}, indent=2))
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
