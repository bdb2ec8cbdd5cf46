"""Fingerprint + machine -> a plan: every decision with its reason (:mod:`medseg.plan.rules`), the schedule
fitted to step times measured here (:mod:`medseg.plan.timing`), written as a commented pipeline YAML that
``python -m medseg.train`` takes, ``plan.json`` (decisions, reasons, machine, plan hash) and
``fingerprint.json``.

Keys set by hand (``hand``: dotted key -> value, e.g. from a YAML's non-``auto`` keys) are kept, and the
decisions that follow from them (topology from a hand-set patch, ...) are planned around them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medseg.config import TaskConfig, load_config
from medseg.data.case import Case
from medseg.data.check import header_problems
from medseg.data.labelmaps import detect_255_label_map
from medseg.data.layouts import all_cases, detect_layout
from medseg.data.msd import read_manifest
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text
from medseg.networks import REGISTRY
from medseg.plan import rules
from medseg.plan.fingerprint import fingerprint, write_fingerprint
from medseg.plan.rules import Decision
from medseg.plan.timing import WARMUP_STEPS, measure_data, measure_step, validation_seconds

logger = logging.getLogger("medseg.plan")

MODALITY_NAMES = {"ct": "CT", "mr": "MR", "mri": "MR", "xr": "XR", "x-ray": "XR", "microscopy": "microscopy",
                  "em": "microscopy",
                  # MR sequences as MSD and nnU-Net dataset.json files name their channels (Task01 "FLAIR",
                  # "T1w", "t1gd", "T2w"; Task05 "T2", "ADC")
                  **{seq: "MR" for seq in ("t1", "t1w", "t1gd", "t1c", "t1ce", "t2", "t2w", "flair", "adc", "dwi",
                                           "pd", "pdw", "swi", "dce", "bold")}}
#: the keys a plan decides (what ``auto`` may stand for in a YAML)
PLANNED_KEYS = (
    "preprocessing.spacing", "preprocessing.intensity", "preprocessing.window", "preprocessing.zscore.region",
    "preprocessing.percentile", "network.spatial_dims", "network.slice_mode", "network.slice_axis",
    "network.channels", "network.strides", "training.patch_size", "training.batch_size", "training.epochs",
    "training.iterations_per_epoch", "training.val_every", "training.amp", "training.pos_neg_ratio",
    "augmentation.crop.mode", "augmentation.rotate_deg", "augmentation.scale", "augmentation.elastic.prob",
    "evaluation.keep_largest_component", "evaluation.classes",
)


#: decisions the planned run measures after training (medseg.plan.post), outside the plan's hash
AFTER_TRAINING = frozenset({"evaluation.keep_largest_component"})


@dataclass
class Plan:
    task: str
    decisions: dict[str, Decision]  # dotted key -> value and reason
    pipeline: dict[str, Any]  # the pipeline YAML's content
    fingerprint: dict[str, Any]
    machine: dict[str, Any]
    budget_minutes: float
    hand: dict[str, Any] = field(default_factory=dict)
    #: every measured attempt (patch, batch, the timed steps' samples, median, CPU time, load): not hashed
    timing: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hash(self) -> str:
        """Digest of the values planned before training (not the reasons, not :data:`AFTER_TRAINING`'s
        measured decisions): the plan's identity in MLflow and plan.json, and the preprocessing cache key's plan
        part. A decision measured after training does not change it (MLflow's params are written at the start)."""
        text = json.dumps({k: d.value for k, d in sorted(self.decisions.items()) if k not in AFTER_TRAINING},
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def reasons(self) -> dict[str, str]:
        return {k: d.reason for k, d in self.decisions.items()}

    def params(self) -> dict[str, str]:
        """MLflow params: ``plan.<key>`` -> the reason (values are the config's own params)."""
        return {f"plan.{k}": d.reason[:500] for k, d in self.decisions.items()} | {"plan.hash": self.hash}

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "hash": self.hash, "budget_minutes": self.budget_minutes, "machine": self.machine,
                "decisions": {k: {"value": d.value, "reason": d.reason} for k, d in self.decisions.items()},
                "hand_set": sorted(self.hand), "timing": self.timing}

    def yaml_text(self) -> str:
        return render_yaml(self)

    def comment_block(self) -> str:
        """The reasons as YAML comments (appended to a run's ``config.yaml``)."""
        lines = [f"# plan {self.hash} (medseg.plan, {self.budget_minutes:g} min budget on"
                 f" {self.machine['device']}):"]
        lines += [f"#   {k}: {d.reason}" for k, d in self.decisions.items()]
        return "\n".join(lines) + "\n"


# ---- the dataset


def parse_labels(text: str | None) -> dict[str, int] | None:
    """``"background=0,liver=1"`` -> ``{"background": 0, "liver": 1}`` (background 0 added when absent)."""
    if not text:
        return None
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().lstrip("-").isdigit():
            raise MedsegError(f"--labels {text}: give name=value pairs, e.g. background=0,liver=1,tumour=2")
        name, number = name.strip(), int(value)
        if name in out or number in out.values():
            twice = f"name '{name}'" if name in out else f"value {number}"
            raise MedsegError(f"--labels {text}: {twice} given twice; give each label one name and one value,"
                              " e.g. background=0,liver=1,tumour=2")
        out[name] = number
    if 0 not in out.values():
        out = {"background": 0, **out}
    return out


def _manifest(root: Path) -> dict[str, Any]:
    return read_manifest(root / "dataset.json") if root.is_dir() and (root / "dataset.json").is_file() else {}


def manifest_labels(root: Path) -> dict[str, int] | None:
    meta = _manifest(root)
    raw = meta.get("labels")
    if not isinstance(raw, dict) or not raw:
        return None
    if all(str(k).lstrip("-").isdigit() for k in raw):  # MSD: {"0": "background"}
        return {str(v): int(k) for k, v in raw.items()}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}  # nnU-Net v2: {"background": 0}


