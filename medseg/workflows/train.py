"""Train a task: locate the data, split it, train, evaluate on the original grid in mm, export a MONAI
Bundle, report, and track it all in MLflow. ``python -m medseg.train`` is this module's :func:`run`.

Example (a notebook):
    >>> from medseg.workflows import train
    >>> outcome = train.run("liver", epochs=2, overrides=["training.iterations_per_epoch=4"])
    >>> outcome.summary["liver"]["dice"]
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from monai.transforms import LoadImage

from medseg.bundle import export_bundle
from medseg.bundle.int8 import Int8Refused
from medseg.bundle.versions import resolve as resolve_bundle
from medseg.config import load_config
from medseg.engine.checks import check_task
from medseg.data.case import Case, items
from medseg.data.labelmaps import mapped_labels, write_label_nifti
from medseg.data.layouts import all_cases, load_dataset
from medseg.data.locate import locate_dataset
from medseg.engine import distributed
from medseg.engine.builders import reported_classes
from medseg.engine.folds import fold_split, make_folds, summarise_folds
from medseg.inference import build_chain, run_case, torch_forward
from medseg.plan.auto import AutoFill
from medseg.plan.post import decide_largest_component
from medseg.plan.rules import OVERHEAD
from medseg.engine.resume import read_state, resume_config, run_finished, stored_config, write_state
from medseg.engine.trainer import TrainResult, train
from medseg.errors import MedsegError, check_folder_option, check_new_run_folder
from medseg.evaluation import evaluate_case, summarise, write_reports
from medseg.evaluation.figures import write_preview
from medseg.evaluation.metrics import distance_unit
from medseg.fileio import atomic_write_text, new_dir
from medseg.evaluation.reports import redraw
from medseg.tracking import Tracker
from medseg.transforms import fit_preprocessing
from medseg.workflows.logs import setup_logging
from medseg.workflows.plan import is_dataset, planned_yaml

logger = logging.getLogger("medseg")
eval_logger = logging.getLogger("medseg.evaluate")


@dataclass(frozen=True)
class Options:
    """How to run (everything of :func:`run` but the task and the config overrides)."""

    data_dir: Path | None = None  # None: ./data, not required to exist
    output_dir: Path | None = None
    fold: int | None = None
    folds: str | None = None
    resume: Path | None = None
    max_minutes: float = 0.0
    export: bool = True
    register: bool = False
    tracking_optional: bool = False
    plan: Any = None  # the medseg.plan Plan a DATASET_DIR or `auto` keys were planned with (reasons -> run)

    @property
    def data_root(self) -> Path:
        return self.data_dir or Path("data")


@dataclass
class TrainOutcome:
    """A finished run: its folder, the final metrics per class (``metrics.json``), ``run.json``; for
    ``folds="all"`` the cross-validation summary and every fold's outcome."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    folds: list[TrainOutcome] = field(default_factory=list)
    unit: str = "mm"  # the distances' (px or µm for a picture task: medseg.evaluation.metrics.distance_unit)


def run(
    task_or_yaml: str | Path | None = None, *, epochs: int | None = None, data_dir: Path | None = None,
    output_dir: Path | None = None, overrides: Sequence[str] = (), fold: int | None = None, folds: str | None = None,
    resume: Path | None = None, max_minutes: float = 0, export: bool = True, register: bool = False,
    tracking_optional: bool = False, skip_bad: bool = False,
) -> TrainOutcome:
    """Train ``task_or_yaml`` (a task name in pipelines/ or a YAML path) once, one ``fold``, every fold
    (``folds="all"``), or continue the run folder ``resume``; arguments as ``python -m medseg.train`` has them.
    Bad input raises :class:`medseg.errors.MedsegError` with a one-line message."""
    overrides = list(overrides)
    if epochs is not None:
        overrides.append(f"training.epochs={epochs}")
    if skip_bad:
        overrides.append("data.skip_bad=true")
    if fold is not None and folds:
        raise MedsegError("--fold and --folds: give one of them")
    check_folder_option(output_dir, "--output-dir", "the run writes to")
    if resume is None and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0's check (the others find its files)
        check_new_run_folder(output_dir, "--output-dir", f"to continue it: --resume {output_dir}")
    opts = Options(None if data_dir is None else Path(data_dir), None if output_dir is None else Path(output_dir),
                   fold, folds, None if resume is None else Path(resume), float(max_minutes), export, register,
                   tracking_optional)
    setup_logging()
    plan = None
    if opts.resume is None and is_dataset(task_or_yaml):  # a dataset folder or CSV: plan it, then train the plan
        planned = planned_yaml(task_or_yaml, budget_minutes=opts.max_minutes or 15.0,
                               device=builders_device(), skip_bad=skip_bad)
        task_or_yaml, plan = planned.yaml, planned.plan
    fill = AutoFill(opts.data_root, budget_minutes=opts.max_minutes or 15.0, device=builders_device())
    cfg, requested = resolve_config(task_or_yaml, overrides, opts.resume, fill)
    opts = dataclasses.replace(opts, plan=plan or fill.plan)
    if opts.plan is not None:  # a guard: the plan fitted training into this share of the budget (--max-minutes)
        opts = dataclasses.replace(opts, max_minutes=round(opts.plan.budget_minutes * (1 - OVERHEAD), 2))
    ctx = distributed.setup(cfg.training.device)
    if not ctx.main:
        logging.getLogger("medseg").setLevel(logging.WARNING)  # one log: rank 0's
    try:
        if opts.resume is not None:
            return _resume(opts, cfg, requested, ctx)
        return _fresh(opts, cfg, requested, ctx)
    finally:
        distributed.teardown()


