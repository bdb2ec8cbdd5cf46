"""Training a task's network: MONAI's SupervisedTrainer and SupervisedEvaluator, built from the parts in
:mod:`medseg.engine.builders`, with the handlers of :mod:`medseg.engine.handlers`.

Validation runs every ``training.val_every`` epochs and on the last epoch; the network with the best
validation mean Dice (foreground labels) is kept as ``checkpoints/best.pt``, and ``checkpoints/last.pt``
holds the full training state for ``--resume`` (see ``medseg.engine.checkpoint``). Mixed precision,
gradient accumulation and clipping, early stopping, a time budget and a stop on a non-finite loss are
handlers and arguments of MONAI's SupervisedTrainer, not a loop of our own.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils import set_determinism

from medseg.engine import builders, distributed, interactive
from medseg.engine.builders import collate_plain, pick_device, training_dataset  # noqa: F401  (tests import them here)
from medseg.engine.checkpoint import load_checkpoint, random_transforms, remove_stale_temporaries
from medseg.engine.handlers import (
    BestCheckpoint, EarlyStop, EpochProgress, FiniteLoss, GlobalLoss, LastEpochValidation, ResumableCheckpoint, Stop,
    TimeBudget, TrainingState,
)
from medseg.engine.precision import disable_activation_checkpointing
from medseg.errors import MedsegError

logger = logging.getLogger("medseg.train")


@dataclass
class TrainResult:
    network: torch.nn.Module
    best_checkpoint: Path
    best_val_dice: float
    best_epoch: int
    seconds: float
    device: torch.device
    stop_reason: str = ""  # "" (all epochs), "early stopping", "time budget"
    epochs_run: int = 0


@dataclass
class Parts:
    """What one run trains with (see :func:`build_parts`)."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_ds: Any
    train_loader: Any
    evaluator: SupervisedEvaluator
    trainer: SupervisedTrainer


def build_parts(cfg: Any, train_cases: list, val_cases: list, device: torch.device,
                ctx: distributed.Context) -> Parts:
    """Datasets, loaders, network, optimiser, schedule, evaluator and trainer of one run."""
    logger.info("caching %d training and %d validation volumes (preprocessing once)", len(train_cases), len(val_cases))
    train_ds = builders.training_dataset(train_cases, cfg)
    val_ds = builders.validation_dataset(val_cases, cfg)
    train_loader = builders.training_loader(train_ds, cfg, ctx)
    net, model = builders.build_model(cfg, device, ctx)
    optimizer, scheduler = builders.optimiser_and_schedule(model.parameters(), cfg)
    evaluator = builders.build_evaluator(cfg, net, builders.validation_loader(val_ds, ctx), device, ctx)
    trainer = builders.build_trainer(cfg, model, train_loader, optimizer, builders.training_loss(cfg), device,
                                     scheduler=scheduler, evaluator=evaluator, **interactive.trainer_arguments(cfg))
    return Parts(net, optimizer, scheduler, train_ds, train_loader, evaluator, trainer)


def attach_handlers(cfg: Any, parts: Parts, run_dir: Path, stop: Stop, started: float, tracker: Any,
                    max_minutes: float, history: dict | None, device: torch.device,
                    ctx: distributed.Context) -> TrainingState:
    """Every handler of a run, in the order they must run; returns the run's resumable state."""
    tr, trainer, evaluator = cfg.training, parts.trainer, parts.evaluator
    last_path = run_dir / "checkpoints" / "last.pt"
    if ctx.distributed:
        GlobalLoss(ctx, device).attach(trainer)
    LastEpochValidation(evaluator, tr.val_every, stop).attach(trainer)
    BestCheckpoint(run_dir / "checkpoints" / "best.pt", parts.net, trainer, writer=ctx.main).attach(evaluator)
    early = None
    if tr.early_stopping_patience:
        early = EarlyStop(tr.early_stopping_patience, tr.early_stopping_min_delta, trainer, stop)
        early.attach(evaluator)
    FiniteLoss(last_path, stop, ctx, device).attach(trainer)
    if max_minutes > 0:
        TimeBudget(max_minutes, stop, started, ctx=ctx, device=device).attach(trainer)
    if tracker is not None and ctx.main:
        train_handlers, val_handlers = tracker.handlers(lambda _: trainer.state.epoch)
        for handler in train_handlers:
            handler.attach(trainer)
        for handler in val_handlers:
            handler.attach(evaluator)
    progress = EpochProgress(evaluator, started, run_dir / "history.json" if ctx.main else None, history,
                             tracker if ctx.main else None)
    progress.attach(trainer)
    state = TrainingState(net=parts.net, optimizer=parts.optimizer, scheduler=parts.scheduler, trainer=trainer,
                          evaluator=evaluator, loader=parts.train_loader, early=early, stop=stop, progress=progress,
                          transforms=random_transforms(parts.train_ds.transform), ctx=ctx)
    ResumableCheckpoint(last_path, state, tr.checkpoint_every, stop, writer=ctx.main).attach(trainer)
    return state


