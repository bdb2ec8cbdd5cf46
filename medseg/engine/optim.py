"""Optimisers, learning-rate schedules and gradient clipping from the ``training`` section (torch classes).

Optimisers: ``adamw`` (decoupled weight decay), ``adam`` (L2 weight decay), ``sgd`` (Nesterov momentum
``momentum``). Schedules, stepped once per epoch (``E`` = ``training.epochs``, ``W`` =
``warmup_epochs``, ``lr`` = ``learning_rate``):

- ``cosine``: cosine annealing from ``lr`` to ``min_lr_ratio * lr`` over ``E - W`` epochs;
- ``step``: ``lr * step_gamma ** (epoch // step_size)``;
- ``cosine_restarts``: cosine annealing restarted after ``restart_epochs``, cycles growing by ``restart_mult``;
- ``poly``: ``lr * (1 - epoch / (E - W)) ** poly_power`` (nnU-Net's schedule);
- ``constant``.

``warmup_epochs > 0`` puts a linear warm-up from ``warmup_start_ratio * lr`` to ``lr`` in front of any of
them (``SequentialLR``); the schedule then starts after the warm-up.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from medseg.config import TrainingConfig
from medseg.config.registries import OPTIMISERS, SCHEDULES
from medseg.engine.losses import training_section

logger = logging.getLogger("medseg.train")

_P = "torch.optim.lr_scheduler."


def adamw_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "torch.optim.AdamW", "lr": float(tr.learning_rate), "weight_decay": float(tr.weight_decay)}


def adam_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "torch.optim.Adam", "lr": float(tr.learning_rate), "weight_decay": float(tr.weight_decay)}


def sgd_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": "torch.optim.SGD", "lr": float(tr.learning_rate), "weight_decay": float(tr.weight_decay),
            "momentum": float(tr.momentum), "nesterov": True}


def optimizer_def(tr: TrainingConfig) -> dict[str, Any]:
    """The optimiser as a MONAI config entry without ``params`` (``_target_`` + arguments); the builder of
    each name is found in :data:`medseg.config.registries.OPTIMISERS`."""
    tr = training_section(tr)
    return OPTIMISERS.resolve(tr.optimizer)(tr)


def build_optimizer(params: Any, tr: TrainingConfig) -> torch.optim.Optimizer:
    entry = optimizer_def(tr)
    cls = getattr(torch.optim, entry.pop("_target_").rsplit(".", 1)[1])
    return cls(params, **entry)


def _span(tr: TrainingConfig) -> int:
    return max(int(tr.epochs) - int(tr.warmup_epochs), 1)


def cosine_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": _P + "CosineAnnealingLR", "T_max": _span(tr),
            "eta_min": float(tr.learning_rate) * float(tr.min_lr_ratio)}


def step_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": _P + "StepLR", "step_size": int(tr.step_size), "gamma": float(tr.step_gamma)}


def cosine_restarts_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": _P + "CosineAnnealingWarmRestarts", "T_0": int(tr.restart_epochs),
            "T_mult": int(tr.restart_mult), "eta_min": float(tr.learning_rate) * float(tr.min_lr_ratio)}


def poly_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": _P + "PolynomialLR", "total_iters": _span(tr), "power": float(tr.poly_power)}


def constant_def(tr: TrainingConfig) -> dict[str, Any]:
    return {"_target_": _P + "ConstantLR", "factor": 1.0, "total_iters": 0}


def scheduler_defs(tr: TrainingConfig) -> list[dict[str, Any]]:
    """The schedule as MONAI config entries without ``optimizer``: ``[main]``, or ``[warm-up, main]``
    to be chained by ``SequentialLR`` at ``milestones=[warmup_epochs]`` (builders in
    :data:`medseg.config.registries.SCHEDULES`)."""
    tr = training_section(tr)
    main = SCHEDULES.resolve(tr.schedule)(tr)
    warm = int(tr.warmup_epochs)
    if warm == 0:
        return [main]
    return [{"_target_": _P + "LinearLR", "start_factor": float(tr.warmup_start_ratio), "end_factor": 1.0,
             "total_iters": warm}, main]


def build_scheduler(optimizer: torch.optim.Optimizer, tr: TrainingConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The epoch-level learning-rate schedule of ``tr`` on ``optimizer`` (warm-up chained in front)."""
    tr = training_section(tr)
    made = []
    for entry in scheduler_defs(tr):
        entry = dict(entry)
        cls = getattr(torch.optim.lr_scheduler, entry.pop("_target_").rsplit(".", 1)[1])
        made.append(cls(optimizer, **entry))
    if len(made) == 1:
        return made[0]
    return torch.optim.lr_scheduler.SequentialLR(optimizer, made, milestones=[int(tr.warmup_epochs)])


def is_step_iteration(engine: Engine) -> bool:
    """Whether the optimiser steps after this iteration (SupervisedTrainer's gradient-accumulation rule)."""
    acc = engine.accumulation_steps
    local = (engine.state.iteration - 1) % engine.state.epoch_length
    return (local + 1) % acc == 0 or local + 1 == engine.state.epoch_length


def attach_gradient_guard(trainer: Engine, max_norm: float) -> None:
    """Before each optimiser step: measure the gradient norm (``engine.state.grad_norm``), skip the step if it
    is not finite, and clip it to ``max_norm`` when that is positive.

    MONAI's SupervisedTrainer has no clipping argument; this runs on its BACKWARD_COMPLETED event, after the
    last accumulated backward pass and before ``optimizer.step()``. With fp16 the gradients are unscaled
    first and MONAI's GradScaler skips non-finite steps itself; in float32 and bf16 a non-finite gradient
    (with a finite loss) has its step skipped the same way: the gradients are dropped, so the optimiser
    leaves weights and moments as they are (``engine.state.skipped_steps`` counts them).
    """
    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _guard(engine: Engine) -> None:
        if not is_step_iteration(engine):
            return
        params = [p for group in engine.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if engine.scaler is not None:
            if max_norm > 0:
                engine.scaler.unscale_(engine.optimizer)
                engine.state.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        engine.state.grad_norm = float(norm)
        if not torch.isfinite(norm):
            for p in params:
                p.grad = None
            engine.state.skipped_steps = getattr(engine.state, "skipped_steps", 0) + 1
            logger.warning("non-finite gradient norm at epoch %d, iteration %d: optimiser step skipped (%d so far)",
                           engine.state.epoch, engine.state.iteration, engine.state.skipped_steps)
        elif max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)


def bundle_scheduler_def(tr: TrainingConfig) -> dict[str, Any]:
    """The schedule as one MONAI Bundle config entry on ``@optimizer`` (``SequentialLR`` with a warm-up)."""
    tr = training_section(tr)
    made = [{**entry, "optimizer": "@optimizer"} for entry in scheduler_defs(tr)]
    if len(made) == 1:
        return made[0]
    return {"_target_": "torch.optim.lr_scheduler.SequentialLR", "optimizer": "@optimizer", "schedulers": made,
            "milestones": [int(tr.warmup_epochs)]}
