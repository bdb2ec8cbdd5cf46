"""Distil a medseg bundle into a small student: what ``python -m medseg.distill`` does, as a function.

The student (default ``light_unet``) trains on the teacher's task: the same cases, the teacher's fitted
preprocessing, patches and augmentation, with the loss of :mod:`medseg.engine.distill` (``distill.temperature``,
``distill.weight``) for ``budget_minutes``, the learning rate annealed by a cosine over that time. Both networks
then predict the validation cases through the one prediction chain; the student is exported as its own bundle
(``<teacher bundle>_<student>`` beside the teacher), whose ``metadata.json`` (``medseg_distill``) and the run's ``distill.json`` and log hold both Dice side by side.

Example:
    >>> from medseg.workflows import distill
    >>> out = distill.run("bundles/liver_ct_segmentation", budget_minutes=20)
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from ignite.engine import Events

from medseg.bundle import export_bundle
from medseg.bundle.int8 import Int8Refused
from medseg.bundle.load import load_bundle
from medseg.bundle.versions import resolve
from medseg.config import TaskConfig
from medseg.config.load import merged, parse_override
from medseg.data.check import read_header
from medseg.data.layouts import detect_layout, load_dataset
from medseg.data.locate import locate_dataset
from medseg.engine import builders
from medseg.engine.checkpoint import save_checkpoint
from medseg.engine.checks import check_task
from medseg.engine.distill import DistillationLoss, TeacherStudent
from medseg.engine.optim import build_optimizer
from medseg.errors import MedsegError, check_folder_option, check_new_run_folder
from medseg.evaluation import format_table, summarise, write_reports
from medseg.fileio import atomic_write_text, new_dir
from medseg.workflows.logs import setup_logging
from medseg.workflows.train import evaluate_cases, write_cases

logger = logging.getLogger("medseg")


@dataclass
class DistillOutcome:
    run_dir: Path
    bundle: Path
    teacher: dict[str, Any] = field(default_factory=dict)  # class -> metrics (Dice, HD95, ASSD)
    student: dict[str, Any] = field(default_factory=dict)
    epochs_run: int = 0


def student_config(teacher: TaskConfig, student: str, bundle_dir: Path, overrides: Sequence[str] = ()) -> TaskConfig:
    """The teacher's task config with the ``student`` network (its defaults), a bundle name of its own next to the
    teacher's, and ``overrides`` (``key=value``, as ``--set``) applied; checked like a training config."""
    data = teacher.to_dict()
    # the student's own defaults: every shorthand key null, no arguments, no deep supervision (dims, slice mode kept)
    data["network"].update({"name": student, "args": {}, "deep_supervision": False, "ds_weights": [],
                            **{k: None for k in ("channels", "strides", "num_res_units", "dropout", "norm")}})
    name = f"{teacher.bundle_name()}_{student}"
    data["bundle"].update({"name": name, "dir": str(bundle_dir), "int8": False})
    data["training"]["epochs"] = 100_000  # the time budget stops the student (an override may still cap it)
    for item in overrides:
        data = merged(data, parse_override(item)[1])
    return check_task(TaskConfig.from_dict(data, source=f"{teacher.source or 'teacher bundle'} + student {student}"))


#: the folders the built-in samples are prepared in under a data folder (``data.sample`` -> folder name)
SAMPLE_FOLDERS = {"lits117": "lits_sample", "dsb2018_nuclei": "nuclei_sample"}


def check_student_name(student: str) -> None:
    """One line for a ``--student`` that is not a network of the registry, naming those that are."""
    from medseg.config.registries import NETWORKS

    if student not in NETWORKS.names():
        raise MedsegError(f"--student {student}: not a known network; choose one of {', '.join(NETWORKS.names())}")


def check_data_dir(cfg: TaskConfig, data_dir: Path) -> None:
    """One line when an explicit ``--data-dir`` holds neither the task's dataset (``data.dataset`` under it), nor a
    dataset of its own, nor the task's built-in sample already prepared: the sample would otherwise be fetched
    and written into that folder (someone's data folder) and the student trained on it without a word."""
    if not data_dir.is_dir():
        return  # locate_dataset says "no such folder"
    dataset = Path(cfg.data.dataset) if cfg.data.dataset else None
    if dataset is not None and (dataset if dataset.is_absolute() else data_dir / dataset).exists():
        return
    try:
        detect_layout(data_dir)
        return
    except MedsegError:
        pass
    sample = SAMPLE_FOLDERS.get(cfg.data.sample or "")
    if sample is not None and (data_dir / sample / "dataset.json").is_file():
        return
    wanted = f"the task's dataset {cfg.data.dataset} (data.dataset)" if cfg.data.dataset else "the task's dataset"
    hint = (f"; leave out --data-dir to use the built-in sample (prepared in ./data/{sample})" if sample else "")
    raise MedsegError(f"--data-dir {data_dir}: holds neither {wanted} nor a dataset of its own (dataset.json, or "
                      f"images/ + labels/); give the folder holding the teacher's training data{hint}")