def train(
    cfg: Any,
    run_dir: Path,
    train_files: list,
    val_files: list,
    tracker: Any = None,
    resume: bool = False,
    max_minutes: float = 0.0,
) -> TrainResult:
    """Train the task's network and keep the best checkpoint by validation mean Dice.

    Args:
        cfg: resolved task config.
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
        train_files: training cases (:class:`medseg.data.case.Case` or ``{"image", "label"}`` dicts).
        val_files: validation cases.
        tracker: a :class:`medseg.tracking.Tracker` whose MONAI handlers are attached, or None.
        resume: continue from ``run_dir/checkpoints/last.pt`` (weights, optimiser, schedule, position,
            random states) instead of starting afresh.
        max_minutes: stop after the epoch during which this much time has passed (0 = no limit); the run
            is then checkpointed and validated like a finished one.
    """
    tr = cfg.training
    ctx = distributed.current()
    set_determinism(seed=tr.seed)  # the same initial weights on every rank; data streams differ per rank
    torch.set_num_threads(tr.threads or os.cpu_count() or 1)
    device = distributed.device_for(ctx, pick_device(tr.device))
    started = time.monotonic()
    last_path = run_dir / "checkpoints" / "last.pt"
    if ctx.main:  # a kill during a checkpoint write leaves its complete-or-not temporary file behind
        for tmp in remove_stale_temporaries(last_path.parent):
            logger.info("removed %s, a checkpoint write the earlier process did not finish", tmp.name)
    saved = load_checkpoint(last_path, device) if resume else None
    parts = build_parts(cfg, train_files, val_files, device, ctx)
    stop = Stop()
    state = attach_handlers(cfg, parts, run_dir, stop, started, tracker, max_minutes,
                            saved["history"] if saved else None, device, ctx)
    if saved is not None:
        state.restore(saved)
        logger.info("resuming from %s at epoch %d/%d", last_path, parts.trainer.state.epoch, tr.epochs)
    logger.info(
        "training %s on %s: %d epochs x %d iterations, batch %d%s, patch %s, %s, %s, amp %s",
        cfg.network.name, device, tr.epochs, tr.iterations_per_epoch, tr.batch_size,
        f" x {ctx.world} processes" if ctx.distributed else "", tr.patch_size, tr.optimizer, tr.loss, tr.amp,
    )
    if parts.trainer.state.epoch < tr.epochs and not stop.reason:
        parts.trainer.run()
        if stop.error is not None:  # raised in the engine; re-raised here should a handler have swallowed it
            raise stop.error
    return _best_result(cfg, parts, run_dir, stop, started, device, ctx)


def _best_result(cfg: Any, parts: Parts, run_dir: Path, stop: Stop, started: float, device: torch.device,
                 ctx: distributed.Context) -> TrainResult:
    """The network with the best checkpoint's weights, and what the run reached."""
    if cfg.training.activation_checkpointing:
        disable_activation_checkpointing(parts.net)
    distributed.barrier(ctx)
    best_path = run_dir / "checkpoints" / "best.pt"
    if not best_path.is_file():
        raise MedsegError(f"{best_path}: no validation improved on the start; nothing to keep")
    parts.net.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    return TrainResult(
        network=parts.net,
        best_checkpoint=best_path,
        best_val_dice=float(parts.evaluator.state.best_metric),
        best_epoch=int(parts.evaluator.state.best_metric_epoch),
        seconds=time.monotonic() - started,
        device=device,
        stop_reason=stop.reason,
        epochs_run=int(parts.trainer.state.epoch),
    )
