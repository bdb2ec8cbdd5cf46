"""Write a trained model as a MONAI Bundle that runs on stock MONAI (no medseg import needed).

Layout::

    <name>/configs/metadata.json   versions, task, data formats, measured validation metrics
    <name>/configs/inference.json  the training preprocessing, sliding-window inference, inversion, NIfTI writing
    <name>/configs/train.json      retrains from the bundle on an MSD-layout dataset, stock MONAI only
    <name>/configs/logging.conf    logging for ``monai.bundle run --logging_file``
    <name>/configs/medseg_task.json  the resolved medseg task config (what ``medseg.predict`` rebuilds from)
    <name>/models/model.pt         network state dict (best validation checkpoint)
    <name>/models/model.ts         TorchScript, from MONAI's ``ckpt_export``
    <name>/models/model.onnx       ONNX (:mod:`medseg.bundle.onnx`), checked against PyTorch on a random patch
    <name>/docs/README.md          data, preprocessing, network, budget, metrics, limitations
    <name>/LICENSE

The bundle is assembled in a temporary folder beside the target, verified with MONAI's
``verify_metadata`` (against :data:`SCHEMA_PATH`, written from the MONAI Bundle specification) and
``verify_net_in_out``, and only then moved into place.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from medseg import __version__
from medseg.bundle import versions as bundle_versions
from medseg.bundle.int8 import Int8Refused, refusal, write_int8
from medseg.bundle.onnx import write_onnx
from medseg.bundle.scripts import DATALIST_PACKAGE, write_scripts
from medseg.data.formats import BUNDLE_SUFFIXES
from medseg.engine.losses import monai_loss_def
from medseg.engine.optim import bundle_scheduler_def, optimizer_def
from medseg.evaluation.metrics import distance_unit
from medseg.fileio import publish_dir
from medseg.data.pictures import PICTURE_SUFFIXES
from medseg.inference.chain import SCRIPT_PACKAGE, bundle_targets, inference_spec
from medseg.networks import describe, monai_network_def
from medseg.networks.bundle import bundle_scripts, export_torchscript, inferer_def, loss_def
from medseg.networks.bundle import spatial_shape as network_spatial_shape
from medseg.transforms import augment_spec, input_channels, preprocess_spec
from medseg.transforms.pipeline import OWN_TRANSFORMS, script_target
from medseg.transforms.settings import describe_intensity, value_range
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions, version
from monai.bundle import verify_metadata, verify_net_in_out

SCHEMA_PATH = Path(__file__).with_name("metadata_schema.json")
OFFICIAL_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
IMAGE_GLOBS = tuple(f"*{s}" for s in BUNDLE_SUFFIXES)


def _bundle_spec(spec: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Point medseg's own transforms and readers at the copies shipped in the bundle's ``scripts/`` folder."""
    spec = [{**s, "_target_": script_target(s["_target_"])} if s["_target_"] in OWN_TRANSFORMS else s for s in spec]
    return bundle_targets(spec)  # the prediction chain's own classes (the NIfTI reader): scripts/medseg_inference


def _write_scripts(bundle_dir: Path) -> None:
    write_scripts(bundle_dir)  # medseg's own transforms and networks (with the size-padding wrapper)


def stored_label_values(cfg: Any) -> dict[int, int]:
    """Label value -> the value the task's label files store (the inverse of ``data.label_map``: ``{1: 255}``), as
    ``medseg.predict`` writes them (:func:`medseg.workflows.predict.stored_value_map`); ``{}`` without a map."""
    if not hasattr(cfg, "effective_label_map"):
        return {}
    return {int(v): int(k) for k, v in cfg.effective_label_map().items()}


