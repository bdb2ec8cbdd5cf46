"""Event handlers of a training run, each a small class with ``attach(engine)`` that can be tested alone.

Handlers that may end a run early share one :class:`Stop` (why the run stops: "early stopping", "time
budget"), which the trainer reads after ``trainer.run()`` and the checkpoint stores. MONAI has handlers for
checkpoints, early stopping and statistics, but none that write an atomically renamed, resumable state of
everything (random streams included), stop on a time budget over all ranks, or name the epoch and step of
a non-finite loss; those are own code here, around ignite's events.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping
from monai.engines.utils import IterationEvents

from medseg.engine import distributed
from medseg.engine.checkpoint import FORMAT, rng_state, save_checkpoint, set_rng_state
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text

logger = logging.getLogger("medseg.train")

Clock = Callable[[], float]


class LossNotFinite(MedsegError):
    """The training loss became NaN or infinite; the run stops before the optimiser takes the step."""


class Stop:
    """Why training stops early ("" while it does not): set by the handlers, read after ``trainer.run()``."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason
        self.error: Exception | None = None


def _all_ranks(flag: bool, ctx: distributed.Context, device: torch.device) -> bool:
    (out,) = distributed.any_rank([flag], ctx, device)
    return out


class GlobalLoss:
    """Under torchrun: the loss over all ranks' batches in every rank's output (attach it first, so the log,
    the history and MLflow all see it)."""

    def __init__(self, ctx: distributed.Context, device: torch.device) -> None:
        self.ctx, self.device = ctx, device

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        mean = distributed.mean_over_ranks(float(engine.state.output[0]["loss"]), self.ctx, self.device)
        for item in engine.state.output:
            item["loss"] = torch.tensor(mean)


class LastEpochValidation:
    """Validate the last epoch (and one cut short by a stop) when the ``every``-epoch interval skipped it."""

    def __init__(self, evaluator: Engine, every: int, stop: Stop) -> None:
        self.evaluator, self.every, self.stop = evaluator, every, stop

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, trainer: Engine) -> None:
        epoch = trainer.state.epoch
        if epoch % self.every and (epoch == trainer.state.max_epochs or self.stop.reason):
            self.evaluator.run(epoch)


class BestCheckpoint:
    """The network's weights (``state_dict``) to ``path`` whenever a validation improves the evaluator's key
    metric (its ``best_metric_epoch`` is the trainer's current epoch); nothing otherwise, nothing off rank 0."""

    def __init__(self, path: Path, net: torch.nn.Module, trainer: Engine, writer: bool = True) -> None:
        self.path, self.net, self.trainer, self.writer = path, net, trainer, writer

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        if self.writer and evaluator.state.best_metric_epoch == self.trainer.state.epoch:
            save_checkpoint(self.path, self.net.state_dict())


class EarlyStop:
    """ignite's EarlyStopping on the validation mean Dice (``patience`` validations without a gain of
    ``min_delta``), recording "early stopping" in ``stop`` with a log line when it ends the run."""

    def __init__(self, patience: int, min_delta: float, trainer: Engine, stop: Stop,
                 metric: str = "val_mean_dice") -> None:
        self.stop, self.min_delta = stop, min_delta
        self.early = EarlyStopping(patience=patience, threshold=min_delta, trainer=trainer,
                                   score_function=lambda engine: float(engine.state.metrics[metric]))

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.COMPLETED, self.early)
        evaluator.add_event_handler(Events.COMPLETED, self._note)

    def _note(self, evaluator: Engine) -> None:
        if self.early.counter >= self.early.patience and not self.stop.reason:
            self.stop.reason = "early stopping"
            logger.info("early stopping: no gain of %g in validation mean Dice for %d validations",
                        self.min_delta, self.early.patience)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.early.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.early.load_state_dict(state)


class TimeBudget:
    """Once ``minutes`` have passed since ``started`` (on any rank), end the epoch after this iteration and
    record "time budget" in ``stop`` (the epoch is then validated and checkpointed like a last one)."""

    def __init__(self, minutes: float, stop: Stop, started: float | None = None, clock: Clock = time.monotonic,
                 ctx: distributed.Context | None = None, device: torch.device | None = None) -> None:
        self.minutes, self.stop, self.clock = minutes, stop, clock
        self.started = clock() if started is None else started
        self.ctx, self.device = ctx or distributed.Context(), device or torch.device("cpu")

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        over = _all_ranks(self.clock() - self.started > self.minutes * 60.0, self.ctx, self.device)
        if over and not self.stop.reason:
            self.stop.reason = "time budget"
            logger.info("time budget of %g min reached at epoch %d: stopping after this epoch's validation",
                        self.minutes, engine.state.epoch)
            engine.terminate_epoch()