def manifest_modality(root: Path) -> str | None:
    meta = _manifest(root)
    raw = meta.get("modality") or meta.get("channel_names")
    if isinstance(raw, dict) and raw:
        return MODALITY_NAMES.get(str(next(iter(raw.values()))).lower())
    return None


def dataset_cases(dataset: Path, labels: dict[str, int] | None,
                  label_map: dict[int, int] | None = None) -> tuple[str, list[Case], dict[str, int] | None]:
    """(layout, every labelled case, the declared labels or None) of a dataset folder or CSV; ``label_map``: the
    files' values -> ``labels``' (``data.label_map``)."""
    layout = detect_layout(dataset)
    labels = labels or manifest_labels(dataset)
    relabel = {} if label_map else consecutive_values(labels or {"background": 0})  # a gap: numbered as trained
    data = {"layout": layout, "labels": {n: relabel.get(v, v) for n, v in (labels or {"background": 0}).items()},
            "label_map": label_map or relabel}
    if layout == "msd" and labels is None:
        raise MedsegError(f"{dataset}/dataset.json: no 'labels'; give them with --labels name=value,...")
    return layout, all_cases(TaskConfig.from_dict({"task": "plan", "data": data}, source=str(dataset)), dataset), labels


def checked_cases(dataset: Path, cases: list[Case], skip_bad: bool = False) -> list[Case]:
    """``cases`` whose headers pass the checks training runs before it starts (readable files, every label and
    channel on its image's grid), read from the headers before any voxel; a bad case stops the plan with one line
    naming them, as ``medseg.train`` would after the plan, or with ``skip_bad`` is left out and listed."""
    with ThreadPoolExecutor(max_workers=4) as pool:  # header reads: file I/O
        found = list(pool.map(header_problems, cases))
    bad = [(c, p) for c, p in zip(cases, found) if p]
    if not bad:
        return cases
    listing = "; ".join(f"{c.name}: {p[0]}" for c, p in bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10
                                                                    else "")
    if not skip_bad:
        raise MedsegError(f"{len(bad)} bad case(s) in {dataset}: {listing}; fix them or move them out of the dataset"
                          " (python -m medseg.train DATASET --skip-bad leaves them out)")
    logger.warning("skipping %d bad case(s): %s", len(bad), listing)
    return [c for c, p in zip(cases, found) if not p]


