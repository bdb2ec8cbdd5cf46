"""Task configuration: a pipeline YAML merged over defaults, validated key by key.

Every knob has its default here, in :data:`DEFAULTS`; a task YAML in ``pipelines/`` overrides what it
names. Unknown keys and wrongly typed values are refused with the file and the dotted key, so a typo
never silently falls back to a default.

Example:
    >>> cfg = load_config("liver", overrides=["training.epochs=2"])
    >>> cfg["network"]["name"]
    'unet'
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from medseg.errors import MedsegError

#: Where the task YAMLs live: ``pipelines/`` beside the package (editable install / checkout).
PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"

DEFAULTS: dict[str, Any] = {
    "task": "",
    "description": "",
    "data": {
        "layout": "msd",  # msd | nnunet | csv | folders (medseg/data/layouts.py)
        "dataset": "",  # folder under --data-dir (or an absolute path)
        "sample": "",  # built-in sample used when the dataset folder is absent ("" = none)
        "labels": {"background": 0},  # label value per name in the label maps
        "val_fraction": 0.2,
        "modality": "CT",
        "label_map": {},  # value in the label files -> label value, e.g. {255: 1} (set for 0/255 masks)
        "skip_bad": False,  # leave out (and list) cases that fail the header checks instead of stopping
    },
    # preprocessing/augmentation: per-modality defaults in medseg/transforms/settings.py (MODALITY_DEFAULTS)
    "preprocessing": {
        "orientation": "RAS",
        "spacing": [1.5, 1.5, 1.5],  # target spacing in mm, or "auto": the training set's median spacing
        # CT window in HU, mapped to [0, 1] and clipped: a preset name (liver, abdomen, soft_tissue, lung, bone,
        # brain, mediastinum), {level, width}, {min, max}, or a list of these (stacked as input channels)
        "window": "soft_tissue",
        "intensity": "window",  # window | zscore | percentile | histogram | none
        "zscore": {"region": "nonzero"},  # image | nonzero | mask (Otsu foreground)
        "percentile": {"lower": 0.5, "upper": 99.5},  # clipped, scaled to [0, 1]
        # Nyul standardisation: landmarks at these percentiles are learned on the training set when empty
        "histogram": {"percentiles": [1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0],
                      "landmarks": []},
        "bias_correction": {"enabled": False, "shrink": 4, "iterations": [50, 50, 30], "cache_dir": ".cache/n4"},
        "crop_foreground": True,
        "pad_to_multiple": False,  # pad to a multiple of the network's total stride (product of network.strides)
        "image_channels": 0,  # image files per case (nnU-Net _0000, _0001, ...); 0 = counted on the training cases
    },
    "augmentation": {
        "elastic": {"prob": 0.3, "sigma": [5.0, 8.0], "magnitude": [50.0, 150.0]},  # sigma: smoothness, magnitude: alpha
        "rotate_deg": 15.0,
        "rotate_prob": 0.5,
        "scale": [0.8, 1.2],
        "scale_prob": 0.5,
        "flip_prob": 0.5,  # mirroring along every axis, as nnU-Net does
        "intensity_shift": 0.1,  # brightness: add and multiply by up to +-intensity_shift
        "intensity_prob": 0.5,
        "contrast": {"prob": 0.0, "range": [0.75, 1.25]},  # scale around the mean
        "gamma": {"prob": 0.0, "range": [0.7, 1.5]},
        "noise": {"prob": 0.0, "std": 0.05},  # Gaussian
        "blur": {"prob": 0.0, "sigma": [0.5, 1.0]},  # Gaussian, voxels
        "bias_field": {"prob": 0.0, "coeff": [0.0, 0.3], "degree": 3},  # MRI smooth multiplicative field
        "crop": {"mode": "balanced", "pad_to_patch": True},  # balanced (training.pos_neg_ratio) | random
    },
    "network": {  # medseg/networks: `python -m medseg.networks` lists the names, sizes and papers
        "name": "resunet",  # MONAI UNet with residual units
        "spatial_dims": 3,
        # shorthand for the network's arguments of the same meaning; null = the network's own default
        # (resunet's: channels [16, 32, 64, 128, 256], strides [2, 2, 2, 2], 2 residual units, batch norm)
        "channels": None,
        "strides": None,
        "num_res_units": None,
        "dropout": None,
        "norm": None,
        "args": {},  # any other constructor argument of the network, e.g. {prune_depth: 3} (unknown ones refused)
        "deep_supervision": False,  # train on [main, aux...] outputs (unetpp, unet3p); inference uses main
        "ds_weights": [],  # loss weight per output, main first; [] = 1, 0.5, 0.25, ...
        "slice_mode": False,  # a 2D network on 3D volumes: train on 2D slices, predict slice by slice
        "slice_axis": 2,  # the axis slices are taken across (2 = axial in RAS)
    },
    "training": {
        "epochs": 40,
        "iterations_per_epoch": 20,
        "batch_size": 2,
        "patch_size": [96, 96, 64],
        "pos_neg_ratio": 2.0,
        "loss": "dice_ce",  # dice_ce | dice | ce | dice_focal (MONAI losses; medseg/engine/losses.py)
        "ce_weight": 1.0,  # alpha in alpha*CE + beta*Dice (dice_ce); the focal term's weight in dice_focal
        "dice_weight": 1.0,  # beta
        "dice_smooth": 1e-5,  # smoothing eps added to numerator and denominator of the soft Dice
        "include_background": True,  # background channel in the Dice term
        "focal_gamma": 2.0,
        "optimizer": "adamw",  # adamw | adam | sgd (SGD with Nesterov momentum)
        "momentum": 0.99,  # sgd only
        "learning_rate": 1e-3,
        "weight_decay": 1e-5,
        "schedule": "cosine",  # cosine | step | cosine_restarts | poly | constant; stepped once per epoch
        "min_lr_ratio": 0.01,  # cosine / cosine_restarts floor, as a share of learning_rate
        "warmup_epochs": 0,  # linear warm-up from warmup_start_ratio * learning_rate, before the schedule
        "warmup_start_ratio": 0.1,
        "step_size": 10,  # step: epochs between decays
        "step_gamma": 0.1,  # step: decay factor
        "restart_epochs": 10,  # cosine_restarts: epochs of the first cycle
        "restart_mult": 1,  # cosine_restarts: cycle length multiplier
        "poly_power": 0.9,  # poly: lr * (1 - epoch / epochs) ** power
        "grad_clip": 0.0,  # clip the gradient norm to this value; 0 = no clipping
        "amp": "none",  # none | bf16 | fp16 (fp16 on GPU only, with a gradient scaler)
        "accumulation_steps": 1,  # optimiser step every N batches (effective batch = N x batch_size)
        "activation_checkpointing": False,  # recompute activations in backward (less memory, more time)
        "early_stopping_patience": 0,  # validations without improvement before stopping; 0 = off
        "early_stopping_min_delta": 0.0,  # improvement in validation mean Dice that counts
        "checkpoint_every": 1,  # epochs between resumable checkpoints (checkpoints/last.pt)
        "folds": 5,  # k of k-fold cross-validation (--fold K / --folds all)
        "val_every": 2,
        "seed": 0,
        "num_workers": 0,
        # keep the worker processes from epoch to epoch (with num_workers > 0): no start-up per epoch; a
        # resumed run then draws a new augmentation stream (bit-identical resumes need this off or 0 workers)
        "persistent_workers": True,
        "cache_rate": 1.0,  # share of preprocessed volumes kept in memory (lower it for large datasets)
        "threads": 0,  # torch threads; 0 = all cores
        "device": "auto",  # auto | cpu | cuda
    },
    "evaluation": {
        "classes": {},  # reported class name -> label values merged into it
        "keep_largest_component": [],  # class names post-processed to their largest component
        "sw_overlap": 0.25,
        "tolerance_mm": 2.0,  # tolerance for normalised surface Dice and boundary F1
        "worst_mm": 0.0,  # distance given when exactly one mask is empty; 0 = the image diagonal
    },
    "tracking": {"enabled": True, "experiment": "medseg"},
    "bundle": {"enabled": True, "name": "", "dir": "bundles", "authors": "medseg", "license": "CC-BY-SA-4.0"},
}

_CHOICES = {
    "data.layout": {"msd", "nnunet", "csv", "folders"},
    "data.modality": {"CT", "MR", "XR", "microscopy"},
    "network.name": {"unet", "resunet", "attention_unet", "unetpp", "unet3p", "unetr", "swin_unetr", "light_unet"},
    "network.norm": {"instance", "batch"},
    "training.loss": {"dice_ce", "dice", "ce", "dice_focal"},
    "training.optimizer": {"adamw", "adam", "sgd"},
    "training.schedule": {"cosine", "step", "cosine_restarts", "poly", "constant"},
    "training.amp": {"none", "bf16", "fp16"},
    "training.device": {"auto", "cpu", "cuda"},
    "preprocessing.orientation": {"RAS", "LPS"},
}


def available_tasks() -> list[str]:
    """Names of the task YAMLs in ``pipelines/``."""
    return sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))


def resolve_task(task_or_yaml: str) -> Path:
    """Return the YAML path for a task name (a file in ``pipelines/``) or a path to a YAML."""
    candidate = Path(task_or_yaml)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise MedsegError(f"{task_or_yaml}: no such pipeline YAML")
        return candidate
    path = PIPELINES_DIR / f"{task_or_yaml}.yaml"
    if not path.is_file():
        raise MedsegError(
            f"unknown task '{task_or_yaml}': available tasks are {', '.join(available_tasks()) or '(none)'};"
            " or pass a path to a pipeline YAML"
        )
    return path


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _merge(base: dict, update: dict, source: str, prefix: str = "") -> None:
    """Merge ``update`` into ``base`` in place, refusing keys and types the defaults don't have."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base)) or "(none)"
            raise MedsegError(f"{source}: unknown key '{dotted}' (known keys here: {known})")
        default = base[key]
        if dotted in _SHAPED:  # several shapes allowed; checked by medseg.transforms.settings.validate
            partial = isinstance(default, dict) and isinstance(value, dict) and set(value) < set(default)
            base[key] = {**default, **value} if partial else value  # window.level=50 keeps the width
            continue
        if isinstance(default, dict) and default and not _free_form(dotted):
            if not isinstance(value, dict):
                raise MedsegError(f"{source}: key '{dotted}' must be a mapping, got {type(value).__name__}")
            _merge(default, value, source, dotted + ".")
        elif dotted == "network.args" and isinstance(value, dict):  # free-form, but merged key by key
            base[key] = {**default, **value}
        else:
            base[key] = _check_type(dotted, default, value, source)


