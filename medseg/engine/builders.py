"""The parts of a training run, each built from the task config: datasets and loaders, network, loss,
optimiser, schedule, inferers, and MONAI's SupervisedEvaluator / SupervisedTrainer around them.

:func:`medseg.engine.trainer.train` assembles them with the handlers of :mod:`medseg.engine.handlers`; the
benchmarks build their loaders, networks and trainers here too, so they measure what training runs.

One epoch is ``training.iterations_per_epoch`` batches drawn with replacement from the cached training
volumes (:class:`medseg.engine.distributed.ReplacementSampler`; each draw is a fresh random patch), so a
dataset of one volume and one of a hundred train on the same schedule.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import monai
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor, PersistentDataset, list_data_collate
from monai.data.samplers import DistributedSampler as EvalDistributedSampler
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import LrScheduleHandler, MeanDice, MeanIoUHandler, StatsHandler, ValidationHandler, from_engine
from monai.inferers import Inferer
from monai.transforms import AsDiscreted, Compose, MapTransform, RandomizableTrait, Transform

from medseg.engine import distributed
from medseg.engine.losses import build_loss
from medseg.engine.optim import attach_gradient_guard, build_optimizer, build_scheduler
from medseg.engine.precision import enable_activation_checkpointing, precision_arguments
from medseg.networks import build_network, wrap_deep_supervision
from medseg.networks.bundle import build_inferer
from medseg.transforms import build_eval_transforms, build_train_transforms, data_generator, input_channels

Items = Sequence[dict[str, Any]]  # MONAI dicts: Case.item() or a Case itself


def pick_device(choice: str) -> torch.device:
    """``training.device``: ``cuda``, ``cpu``, or ``auto`` (the GPU when there is one)."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _dicts(cases: Items) -> list[dict[str, Any]]:
    return [c.item() if hasattr(c, "item") else dict(c) for c in cases]


# ---- datasets and loaders


def collate_plain(items: list) -> dict[str, Any]:
    """MONAI's ``list_data_collate`` with MetaTensors as plain tensors, for the training loader.

    Training reads no metadata, and a worker's batch of MetaTensors is slow to unpickle in the training
    process: 16 ms against 3 ms for plain tensors (a 2x64x96x96 liver batch, 2 workers, 2 CPU cores).
    """
    batch = list_data_collate(items)
    return {k: v.as_tensor() if isinstance(v, MetaTensor) else v for k, v in batch.items()}


def training_dataset(cases: Items, cfg: Any, cache_rate: float | None = None) -> CacheDataset:
    """The training cases, preprocessed once and cached; every draw samples a patch and augments it.

    The cache is not copied per draw (``copy_cache=False``): the first random step crops a patch out of
    the cached volume and every later step writes new tensors, so the cache is never written to
    (``test_augmentation`` checks it with every augmentation on). The copy took 38% of the data time in
    slice mode (a whole volume copied for each 2D slice), and far more for full-size CT volumes.
    """
    rate = cfg.training.cache_rate if cache_rate is None else cache_rate
    if cfg.training.cache_dir:
        return persistent_dataset(cases, cfg, build_train_transforms(cfg), "train", rate, copy_cache=False)
    return CacheDataset(_dicts(cases), build_train_transforms(cfg), cache_rate=rate, progress=False, copy_cache=False)


def validation_dataset(cases: Items, cfg: Any) -> CacheDataset:
    """The validation cases with the deterministic preprocessing, cached."""
    if cfg.training.cache_dir:
        return persistent_dataset(cases, cfg, build_eval_transforms(cfg), "val", cfg.training.cache_rate)
    return CacheDataset(_dicts(cases), build_eval_transforms(cfg), cache_rate=cfg.training.cache_rate,
                        progress=False)


