"""A finished run's ``report.md`` and its figures, redrawn from the files in its run directory (no MLflow).

:func:`redraw` writes ``training_curves.png``, ``validation_overlays.png`` (the best and worst validation
cases) and ``report.md`` (what was trained, for how long, the metrics table and links to the figures)
from ``history.json``, ``cases.json``, ``metrics.json``, ``metrics_per_case.csv`` and the predictions.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any


from medseg.errors import MedsegError
from medseg.evaluation.figures import overlay_montage, training_curves
from medseg.evaluation.metrics import distance_unit
from medseg.fileio import atomic_write_text
from medseg.transforms.settings import display_window

logger = logging.getLogger(__name__)

#: the montage :func:`redraw` owns in a run folder (drawn again, or removed when it cannot be drawn)
OVERLAYS = "validation_overlays.png"
#: the files :func:`redraw` writes in a run folder
OUTPUTS = ("training_curves.png", OVERLAYS, "report.md")
DAMAGED = "the run's file is damaged or from another program: restore it from a copy, or train again"


def read_json(path: Path) -> Any:
    """A run file's JSON, or one line naming the file when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MedsegError(f"{path}: not readable as JSON ({type(err).__name__}: {err}); {DAMAGED}") from err


def _number(entry: dict[str, Any], key: str, fmt: str) -> str:
    """``entry[key]`` formatted, or ``n/a`` where the metrics file has no such value (an older or partial run)."""
    value = entry.get(key)
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "n/a"