def inference_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``inference.json``: dataset folder in, one mask per input out, in the input's geometry.

    Its ``preprocessing``, ``inferer`` and ``postprocessing`` are :func:`medseg.inference.inference_spec`, the chain
    ``medseg.predict`` runs, with ``SaveImaged`` appended (medseg.predict writes the label map itself); before it,
    where the task renumbered its label files' values (``data.label_map``), ``MapLabelValued`` turns 0..K-1 back
    into the stored values (:func:`stored_label_values`), so the masks are those ``medseg.predict`` writes. Without
    ``--output_dir`` the masks go to ``eval/`` in the working folder, never into the bundle.
    """
    n_classes = len(cfg.data.labels)
    chain = inference_spec(cfg)
    chain["preprocessing"]["transforms"] = _bundle_spec(chain["preprocessing"]["transforms"])
    chain = bundle_targets(chain)
    post = chain["postprocessing"]["transforms"]
    pictures = int(cfg.network.spatial_dims) == 2 and not cfg.network.slice_mode
    stored = stored_label_values(cfg)
    if pictures:  # a 2D task: PNG/TIFF/JPEG in, masks out in the picture's format with the stored label values
        post.append({"_target_": f"scripts.{SCRIPT_PACKAGE}.SavePictured", "keys": "pred", "output_dir": "@output_dir",
                     "value_map": {str(k): v for k, v in stored.items()}, "output_postfix": "_seg"})
    else:
        moved = {k: v for k, v in stored.items() if k != v}
        dtype = "$numpy.uint16" if max(moved.values(), default=0) > 255 else "$numpy.uint8"  # as medseg.predict writes
        if moved:  # 0..K-1 back to the values the label files store (0/128/255, BraTS's 4), as medseg.predict does
            post.append({"_target_": "MapLabelValued", "keys": "pred", "orig_labels": list(moved),
                         "target_labels": list(moved.values()), "dtype": dtype})
        post.append({"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
                     "output_dtype": dtype, "resample": False, "separate_folder": False, "print_log": False})
    patterns = IMAGE_GLOBS + (tuple(f"*{s}" for s in PICTURE_SUFFIXES) if pictures else ())
    return {
        "imports": ["$import glob", "$import os", "$import numpy"],
        "bundle_root": ".",
        "checkpoint": "$os.path.join(@bundle_root, 'models', 'model.pt')",
        # the folder the command runs in, not the bundle's (a deployed bundle stays as shipped); --output_dir OUT
        "output_dir": "$os.path.join(os.getcwd(), 'eval')",
        "dataset_dir": "data",
        # the images in dataset_dir; a missing or empty one stops the run with one line (no silent empty run)
        "find_images": {"_target_": f"scripts.{DATALIST_PACKAGE}.image_list", "_mode_": "callable"},
        "datalist": f"$@find_images(@dataset_dir, {list(patterns)!r}, @output_dir)",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": monai_network_def(cfg.network, input_channels(cfg), n_classes),
        "network": "$@network_def.to(@device)",
        "preprocessing": chain["preprocessing"],
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": chain["inferer"],  # sliding windows, or slice by slice for a 2D network in slice mode
        "postprocessing": chain["postprocessing"],
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "@checkpoint", "load_dict": {"model": "@network"},
             "map_location": "@device"},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers"},
        "initialize": ["$monai.utils.set_determinism(seed=0)", "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$@evaluator.run()"],
    }


def train_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The bundle's ``train.json``: the same preprocessing, augmentation, network, loss and schedule."""
    tr, ev = cfg.training, cfg.evaluation
    n_classes = len(cfg.data.labels)
    split = "int(len(@manifest['training']) * (1 - @val_fraction))"
    datalist = "[{{'image': os.path.join(@dataset_dir, c['image']), 'label': os.path.join(@dataset_dir, c['label'])}} for c in {}]"
    return {
        "imports": ["$import glob", "$import json", "$import os", "$import torch"],
        "bundle_root": ".",
        "dataset_dir": "data/Task03_Liver",
        # like inference.json's: the folder the command runs in, so a retraining never writes into the bundle
        "output_dir": "$os.path.join(os.getcwd(), 'train_output')",
        "manifest": "$json.load(open(os.path.join(@dataset_dir, 'dataset.json')))",
        "val_fraction": cfg.data.val_fraction,
        "train_datalist": "$" + datalist.format(
            f"(@manifest['training'] if 'validation' in @manifest else @manifest['training'][:{split}])"),
        "val_datalist": "$" + datalist.format(
            f"@manifest.get('validation') or @manifest['training'][{split}:]"),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "epochs": tr.epochs,
        "iterations_per_epoch": tr.iterations_per_epoch,
        "batch_size": tr.batch_size,
        "learning_rate": tr.learning_rate,
        "val_every": tr.val_every,
        "network_def": monai_network_def(cfg.network, input_channels(cfg), n_classes),
        "network": "$@network_def.to(@device)",
        "loss": loss_def(cfg, _own_loss(monai_loss_def(tr))),  # DeepSupervisionLoss around it for aux outputs
        "optimizer": {**optimizer_def(tr), "params": "$@network.parameters()", "lr": "@learning_rate"},
        "lr_scheduler": bundle_scheduler_def(tr),
        "train": {
            "preprocessing": {"_target_": "Compose", "transforms": _bundle_spec(preprocess_spec(cfg) + augment_spec(cfg))},
            "dataset": {"_target_": "CacheDataset", "data": "@train_datalist", "transform": "@train#preprocessing",
                        "cache_rate": 1.0},
            "sampler": {"_target_": "torch.utils.data.RandomSampler", "data_source": "@train#dataset",
                        "replacement": True, "num_samples": "$@iterations_per_epoch * @batch_size"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": "@batch_size",
                           "sampler": "@train#sampler", "num_workers": 0},
            "handlers": [
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": False},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "interval": "@val_every",
                 "epoch_level": True},
                {"_target_": "StatsHandler", "tag_name": "train_loss",
                 "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            ],
            "trainer": {"_target_": "SupervisedTrainer", "max_epochs": "@epochs", "device": "@device",
                        "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                        "optimizer": "@optimizer", "inferer": {"_target_": "SimpleInferer"},
                        "train_handlers": "@train#handlers", "accumulation_steps": tr.accumulation_steps,
                        **_amp_args(tr.amp)},
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": _bundle_spec(preprocess_spec(cfg))},
            "dataset": {"_target_": "CacheDataset", "data": "@val_datalist", "transform": "@validate#preprocessing",
                        "cache_rate": 1.0},
            "dataloader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 1,
                           "num_workers": 0},
            "inferer": inferer_def(cfg),
            "postprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True, "to_onehot": n_classes},
                {"_target_": "AsDiscreted", "keys": "label", "to_onehot": n_classes},
            ]},
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {"_target_": "CheckpointSaver", "save_dir": "$os.path.join(@output_dir, 'models')",
                 "save_dict": {"model": "@network"}, "save_key_metric": True, "key_metric_filename": "model.pt"},
            ],
            "evaluator": {
                "_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@validate#dataloader",
                "network": "@network", "inferer": "@validate#inferer", "postprocessing": "@validate#postprocessing",
                "key_val_metric": {"val_mean_dice": {
                    "_target_": "MeanDice", "include_background": False,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
                "val_handlers": "@validate#handlers",
            },
        },
        "initialize": [f"$monai.utils.set_determinism(seed={tr.seed})", "$os.makedirs(@output_dir, exist_ok=True)"],
        "run": ["$@train#trainer.run()"],
    }