def check_dimensions(cfg: TaskConfig, cases: Sequence[Any], teacher: str | Path) -> None:
    """One line, before any training, when the cases' images are 2D and the teacher's network 3D (or the reverse;
    a 2D network in ``network.slice_mode`` takes 3D volumes): MONAI stopped with a padding traceback."""
    want = 3 if int(cfg.network.spatial_dims) == 3 or cfg.network.slice_mode else 2
    for case in cases:
        shape = tuple(read_header(case.image).shape)
        have = 2 if len(shape) == 2 or (len(shape) == 3 and shape[2] == 1) else 3
        if have != want:
            kind = "3D" if int(cfg.network.spatial_dims) == 3 else "2D"
            raise MedsegError(
                f"{case.image}: a {have}D image {shape}, and the teacher {teacher} has a {kind} network"
                f"{' on 3D volumes (slice mode)' if want == 3 and kind == '2D' else ''}; give --data-dir with the "
                f"{want}D data of the teacher's task, or a teacher trained on {have}D images")


def _budget(trainer: Any, optimizer: torch.optim.Optimizer, minutes: float, min_lr_ratio: float) -> None:
    """Stop after the iteration that passes ``minutes`` and anneal the learning rate by a cosine over that time
    (own code: torch's and MONAI's schedules count steps, and how many steps fit the budget is unknown ahead)."""
    base = [g["lr"] for g in optimizer.param_groups]
    started = time.monotonic()

    @trainer.on(Events.ITERATION_STARTED)
    def _anneal(engine: Any) -> None:
        done = min(1.0, (time.monotonic() - started) / (minutes * 60))
        factor = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * done))
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * factor

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(engine: Any) -> None:
        if time.monotonic() - started > minutes * 60:
            if engine.state.epoch_length and engine.state.iteration % engine.state.epoch_length:  # no epoch line
                _log(engine)
            logger.info("time budget of %g min reached after %d iterations: stopping", minutes, engine.state.iteration)
            engine.terminate()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _log(engine: Any) -> None:
        out = engine.state.output  # MONAI's trainer: a dict per sample (decollated), each holding the batch loss
        item = out[0] if isinstance(out, list) and out else out
        loss = float(torch.as_tensor(item["loss"]).detach()) if isinstance(item, dict) and "loss" in item else math.nan
        logger.info("epoch %d | loss %.4f | lr %.2e | %d iterations | %.0fs of %.0fs", engine.state.epoch, loss,
                    optimizer.param_groups[0]["lr"], engine.state.iteration, time.monotonic() - started, minutes * 60)