def builders_device() -> str:
    """Where a planned run will train (``training.device: auto``): the planner times its steps there."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_config(task: str | Path | None, overrides: list[str], resume: Path | None,
                   fill: Any = None) -> tuple[Any, Any]:
    """(the config to train with, the config as requested): a run folder's own for ``resume``; ``fill``: the
    step planning ``auto`` keys (:class:`medseg.plan.auto.AutoFill`)."""
    if resume is not None:
        fitted, requested = resume_config(resume, str(task) if task else None, overrides)
        return check_task(fitted), requested
    if not task:
        raise MedsegError("a task is needed: python -m medseg.train TASK_OR_YAML (or --resume RUN_DIR)")
    cfg = check_task(load_config(str(task), overrides, fill=fill))  # the network's own checks (arguments, patch multiples)
    return cfg, cfg


# ---- which runs: one, one fold, every fold, or the continuation of any of them


def _fresh(opts: Options, cfg: Any, requested: Any, ctx: distributed.Context) -> TrainOutcome:
    root = locate_dataset(cfg, opts.data_root, explicit=opts.data_dir is not None)
    # rank 0 creates runs/<task>/<timestamp>[-n]: two runs started in the same second get two folders
    run_dir = opts.output_dir or (new_dir(Path("runs") / cfg.task, time.strftime("%Y%m%d-%H%M%S")) if ctx.main else None)
    run_dir = distributed.broadcast(run_dir, ctx)
    if opts.fold is None and not opts.folds:
        train_cases, val_cases = load_dataset(cfg, root, cfg.training.seed)
        return train_one(opts, cfg, requested, train_cases, val_cases, run_dir, ctx)
    cases = all_cases(cfg, root)
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier(ctx)
    k = cfg.training.folds
    parts = make_folds(cases, k, cfg.training.seed, run_dir) if ctx.main else None
    parts = distributed.broadcast(parts, ctx)
    if opts.fold is not None:
        train_cases, val_cases = fold_split(cases, parts, opts.fold)
        return train_one(opts, cfg, requested, train_cases, val_cases, run_dir, ctx, fold=opts.fold)
    if ctx.main:
        write_state(run_dir, requested, folds="all", data_dir=str(opts.data_root.resolve()), cwd=str(Path.cwd()))
    outcomes = []
    for i in range(k):
        train_cases, val_cases = fold_split(cases, parts, i)
        outcomes.append(train_one(opts, cfg, requested, train_cases, val_cases, run_dir / f"fold_{i}", ctx, fold=i))
    return _fold_summary(run_dir, k, ctx, outcomes)


def _resume(opts: Options, cfg: Any, requested: Any, ctx: distributed.Context) -> TrainOutcome:
    run_dir = opts.resume
    state = read_state(run_dir)
    if opts.data_dir is None and state.get("data_dir"):  # the run's own data folder
        opts = dataclasses.replace(opts, data_dir=Path(state["data_dir"]))
    if state.get("folds") == "all":  # the parent of fold_0 ... fold_{k-1}: finish the folds not finished
        return _resume_folds(opts, cfg, requested, ctx)
    train_cases, val_cases = read_cases(run_dir, state.get("cwd"))
    return train_one(opts, cfg, requested, train_cases, val_cases, run_dir, ctx,
                     resume=(run_dir / "checkpoints" / "last.pt").is_file(), fold=state.get("fold"))


def _resume_folds(opts: Options, cfg: Any, requested: Any, ctx: distributed.Context) -> TrainOutcome:
    k = cfg.training.folds
    cases = all_cases(cfg, locate_dataset(cfg, opts.data_root, explicit=opts.data_dir is not None))
    parts = make_folds(cases, k, cfg.training.seed, opts.resume)
    outcomes = []
    for i in range(k):
        fold_dir = opts.resume / f"fold_{i}"
        if run_finished(fold_dir, int(cfg.training.epochs)):  # a fold the time budget stopped short goes on
            continue
        train_cases, val_cases = fold_split(cases, parts, i)
        started = (fold_dir / "checkpoints" / "last.pt").is_file()
        fold_cfg = stored_config(fold_dir / "config.yaml") if started else cfg
        outcomes.append(train_one(opts, fold_cfg, requested, train_cases, val_cases, fold_dir, ctx,
                                  resume=started, fold=i))
    return _fold_summary(opts.resume, k, ctx, outcomes)


def _fold_summary(parent: Path, k: int, ctx: distributed.Context, outcomes: list[TrainOutcome]) -> TrainOutcome:
    if not ctx.main:
        return TrainOutcome(parent, folds=outcomes)
    summary = summarise_folds(parent, k)
    for cls, entry in summary.items():
        logger.info("cross-validation %s: Dice %.3f ± %.3f over %d folds", cls, entry["dice"]["mean"],
                    entry["dice"]["std"], k)
    logger.info("cross-validation summary in %s", parent / "cv_summary.md")
    return TrainOutcome(parent, summary=summary, folds=outcomes)


# ---- the split, stored with the run


def write_cases(run_dir: Path, train_cases: list[Case], val_cases: list[Case]) -> None:
    """The split, stored with the run (``cases.json``: per part ``{"case": name, "image": ..., "label": ...}``)
    so it can be reproduced, resumed and reported on."""
    split = {part: [{"case": c.name, **c.item()} for c in cases]
             for part, cases in (("train", train_cases), ("val", val_cases))}
    atomic_write_text(run_dir / "cases.json", json.dumps(split, indent=1))


def _under(path: Any, cwd: str | None) -> Any:
    """A case path recorded relative to the working directory of the run's start, made absolute."""
    if isinstance(path, list):
        return [_under(p, cwd) for p in path]
    if isinstance(path, str) and cwd and not Path(path).is_absolute():
        return str(Path(cwd) / path)
    return path


