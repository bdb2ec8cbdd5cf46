"""SupervisedTrainer + SupervisedEvaluator wiring for a task config.

One epoch is ``training.iterations_per_epoch`` batches drawn with replacement from the cached training
volumes (each draw is a fresh random patch), so a dataset of one volume and one of a hundred train on
the same schedule. Validation runs every ``training.val_every`` epochs and on the last epoch; the
network with the best validation mean Dice (foreground labels) is kept as ``checkpoints/best.pt``, and
``checkpoints/last.pt`` holds the full training state for ``--resume`` (see ``medseg.engine.checkpoint``).

Loss, optimiser and schedule come from ``medseg.engine.losses`` / ``medseg.engine.optim``; mixed
precision, gradient accumulation and clipping, early stopping, a time budget and a stop on a non-finite
loss are handlers and arguments of MONAI's SupervisedTrainer, not a loop of our own.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.handlers import EarlyStopping
from monai.data import CacheDataset, DataLoader, MetaTensor, list_data_collate
from monai.data.samplers import DistributedSampler as EvalDistributedSampler
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import (
    LrScheduleHandler,
    MeanDice,
    MeanIoUHandler,
    StatsHandler,
    ValidationHandler,
    from_engine,
)
from monai.transforms import AsDiscreted, Compose, MapTransform
from monai.utils import set_determinism

from medseg.engine import distributed
from medseg.engine.checkpoint import (
    FORMAT, load_checkpoint, random_transforms, rng_state, save_checkpoint, set_rng_state,
)
from medseg.engine.inference import sliding_window_inferer
from medseg.engine.losses import build_loss
from medseg.engine.optim import attach_gradient_guard, build_optimizer, build_scheduler
from medseg.engine.precision import (
    disable_activation_checkpointing, enable_activation_checkpointing, precision_arguments,
)
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text
from medseg.networks import build_network, wrap_deep_supervision
from medseg.transforms import build_eval_transforms, build_train_transforms, data_generator, input_channels

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


class LossNotFinite(MedsegError):
    """The training loss became NaN or infinite; the run stops before the optimiser takes the step."""


class ClassMasksd(MapTransform):
    """Turn a label map (1, *spatial) into one binary channel per reported class (label values merged)."""

    def __init__(self, keys: Any, classes: list[list[int]]) -> None:
        super().__init__(keys)
        self.classes = [torch.tensor(c) for c in classes]

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = d[key][0]
            d[key] = torch.stack([torch.isin(labels, c.to(labels.device)) for c in self.classes]).float()
        return d


def _channel(index: int):
    def select(output: list[dict]) -> tuple[list, list]:
        pred, label = from_engine(["pred", "label"])(output)
        return [p[index : index + 1] for p in pred], [l[index : index + 1] for l in label]

    return select


def _stats_handler() -> StatsHandler:
    """MONAI's StatsHandler for validation metrics, writing through medseg's log (console and train.log)."""
    handler = StatsHandler(name="medseg.validation", iteration_log=False)
    validation_logger = logging.getLogger("medseg.validation")
    validation_logger.handlers.clear()  # MONAI gives it a stdout handler of its own; use medseg's instead
    validation_logger.propagate = True
    return handler


def collate_plain(items: list) -> dict[str, Any]:
    """MONAI's ``list_data_collate`` with MetaTensors as plain tensors, for the training loader.

    Training reads no metadata, and a worker's batch of MetaTensors is slow to unpickle in the training
    process: 16 ms against 3 ms for plain tensors (a 2x64x96x96 liver batch, 2 workers, 2 CPU cores).
    """
    batch = list_data_collate(items)
    return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in batch.items()}


def training_dataset(files: list[dict[str, Any]], cfg: dict[str, Any]) -> CacheDataset:
    """The training cases, preprocessed once and cached; every draw samples a patch and augments it.

    The cache is not copied per draw (``copy_cache=False``): the first random step crops a patch out of
    the cached volume and every later step writes new tensors, so the cache is never written to
    (``test_augmentation`` checks it with every augmentation on). The copy took 38% of the data time in
    slice mode (a whole volume copied for each 2D slice), and far more for full-size CT volumes.
    """
    return CacheDataset(files, build_train_transforms(cfg), cache_rate=cfg["training"]["cache_rate"],
                        progress=False, copy_cache=False)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _progress(
    trainer: SupervisedTrainer,
    evaluator: SupervisedEvaluator,
    started: float,
    history_path: Path | None,
    history: dict[str, Any] | None = None,
    tracker: Any = None,
) -> dict[str, Any]:
    """One log line per epoch (loss, learning rate, last validation Dice, share of the step time spent
    waiting for data, elapsed time, ETA), and the same values in ``history.json`` so reports can be redrawn
    without MLflow (the data wait also goes to MLflow as ``data_wait_share``). Returns the history (updated
    in place); a resumed run passes the checkpoint's history in and its seconds go on from there."""
    losses: list[float] = []
    timing = {"wait": 0.0, "step": 0.0, "t0": 0.0}
    history = history or {"epoch": [], "loss": [], "lr": [], "seconds": [], "val_epoch": [], "val": {}}
    history.setdefault("data_wait", [])
    offset = history["seconds"][-1] if history["seconds"] else 0.0
    first_epoch = trainer.state.epoch

    @trainer.on(Events.GET_BATCH_STARTED)
    def _batch_started(engine: SupervisedTrainer) -> None:
        timing["t0"] = time.perf_counter()

    @trainer.on(Events.GET_BATCH_COMPLETED)
    def _batch_ready(engine: SupervisedTrainer) -> None:
        timing["wait"] += time.perf_counter() - timing["t0"]

    @trainer.on(Events.ITERATION_COMPLETED)
    def _collect(engine: SupervisedTrainer) -> None:
        losses.append(float(engine.state.output[0]["loss"]))
        timing["step"] += time.perf_counter() - timing["t0"]  # batch wait + forward, backward, update

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _record_validation(engine: SupervisedEvaluator) -> None:
        history["val_epoch"].append(int(trainer.state.epoch))
        for key, value in engine.state.metrics.items():
            history["val"].setdefault(key, []).append(float(value))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _line(engine: SupervisedTrainer) -> None:
        epoch, total = engine.state.epoch, engine.state.max_epochs
        elapsed = time.monotonic() - started
        eta = elapsed / max(epoch - first_epoch, 1) * (total - epoch)
        lr = engine.optimizer.param_groups[0]["lr"]
        metrics = evaluator.state.metrics if evaluator.state.epoch else {}
        val_txt = ""
        if "val_mean_dice" in metrics:
            per_class = ", ".join(f"{k[9:]} {v:.3f}" for k, v in metrics.items() if k.startswith("val_dice_"))
            val_txt = f" | val Dice {per_class} (best mean {evaluator.state.best_metric:.3f})"
        mean_loss = sum(losses) / max(len(losses), 1)
        wait = timing["wait"] / timing["step"] if timing["step"] > 0 else 0.0
        timing["wait"] = timing["step"] = 0.0
        logger.info(
            "epoch %d/%d | loss %.4f | lr %.2e%s | data wait %.0f%% | %.0fs elapsed, ~%.0fs left",
            epoch, total, mean_loss, lr, val_txt, 100 * wait, elapsed, eta,
        )
        if tracker is not None:
            tracker.log_metrics({"data_wait_share": round(wait, 4)}, step=epoch)
        history["data_wait"].append(round(wait, 4))
        history["epoch"].append(epoch)
        history["loss"].append(mean_loss)
        history["lr"].append(float(lr))
        history["seconds"].append(round(offset + elapsed, 2))
        if history_path is not None:
            atomic_write_text(history_path, json.dumps(history, indent=1))
        losses.clear()

    return history


