"""Bundles as plain Python: :func:`export_run` writes (again) the bundle of a finished run, as the next version of
its name; :func:`list_bundles` lists every version kept in a bundles folder (:mod:`medseg.bundle.versions`)."""

from __future__ import annotations

import json
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
    data = yaml.safe_load(needed[0].read_text())
    for key, nested in (parse_override(item) for item in overrides or []):
        if not key.startswith("bundle."):
            raise MedsegError(f"--set {key}: export takes bundle.* keys only (the network, preprocessing and labels "
                              "are the run's, fixed by its weights)")
        data = merged(data, nested)
    if out is not None:
        data["bundle"]["dir"], data["bundle"]["name"] = str(out.parent), out.name
    cfg = TaskConfig.from_dict(data, source=str(needed[0]))
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels))
    try:
        net.load_state_dict(torch.load(needed[1], map_location="cpu", weights_only=True))
    except RuntimeError as err:
        raise MedsegError(f"{needed[1]}: weights do not fit the network in config.yaml ({str(err).splitlines()[0]})") from err
    summary = json.loads(needed[2].read_text())
    seconds = None
    if (run_dir / "run.json").is_file():
        seconds = json.loads((run_dir / "run.json").read_text()).get("seconds")
    int8_cases = None
    if cfg.bundle.int8 if int8 is None else int8:
        if not (run_dir / "cases.json").is_file():
            raise MedsegError(f"{run_dir / 'cases.json'}: missing; INT8 needs the run's training and validation cases")
        cwd = read_state(run_dir).get("cwd") if (run_dir / STATE).is_file() else None  # relative case paths' base
        int8_cases = read_cases(run_dir, cwd)
    extra = None
    if (run_dir / "distill.json").is_file():  # a medseg.distill run: its teacher/student record stays in the bundle
        extra = {"medseg_distill": json.loads((run_dir / "distill.json").read_text())}
    return export_bundle(cfg, run_dir, net, summary, seconds, int8_cases=int8_cases, extra_metadata=extra)


def list_bundles(bundles_dir: Path) -> list[dict[str, Any]]:
    """Every bundle version under ``bundles_dir``: name, version, date, task, run folder, validation Dice."""
    return bundle_versions.list_bundles(bundles_dir)