def consecutive_values(labels: dict[str, int]) -> dict[int, int]:
    """``{value: index}`` taking the label values to 0, 1, ..., K-1 in their order (background 0 kept), for the
    values that move; ``{}`` when they already are (one network output channel per value)."""
    values = sorted(set(labels.values()) | {0})
    if values[0] < 0:  # not a label map's values: refused by the checks, not renumbered
        return {}
    return {v: i for i, v in enumerate(values) if v != i}


def task_name(dataset: Path) -> str:
    stem = dataset.stem if dataset.is_file() else dataset.name
    return re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_").lower() or "dataset"


def guess_modality(fp: dict[str, Any]) -> Decision:
    if fp["dims"] == 2:
        return Decision("microscopy", "guessed: 2D images (give --modality XR for radiographs)")
    mins = sorted(e["image_min"] for e in fp["cases"])
    if mins[len(mins) // 2] <= -500:
        return Decision("CT", f"guessed: the images reach {mins[len(mins) // 2]:.0f} (air in HU)")
    return Decision("MR", "guessed: no HU scale (no air below -500); give --modality for others")


# ---- the machine


def machine(device: str) -> dict[str, Any]:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise MedsegError("--device cuda: no GPU visible to torch; use --device cpu")
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                "bf16": bool(torch.cuda.is_bf16_supported())}
    return {"device": "cpu", "threads": torch.get_num_threads(), "cores": os.cpu_count()}


# ---- the plan


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def _pipeline(task: str, layout: str, dataset: Path, fp: dict[str, Any], decisions: dict[str, Decision]) -> dict:
    out: dict[str, Any] = {"task": task, "description": f"planned by medseg.plan from {fp['n_cases']} cases of"
                                                        f" {dataset.name}"}
    out["data"] = {"layout": layout, "dataset": str(dataset.resolve()), "labels": fp["labels"],
                   "modality": decisions["data.modality"].value}
    if fp["label_map"]:
        out["data"]["label_map"] = {int(k): v for k, v in fp["label_map"].items()}
    for section in ("preprocessing", "augmentation", "network", "training", "evaluation"):
        for key, d in decisions.items():
            if key.startswith(section + "."):
                _set(out, key, d.value)
    return out


def _draft_config(pipeline: dict[str, Any]) -> TaskConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "draft.yaml"
        path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        return load_config(str(path))


def plan_dataset(dataset: Path | str, modality: str | None = None, labels: dict[str, int] | None = None,
                 budget_minutes: float = 15.0, device: str = "cpu", network: str = "resunet",
                 hand: dict[str, Any] | None = None, measure_steps: int = 5, skip_bad: bool = False,
                 label_map: dict[int, int] | None = None) -> Plan:
    """Plan ``dataset`` (a folder with its layout detected from its contents, or a CSV); ``skip_bad``: leave out
    the cases whose headers training would refuse (``data.skip_bad``) instead of stopping; ``label_map``: the
    files' values -> ``labels``' as a YAML's ``data.label_map`` gives it (default: planned)."""
    dataset = Path(dataset)
    if not dataset.exists():
        raise MedsegError(f"{dataset}: no such dataset folder or CSV file")
    if network not in REGISTRY:
        raise MedsegError(f"--network {network}: choose one of {', '.join(REGISTRY)}")
    hand = dict(hand or {})
    layout, cases, fp, mod = _fingerprint_dataset(dataset, modality, labels, hand, skip_bad, label_map)
    ctx = _PlanInputs(dataset, layout, cases, fp, machine(device), network, hand, budget_minutes, measure_steps)
    d, spacing, mode = _first_decisions(fp, mod, network, hand)
    measured, budget_note = _fit_budget(ctx, d, spacing, mode)
    return _finish_plan(ctx, d, measured, budget_note)


@dataclass
class _PlanInputs:
    """What every step of one planning run shares."""
    dataset: Path
    layout: str
    cases: list[Case]
    fp: dict[str, Any]
    mach: dict[str, Any]
    network: str
    hand: dict[str, Any]
    budget_minutes: float
    measure_steps: int
    attempts: list[dict[str, Any]] = field(default_factory=list)  # plan.json's "timing"


@dataclass
class _Measured:
    """One attempt: its draft config, the step and data times measured here and the schedule they allow."""
    cfg: TaskConfig
    step: Any
    data: Any
    sched: Decision
    val_s: float
    startup: float


