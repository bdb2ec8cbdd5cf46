"""SupervisedTrainer + SupervisedEvaluator wiring for a task config.

One epoch is ``training.iterations_per_epoch`` batches drawn with replacement from the cached training
volumes (each draw is a fresh random patch), so a dataset of one volume and one of a hundred train on
the same schedule. Validation runs every ``training.val_every`` epochs and on the last epoch; the
checkpoint with the best validation mean Dice (foreground labels) is kept as ``checkpoints/best.pt``.
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
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import (
    CheckpointSaver,
    LrScheduleHandler,
    MeanDice,
    MeanIoUHandler,
    StatsHandler,
    ValidationHandler,
    from_engine,
)
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss, DiceLoss
from monai.transforms import AsDiscreted, Compose, MapTransform
from monai.utils import set_determinism
from torch.utils.data import RandomSampler

from medseg.engine.inference import sliding_window_inferer
from medseg.fileio import atomic_write_text
from medseg.networks import build_network
from medseg.transforms import build_eval_transforms, build_train_transforms

logger = logging.getLogger("medseg.train")


@dataclass
class TrainResult:
    network: torch.nn.Module
    best_checkpoint: Path
    best_val_dice: float
    best_epoch: int
    seconds: float
    device: torch.device


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


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _loss(name: str) -> torch.nn.Module:
    if name == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True)
    if name == "ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)
    return DiceCELoss(to_onehot_y=True, softmax=True)


def _progress(trainer: SupervisedTrainer, evaluator: SupervisedEvaluator, started: float, history_path: Path) -> None:
    """One log line per epoch (loss, learning rate, last validation Dice, elapsed time, ETA), and the same
    values in ``history.json`` so reports can be redrawn without MLflow."""
    losses: list[float] = []
    history: dict[str, Any] = {"epoch": [], "loss": [], "lr": [], "seconds": [], "val_epoch": [], "val": {}}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _collect(engine: SupervisedTrainer) -> None:
        losses.append(float(engine.state.output[0]["loss"]))

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _record_validation(engine: SupervisedEvaluator) -> None:
        history["val_epoch"].append(int(trainer.state.epoch))
        for key, value in engine.state.metrics.items():
            history["val"].setdefault(key, []).append(float(value))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _line(engine: SupervisedTrainer) -> None:
        epoch, total = engine.state.epoch, engine.state.max_epochs
        elapsed = time.monotonic() - started
        eta = elapsed / epoch * (total - epoch)
        lr = engine.optimizer.param_groups[0]["lr"]
        metrics = evaluator.state.metrics if evaluator.state.epoch else {}
        val_txt = ""
        if "val_mean_dice" in metrics:
            per_class = ", ".join(f"{k[9:]} {v:.3f}" for k, v in metrics.items() if k.startswith("val_dice_"))
            val_txt = f" | val Dice {per_class} (best mean {evaluator.state.best_metric:.3f})"
        mean_loss = sum(losses) / max(len(losses), 1)
        logger.info(
            "epoch %d/%d | loss %.4f | lr %.2e%s | %.0fs elapsed, ~%.0fs left",
            epoch, total, mean_loss, lr, val_txt, elapsed, eta,
        )
        history["epoch"].append(epoch)
        history["loss"].append(mean_loss)
        history["lr"].append(float(lr))
        history["seconds"].append(round(elapsed, 2))
        atomic_write_text(history_path, json.dumps(history, indent=1))
        losses.clear()


def train(
    cfg: dict[str, Any],
    run_dir: Path,
    train_files: list[dict[str, str]],
    val_files: list[dict[str, str]],
    tracker: Any = None,
) -> TrainResult:
    """Train the task's network and keep the best checkpoint by validation mean Dice.

    Args:
        cfg: resolved task config.
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
        train_files: training cases (``{"image", "label"}`` paths).
        val_files: validation cases.
        tracker: a :class:`medseg.tracking.Tracker` whose MONAI handlers are attached, or None.
    """
    tr = cfg["training"]
    set_determinism(seed=tr["seed"])
    torch.set_num_threads(tr["threads"] or os.cpu_count() or 1)
    device = pick_device(tr["device"])
    n_classes = len(cfg["data"]["labels"])
    started = time.monotonic()

    logger.info("caching %d training and %d validation volumes (preprocessing once)", len(train_files), len(val_files))
    train_ds = CacheDataset(train_files, build_train_transforms(cfg), cache_rate=tr["cache_rate"], progress=False)
    val_ds = CacheDataset(val_files, build_eval_transforms(cfg), cache_rate=tr["cache_rate"], progress=False)
    sampler = RandomSampler(train_ds, replacement=True, num_samples=tr["iterations_per_epoch"] * tr["batch_size"])
    train_loader = DataLoader(train_ds, batch_size=tr["batch_size"], sampler=sampler, num_workers=tr["num_workers"])
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=0)

    net = build_network(cfg["network"], 1, n_classes).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=tr["learning_rate"], weight_decay=tr["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tr["epochs"], eta_min=tr["learning_rate"] * 0.01)

    ckpt_dir = run_dir / "checkpoints"
    classes = cfg["evaluation"]["classes"] or {k: [v] for k, v in cfg["data"]["labels"].items() if v != 0}
    val_post = Compose(
        [AsDiscreted(keys="pred", argmax=True), ClassMasksd(keys=("pred", "label"), classes=list(classes.values()))]
    )
    best_saver = CheckpointSaver(
        save_dir=str(ckpt_dir), save_dict={"network": net}, save_key_metric=True, key_metric_filename="best.pt"
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
        val_handlers=[best_saver, _stats_handler()],
    )
    validation = ValidationHandler(validator=evaluator, interval=tr["val_every"], epoch_level=True)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=tr["epochs"],
        train_data_loader=train_loader,
        network=net,
        optimizer=optimizer,
        loss_function=_loss(tr["loss"]),
        inferer=SimpleInferer(),
        train_handlers=[
            LrScheduleHandler(lr_scheduler=scheduler, print_lr=False),
            validation,
            CheckpointSaver(
                save_dir=str(ckpt_dir),
                save_dict={"network": net, "optimizer": optimizer, "scheduler": scheduler},
                save_final=True,
                final_filename="last.pt",
            ),
        ],
    )
    if tracker is not None:
        train_handlers, val_handlers = tracker.handlers(lambda _: trainer.state.epoch)
        for handler in train_handlers:
            handler.attach(trainer)
        for handler in val_handlers:
            handler.attach(evaluator)
    if tr["epochs"] % tr["val_every"]:  # always validate after the last epoch

        @trainer.on(Events.COMPLETED)
        def _final_validation(engine: SupervisedTrainer) -> None:
            evaluator.run(engine.state.epoch)

    _progress(trainer, evaluator, started, run_dir / "history.json")
    logger.info(
        "training %s on %s: %d epochs x %d iterations, batch %d, patch %s",
        cfg["network"]["name"], device, tr["epochs"], tr["iterations_per_epoch"], tr["batch_size"], tr["patch_size"],
    )
    trainer.run()
    best = ckpt_dir / "best.pt"
    net.load_state_dict(torch.load(best, map_location=device, weights_only=True))
    return TrainResult(
        network=net,
        best_checkpoint=best,
        best_val_dice=float(evaluator.state.best_metric),
        best_epoch=int(evaluator.state.best_metric_epoch),
        seconds=time.monotonic() - started,
        device=device,
    )