def read_cases(run_dir: Path, cwd: str | None = None) -> tuple[list[Case], list[Case]]:
    """(training, validation) cases of ``run_dir/cases.json``; relative paths are taken under ``cwd``."""
    split = json.loads((run_dir / "cases.json").read_text())
    train_cases, val_cases = ([Case.from_item({k: _under(v, cwd) for k, v in c.items() if k != "case"})
                               for c in split[part]] for part in ("train", "val"))
    return train_cases, val_cases


# ---- one run: prepare, track, train, evaluate, export, report, finish


def train_one(opts: Options, cfg: Any, requested: Any, train_cases: list[Case], val_cases: list[Case],
              run_dir: Path, ctx: distributed.Context, resume: bool = False, fold: int | None = None) -> TrainOutcome:
    """Train (or continue), evaluate, report and export one run in ``run_dir``."""
    started = time.monotonic()
    if not ctx.main:  # the other ranks train their share with rank 0's fitted config; rank 0 writes everything
        cfg = distributed.broadcast(None, ctx)
        train(cfg, run_dir, train_cases, val_cases, None, resume=resume, max_minutes=opts.max_minutes)
        return TrainOutcome(run_dir)
    cfg = prepare_run_dir(opts, cfg, requested, train_cases, val_cases, run_dir, resume, fold)
    distributed.broadcast(cfg, ctx)
    tracker = start_tracking(opts, cfg, requested, train_cases, val_cases, run_dir, resume, fold)
    status = "FAILED"
    try:
        if not resume:
            preview = write_preview(cfg, items(train_cases), run_dir / "augmentation_preview.png", n=8,
                                    seed=cfg.training.seed)
            if tracker is not None:
                tracker.log_artifact(preview)
        result = train(cfg, run_dir, train_cases, val_cases, tracker, resume=resume, max_minutes=opts.max_minutes)
        _log_training(cfg, result)
        outcome = evaluate_export_report(opts, cfg, result, val_cases, run_dir, tracker, started, fold)
        status = "FINISHED"
        return outcome
    finally:
        if tracker is not None:
            tracker.finish(status)


