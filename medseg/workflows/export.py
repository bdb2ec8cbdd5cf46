"""Bundles as plain Python: :func:`export_run` writes (again) the bundle of a finished run, as the next version of
its name; :func:`list_bundles` lists every version kept in a bundles folder (:mod:`medseg.bundle.versions`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import yaml

from medseg.bundle import export_bundle
from medseg.bundle import versions as bundle_versions
from medseg.config import TaskConfig
from medseg.config.load import merged, parse_override
from medseg.engine.resume import STATE, read_state
from medseg.errors import MedsegError
from medseg.networks import build_network
from medseg.transforms import input_channels
from medseg.workflows.train import read_cases


def export_run(run_dir: Path, out: Path | None = None, int8: bool | None = None,
               overrides: list[str] | None = None) -> Path:
    """Export the bundle of ``run_dir`` as the next version of ``out`` (default: the config's
    ``bundle.dir``/``bundle.name``); returns the stable path, which now points at the new version.

    ``int8`` (default: the config's ``bundle.int8``): also ``models/model_int8.onnx``, calibrated on the run's
    training cases and measured on its validation cases (``cases.json``); a refused one raises ``Int8Refused``
    after the bundle is written without it. ``overrides``: ``bundle.key=value`` strings over the run's config
    (e.g. ``bundle.int8_max_dice_loss=0.01``); only ``bundle.*`` keys, as the weights fix everything else."""
    needed = [run_dir / "config.yaml", run_dir / "checkpoints" / "best.pt", run_dir / "metrics.json"]
    for path in needed:
        if not path.is_file():
            raise MedsegError(f"{path}: missing; is {run_dir} a finished medseg training run?")
    data = _read(needed[0], yaml.safe_load, "YAML")
    if not isinstance(data, dict) or not isinstance(data.get("bundle", {}), dict):
        raise MedsegError(f"{needed[0]}: not a medseg run config (a mapping with task, data, ... keys); "
                          f"is {run_dir} a finished medseg training run?")
    data.setdefault("bundle", {})
    for key, nested in (parse_override(item) for item in overrides or []):
        if not key.startswith("bundle."):
            raise MedsegError(f"--set {key}: export takes bundle.* keys only (the network, preprocessing and labels "
                              "are the run's, fixed by its weights)")
        data = merged(data, nested)
    if out is not None:
        data["bundle"]["dir"], data["bundle"]["name"] = str(out.parent), out.name
    cfg = TaskConfig.from_dict(data, source=str(needed[0]))
    # before any work: a file or a folder that is not a bundle at the target is never replaced or moved
    bundle_versions.check_target(Path(cfg.bundle.dir), cfg.bundle_name(),
                                 "--out" if out is not None else f"{needed[0]} bundle.dir/bundle.name")
    summary = _summary(needed[2], _read(needed[2], json.loads, "JSON"))
    seconds = None
    if (run_dir / "run.json").is_file():
        report = _read(run_dir / "run.json", json.loads, "JSON")
        seconds = report.get("seconds") if isinstance(report, dict) else None
        seconds = float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else None
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels))
    try:
        state = torch.load(needed[1], map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: pickle, zip and weights_only errors alike
        raise MedsegError(f"{needed[1]}: not a readable PyTorch state dict ({type(err).__name__}); export needs the "
                          "run's checkpoints/best.pt as medseg.train wrote it") from err
    if not isinstance(state, dict):
        raise MedsegError(f"{needed[1]}: holds a {type(state).__name__}, not a state dict; export needs the run's best.pt")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise MedsegError(f"{needed[1]}: weights do not fit the network in config.yaml ({str(err).splitlines()[0]})") from err
    int8_cases = None
    if cfg.bundle.int8 if int8 is None else int8:
        if not (run_dir / "cases.json").is_file():
            raise MedsegError(f"{run_dir / 'cases.json'}: missing; INT8 needs the run's training and validation cases")
        _read(run_dir / "cases.json", json.loads, "JSON")  # a broken split is one line, not a traceback
        cwd = read_state(run_dir).get("cwd") if (run_dir / STATE).is_file() else None  # relative case paths' base
        int8_cases = read_cases(run_dir, cwd)
    extra = None
    if (run_dir / "distill.json").is_file():  # a medseg.distill run: its teacher/student record stays in the bundle
        extra = {"medseg_distill": _read(run_dir / "distill.json", json.loads, "JSON")}
    return export_bundle(cfg, run_dir, net, summary, seconds, int8_cases=int8_cases, extra_metadata=extra)


def _read(path: Path, parse: Any, kind: str) -> Any:
    """``parse(text of path)``; a file that is not valid ``kind`` (or not text) is one line naming it."""
    try:
        return parse(path.read_text())
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as err:  # JSONDecodeError is a ValueError
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise MedsegError(f"{path}: not valid {kind} ({first}); restore it from the run or re-run the training") from err


#: what the bundle's metadata.json and README take from each class of metrics.json
SUMMARY_KEYS = ("dice", "hd95_mm", "assd_mm", "cases")


def _summary(path: Path, summary: Any) -> dict[str, dict[str, float]]:
    """metrics.json checked: each class a mapping with finite ``dice``, ``hd95_mm``, ``assd_mm`` and ``cases``
    (metadata.json must stay valid JSON: no NaN)."""
    if not isinstance(summary, dict) or not summary:
        raise MedsegError(f"{path}: not a medseg metrics file (class -> metrics); restore it from the run")
    for name, entry in summary.items():
        for key in SUMMARY_KEYS:
            value = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise MedsegError(f"{path}: class '{name}' has no finite '{key}' ({value!r}); restore the file from "
                                  "the run or re-evaluate it (python -m medseg.evaluate)")
    return summary


def list_bundles(bundles_dir: Path) -> list[dict[str, Any]]:
    """Every bundle version under ``bundles_dir``: name, version, date, task, run folder, validation Dice."""
    return bundle_versions.list_bundles(bundles_dir)