class FiniteLoss:
    """Stop with :class:`LossNotFinite` (naming epoch, step and the last good checkpoint) when the loss of any
    rank is NaN or infinite, after the loss and before the backward pass and the optimiser step."""

    def __init__(self, last_checkpoint: Path, stop: Stop, ctx: distributed.Context | None = None,
                 device: torch.device | None = None) -> None:
        self.last_checkpoint, self.stop = last_checkpoint, stop
        self.ctx, self.device = ctx or distributed.Context(), device or torch.device("cpu")

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output["loss"]
        if not _all_ranks(not bool(torch.isfinite(loss).all()), self.ctx, self.device):
            return
        state = engine.state
        step = (state.iteration - 1) % state.epoch_length + 1
        kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint.is_file()
                else "no checkpoint was written yet")
        self.stop.error = LossNotFinite(
            f"training loss is {float(loss.detach())} at epoch {state.epoch}, step {step}/{state.epoch_length}"
            f" (iteration {state.iteration}); stopped before the update, {kept}; lower"
            " training.learning_rate, set training.grad_clip, or check the labels"
        )
        raise self.stop.error


class DataWaitTimer:
    """The share of the step time (batch wait + forward, backward, update) spent waiting for the loader."""

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self.wait = self.step = self.t0 = 0.0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.GET_BATCH_STARTED, self._started)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, self._ready)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._stepped)

    def _started(self, _: Engine) -> None:
        self.t0 = self.clock()

    def _ready(self, _: Engine) -> None:
        self.wait += self.clock() - self.t0

    def _stepped(self, _: Engine) -> None:
        self.step += self.clock() - self.t0

    def share(self) -> float:
        """The share since the last call (0 before any step), and a fresh start."""
        share = self.wait / self.step if self.step > 0 else 0.0
        self.wait = self.step = 0.0
        return share


def new_history() -> dict[str, Any]:
    return {"epoch": [], "loss": [], "lr": [], "seconds": [], "val_epoch": [], "val": {}, "data_wait": []}


class EpochProgress:
    """One log line per epoch (loss, learning rate, last validation Dice, data wait share, elapsed time, ETA)
    and the same values in ``history`` (written to ``history_path``, so reports can be redrawn without
    MLflow; the data wait also goes to the tracker as ``data_wait_share``). A resumed run passes the
    checkpoint's history in and its seconds go on from there."""

    def __init__(self, evaluator: Engine, started: float, history_path: Path | None,
                 history: dict[str, Any] | None = None, tracker: Any = None, clock: Clock = time.monotonic) -> None:
        self.evaluator, self.started, self.history_path, self.tracker, self.clock = (
            evaluator, started, history_path, tracker, clock)
        self.history = history or new_history()
        self.history.setdefault("data_wait", [])
        self.offset = self.history["seconds"][-1] if self.history["seconds"] else 0.0
        self.timer = DataWaitTimer()
        self.losses: list[float] = []
        self.first_epoch = 0

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.STARTED, self._started)
        self.timer.attach(trainer)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, self._record_validation, trainer)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_done)

    def _started(self, trainer: Engine) -> None:
        self.first_epoch = trainer.state.epoch  # a resumed run's ETA counts the epochs this process ran

    def _collect(self, trainer: Engine) -> None:
        self.losses.append(float(trainer.state.output[0]["loss"]))

    def _record_validation(self, evaluator: Engine, trainer: Engine) -> None:
        self.history["val_epoch"].append(int(trainer.state.epoch))
        for key, value in evaluator.state.metrics.items():
            self.history["val"].setdefault(key, []).append(float(value))

    def _validation_text(self) -> str:
        metrics = self.evaluator.state.metrics if self.evaluator.state.epoch else {}
        if "val_mean_dice" not in metrics:
            return ""
        per_class = ", ".join(f"{k[9:]} {v:.3f}" for k, v in metrics.items() if k.startswith("val_dice_"))
        return f" | val Dice {per_class} (best mean {self.evaluator.state.best_metric:.3f})"

    def _epoch_done(self, trainer: Engine) -> None:
        epoch, total = trainer.state.epoch, trainer.state.max_epochs
        elapsed = self.clock() - self.started
        eta = elapsed / max(epoch - self.first_epoch, 1) * (total - epoch)
        lr = trainer.optimizer.param_groups[0]["lr"]
        mean_loss = sum(self.losses) / max(len(self.losses), 1)
        wait = self.timer.share()
        logger.info("epoch %d/%d | loss %.4f | lr %.2e%s | data wait %.0f%% | %.0fs elapsed, ~%.0fs left",
                    epoch, total, mean_loss, lr, self._validation_text(), 100 * wait, elapsed, eta)
        if self.tracker is not None:
            self.tracker.log_metrics({"data_wait_share": round(wait, 4)}, step=epoch)
        h = self.history
        h["data_wait"].append(round(wait, 4))
        h["epoch"].append(epoch)
        h["loss"].append(mean_loss)
        h["lr"].append(float(lr))
        h["seconds"].append(round(self.offset + elapsed, 2))
        if self.history_path is not None:
            atomic_write_text(self.history_path, json.dumps(h, indent=1))
        self.losses.clear()