def prepare_run_dir(opts: Options, cfg: Any, requested: Any, train_cases: list[Case], val_cases: list[Case],
                    run_dir: Path, resume: bool, fold: int | None) -> Any:
    """The run folder with its log; a new run also gets the config fitted to its training cases
    (``config.yaml``), the split (``cases.json``) and what ``--resume`` needs (``resume.json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    if resume:
        logger.info("resuming run %s", run_dir)
        return cfg
    cfg = fit_preprocessing(cfg, items(train_cases))  # spacing: auto, histogram landmarks: learned on the training set
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
                      + (opts.plan.comment_block() if opts.plan is not None else ""))
    if opts.plan is not None:  # the plan's reasons: config.yaml comments, plan.json, train.log
        atomic_write_text(run_dir / "plan.json", json.dumps(opts.plan.to_json(), indent=1, default=str))
        for key, reason in opts.plan.reasons().items():
            logger.info("plan %s: %s", key, reason)
    logger.info("run directory %s", run_dir)
    logger.info("dataset: %d training, %d validation cases%s", len(train_cases), len(val_cases),
                "" if fold is None else f" (fold {fold})")
    write_cases(run_dir, train_cases, val_cases)
    write_state(run_dir, requested, fold=fold, data_dir=str(opts.data_root.resolve()), cwd=str(Path.cwd()))
    return cfg


def start_tracking(opts: Options, cfg: Any, requested: Any, train_cases: list[Case], val_cases: list[Case],
                   run_dir: Path, resume: bool, fold: int | None) -> Tracker | None:
    """The run's MLflow run (``tracking.enabled``), or None; ``--resume`` goes on in the run's own MLflow run
    (also when it was killed before its first checkpoint)."""
    if not cfg.tracking.enabled:
        return None
    task = cfg.task
    run_name = f"{task}-{run_dir.name}" if fold is None else f"{task}-{run_dir.resolve().parent.name}-{run_dir.name}"
    run_id = read_state(run_dir).get("mlflow_run_id") if opts.resume is not None else None
    tracker = Tracker(cfg, run_name=run_name, run_dir=run_dir, optional=opts.tracking_optional, run_id=run_id)
    if tracker.active:
        write_state(run_dir, requested, mlflow_run_id=tracker.run_id)
        if opts.plan is not None and not resume:
            tracker.log_params(opts.plan.params())
        if fold is not None:
            tracker.guard("tag", lambda: tracker.client.set_tag(tracker.run_id, "fold", str(fold)))
    if not resume:  # dataset inputs (training, validation) and the run's description
        tracker.log_datasets(train_cases, val_cases)
        tracker.describe()
    return tracker


def _log_training(cfg: Any, result: TrainResult) -> None:
    if result.stop_reason:
        logger.info("training stopped at epoch %d/%d by the %s", result.epochs_run, cfg.training.epochs,
                    result.stop_reason)
    logger.info("training done in %.0fs; best validation mean Dice %.3f at epoch %d",
                result.seconds, result.best_val_dice, result.best_epoch)


def evaluate_export_report(opts: Options, cfg: Any, result: TrainResult, val_cases: list[Case], run_dir: Path,
                           tracker: Tracker | None, started: float, fold: int | None) -> TrainOutcome:
    """Final metrics on the original grid, the bundle, ``run.json``, the figures, and all of it in MLflow."""
    logger.info("final evaluation on the original grid of %d validation case(s)", len(val_cases))
    per_case = evaluate_cases(cfg, result.network, val_cases, result.device, run_dir / "predictions")
    if opts.plan is not None and "evaluation.keep_largest_component" not in opts.plan.hand:
        cfg, per_case = _planned_largest_component(opts, cfg, result, val_cases, run_dir, per_case)
    summary = summarise(per_case)
    reports = write_reports(per_case, summary, run_dir)
    bundle_dir = None
    if cfg.bundle.enabled and opts.export:
        # bundle.int8: models/model_int8.onnx calibrated on the run's training cases, measured on its validation cases
        int8_cases = read_cases(run_dir, str(Path.cwd())) if cfg.bundle.int8 else None
        try:
            bundle_dir = export_bundle(cfg, run_dir, result.network, summary, time.monotonic() - started,
                                       int8_cases=int8_cases)
        except Int8Refused as err:  # the bundle is written without the INT8 model; the training itself succeeded
            logger.warning("%s", err)
            bundle_dir = Path(cfg.bundle.dir) / cfg.bundle_name()
        logger.info("MONAI Bundle written to %s", bundle_dir)
    elapsed = time.monotonic() - started
    report = {"task": cfg.task, "seconds": round(elapsed, 1), "best_val_mean_dice": result.best_val_dice,
              "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stop_reason": result.stop_reason,
              "fold": fold, "bundle": str(bundle_dir) if bundle_dir else None,
              # the version folder this run wrote: the stable name moves on to the next training's bundle
              "bundle_version": str(bundle_dir.parent / resolve_bundle(bundle_dir).name) if bundle_dir else None}
    atomic_write_text(run_dir / "run.json", json.dumps(report, indent=2))
    figures = redraw(run_dir, cfg)
    if tracker is not None:
        artifacts = [run_dir / "config.yaml", *reports, result.best_checkpoint, run_dir / "train.log",
                     run_dir / "history.json", *figures]
        if (run_dir / "plan.json").is_file():  # a planned run: its decisions, the post-training one included
            artifacts.append(run_dir / "plan.json")
        log_to_tracker(tracker, opts, cfg, summary, elapsed, artifacts, bundle_dir)
    logger.info("finished in %.0fs; results in %s", elapsed, run_dir)
    return TrainOutcome(run_dir, summary=summary, report=report, unit=distance_unit(cfg))


def _planned_largest_component(opts: Options, cfg: Any, result: TrainResult, val_cases: list[Case], run_dir: Path,
                               per_case: dict) -> tuple[Any, dict]:
    """A planned run's post-training decision (medseg.plan.post): keep-largest-component for the classes where
    it raises validation Dice; then the config (config.yaml, the bundle) and the final metrics include it."""
    decision = decide_largest_component(cfg, val_cases, run_dir / "predictions")
    opts.plan.decisions["evaluation.keep_largest_component"] = decision
    logger.info("plan evaluation.keep_largest_component: %s", decision.reason)
    atomic_write_text(run_dir / "plan.json", json.dumps(opts.plan.to_json(), indent=1, default=str))
    if decision.value:
        evaluation = cfg.evaluation.model_copy(update={"keep_largest_component": list(decision.value),
                                                       "classes": dict(reported_classes(cfg))})
        cfg = cfg.model_copy(update={"evaluation": evaluation})
        per_case = evaluate_cases(cfg, result.network, val_cases, result.device, run_dir / "predictions")
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
                      + opts.plan.comment_block())
    return cfg, per_case


def log_to_tracker(tracker: Tracker, opts: Options, cfg: Any, summary: dict, elapsed: float, artifacts: list[Path],
                   bundle_dir: Path | None) -> None:
    """Final metrics, run time, artifacts and the bundle in MLflow; the bundle registered with ``register``."""
    tracker.log_model(bundle_dir, summary)  # the bundle as the run's logged model, final metrics linked to it
    tracker.describe(summary, bundle_dir)
    tracker.log_metrics({"run_seconds": elapsed})
    for path in artifacts:
        tracker.log_artifact(path)
    if bundle_dir is not None:
        if opts.register:
            tracker.register(cfg.task, {f"{c}_{m}": e[m] for c, e in summary.items() for m in ("dice", "hd95_mm")})


# ---- the final evaluation


def evaluate_cases(cfg: Any, net: torch.nn.Module, cases: list[Case], device: torch.device,
                   pred_dir: Path) -> dict[str, dict[str, dict[str, float | str]]]:
    """Predict each case on its original grid, write the prediction, and compute metrics in mm."""
    pred_dir.mkdir(parents=True, exist_ok=True)
    chain = build_chain(cfg)  # the chain medseg.predict and the bundle's inference.json run
    forward = torch_forward(net)  # eval mode: batch norm statistics stay those of the best checkpoint
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    per_case = {}
    for i, case in enumerate(cases, 1):
        case = case if isinstance(case, Case) else Case.from_item(case)
        pred = run_case(chain, forward, case.item(), device)
        ref = loader(str(case.label))
        if tuple(pred.shape[1:]) != tuple(ref.shape[1:]):
            raise RuntimeError(f"{case.name}: inverted prediction {tuple(pred.shape)} does not match label"
                               f" {tuple(ref.shape)}")
        affine = np.asarray(ref.affine, dtype=np.float64)
        nd = ref.ndim - 1  # spatial dims (2D images carry a 3x3 or 4x4 affine)
        spacing = np.sqrt((affine[:nd, :nd] ** 2).sum(axis=0))
        ev = cfg.evaluation
        per_case[case.name] = evaluate_case(
            pred[0].numpy(), mapped_labels(ref[0].numpy(), cfg.effective_label_map()), spacing, reported_classes(cfg),
            tolerance_mm=ev.tolerance_mm, worst_mm=ev.worst_mm or None,
        )
        write_label_nifti(pred[0].numpy(), affine, pred_dir / f"{case.name}.nii.gz", source=case.image)
        dice = ", ".join(f"{k} Dice {v['dice']:.3f}" for k, v in per_case[case.name].items())
        eval_logger.info("evaluated case %d/%d (%s): %s", i, len(cases), case.name, dice)
    return per_case