def _own_loss(entry: dict[str, Any]) -> dict[str, Any]:
    """A loss entry naming medseg's own loss class (the weight-map loss) points at its copy in ``scripts/``."""
    return {**entry, "_target_": script_target(entry["_target_"])} if entry["_target_"] in OWN_TRANSFORMS else entry


def _amp_args(amp: str) -> dict[str, Any]:
    """SupervisedTrainer's mixed precision for ``training.amp`` (MONAI autocasts on CUDA only; medseg's own
    trainer also autocasts bf16 on CPU)."""
    if amp == "none":
        return {}
    return {"amp": True, "amp_kwargs": {"dtype": "$torch.bfloat16" if amp == "bf16" else "$torch.float16"}}


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def metadata(cfg: dict[str, Any], summary: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The bundle's ``metadata.json``."""
    labels = {int(v): k for k, v in cfg.data.labels.items()}
    shape = network_spatial_shape(cfg)
    dims = cfg.network.spatial_dims
    return {
        "schema": OFFICIAL_SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"trained and exported by medseg {__version__}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        # what the chain reads with (nibabel) and N4; export_bundle adds what the shipped scripts/ import
        "required_packages_version": {"nibabel": _version("nibabel"),
                                      **({"SimpleITK": _version("SimpleITK")}  # N4 bias correction
                                         if cfg.preprocessing.bias_correction.enabled else {})},
        "name": cfg.bundle_name(),
        "task": cfg.description or cfg.task,
        "description": f"{cfg.network.name} ({dims}D) trained by medseg on task '{cfg.task}'",
        "authors": cfg.bundle.authors,
        "copyright": f"Copyright (c) {cfg.bundle.authors}",
        "license": cfg.bundle.license,
        "intended_use": "Research only; not for clinical diagnosis.",
        "data_source": cfg.data.dataset or cfg.data.sample,
        "data_type": "png/tiff" if _pictures(cfg) else "nibabel",
        "image_classes": f"{input_channels(cfg)} channel(s) {cfg.data.modality}: {describe_intensity(cfg)};"
        f" resampled to {cfg.preprocessing.spacing} {_unit(cfg)}",
        "label_classes": ", ".join(f"{v}: {k}" for v, k in sorted(labels.items())),
        "pred_classes": ", ".join(f"{v}: {k}" for v, k in sorted(labels.items())),
        "eval_metrics": {f"{c}_{m}": round(float(e[m]), 4) for c, e in summary.items() for m in ("dice", "hd95_mm", "assd_mm")},
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if cfg.data.modality == "CT" else "magnitude",
                "modality": cfg.data.modality, "num_channels": input_channels(cfg),
                "spatial_shape": shape, "dtype": "float32", "value_range": value_range(cfg),
                "is_patch_data": True, "channel_def": {"0": "image"},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(labels),
                "spatial_shape": shape, "dtype": "float32", "value_range": [],
                "is_patch_data": True, "channel_def": {str(v): k for v, k in sorted(labels.items())},
            }},
        },
    }