def _run_summary(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``metrics.json`` (class -> metrics, at least one class) and ``run.json`` (or ``{}``), checked before any
    figure is redrawn, so a damaged file is refused with nothing rewritten."""
    summary = read_json(run_dir / "metrics.json")
    run = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    if not isinstance(run, dict):
        raise MedsegError(f"{run_dir / 'run.json'}: expected a JSON object (as training writes it); {DAMAGED}")
    if not isinstance(summary, dict) or not all(isinstance(e, dict) for e in summary.values()):
        raise MedsegError(f"{run_dir / 'metrics.json'}: expected class -> metrics (as training writes it); {DAMAGED}")
    if not summary:
        raise MedsegError(f"{run_dir / 'metrics.json'}: holds no class (training writes one entry per class);"
                          f" {DAMAGED}")
    return summary, run


def report_markdown(run_dir: Path, cfg: Any, summary: dict[str, Any], run: dict[str, Any]) -> Path:
    """``report.md``: what was trained (``cfg``, the run's task config), for how long, and the validation metrics
    table (``summary``, ``run``: from :func:`_run_summary`)."""
    rows = "\n".join(
        f"| {c} | {_number(e, 'dice', '.3f')} ± {_number(e, 'dice_std', '.3f')} | {_number(e, 'iou', '.3f')} "
        f"| {_number(e, 'hd95_mm', '.2f')} | {_number(e, 'assd_mm', '.2f')} | {_number(e, 'nsd', '.3f')} "
        f"| {_number(e, 'cases', '.0f')} |"
        for c, e in summary.items()
    )
    figures = "\n".join(f"![{p.stem}]({p.name})" for p in sorted(run_dir.glob("*.png")))
    train = cfg.training
    unit = distance_unit(cfg)  # px or µm for a picture task
    text = f"""# {cfg.task}: {cfg.network.name} ({cfg.network.spatial_dims}D)

{cfg.description}

- Training: {train.epochs} epochs x {train.iterations_per_epoch} iterations, batch {train.batch_size}, patch {train.patch_size}
- Wall time: {_number(run, 'seconds', '.0f')} s; best validation mean Dice {_number(run, 'best_val_mean_dice', '.3f')} at epoch {run.get('best_epoch') or 'n/a'}
- Spacing {cfg.preprocessing.spacing} {unit}; distances below are in {unit}; NSD at {cfg.evaluation.tolerance_mm} {unit}

| class | Dice | IoU | HD95 ({unit}) | ASSD ({unit}) | NSD | cases |
|---|---|---|---|---|---|---|
{rows}

{figures}
"""
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    return path


def redraw(run_dir: Path, cfg: Any) -> list[Path]:
    """Training curves, validation overlays and report.md from the files of a finished run (``cfg``: its
    :class:`medseg.config.TaskConfig`)."""
    written = []
    summary = _run_summary(run_dir) if (run_dir / "metrics.json").is_file() else None
    history = run_dir / "history.json"
    if history.is_file():
        values = read_json(history)
        try:
            written.append(training_curves(values, run_dir / "training_curves.png"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise MedsegError(f"{history}: not a training history (epoch, loss, lr, val_epoch, val) ({type(err).__name__}:"
                              f" {err}); {DAMAGED}") from err
    cases_file = run_dir / "cases.json"
    overlays = run_dir / OVERLAYS
    if cases_file.is_file() and (run_dir / "metrics_per_case.csv").is_file():
        chosen, classes, first = _overlay_cases(run_dir, cfg, cases_file)
        if chosen:
            window = display_window(cfg)
            written.append(overlay_montage(chosen, classes[first], window, overlays,
                                           label_map=cfg.effective_label_map()))
    if overlays not in written and overlays.is_file():
        # an earlier redraw's montage of cases this one could not draw: report.md would show that old picture
        overlays.unlink()
        logger.warning("%s: removed the earlier %s (not drawn this time)", run_dir, OVERLAYS)
    if summary is not None:
        written.append(report_markdown(run_dir, cfg, *summary))
    return written


def _overlay_cases(run_dir: Path, cfg: Any, cases_file: Path) -> tuple[list[dict[str, Any]], dict[str, list[int]], str]:
    """The validation cases to draw (the two worst and two best by Dice of the first class) whose image, label
    and prediction files are there; the others are named in a warning (a run folder copied without its
    predictions, a dataset moved since training: ``cases.json`` holds the paths training used)."""
    classes = cfg.evaluation.classes or {k: [v] for k, v in cfg.data.labels.items() if v}
    if not classes:
        logger.warning("%s not drawn: the run's config.yaml names no foreground class (data.labels)", OVERLAYS)
        return [], classes, ""
    first = next(iter(classes))
    table = run_dir / "metrics_per_case.csv"
    try:
        with table.open(newline="") as fh:
            dice = {r["case"]: float(r["dice"]) for r in csv.DictReader(fh) if r["class"] == first}
        cases = [dict(c, dice=dice[c["case"]], pred=str(run_dir / "predictions" / f"{c['case']}.nii.gz"))
                 for c in read_json(cases_file)["val"] if c["case"] in dice]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as err:
        raise MedsegError(f"{table} or {cases_file}: not as training writes them ({type(err).__name__}: {err});"
                          f" {DAMAGED}") from err
    present, absent = [], []
    for case in cases:
        paths = [Path(p) for p in (*(case["image"] if isinstance(case["image"], list) else [case["image"]]),
                                   case["label"], case["pred"])]
        gone = [p for p in paths if not p.exists()]
        (absent if gone else present).append((case, gone))
    for case, gone in absent:
        logger.warning("validation_overlays.png: case %s left out, %s missing", case["case"],
                       ", ".join(str(p) for p in gone))
    if not cases:
        logger.warning("validation_overlays.png not drawn: no validation case of %s has a '%s' row in %s",
                       cases_file.name, first, table.name)
    elif not present:
        logger.warning("validation_overlays.png not drawn: no validation case has its image, label and prediction"
                       " files (predictions/<case>.nii.gz; the image and label paths in %s)", cases_file.name)
    chosen = sorted((c for c, _ in present), key=lambda c: c["dice"])
    return (chosen if len(chosen) <= 4 else chosen[:2] + chosen[-2:]), classes, first