_SHAPED = {"preprocessing.window", "preprocessing.spacing"}


def _free_form(dotted: str) -> bool:
    return dotted in {"data.labels", "evaluation.classes", "data.label_map"}


def _check_type(dotted: str, default: Any, value: Any, source: str) -> Any:
    if value is None and DEFAULTS["network"].get(dotted.removeprefix("network."), 0) is None:
        return None  # network shorthand keys: null = the network's own default (medseg/networks), even over a YAML value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise MedsegError(
            f"{source}: key '{dotted}' must be {type(default).__name__}, got {value!r} ({type(value).__name__})"
        )
    choices = _CHOICES.get(dotted)
    if choices and value not in choices:
        raise MedsegError(f"{source}: key '{dotted}' is {value!r}; choose one of {', '.join(sorted(choices))}")
    return value


def _validate(cfg: dict, source: str) -> None:
    if not cfg["task"]:
        raise MedsegError(f"{source}: key 'task' is missing: name the task, e.g. 'task: liver'")
    labels = cfg["data"]["labels"]
    if not all(isinstance(v, int) for v in labels.values()):
        raise MedsegError(f"{source}: key 'data.labels' must map names to integer label values")
    values = set(labels.values())
    if not all(isinstance(k, int) and isinstance(v, int) for k, v in cfg["data"]["label_map"].items()):
        raise MedsegError(f"{source}: key 'data.label_map' must map integer file values to integer labels, e.g. {{255: 1}}")
    for name, members in cfg["evaluation"]["classes"].items():
        if not isinstance(members, list) or not members or not set(members) <= values:
            raise MedsegError(
                f"{source}: key 'evaluation.classes.{name}' must list label values from data.labels {sorted(values)}"
            )
    for name in cfg["evaluation"]["keep_largest_component"]:
        if name not in cfg["evaluation"]["classes"]:
            raise MedsegError(f"{source}: key 'evaluation.keep_largest_component' names unknown class '{name}'")
    train = cfg["training"]
    from medseg.networks import check_network

    # name, arguments, training.patch_size (values and multiple), slice mode, deep supervision weights
    check_network(cfg, source)
    for key in ("epochs", "iterations_per_epoch", "batch_size", "val_every"):
        if train[key] < 1:
            raise MedsegError(f"{source}: key 'training.{key}' must be at least 1")
    if train["folds"] < 2:
        raise MedsegError(f"{source}: key 'training.folds' must be at least 2")
    for key in ("accumulation_steps", "checkpoint_every", "step_size", "restart_epochs", "restart_mult"):
        if train[key] < 1:
            raise MedsegError(f"{source}: key 'training.{key}' must be at least 1")
    for key in ("ce_weight", "dice_weight", "dice_smooth", "focal_gamma", "momentum", "weight_decay", "grad_clip",
                "early_stopping_min_delta", "warmup_epochs", "early_stopping_patience", "poly_power"):
        if train[key] < 0:
            raise MedsegError(f"{source}: key 'training.{key}' must not be negative")
    if train["learning_rate"] <= 0:
        raise MedsegError(f"{source}: key 'training.learning_rate' must be positive")
    for key in ("min_lr_ratio", "warmup_start_ratio", "step_gamma"):
        if not 0.0 < train[key] <= 1.0 and not (key == "min_lr_ratio" and train[key] == 0.0):
            raise MedsegError(f"{source}: key 'training.{key}' must be in (0, 1]")
    if train["ce_weight"] == 0 and train["dice_weight"] == 0:
        raise MedsegError(f"{source}: keys 'training.ce_weight' and 'training.dice_weight' are both 0; give one a weight")
    if train["warmup_epochs"] >= train["epochs"]:
        raise MedsegError(f"{source}: key 'training.warmup_epochs' must be less than training.epochs")
    if not 0.0 <= train["cache_rate"] <= 1.0:
        raise MedsegError(f"{source}: key 'training.cache_rate' must be between 0 and 1")
    if not 0.0 < cfg["data"]["val_fraction"] < 1.0:
        raise MedsegError(f"{source}: key 'data.val_fraction' must be between 0 and 1")
    from medseg.transforms.settings import validate as validate_transforms

    validate_transforms(cfg, source)