def _fingerprint_dataset(dataset: Path, modality: str | None, labels: dict[str, int] | None,
                         hand: dict[str, Any], skip_bad: bool = False,
                         label_map: dict[int, int] | None = None) -> tuple[str, list[Case], dict[str, Any], Decision]:
    """(layout, cases, fingerprint, the modality decision) of ``dataset``. Label values that are not 0..K-1
    (0/255 volumes, BraTS's 0, 1, 2, 4) are numbered so, with a ``data.label_map`` from the files' values: the
    network has one output per value. Declared values are numbered before the one pass over the cases; values
    found there (nothing declared) take a second pass."""
    given = {int(k): int(v) for k, v in (label_map or {}).items()}
    layout, cases, declared = dataset_cases(dataset, labels, given)
    cases = checked_cases(dataset, cases, skip_bad)
    label_map = given or detect_255_label_map(declared or {"background": 0, "foreground": 1}, cases)
    modality = modality or hand.get("data.modality") or manifest_modality(dataset)
    logger.info("planning %s: %d cases (%s layout)", dataset, len(cases), layout)
    moved: dict[int, int] = {}
    if declared is not None and consecutive_values(declared):
        declared, label_map, moved = _numbered(declared, label_map)
    fp = fingerprint(cases, declared, modality or "", label_map)
    if consecutive_values(fp["labels"]):
        labels, label_map, moved = _numbered(fp["labels"], label_map)
        fp = fingerprint(cases, labels, modality or "", label_map)
    if moved:
        fp["relabelled"] = (f"label values {sorted(moved)} -> {[moved[v] for v in sorted(moved)]}: the network has"
                            f" one output per value, 0..{len(fp['labels']) - 1}; predicted volumes hold the new"
                            " values (this map is kept in the config and the bundle)")
    if declared is None:
        _warn_instance_masks(fp)
    mod = Decision(modality, "given" if modality else "") if modality else guess_modality(fp)
    fp["modality"] = mod.value
    return layout, cases, fp, mod


#: found label values from which masks whose every value is one object in every case are taken for instance masks
INSTANCE_VALUES = 10


def _warn_instance_masks(fp: dict[str, Any]) -> None:
    """A warning when 2D masks look like instance labels (many values, each one object wherever it occurs: DSB,
    CellPose exports): planned as they are, each object number would be a class of its own."""
    foreground = [int(v) for v in fp["labels"].values() if int(v) != 0]
    single = all(info.get("components") == 1 for e in fp["cases"] for v, info in e["classes"].items() if int(v) != 0)
    # pictures only: 3D atlases (vertebrae 1..25, TotalSegmentator's organs) also have one object per value
    pictures = all(e.get("dims") == 2 for e in fp["cases"])
    if len(foreground) >= INSTANCE_VALUES and single and pictures:
        logger.warning("the masks hold %d label values, each a single object wherever it occurs: they look like"
                       " instance masks (one number per object), planned here as %d classes; for a cell/nucleus task"
                       " binarise them (foreground = value > 0) and plan again, and keep the instance masks for"
                       " medseg.evaluate --instances", len(foreground), len(foreground) + 1)


def _numbered(labels: dict[str, int], label_map: dict[int, int]) -> tuple[dict[str, int], dict[int, int],
                                                                           dict[int, int]]:
    """(``labels`` numbered 0..K-1, the file value -> label value map after ``label_map``, the values moved)."""
    moved = consecutive_values(labels)
    composed = {f: moved.get(label_map.get(f, f), label_map.get(f, f)) for f in set(label_map) | set(moved)}
    label_map = {f: v for f, v in sorted(composed.items()) if f != v}
    logger.info("label values %s are not 0..%d (one network output each): mapped by data.label_map %s",
                sorted(labels.values()), len(labels) - 1, label_map)
    return {name: moved.get(v, v) for name, v in labels.items()}, label_map, moved