class TrainingState:
    """Everything ``checkpoints/last.pt`` holds (see :mod:`medseg.engine.checkpoint`): :meth:`snapshot` and
    :meth:`restore`. ``parts`` are the live objects: net, optimizer, scheduler, trainer, evaluator, loader,
    transforms (the random MONAI transforms), early (an :class:`EarlyStop` or None), stop, progress."""

    def __init__(self, **parts: Any) -> None:
        self.p = parts
        self.scaler = getattr(parts["trainer"], "scaler", None)

    def snapshot(self) -> dict[str, Any]:
        """The state to save; under torchrun a collective call (every rank's random streams are gathered)."""
        p = self.p
        ctx = p.get("ctx") or distributed.Context()
        own = self._random_streams()
        ranks = distributed.gather(own, ctx) if ctx.distributed else [own]
        own = ranks[0]
        return {
            "format": FORMAT,
            "network": p["net"].state_dict(),
            "optimizer": p["optimizer"].state_dict(),
            "scheduler": p["scheduler"].state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "trainer": dict(p["trainer"].state_dict()),
            "evaluator": {"best_metric": float(p["evaluator"].state.best_metric),
                          "best_metric_epoch": int(p["evaluator"].state.best_metric_epoch)},
            "early_stopping": p["early"].state_dict() if p["early"] is not None else {},
            "stop_reason": p["stop"].reason,
            "history": p["progress"].history,
            **own,
            # under torchrun: every rank's own random streams (each rank's loader is seeded with seed + rank), so
            # that a resumed run draws what each rank would have drawn; the keys above are rank 0's
            "ranks": ranks if ctx.distributed else [],
        }

    def _random_streams(self) -> dict[str, Any]:
        """This process's random states: global and transform generators, the loader's, the click simulation's."""
        return {
            "rng": rng_state(self.p["transforms"]),
            "data_generator": self.p["loader"].generator.get_state(),
            # click-guided training: the click simulation's own generator (medseg.engine.interactive.ClickIteration)
            "clicks": json.dumps(self._clicks().bit_generator.state) if self._clicks() is not None else "",
        }

    def _clicks(self) -> Any:
        """The trainer's click simulation's random generator, when its iteration is one (else None)."""
        rng = getattr(getattr(self.p["trainer"], "_process_function", None), "rng", None)
        return rng if isinstance(rng, np.random.Generator) else None

    def restore(self, state: dict[str, Any]) -> None:
        """Put a snapshot back; a stored time-budget stop is dropped (a resumed run has a new budget)."""
        p = self.p
        p["net"].load_state_dict(state["network"])
        p["optimizer"].load_state_dict(state["optimizer"])
        p["scheduler"].load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        p["trainer"].load_state_dict(state["trainer"])
        t = p["trainer"].state
        if t.epoch_length and t.iteration % t.epoch_length:
            # an epoch cut short by the time budget was validated and checkpointed as a whole one: go on with the
            # next epoch (ignite would repeat the rest of it, shifting epochs, history and schedule by one)
            t.epoch = t.iteration // t.epoch_length + 1
            t.iteration = t.epoch * t.epoch_length
        p["evaluator"].state.best_metric = state["evaluator"]["best_metric"]
        p["evaluator"].state.best_metric_epoch = state["evaluator"]["best_metric_epoch"]
        if p["early"] is not None and state["early_stopping"]:
            p["early"].load_state_dict(state["early_stopping"])
        p["stop"].reason = state["stop_reason"] if state["stop_reason"] == "early stopping" else ""
        ctx = p.get("ctx") or distributed.Context()
        ranks = state.get("ranks") or []
        # this rank's own streams when the checkpoint holds one per rank of the same world size, else rank 0's
        own = ranks[ctx.rank] if ctx.distributed and len(ranks) == ctx.world else state
        set_rng_state(own["rng"], p["transforms"])
        p["loader"].generator.set_state(own["data_generator"])
        if self._clicks() is not None and own.get("clicks"):  # checkpoints written before it lack the key
            self._clicks().bit_generator.state = json.loads(own["clicks"])


class ResumableCheckpoint:
    """``state.snapshot()`` to ``path`` every ``every`` epochs, at the last epoch and when ``stop`` is set (then
    the run ends); the snapshot is taken on every rank (it gathers their random streams), written atomically by
    the writing rank only."""

    def __init__(self, path: Path, state: Any, every: int, stop: Stop, writer: bool = True) -> None:
        self.path, self.state, self.every, self.stop, self.writer = path, state, every, stop, writer

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, trainer: Engine) -> None:
        epoch = trainer.state.epoch
        if epoch % self.every == 0 or epoch == trainer.state.max_epochs or self.stop.reason:
            if self.writer or distributed.current().distributed:  # under torchrun a collective: every rank takes part
                payload = self.state.snapshot()  # (it gathers each rank's random streams)
                if self.writer:
                    save_checkpoint(self.path, payload)
        if self.stop.reason:
            trainer.terminate()