def preprocessing_key(cfg: Any) -> str:
    """Digest of what the deterministic preprocessing depends on (the preprocessing section, fitted values,
    labels, crop settings, patch, slice mode, MONAI's version): a planned or edited change gives a new cache."""
    d = cfg.to_dict()
    part = {"preprocessing": d["preprocessing"], "fitted": d["fitted"], "labels": d["data"]["labels"],
            "label_map": d["data"]["label_map"], "crop": d["augmentation"]["crop"],
            "patch": d["training"]["patch_size"], "pos_neg_ratio": d["training"]["pos_neg_ratio"],
            "network": {k: d["network"][k] for k in ("spatial_dims", "slice_mode", "slice_axis")},
            "monai": monai.__version__}
    return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_state(path: str) -> list[Any]:
    p = Path(path)
    if p.is_dir():  # a DICOM series folder: its files' sizes and times
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return [str(p), [(f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files]]
    st = p.stat()
    return [str(p), st.st_mtime_ns, st.st_size]


def case_key(item: dict[str, Any]) -> bytes:
    """A cached case's key: its paths with each file's mtime and size (a changed input file is a new entry)."""
    state = [[k, [_file_state(p) for p in (v if isinstance(v, (list, tuple)) else [v])]]
             for k, v in sorted(item.items()) if isinstance(v, (str, list, tuple, Path))]
    return hashlib.md5(json.dumps(state, default=str).encode()).hexdigest().encode()


def split_random(transform: Compose) -> tuple[Compose, Compose]:
    """``transform`` cut before its first random step (MONAI's rule for what a cache may store): the
    deterministic head and the random tail, each a Compose with the original's item mapping."""
    first = transform.get_index_of_first(lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform))
    steps = list(transform.transforms)
    first = len(steps) if first is None else first
    kw = {"map_items": transform.map_items, "unpack_items": transform.unpack_items}
    return Compose(steps[:first], **kw), Compose(steps[first:], **kw)


def persistent_dataset(cases: Items, cfg: Any, transform: Compose, part: str, cache_rate: float = 0.0,
                       copy_cache: bool = True) -> CacheDataset:
    """``training.cache_dir``: the deterministic steps stored once per case and config by MONAI's
    PersistentDataset under ``<cache_dir>/<preprocessing key>/<part>``, so later runs, folds and resumes read
    them from disk; ``cache_rate`` of the cases are then also held in memory (MONAI's CacheDataset over the
    stored items), the others read from disk at every draw (``cache_rate`` 0: memory stays bounded by a batch)."""
    folder = Path(cfg.training.cache_dir) / preprocessing_key(cfg) / part
    folder.mkdir(parents=True, exist_ok=True)
    head, tail = split_random(transform)
    # track_meta: MetaTensors back (affines for the random spatial steps); weights_only=False is needed for
    # them and reads only files this function wrote into the run's own cache folder
    stored = PersistentDataset(_dicts(cases), head, cache_dir=folder, hash_func=case_key, track_meta=True,
                               weights_only=False)
    return CacheDataset(stored, tail, cache_rate=cache_rate, progress=False, copy_cache=copy_cache)


def training_loader(dataset: Any, cfg: Any, ctx: distributed.Context | None = None, *,
                    num_workers: int | None = None, batches: int | None = None) -> DataLoader:
    """``batches`` (default ``training.iterations_per_epoch``) batches per epoch drawn with replacement
    (:class:`~medseg.engine.distributed.ReplacementSampler`, this rank's share), collated to plain tensors,
    from a generator seeded with ``training.seed`` + rank that seeds every random transform, workers too."""
    tr = cfg.training
    ctx = ctx or distributed.Context()
    workers = tr.num_workers if num_workers is None else num_workers
    per_epoch = tr.iterations_per_epoch if batches is None else batches
    sampler = distributed.ReplacementSampler(dataset, per_epoch * tr.batch_size, ctx, tr.seed)
    return DataLoader(dataset, batch_size=tr.batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=bool(tr.persistent_workers and workers > 0), collate_fn=collate_plain,
                      generator=data_generator(tr.seed + ctx.rank))


def validation_loader(dataset: Any, ctx: distributed.Context | None = None) -> DataLoader:
    """One case per batch; under torchrun each rank validates its share (with fewer cases than ranks some
    are repeated, as no rank may be left empty)."""
    ctx = ctx or distributed.Context()
    sampler = (EvalDistributedSampler(dataset, even_divisible=len(dataset) < ctx.world, shuffle=False)
               if ctx.distributed else None)
    return DataLoader(dataset, batch_size=1, num_workers=0, sampler=sampler)