def _pictures(cfg: Any) -> bool:
    """A 2D network on whole pictures (PNG/TIFF microscopy), not slices of volumes."""
    return int(cfg.network.spatial_dims) == 2 and not cfg.network.slice_mode


def _unit(cfg: Any) -> str:
    """The unit of the spacing: a picture's pixel size is in um (from TIFF resolution tags, else 1 per pixel)."""
    return "um (pixel size; 1 per pixel without TIFF resolution tags)" if _pictures(cfg) else "mm"


#: what stock MONAI needs beside the bundle's own imports to run inference.json (SupervisedEvaluator, its handlers)
RUN_PACKAGES = ("pytorch-ignite",)
#: MONAI's own requirements: not listed (installing MONAI installs them)
BASE_MODULES = {"monai", "torch", "numpy"}


def _imports(tree: ast.AST) -> Iterator[tuple[str, bool]]:
    """``(top-level module, required)`` for each absolute import in a module: required when it runs at import time
    outside a ``try`` (an import in a function or a ``try: ... except ImportError`` is optional)."""

    def walk(node: ast.AST, optional: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name.split(".")[0], not optional
            elif isinstance(child, ast.ImportFrom):
                if not child.level and child.module:
                    yield child.module.split(".")[0], not optional
            else:
                nested = optional or isinstance(child, (ast.Try, ast.FunctionDef, ast.AsyncFunctionDef, ast.If))
                yield from walk(child, nested)

    yield from walk(tree, False)


def script_packages(scripts_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The packages (distribution name -> installed version) that the bundle's ``scripts/`` import, beyond the
    standard library and MONAI's own requirements: ``(required, optional)``, required being what the modules import
    when loaded (``scripts.medseg_inference`` needs Pillow and SciPy even for a CT bundle), optional what they import
    only for some inputs or where installed (pydicom for DICOM, cc3d and ISA-L for speed, ...). ``required`` also
    holds :data:`RUN_PACKAGES`, which ``monai.bundle run`` of ``inference.json`` needs."""
    found: dict[str, bool] = {}
    for path in sorted(Path(scripts_dir).rglob("*.py")):
        for module, required in _imports(ast.parse(path.read_text(), filename=str(path))):
            if module in sys.stdlib_module_names or module in BASE_MODULES or module == "__future__":
                continue
            found[module] = found.get(module, False) or required
    dists = packages_distributions()
    required, optional = {p: _version(p) for p in RUN_PACKAGES}, {}
    for module, needed in sorted(found.items()):
        for dist in dists.get(module, [module]):
            name = _dist_name(dist)
            (required if needed else optional)[name] = _version(name)
    return required, {k: v for k, v in optional.items() if k.lower() not in {r.lower() for r in required}}


def _dist_name(dist: str) -> str:
    """A distribution's own spelling of its name (``SimpleITK``, ``pillow``)."""
    try:
        return distribution(dist).metadata["Name"] or dist
    except PackageNotFoundError:
        return dist


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def data_source(cfg: Any, run_dir: Path) -> str:
    """What the weights were trained on: the task's dataset (``data.dataset``), unless the run's cases
    (``cases.json``) came from another folder, e.g. the built-in sample used because the dataset was absent."""
    configured = str(cfg.data.dataset or cfg.data.sample)
    if Path(configured).is_absolute():  # /home/alice/data/LiTS: by its name (no user or site name in a bundle)
        configured = Path(configured).name
    try:
        split = json.loads((Path(run_dir) / "cases.json").read_text())
        paths = [str(c[k]) for part in ("train", "val") for c in split.get(part, []) for k in ("image", "label")
                 if isinstance(c.get(k), str)]
        root = Path(os.path.commonpath([str(Path(p).parent) for p in paths])) if paths else None
    except (OSError, ValueError, AttributeError, TypeError):
        return configured
    if root is not None and root.name in ("imagesTr", "labelsTr", "images", "labels"):
        root = root.parent
    if root is not None and cfg.data.dataset and root.name and root.name != Path(str(cfg.data.dataset)).name:
        return root.name
    return configured


def task_record(cfg: Any) -> dict[str, Any]:
    """``configs/medseg_task.json``: the task config, with ``bundle.dir`` as its folder's name (``--out /home/alice/x``
    must not put a user or site name in a shared bundle; where the bundle was written is no part of its recipe),
    and an absolute ``data.dataset``, ``training.cache_dir`` or N4 cache folder by its name (the N4 one: the
    default)."""
    record = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    if isinstance(record.get("bundle"), dict) and record["bundle"].get("dir"):
        record["bundle"] = {**record["bundle"], "dir": Path(record["bundle"]["dir"]).name or "bundles"}
    # the other folders a task names, where absolute (/home/alice/...): by their own name, as a relative one is kept
    for section, key in (("data", "dataset"), ("training", "cache_dir")):
        value = record.get(section, {}).get(key) if isinstance(record.get(section), dict) else None
        if isinstance(value, str) and Path(value).is_absolute():
            record[section] = {**record[section], key: Path(value).name}
    pre = record.get("preprocessing")
    bias = pre.get("bias_correction") if isinstance(pre, dict) else None
    if isinstance(bias, dict) and isinstance(bias.get("cache_dir"), str) and Path(bias["cache_dir"]).is_absolute():
        record["preprocessing"] = {**pre, "bias_correction": {**bias, "cache_dir": ".cache/n4"}}  # the default
    return record


def run_name(run_dir: Path) -> str:
    """How a bundle names the run it was exported from (``metadata.json`` ``medseg_export.run``, its change log,
    ``medseg.export --list``): the path from the ``runs`` folder ``medseg.train`` writes into
    (``runs/liver/20261203-204516``, what ``python -m medseg.export`` takes from the project folder), else the run
    folder's own name. Never an absolute path: it would carry user and site names into a bundle that is shared.

    Example:
        >>> run_name(Path("/home/alice/medseg/runs/liver/20261203-204516"))
        'runs/liver/20261203-204516'
    """
    parts = Path(os.path.abspath(run_dir)).parts
    parents = parts[:-1]
    if "runs" in parents:
        start = len(parents) - 1 - parents[::-1].index("runs")  # the innermost runs/ folder
        return "/".join(parts[start:])
    return parts[-1] if len(parts) > 1 else "run"


def _readme(cfg: dict[str, Any], summary: dict[str, dict[str, float]], run_seconds: float | None,
            source: str | None = None) -> str:
    tr, pre, net = cfg.training, cfg.preprocessing, cfg.network
    rows = "\n".join(
        f"| {c} | {e['dice']:.3f} | {e['hd95_mm']:.2f} | {e['assd_mm']:.2f} | {int(e['cases'])} |" for c, e in summary.items()
    )
    budget = f"{run_seconds / 60:.1f} minutes" if run_seconds else "see the training run"
    unit = distance_unit(cfg)
    distances = {"mm": "millimetres", "µm": "micrometres", "px": "pixels"}[unit]
    stored = stored_label_values(cfg)
    values = ", ".join(f"{stored.get(int(v), int(v))} = {k}" for k, v in cfg.data.labels.items())
    return f"""# {cfg.bundle.name}

{cfg.description}. Exported by medseg {__version__}.

## Data
Source: {source or cfg.data.dataset or cfg.data.sample}. Labels: {', '.join(f'{v} = {k}' for k, v in cfg.data.labels.items())}.

## Preprocessing
Orientation {pre.orientation}; resampled to {pre.spacing} {_unit(cfg)}; {describe_intensity(cfg)}
{'; cropped to the foreground' if pre.crop_foreground else ''}. Inference undoes the spatial steps, so each
mask is written in its input's own grid.

## Network
{describe(net)}. {'Slice-by-slice' if net.slice_mode else 'Sliding-window'} inference with patches
{tr.patch_size} and overlap {cfg.evaluation.sw_overlap}.

## Training
{tr.epochs} epochs x {tr.iterations_per_epoch} iterations, batch {tr.batch_size}, {tr.optimizer} (lr {tr.learning_rate}),
{tr.schedule} schedule, loss {tr.loss}; wall time {budget}.

## Validation metrics
Distances in {distances} from the image spacing.

| class | Dice | HD95 ({unit}) | ASSD ({unit}) | cases |
|---|---|---|---|---|
{rows}

## Run it
From this folder:

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir IMAGES --output_dir OUT

From anywhere else, name the bundle's folder too:

    python -m monai.bundle run --config_file BUNDLE/configs/inference.json --bundle_root BUNDLE --dataset_dir IMAGES --output_dir OUT

It writes one `<image>_seg` mask per input into OUT, in the input's own geometry, with the values the task's
label files store ({values}). Without `--output_dir` the masks go to `eval/` in the folder the command runs
from (name OUT when that is this folder: a bundle is not the place for its outputs).

To retrain it on a dataset in the MSD layout (`dataset.json`, `imagesTr/`, `labelsTr/`), stock MONAI only:

    python -m monai.bundle run --config_file BUNDLE/configs/train.json --bundle_root BUNDLE --dataset_dir DATASET --output_dir OUT

Its checkpoints go to `OUT/models/`; without `--output_dir`, to `train_output/` in the folder the command runs from.

## Limitations
Research use only. Trained on the data above; performance on other scanners, contrast phases or
populations is unknown until measured. The built-in LiTS sample is one cropped case with nominal
1 mm spacing: a model trained on it demonstrates the pipeline, it is not a clinical liver model.
"""


LICENSE_TEXT = """The model weights in this bundle were trained on data distributed under the Creative Commons
Attribution-ShareAlike 4.0 licence (LiTS, as redistributed by the Medical Segmentation Decathlon),
and are shared under the same terms: https://creativecommons.org/licenses/by-sa/4.0/

The configuration files are provided as is, without warranty of any kind. Not for clinical use.
"""


@contextmanager
def _quiet_monai() -> Iterator[None]:
    """MONAI's bundle scripts log every argument at INFO; keep warnings and errors (failures still raise)."""
    loggers = [logging.getLogger(n) for n in ("monai.bundle.scripts", "monai.apps.utils", "monai.apps")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def verify_bundle(bundle_dir: Path) -> None:
    """Run MONAI's ``verify_metadata`` (against the project's schema) and ``verify_net_in_out``."""

    meta = str(bundle_dir / "configs" / "metadata.json")
    digest = hashlib.sha256(SCHEMA_PATH.read_bytes()).hexdigest()
    with _quiet_monai(), bundle_scripts(bundle_dir):  # network_def may name scripts.medseg_networks classes
        verify_metadata(meta_file=meta, filepath=str(SCHEMA_PATH), hash_val=digest, hash_type="sha256")
        verify_net_in_out(
            net_id="network_def", meta_file=meta, config_file=str(bundle_dir / "configs" / "inference.json"),
            device="cpu", n=2,
        )


def _torchscript(bundle_dir: Path, cfg: dict[str, Any]) -> None:
    """``models/model.ts`` through MONAI's ``ckpt_export`` (scripted; traced where the network cannot be
    scripted, see :mod:`medseg.networks.bundle`), with the configs embedded."""
    with _quiet_monai(), bundle_scripts(bundle_dir):
        export_torchscript(bundle_dir, cfg, input_channels(cfg))


def export_bundle(
    cfg: dict[str, Any], run_dir: Path, network: torch.nn.Module, summary: dict[str, dict[str, float]],
    run_seconds: float | None = None, int8_cases: tuple[list[Any], list[Any]] | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write and verify the next version ``<bundle.dir>/<bundle.name>-v<n>`` and make ``<bundle.name>`` point at it
    (:mod:`medseg.bundle.versions`); returns the stable path. Earlier versions are kept.

    ``int8_cases``: ``(training, validation)`` cases to calibrate and measure ``models/model_int8.onnx`` on
    (:mod:`medseg.bundle.int8`); a refused INT8 model raises :class:`~medseg.bundle.int8.Int8Refused` once the
    bundle (without it) is published."""
    parent, name = Path(cfg.bundle.dir), cfg.bundle_name()
    bundle_versions.check_target(parent, name)  # a file or a foreign folder there is never replaced or moved
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))  # unique: two exports never share a folder
    publish_dir(tmp)
    meta = {**metadata(cfg, summary), **(extra_metadata or {})}  # extra: e.g. medseg_distill
    source = data_source(cfg, run_dir)
    meta["data_source"] = source
    dice = ", ".join(f"{c} {e['dice']:.3f}" for c, e in summary.items())
    exported = bundle_versions.now_utc()
    run = run_name(run_dir)

    def finalise(folder: Path, version: str, changelog: dict[str, str]) -> None:
        entry = f"{exported} UTC: exported by medseg {__version__} from run {run} (task '{cfg.task}'); validation Dice {dice}"
        final = {**meta, "version": version, "changelog": {version: entry, **changelog},
                 # the run's name, not its absolute path (user and site names stay out of a bundle that is shared)
                 "medseg_export": {"exported": exported, "task": cfg.task, "run": run}}
        (folder / "configs" / "metadata.json").write_text(json.dumps(final, indent=2) + "\n")
        _torchscript(folder, cfg)  # embeds the configs, metadata.json with its final version included

    try:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        _write_scripts(tmp)
        required, optional = script_packages(tmp / "scripts")  # what stock MONAI needs installed to run it
        meta["required_packages_version"] = {**meta["required_packages_version"], **required}
        named = {k.lower() for k in meta["required_packages_version"]}
        optional = {k: v for k, v in optional.items() if k.lower() not in named}
        if optional:  # not "optional_packages_version": MONAI reads that (deprecated) name as required_packages_version
            meta["medseg_optional_packages_version"] = optional
        torch.save({k: v.cpu() for k, v in network.state_dict().items()}, tmp / "models" / "model.pt")
        meta["medseg_onnx"] = write_onnx(tmp, cfg, network)  # models/model.onnx, checked against torch
        if int8_cases is not None:
            meta["medseg_int8"] = write_int8(tmp, cfg, network, *int8_cases)  # models/model_int8.onnx, measured
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference_config(cfg), indent=2) + "\n")
        (tmp / "configs" / "train.json").write_text(json.dumps(train_config(cfg), indent=2) + "\n")
        (tmp / "configs" / "logging.conf").write_text(LOGGING_CONF)
        (tmp / "configs" / "medseg_task.json").write_text(json.dumps(task_record(cfg), indent=2) + "\n")
        (tmp / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "docs" / "README.md").write_text(_readme(cfg, summary, run_seconds, source))
        (tmp / "LICENSE").write_text(LICENSE_TEXT)
        verify_bundle(tmp)
        bundle_versions.publish(tmp, parent, name, finalise)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if int8_cases is not None and meta["medseg_int8"]["refused"]:
        raise Int8Refused(refusal(meta["medseg_int8"]))
    return parent / name
