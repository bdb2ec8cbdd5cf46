"""A finished run's ``report.md`` and its figures, redrawn from the files in its run directory (no MLflow).

:func:`redraw` writes ``training_curves.png``, ``validation_overlays.png`` (the best and worst validation
cases) and ``report.md`` (what was trained, for how long, the metrics table and links to the figures)
from ``history.json``, ``cases.json``, ``metrics.json``, ``metrics_per_case.csv`` and the predictions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from medseg.evaluation.figures import overlay_montage, training_curves
from medseg.fileio import atomic_write_text
from medseg.transforms.settings import display_window


def report_markdown(run_dir: Path) -> Path:
    """``report.md``: what was trained, for how long, and the validation metrics table."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "metrics.json").read_text())
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    rows = "\n".join(
        f"| {c} | {e['dice']:.3f} ± {e['dice_std']:.3f} | {e['iou']:.3f} | {e['hd95_mm']:.2f} | {e['assd_mm']:.2f} "
        f"| {e['nsd']:.3f} | {int(e['cases'])} |"
        for c, e in summary.items()
    )
    figures = "\n".join(f"![{p.stem}]({p.name})" for p in sorted(run_dir.glob("*.png")))
    text = f"""# {cfg['task']}: {cfg['network']['name']} ({cfg['network']['spatial_dims']}D)

{cfg.get('description', '')}

- Training: {cfg['training']['epochs']} epochs x {cfg['training']['iterations_per_epoch']} iterations, batch {cfg['training']['batch_size']}, patch {cfg['training']['patch_size']}
- Wall time: {run.get('seconds', 'n/a')} s; best validation mean Dice {run.get('best_val_mean_dice', float('nan')):.3f} at epoch {run.get('best_epoch', 'n/a')}
- Spacing {cfg['preprocessing']['spacing']} mm; distances below are in mm; NSD at {cfg['evaluation']['tolerance_mm']} mm

| class | Dice | IoU | HD95 (mm) | ASSD (mm) | NSD | cases |
|---|---|---|---|---|---|---|
{rows}

{figures}
"""
    path = run_dir / "report.md"
    atomic_write_text(path, text)
    return path


def redraw(run_dir: Path, cfg: dict[str, Any]) -> list[Path]:
    """Training curves, validation overlays and report.md from the files of a finished run."""
    written = []
    history = run_dir / "history.json"
    if history.is_file():
        written.append(training_curves(json.loads(history.read_text()), run_dir / "training_curves.png"))
    cases_file = run_dir / "cases.json"
    if cases_file.is_file() and (run_dir / "metrics_per_case.csv").is_file():
        classes = cfg.evaluation.classes or {k: [v] for k, v in cfg.data.labels.items() if v}
        first = next(iter(classes))
        dice = {r["case"]: float(r["dice"]) for r in csv.DictReader((run_dir / "metrics_per_case.csv").open())
                if r["class"] == first}
        cases = [dict(c, dice=dice[c["case"]], pred=str(run_dir / "predictions" / f"{c['case']}.nii.gz"))
                 for c in json.loads(cases_file.read_text())["val"] if c["case"] in dice]
        cases.sort(key=lambda c: c["dice"])
        chosen = cases if len(cases) <= 4 else cases[:2] + cases[-2:]
        window = display_window(cfg)
        written.append(overlay_montage(chosen, classes[first], window, run_dir / "validation_overlays.png",
                                       label_map=cfg.effective_label_map()))
    if (run_dir / "metrics.json").is_file():
        written.append(report_markdown(run_dir))
    return written