# ---- network, loss, optimiser, schedule, inferers


def build_model(cfg: Any, device: torch.device,
                ctx: distributed.Context | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the network, what the trainer steps: the network itself, or DistributedDataParallel around it)."""
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels)).to(device)
    if cfg.training.activation_checkpointing:
        enable_activation_checkpointing(net)
    return net, distributed.wrap(net, ctx or distributed.Context(), device)


def training_loss(cfg: Any) -> torch.nn.Module:
    """``training.loss``; over ``[main, aux...]`` outputs (network.deep_supervision) MONAI's
    DeepSupervisionLoss with the YAML's weights."""
    return wrap_deep_supervision(build_loss(cfg.training), cfg.network)


def optimiser_and_schedule(parameters: Any, cfg: Any) -> tuple[torch.optim.Optimizer, Any]:
    """``training.optimizer`` over ``parameters`` and its per-epoch ``training.schedule``."""
    optimizer = build_optimizer(parameters, cfg.training)
    return optimizer, build_scheduler(optimizer, cfg.training)


def sliding_window_inferer(cfg: Any) -> Inferer:
    """Training-patch-sized windows, Gaussian blending, the configured overlap; with ``network.slice_mode``
    MONAI's SliceInferer (a 2D network slice by slice through the volume; the bundle uses the same entry)."""
    return build_inferer(cfg)


# ---- validation


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


def reported_classes(cfg: Any) -> dict[str, list[int]]:
    """``evaluation.classes``, or one class per foreground label."""
    return dict(cfg.evaluation.classes or {k: [v] for k, v in cfg.data.labels.items() if v != 0})


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


def build_evaluator(cfg: Any, net: torch.nn.Module, loader: Any, device: torch.device,
                    ctx: distributed.Context | None = None) -> SupervisedEvaluator:
    """Sliding-window validation scored by mean Dice over the reported classes (the key metric), with Dice
    and IoU per class (``val_dice_<class>``, ``val_iou_<class>``); rank 0 logs them."""
    ctx = ctx or distributed.Context()
    classes = reported_classes(cfg)
    post = Compose([AsDiscreted(keys="pred", argmax=True),
                    ClassMasksd(keys=("pred", "label"), classes=list(classes.values()))])
    per_class = {
        **{f"val_dice_{name}": MeanDice(include_background=True, output_transform=_channel(i))
           for i, name in enumerate(classes)},
        **{f"val_iou_{name}": MeanIoUHandler(include_background=True, output_transform=_channel(i))
           for i, name in enumerate(classes)},
    }
    return SupervisedEvaluator(
        device=device, val_data_loader=loader, network=net, inferer=sliding_window_inferer(cfg), postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(include_background=True,
                                                  output_transform=from_engine(["pred", "label"]))},
        additional_metrics=per_class, val_handlers=[_stats_handler()] if ctx.main else [],
    )


# ---- trainer


def build_trainer(cfg: Any, model: torch.nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                  loss_function: Any, device: torch.device, *, scheduler: Any = None,
                  evaluator: SupervisedEvaluator | None = None, **kwargs: Any) -> SupervisedTrainer:
    """MONAI's SupervisedTrainer with ``training.amp`` (inferer and amp arguments), gradient accumulation,
    the per-epoch schedule, validation every ``training.val_every`` epochs, and medseg's gradient guard
    (``training.grad_clip`` clipping, a skipped step on a non-finite gradient). ``kwargs`` go to the trainer."""
    tr = cfg.training
    inferer, amp_args = precision_arguments(tr.amp, device)
    handlers: list[Any] = []
    if scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler=scheduler, print_lr=False))
    if evaluator is not None:
        handlers.append(ValidationHandler(validator=evaluator, interval=tr.val_every, epoch_level=True))
    trainer = SupervisedTrainer(
        device=device, max_epochs=tr.epochs, train_data_loader=loader, network=model, optimizer=optimizer,
        loss_function=loss_function, inferer=inferer, accumulation_steps=tr.accumulation_steps,
        train_handlers=handlers, **amp_args, **kwargs,
    )
    attach_gradient_guard(trainer, tr.grad_clip)
    return trainer