def _first_decisions(fp: dict[str, Any], mod: Decision, network: str,
                     hand: dict[str, Any]) -> tuple[dict[str, Decision], Decision, Decision]:
    """The decisions no step time depends on, the target spacing and the dimensionality."""
    d: dict[str, Decision] = {"data.modality": mod}
    if fp.get("relabelled"):
        d["data.label_map"] = Decision({int(k): v for k, v in fp["label_map"].items()}, fp["relabelled"])
    spacing = rules.target_spacing(fp)
    if "preprocessing.spacing" in hand:
        spacing = Decision(list(hand["preprocessing.spacing"]), "set by hand")
    mode = rules.dimensionality(fp, spacing.value)
    if "network.slice_mode" in hand or "network.spatial_dims" in hand:
        dims = int(hand.get("network.spatial_dims", 3 if fp["dims"] == 3 else 2))
        mode = Decision("2d_slices" if hand.get("network.slice_mode") else ("3d" if dims == 3 else "2d"),
                        "set by hand")
    d["preprocessing.spacing"] = spacing
    d.update(rules.intensity(fp, mod.value))
    crop = rules.crop(fp)
    d["augmentation.crop.mode"] = Decision(crop.value["mode"], crop.reason)
    d["training.pos_neg_ratio"] = Decision(crop.value["pos_neg_ratio"], crop.reason)
    d["evaluation.keep_largest_component"] = rules.post_processing(fp)
    d["evaluation.classes"] = rules.reported_classes(fp)
    d["network.name"] = Decision(network, "the chosen family" if network != "resunet" else
                                 "default family: MONAI UNet with residual units")
    return d, spacing, mode