class _Stop:
    """Why training stops early: set by the handlers, read after ``trainer.run()``."""

    def __init__(self) -> None:
        self.reason = ""
        self.error: Exception | None = None


def train(
    cfg: dict[str, Any],
    run_dir: Path,
    train_files: list[dict[str, str]],
    val_files: list[dict[str, str]],
    tracker: Any = None,
    resume: bool = False,
    max_minutes: float = 0.0,
) -> TrainResult:
    """Train the task's network and keep the best checkpoint by validation mean Dice.

    Args:
        cfg: resolved task config.
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
        train_files: training cases (``{"image", "label"}`` paths).
        val_files: validation cases.
        tracker: a :class:`medseg.tracking.Tracker` whose MONAI handlers are attached, or None.
        resume: continue from ``run_dir/checkpoints/last.pt`` (weights, optimiser, schedule, position,
            random states) instead of starting afresh.
        max_minutes: stop after the epoch during which this much time has passed (0 = no limit); the run
            is then checkpointed and validated like a finished one.
    """
    tr = cfg["training"]
    ctx = distributed.current()
    set_determinism(seed=tr["seed"])  # the same initial weights on every rank; data streams differ per rank
    torch.set_num_threads(tr["threads"] or os.cpu_count() or 1)
    device = distributed.device_for(ctx, pick_device(tr["device"]))
    n_classes = len(cfg["data"]["labels"])
    started = time.monotonic()
    ckpt_dir = run_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    state = load_checkpoint(last_path, device) if resume else None

    logger.info("caching %d training and %d validation volumes (preprocessing once)", len(train_files), len(val_files))
    train_ds = training_dataset(train_files, cfg)
    val_ds = CacheDataset(val_files, build_eval_transforms(cfg), cache_rate=tr["cache_rate"], progress=False)
    sampler = distributed.ReplacementSampler(train_ds, tr["iterations_per_epoch"] * tr["batch_size"], ctx, tr["seed"])
    train_loader = DataLoader(train_ds, batch_size=tr["batch_size"], sampler=sampler, num_workers=tr["num_workers"],
                              persistent_workers=bool(tr["persistent_workers"] and tr["num_workers"] > 0),
                              collate_fn=collate_plain,
                              generator=data_generator(tr["seed"] + ctx.rank))  # seeds every random transform, workers too
    # each rank validates its share; with fewer cases than ranks some are repeated, as no rank may be left empty
    val_sampler = (EvalDistributedSampler(val_ds, even_divisible=len(val_ds) < ctx.world, shuffle=False)
                   if ctx.distributed else None)
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=0, sampler=val_sampler)

    net = build_network(cfg["network"], input_channels(cfg), n_classes).to(device)
    if tr["activation_checkpointing"]:
        enable_activation_checkpointing(net)
    model = distributed.wrap(net, ctx, device)
    optimizer = build_optimizer(model.parameters(), tr)
    scheduler = build_scheduler(optimizer, tr)
    # [main, aux...] outputs in training (network.deep_supervision): MONAI's DeepSupervisionLoss, YAML weights
    loss_function = wrap_deep_supervision(build_loss(tr), cfg["network"])
    train_inferer, amp_args = precision_arguments(tr["amp"], device)

    classes = cfg["evaluation"]["classes"] or {k: [v] for k, v in cfg["data"]["labels"].items() if v != 0}
    val_post = Compose(
        [AsDiscreted(keys="pred", argmax=True), ClassMasksd(keys=("pred", "label"), classes=list(classes.values()))]
    )
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=val_loader,
        network=net,
        inferer=sliding_window_inferer(cfg),
        postprocessing=val_post,
        key_val_metric={
            "val_mean_dice": MeanDice(include_background=True, output_transform=from_engine(["pred", "label"]))
        },
        additional_metrics={
            **{f"val_dice_{name}": MeanDice(include_background=True, output_transform=_channel(i))
               for i, name in enumerate(classes)},
            **{f"val_iou_{name}": MeanIoUHandler(include_background=True, output_transform=_channel(i))
               for i, name in enumerate(classes)},
        },
        val_handlers=[_stats_handler()] if ctx.main else [],
    )
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=tr["epochs"],
        train_data_loader=train_loader,
        network=model,
        optimizer=optimizer,
        loss_function=loss_function,
        inferer=train_inferer,
        accumulation_steps=tr["accumulation_steps"],
        train_handlers=[
            LrScheduleHandler(lr_scheduler=scheduler, print_lr=False),
            ValidationHandler(validator=evaluator, interval=tr["val_every"], epoch_level=True),
        ],
        **amp_args,
    )
    stop = _Stop()
    if ctx.distributed:

        @trainer.on(Events.ITERATION_COMPLETED)
        def _global_loss(engine: SupervisedTrainer) -> None:
            """The loss over all ranks' batches (attached first: the log, history and MLflow all see it)."""
            mean = distributed.mean_over_ranks(float(engine.state.output[0]["loss"]), ctx, device)
            for item in engine.state.output:
                item["loss"] = torch.tensor(mean)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate_last(engine: SupervisedTrainer) -> None:
        """Validate the last epoch (and one cut short by the time budget) when the interval skipped it."""
        epoch = engine.state.epoch
        if epoch % tr["val_every"] and (epoch == engine.state.max_epochs or stop.reason):
            evaluator.run(epoch)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _save_best(engine: SupervisedEvaluator) -> None:
        if ctx.main and engine.state.best_metric_epoch == trainer.state.epoch:
            save_checkpoint(best_path, net.state_dict())

    early = None
    if tr["early_stopping_patience"]:
        early = EarlyStopping(
            patience=tr["early_stopping_patience"], threshold=tr["early_stopping_min_delta"], trainer=trainer,
            score_function=lambda engine: float(engine.state.metrics["val_mean_dice"]),
        )
        evaluator.add_event_handler(Events.COMPLETED, early)

        @evaluator.on(Events.COMPLETED)
        def _note_early_stop(engine: SupervisedEvaluator) -> None:
            if early.counter >= early.patience and not stop.reason:
                stop.reason = "early stopping"
                logger.info("early stopping: no gain of %g in validation mean Dice for %d validations",
                            tr["early_stopping_min_delta"], early.patience)

    attach_gradient_guard(trainer, tr["grad_clip"])  # clipping, and a skipped step on a non-finite gradient

    @trainer.on(IterationEvents.LOSS_COMPLETED)
    def _finite_loss(engine: SupervisedTrainer) -> None:
        loss = engine.state.output["loss"]
        (bad,) = distributed.any_rank([not bool(torch.isfinite(loss).all())], ctx, device)
        if bad:
            step = (engine.state.iteration - 1) % engine.state.epoch_length + 1
            kept = f"the last good checkpoint is {last_path}" if last_path.is_file() else "no checkpoint was written yet"
            stop.error = LossNotFinite(
                f"training loss is {float(loss)} at epoch {engine.state.epoch}, step {step}/{engine.state.epoch_length}"
                f" (iteration {engine.state.iteration}); stopped before the update, {kept}; lower"
                " training.learning_rate, set training.grad_clip, or check the labels"
            )
            raise stop.error

    if max_minutes > 0:
        budget_s = max_minutes * 60.0

        @trainer.on(Events.ITERATION_COMPLETED)
        def _time_budget(engine: SupervisedTrainer) -> None:
            (over,) = distributed.any_rank([time.monotonic() - started > budget_s], ctx, device)
            if over and not stop.reason:
                stop.reason = "time budget"
                logger.info("time budget of %g min reached at epoch %d: stopping after this epoch's validation",
                            max_minutes, engine.state.epoch)
                engine.terminate_epoch()

    if tracker is not None and ctx.main:
        train_handlers, val_handlers = tracker.handlers(lambda _: trainer.state.epoch)
        for handler in train_handlers:
            handler.attach(trainer)
        for handler in val_handlers:
            handler.attach(evaluator)

    history = _progress(trainer, evaluator, started, run_dir / "history.json" if ctx.main else None,
                        state["history"] if state else None, tracker if ctx.main else None)
    transforms = random_transforms(train_ds.transform)
    scaler = getattr(trainer, "scaler", None)

    def snapshot() -> dict[str, Any]:
        return {
            "format": FORMAT,
            "network": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "trainer": dict(trainer.state_dict()),
            "evaluator": {"best_metric": float(evaluator.state.best_metric),
                          "best_metric_epoch": int(evaluator.state.best_metric_epoch)},
            "early_stopping": early.state_dict() if early is not None else {},
            "stop_reason": stop.reason,
            "history": history,
            "rng": rng_state(transforms),
            "data_generator": train_loader.generator.get_state(),
        }

    @trainer.on(Events.EPOCH_COMPLETED)
    def _checkpoint(engine: SupervisedTrainer) -> None:
        epoch = engine.state.epoch
        if ctx.main and (epoch % tr["checkpoint_every"] == 0 or epoch == engine.state.max_epochs or stop.reason):
            save_checkpoint(last_path, snapshot())
        if stop.reason:
            engine.terminate()

    if state is not None:
        net.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        trainer.load_state_dict(state["trainer"])
        evaluator.state.best_metric = state["evaluator"]["best_metric"]
        evaluator.state.best_metric_epoch = state["evaluator"]["best_metric_epoch"]
        if early is not None and state["early_stopping"]:
            early.load_state_dict(state["early_stopping"])
        stop.reason = state["stop_reason"] if state["stop_reason"] == "early stopping" else ""  # a new time budget
        set_rng_state(state["rng"], transforms)
        train_loader.generator.set_state(state["data_generator"])
        logger.info("resuming from %s at epoch %d/%d", last_path, trainer.state.epoch, tr["epochs"])

    logger.info(
        "training %s on %s: %d epochs x %d iterations, batch %d%s, patch %s, %s, %s, amp %s",
        cfg["network"]["name"], device, tr["epochs"], tr["iterations_per_epoch"], tr["batch_size"],
        f" x {ctx.world} processes" if ctx.distributed else "", tr["patch_size"], tr["optimizer"], tr["loss"], tr["amp"],
    )
    if trainer.state.epoch < tr["epochs"] and not stop.reason:
        trainer.run()
        if stop.error is not None:  # raised in the engine; re-raised here should a handler have swallowed it
            raise stop.error
    if tr["activation_checkpointing"]:
        disable_activation_checkpointing(net)
    distributed.barrier(ctx)
    if not best_path.is_file():
        raise MedsegError(f"{best_path}: no validation improved on the start; nothing to keep")
    net.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    return TrainResult(
        network=net,
        best_checkpoint=best_path,
        best_val_dice=float(evaluator.state.best_metric),
        best_epoch=int(evaluator.state.best_metric_epoch),
        seconds=time.monotonic() - started,
        device=device,
        stop_reason=stop.reason,
        epochs_run=int(trainer.state.epoch),
    )