def _modality_defaults(loaded: dict, overrides: list[str]) -> dict:
    """Per-modality preprocessing/augmentation defaults for the modality the YAML or an override names."""
    from medseg.transforms.settings import modality_overlay

    data = loaded.get("data")
    modality = data.get("modality", DEFAULTS["data"]["modality"]) if isinstance(data, dict) else "CT"
    for item in overrides:
        if item.split("=", 1)[0].strip() == "data.modality":
            modality = _parse_value(item.split("=", 1)[1])
    return modality_overlay(modality) if isinstance(modality, str) else {}


def load_config(task_or_yaml: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load, merge over :data:`DEFAULTS`, apply ``key=value`` overrides and validate a task config.

    Args:
        task_or_yaml: a task name from ``pipelines/`` or a path to a YAML file.
        overrides: ``dotted.key=value`` strings (values parsed as YAML), applied after the file.

    Returns:
        The resolved config as plain dicts, lists and scalars.
    """
    path = resolve_task(task_or_yaml)
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise MedsegError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from err
    if not isinstance(loaded, dict):
        raise MedsegError(f"{path}: a pipeline YAML must be a mapping of sections, got {type(loaded).__name__}")
    cfg = copy.deepcopy(DEFAULTS)
    _merge(cfg, _modality_defaults(loaded, overrides or []), "medseg/transforms/settings.py")
    _merge(cfg, loaded, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise MedsegError(f"--set {item}: expected key=value, e.g. training.epochs=5")
        key, text = item.split("=", 1)
        nested: dict[str, Any] = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(text)
        _merge(cfg, nested, f"--set {key}")
    _validate(cfg, str(path))
    if not cfg["bundle"]["name"]:
        cfg["bundle"]["name"] = f"{cfg['task']}_segmentation"
    return cfg


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten a nested config into ``section.key -> str(value)`` (for MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