def run(teacher: str | Path, *, student: str = "light_unet", data_dir: Path | None = None,
        budget_minutes: float = 10.0, output_dir: Path | None = None, overrides: Sequence[str] = ()) -> DistillOutcome:
    """Distil the bundle ``teacher`` into ``student`` for ``budget_minutes`` of training (see the module docstring).

    Args:
        teacher: a bundle medseg wrote (folder or ``bundles/<name>``).
        student: a network name of the registry.
        data_dir: where the task's dataset is (default ``./data``, as ``medseg.train``).
        budget_minutes: training time; the student stops after the iteration that passes it (or at
            ``training.epochs`` when an override sets it), the learning rate annealed by a cosine over that time.
        output_dir: the run folder (default ``runs/<task>_distill/<timestamp>``).
        overrides: ``key=value`` config overrides for the student (``distill.temperature=4``...).
    """
    setup_logging()
    if not math.isfinite(budget_minutes) or budget_minutes <= 0:
        raise MedsegError(f"--budget-minutes {budget_minutes}: give a positive finite number of minutes")
    check_student_name(student)
    check_folder_option(output_dir, "--output-dir", "the student's run writes to")
    check_new_run_folder(output_dir, "--output-dir")
    if not Path(teacher).exists():
        raise MedsegError(f"--teacher {teacher}: no such bundle folder; give a bundle medseg wrote (bundles/<name>)")
    teacher_path = resolve(Path(teacher))
    loaded = load_bundle(teacher_path, torch.device("cpu"))
    if loaded.cfg is None:
        raise MedsegError(f"{teacher}: the teacher must be a bundle medseg wrote (configs/medseg_task.json)")
    tcfg = loaded.cfg
    cfg = student_config(tcfg, student, teacher_path.parent, overrides)
    if data_dir is not None:
        check_data_dir(cfg, Path(data_dir))
    root = locate_dataset(cfg, Path(data_dir or "data"), explicit=data_dir is not None)
    train_cases, val_cases = load_dataset(cfg, root, cfg.training.seed)
    check_dimensions(tcfg, [*train_cases, *val_cases], teacher)
    run_dir = output_dir or new_dir(Path("runs") / f"{cfg.task}_distill", time.strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(run_dir).resolve()  # absolute: the bundle's metadata.json names the run from anywhere
    # checkpoints/ only once there are weights: an empty one would mark a failed start as an earlier run
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_cases(run_dir, train_cases, val_cases)

    started = time.monotonic()
    device = builders.pick_device(cfg.training.device)
    torch.manual_seed(cfg.training.seed)
    dataset = builders.training_dataset(train_cases, cfg)
    loader = builders.training_loader(dataset, cfg)
    net, _ = builders.build_model(cfg, device)
    pair = TeacherStudent(net, loaded.network.to(device))
    loss = DistillationLoss(builders.training_loss(cfg), pair, cfg.distill.temperature, cfg.distill.weight)
    optimizer = build_optimizer(net.parameters(), cfg.training)
    trainer = builders.build_trainer(cfg, pair, loader, optimizer, loss, device)
    _budget(trainer, optimizer, budget_minutes, cfg.training.min_lr_ratio)
    logger.info("distilling %s (%s) into %s on %s: T %.2g, weight %.2g, budget %g min", teacher_path.name,
                tcfg.network.name, student, device, cfg.distill.temperature, cfg.distill.weight, budget_minutes)
    trainer.run()
    seconds = time.monotonic() - started
    save_checkpoint(run_dir / "checkpoints" / "best.pt", {k: v.cpu() for k, v in net.state_dict().items()})

    # the epochs it ran, not the cap the budget stopped: config.yaml and the bundle's train.json are its recipe
    cfg = TaskConfig.from_dict(merged(cfg.to_dict(), {"training": {"epochs": int(trainer.state.epoch)}}),
                               source=cfg.source)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    net.eval()
    logger.info("validation, student (%s):", student)
    per_case = evaluate_cases(cfg, net, val_cases, device, run_dir / "predictions")
    student_summary = summarise(per_case)
    write_reports(per_case, student_summary, run_dir)  # metrics.json + per case: medseg.export RUN_DIR works on it
    logger.info("validation, teacher (%s):", tcfg.network.name)
    teacher_summary = summarise(evaluate_cases(tcfg, pair.teacher, val_cases, device,
                                               run_dir / "teacher_predictions"))
    side = {c: {"teacher_dice": round(float(teacher_summary[c]["dice"]), 4),
                "student_dice": round(float(student_summary[c]["dice"]), 4)} for c in student_summary}
    # the teacher's version folder by name: the record goes into the student's shared bundle (no user or site path)
    record = {"teacher": teacher_path.resolve().name, "teacher_network": tcfg.network.name, "student": student,
              "temperature": cfg.distill.temperature, "weight": cfg.distill.weight, "budget_minutes": budget_minutes,
              "epochs_run": int(trainer.state.epoch), "iterations": int(trainer.state.iteration),
              "seconds": round(seconds, 1), "dice": side}
    atomic_write_text(run_dir / "distill.json", json.dumps(record, indent=2))
    logger.info("validation Dice, teacher vs student:\n%s", "\n".join(
        f"  {c:<12} teacher {v['teacher_dice']:.3f}  student {v['student_dice']:.3f}" for c, v in side.items()))
    logger.info("student metrics:\n%s", format_table(student_summary))
    # bundle.int8 (--int8): the student's INT8 model, calibrated and measured on the teacher's cases as at training
    int8_cases = (train_cases, val_cases) if cfg.bundle.int8 else None
    try:
        bundle = export_bundle(cfg, run_dir, net, student_summary, seconds, int8_cases=int8_cases,
                               extra_metadata={"medseg_distill": record})
    except Int8Refused as err:  # the bundle is written without the INT8 model; the distillation itself succeeded
        logger.warning("%s", err)
        bundle = Path(cfg.bundle.dir) / cfg.bundle_name()
    logger.info("student bundle written to %s", bundle)
    return DistillOutcome(run_dir, bundle, teacher_summary, student_summary, int(trainer.state.epoch))


__all__ = ["DistillOutcome", "check_data_dir", "check_dimensions", "check_student_name", "run", "student_config"]