def _measure_attempt(ctx: _PlanInputs, d: dict[str, Decision], spacing: Decision, mode: Decision, voxels: int,
                     attempt: int) -> _Measured:
    """Decide the layout for ``voxels``, then measure a step and the data here and fit the schedule."""
    fp, mach, hand = ctx.fp, ctx.mach, ctx.hand
    _layout_decisions(d, fp, spacing.value, mode, voxels, mach, ctx.network, hand)
    d["training.batch_size"] = hand_or(hand, "training.batch_size",
                                       rules.batch_size(2 if mode.value != "3d" else 3, mach["device"]))
    d["training.amp"] = hand_or(hand, "training.amp", Decision("none", "fp32"))
    cfg = _draft_config(_pipeline("draft", ctx.layout, ctx.dataset, fp, d))
    step = measure_step(cfg, torch.device(mach["device"]), ctx.measure_steps)
    if mach["device"] == "cuda" and step.peak_bytes and "training.batch_size" not in hand:
        per_sample = step.peak_bytes / cfg.training.batch_size
        d["training.batch_size"] = rules.batch_size(cfg.network.spatial_dims, "cuda", per_sample,
                                                    mach["memory_bytes"])
        cfg = _draft_config(_pipeline("draft", ctx.layout, ctx.dataset, fp, d))
        step = measure_step(cfg, torch.device("cuda"), ctx.measure_steps)
    data = measure_data(cfg, ctx.cases)
    startup = data.cache_s * len(ctx.cases)
    val_s = validation_seconds(cfg, step, rules.resampled_shape(fp, spacing.value), max(1, len(ctx.cases) // 5))
    sched = rules.schedule(step.step_s, data.per_batch_s, val_s, startup, ctx.budget_minutes)
    ctx.attempts.append({"attempt": attempt + 1, "mode": mode.value, "spacing": list(cfg.preprocessing.spacing),
                         "patch": list(cfg.training.patch_size), "batch": cfg.training.batch_size,
                         **step.to_json(), "data_s_per_batch": round(data.per_batch_s, 4),
                         "total_iterations": sched.value["total_iterations"]})
    logger.info("plan attempt %d: %s patch %s batch %d: %.3f s/step (median of %d after %d warm-up, spread"
                " %.0f%%, load %.1f), %.3f s data/batch -> %d iterations", attempt + 1, mode.value,
                cfg.training.patch_size, cfg.training.batch_size, step.step_s, len(step.samples), WARMUP_STEPS,
                100 * ctx.attempts[-1]["spread"], step.load, data.per_batch_s, sched.value["total_iterations"])
    return _Measured(cfg, step, data, sched, val_s, startup)


def _fit_budget(ctx: _PlanInputs, d: dict[str, Decision], spacing: Decision,
                mode: Decision) -> tuple[_Measured, str]:
    """Up to 5 attempts, each coarser or smaller than the last, until enough iterations fit the budget; ``d``
    ends with the decisions of the attempt kept. Returns its measurements and the patch reason's note."""
    fp, mach, hand, budget_minutes = ctx.fp, ctx.mach, ctx.hand, ctx.budget_minutes
    budget_note = ""
    tried: list[tuple] = []
    voxels = rules.START_VOXELS[(mach["device"], 2 if mode.value != "3d" else 3)]
    base_spacing, coarsened, halved = spacing, False, 0
    for attempt in range(5):
        measured = _measure_attempt(ctx, d, spacing, mode, voxels, attempt)
        sched = measured.sched
        enough = sched.value["total_iterations"] >= rules.MIN_ITERATIONS
        tried.append((dict(d), measured, budget_note))
        if enough or "training.patch_size" in hand or attempt == 4:
            break
        current = int(np.prod(d["training.patch_size"].value))  # a capped patch is smaller than the budget
        shrinks = rules.patch_size(fp, spacing.value, current // 2, 3 if mode.value == "3d" else 2,
                                   None if mode.value != "2d_slices" else
                                   [a for a in range(3) if a != rules.slice_axis(spacing.value)]).value
        if mode.value == "3d" and not coarsened and "preprocessing.spacing" not in hand:
            spacing, coarsened = rules.coarser_spacing(base_spacing, sched.value["total_iterations"],
                                                       budget_minutes, rules.unit(fp)), True
            d["preprocessing.spacing"] = spacing
        elif attempt < 3 and shrinks != list(d["training.patch_size"].value):
            voxels = current // 2
            halved += 1
            budget_note = (f"; the patch budget halved {halved}x: fewer than {rules.MIN_ITERATIONS} iterations"
                           f" fitted {budget_minutes:g} min")
        elif mode.value == "3d" and "network.spatial_dims" not in hand:
            mode = Decision("2d_slices", f"tiny budget: even a quarter-size 3D patch leaves"
                                         f" {sched.value['total_iterations']} (< {rules.MIN_ITERATIONS}) iterations"
                                         f" in {budget_minutes:g} min, so a 2D network on slices")
            voxels = rules.START_VOXELS[(mach["device"], 2)]
            budget_note = ""
            spacing = base_spacing  # slices keep the in-plane resolution
            d["preprocessing.spacing"] = spacing
        else:
            break
    measured, budget_note = _retime_earlier(ctx, d, tried, measured, budget_note)
    if measured.sched.value["total_iterations"] < rules.MIN_ITERATIONS:  # none was enough: the one fitting most
        best = max(tried, key=lambda t: t[1].sched.value["total_iterations"])
        d.clear()
        d.update(best[0])
        _, measured, budget_note = best
    return measured, budget_note


#: a smaller attempt fitting this many times the iterations needed means the larger one before it was likely
#: timed while other jobs had the cores: that one is timed again
RETIME_FACTOR = 4


def _retime_earlier(ctx: _PlanInputs, d: dict[str, Decision], tried: list[tuple], measured: _Measured,
                    budget_note: str) -> tuple[_Measured, str]:
    """Walk back over the attempts while the kept one fits ``RETIME_FACTOR`` x ``MIN_ITERATIONS``: time the
    attempt before it again (same config, same data times) and keep it when it now fits the budget. On a
    shared machine a burst of load during the first attempt (48x96x96 timed at 3.9 s/step, 0.58 s a quarter
    of an hour earlier) otherwise shrank the plan to a patch that then fitted 16x the iterations needed."""
    k = len(tried) - 1
    while k > 0 and measured.sched.value["total_iterations"] >= RETIME_FACTOR * rules.MIN_ITERATIONS:
        prev_d, prev, prev_note = tried[k - 1]
        step = measure_step(prev.cfg, torch.device(ctx.mach["device"]), ctx.measure_steps)
        val_s = prev.val_s * step.step_s / max(prev.step.step_s, 1e-9)
        sched = rules.schedule(step.step_s, prev.data.per_batch_s, val_s, prev.startup, ctx.budget_minutes)
        ctx.attempts.append({"attempt": f"{k} timed again", "patch": list(prev.cfg.training.patch_size),
                             "batch": prev.cfg.training.batch_size, **step.to_json(),
                             "total_iterations": sched.value["total_iterations"]})
        logger.info("plan attempt %d timed again (attempt %d fitted %d iterations): %.3f s/step -> %d iterations",
                    k, k + 1, measured.sched.value["total_iterations"], step.step_s, sched.value["total_iterations"])
        if sched.value["total_iterations"] < rules.MIN_ITERATIONS:
            break
        d.clear()
        d.update(prev_d)
        measured, budget_note = _Measured(prev.cfg, step, prev.data, sched, val_s, prev.startup), prev_note
        k -= 1
    return measured, budget_note


def _finish_plan(ctx: _PlanInputs, d: dict[str, Decision], measured: _Measured, budget_note: str) -> Plan:
    """The kept attempt's patch note, bf16 where it helps, the schedule and the hand-set rest: the plan."""
    hand, budget_minutes = ctx.hand, ctx.budget_minutes
    cfg, step, data, sched = measured.cfg, measured.step, measured.data, measured.sched
    val_s, startup = measured.val_s, measured.startup
    if budget_note:
        p = d["training.patch_size"]
        d["training.patch_size"] = Decision(p.value, p.reason + budget_note)
    amp = _amp(cfg, step, ctx.mach, ctx.attempts)
    if amp is not None and "training.amp" not in hand:
        d["training.amp"], step = amp
        sched = rules.schedule(step.step_s, data.per_batch_s, val_s * 1.0, startup, budget_minutes)
    for key in ("epochs", "iterations_per_epoch", "val_every"):
        d[f"training.{key}"] = hand_or(hand, f"training.{key}", Decision(sched.value[key], sched.reason))
    for key, value in hand.items():  # whatever else was set by hand is kept as given
        if key in PLANNED_KEYS and key not in d:
            d[key] = Decision(value, "set by hand")
    task = task_name(ctx.dataset)
    mach = {**ctx.mach, "step_s": round(step.step_s, 4), "data_s": round(data.per_batch_s, 4),
            "cache_s_per_case": round(data.cache_s, 2), "validation_s": round(val_s, 1),
            "total_iterations": sched.value["total_iterations"], "step": step.to_json()}
    return Plan(task, d, _pipeline(task, ctx.layout, ctx.dataset, ctx.fp, d), ctx.fp, mach, budget_minutes, hand,
                ctx.attempts)


def hand_or(hand: dict[str, Any], key: str, planned: Decision) -> Decision:
    return Decision(hand[key], "set by hand") if key in hand else planned


def _layout_decisions(d: dict[str, Decision], fp: dict[str, Any], spacing: list[float], mode: Decision,
                      voxels: int, mach: dict[str, Any], network: str, hand: dict[str, Any]) -> None:
    """Dimensionality, patch, topology and augmentation for one patch voxel budget."""
    aliases = REGISTRY[network].aliases
    coarse = bool(rules.coarse_axes(spacing))
    if mode.value == "2d_slices":
        axis = rules.slice_axis(spacing)
        axes = [a for a in range(3) if a != axis]
        d["network.spatial_dims"] = Decision(2, mode.reason)
        d["network.slice_mode"] = Decision(True, mode.reason)
        d["network.slice_axis"] = Decision(axis, f"slices across axis {axis}, the coarsest")
        dims, sp = 2, [spacing[a] for a in axes]
    else:
        axes, dims, sp = None, len(spacing), spacing
        d["network.spatial_dims"] = Decision(dims, mode.reason)
        d["network.slice_mode"] = Decision(False, mode.reason)
        d.pop("network.slice_axis", None)
    patch = rules.patch_size(fp, spacing, voxels, dims, axes)
    patch = hand_or(hand, "training.patch_size", patch)
    d["training.patch_size"] = patch
    topo = rules.topology(list(patch.value), sp, network, mach["device"], aliases)
    for key in ("channels", "strides"):
        d.pop(f"network.{key}", None)
        if key in topo.value:
            d[f"network.{key}"] = hand_or(hand, f"network.{key}", Decision(topo.value[key], topo.reason))
    aug = rules.augmentation(fp["modality"], "3d" if mode.value == "3d" else "2d" if mode.value == "2d" else "2d_slices")
    values = rules.anisotropic_rotation(aug.value, coarse and mode.value == "3d")
    reason = aug.reason + ("; +-15 deg: a coarse axis" if values is not aug.value else "")
    d["augmentation.rotate_deg"] = hand_or(hand, "augmentation.rotate_deg", Decision(values["rotate_deg"], reason))
    d["augmentation.scale"] = hand_or(hand, "augmentation.scale", Decision(values["scale"], reason))
    d["augmentation.elastic.prob"] = hand_or(hand, "augmentation.elastic.prob",
                                             Decision(values["elastic"]["prob"], reason))


def _amp(cfg: TaskConfig, step: Any, mach: dict[str, Any],
         attempts: list[dict[str, Any]]) -> tuple[Decision, Any] | None:
    """bf16 where it helps: measured against fp32 on this machine, kept when its fastest timed step is >= 15%
    faster than fp32's fastest (another process only ever adds time to a step, so the fastest of each is the
    fair pair: a median taken while load arrived made bf16 look 4x slower on a CPU where it is faster). The
    schedule then takes the lower of bf16's median and fp32's median scaled by that ratio (two estimates of
    bf16's step; the lower one saw less of the load)."""
    if mach["device"] == "cuda" and not mach.get("bf16"):
        return None
    bf = cfg.model_copy(update={"training": cfg.training.model_copy(update={"amp": "bf16"})})
    try:
        fast = measure_step(bf, torch.device(mach["device"]), 5)
    except RuntimeError as err:  # a CPU or op without bf16 kernels
        return Decision("none", f"fp32: bf16 failed here ({str(err).splitlines()[0][:80]})"), step
    attempts.append({"attempt": "bf16", "patch": list(cfg.training.patch_size), "batch": cfg.training.batch_size,
                     **fast.to_json()})
    bf_best, fp_best = min(fast.samples or (fast.step_s,)), min(step.samples or (step.step_s,))
    said = f"fastest of 5 timed steps {bf_best:.3f} s in bf16 against {fp_best:.3f} s in fp32"
    if bf_best <= 0.85 * fp_best:
        scaled = dataclasses.replace(fast, step_s=min(fast.step_s, step.step_s * bf_best / fp_best))
        return Decision("bf16", f"bf16 autocast: {said}; schedule at {scaled.step_s:.3f} s/step (the lower of"
                                f" bf16's median {fast.step_s:.3f} s and fp32's median scaled by that ratio)"), scaled
    return Decision("none", f"fp32: {said} (not >= 15% faster)"), step


# ---- writing


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def render_yaml(plan: Plan) -> str:
    """The pipeline YAML with each planned key's reason as a comment on its line."""
    fp = plan.fingerprint
    reasons = plan.reasons()
    lines = [f"# Planned by `python -m medseg.plan` (plan {plan.hash}) for a {plan.budget_minutes:g}-minute budget"
             f" on {plan.machine['device']}.",
             f"# Fingerprint: {fp['n_cases']} cases, {fp['dims']}D, {fp['channels']} channel(s), median spacing"
             f" {rules._fmt(fp['median_spacing'])} {rules.unit(fp)}, median shape {rules._fmt(fp['median_shape'])},"
             f" anisotropy {fp['anisotropy']:g}.",
             "# Every value can be edited; a key set to `auto` is planned again by medseg.train, a hand-set one is kept."]

    def emit(tree: dict[str, Any], prefix: str, indent: str) -> None:
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value and dotted not in reasons:
                lines.append(f"{indent}{key}:")
                emit(value, dotted + ".", indent + "  ")
                continue
            text = f"{indent}{key}: {_flow(value)}"
            if dotted in reasons and reasons[dotted]:
                text += f"  # {reasons[dotted]}"
            lines.append(text)

    emit(plan.pipeline, "", "")
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, out: Path) -> Path:
    """``out`` (the YAML), ``<stem>.plan.json`` and ``<stem>.fingerprint.json`` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, plan.yaml_text())
    atomic_write_text(out.with_suffix(".plan.json"), json.dumps(plan.to_json(), indent=1, default=str))
    write_fingerprint(plan.fingerprint, out.with_suffix(".fingerprint.json"))
    return out
