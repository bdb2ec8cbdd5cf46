"""Figures and a Markdown summary of a run, from the files in its run directory (no MLflow needed).

- ``training_curves.png``: loss and learning rate per epoch; validation Dice and IoU per class.
- ``validation_overlays.png``: the best and worst validation cases, image with the reference (green)
  and predicted (red) contours on the slices where the first class is largest.
- ``augmentation_preview.png``: training patches before and after random augmentation, with label
  contours (made at the start of training by :mod:`medseg.transforms.preview`, as ``python -m medseg.preview``).
- ``report.md``: the metrics table, the training budget and links to the figures.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from medseg.fileio import atomic_write_bytes, atomic_write_text

COLOURS = ("tab:green", "tab:red", "tab:blue", "tab:orange", "tab:purple")


def _figure(rows: int, cols: int, size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def training_curves(history: dict[str, Any], path: Path) -> Path:
    """Loss/lr, Dice and IoU per epoch, as a paper's training-curve figure (1500 x 400 px)."""
    plt, fig, axes = _figure(1, 3, (15, 4))
    ax = axes[0, 0]
    ax.plot(history["epoch"], history["loss"], color="black", label="training loss")
    ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.set_title("Training loss")
    twin = ax.twinx()
    twin.plot(history["epoch"], history["lr"], color="tab:gray", linestyle="--", label="learning rate")
    twin.set_ylabel("learning rate")
    ax.legend(loc="upper right", fontsize=8)
    for ax, prefix, title in ((axes[0, 1], "val_dice_", "Validation Dice"), (axes[0, 2], "val_iou_", "Validation IoU")):
        for i, (key, values) in enumerate(k for k in history["val"].items() if k[0].startswith(prefix)):
            ax.plot(history["val_epoch"], values, marker="o", markersize=3, color=COLOURS[i % len(COLOURS)],
                    label=key[len(prefix):])
        ax.set_xlabel("epoch"), ax.set_ylim(0, 1), ax.set_title(title), ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


def _window(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    lo, hi = window if window is not None else np.percentile(image, [0.5, 99.5])  # no CT window: percentiles
    hi = hi if hi > lo else lo + 1.0
    return np.clip((image - lo) / (hi - lo), 0, 1)


def _first(image: Any) -> Path:
    return Path(image[0] if isinstance(image, list) else image)


def overlay_montage(cases: list[dict[str, Any]], members: list[int], window: tuple[float, float] | None, path: Path,
                    n_slices: int = 3, label_map: dict | None = None) -> Path:
    """Image with reference (green) and prediction (red) contours of one class, for each given case.

    Args:
        cases: ``{"case", "image", "label", "pred", "dice"}`` (paths on the same grid).
        members: label values merged into the class shown.
        window: intensity range for display (HU for CT); None: each slice's 0.5-99.5th percentiles
        path: the PNG to write.
        n_slices: slices per case, along the last array axis, through the class's largest extent.
        label_map: stored label value -> trained value (``data.label_map``, e.g. 0/255 masks).
    """
    import nibabel as nib

    from medseg.data.images import read_image
    from medseg.data.labelmaps import mapped_labels

    plt, fig, axes = _figure(len(cases), n_slices, (3.2 * n_slices, 3.2 * len(cases)))
    for row, case in enumerate(cases):
        image = np.asarray(read_image(_first(case["image"])).array, dtype=np.float32)  # any format, DICOM too
        ref = np.isin(mapped_labels(read_image(case["label"]).array, label_map), members)
        pred = np.isin(np.asarray(nib.load(case["pred"]).dataobj), members)
        image, ref, pred = (a.reshape(a.shape[:2] + (-1,)) for a in (image, ref, pred))  # 2D: one slice
        area = ref.reshape(-1, ref.shape[-1]).sum(0)
        present = np.flatnonzero(area) if area.any() else np.arange(ref.shape[-1])
        picks = np.unique(np.percentile(present, np.linspace(25, 75, n_slices)).astype(int))
        for col in range(n_slices):
            ax = axes[row, col]
            ax.axis("off")
            if col >= len(picks):
                continue
            z = picks[col]
            ax.imshow(_window(image[..., z], window).T, cmap="gray", origin="lower")
            for mask, colour in ((ref, "lime"), (pred, "red")):
                if mask[..., z].any() and not mask[..., z].all():
                    ax.contour(mask[..., z].T.astype(float), levels=[0.5], colors=colour, linewidths=1)
            ax.set_title(f"{case['case']}  slice {z}  Dice {case['dice']:.3f}", fontsize=8)
    fig.suptitle("reference: green, prediction: red", fontsize=9)
    fig.tight_layout()
    return _save(plt, fig, path)


def report_markdown(run_dir: Path) -> Path:
    """``report.md``: what was trained, for how long, and the validation metrics table."""
    cfg_text = (run_dir / "config.yaml").read_text()
    import yaml

    cfg = yaml.safe_load(cfg_text)
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
    from medseg.transforms.settings import display_window

    written = []
    history = run_dir / "history.json"
    if history.is_file():
        written.append(training_curves(json.loads(history.read_text()), run_dir / "training_curves.png"))
    cases_file = run_dir / "cases.json"
    if cases_file.is_file() and (run_dir / "metrics_per_case.csv").is_file():
        import csv

        classes = cfg["evaluation"]["classes"] or {k: [v] for k, v in cfg["data"]["labels"].items() if v}
        first = next(iter(classes))
        dice = {r["case"]: float(r["dice"]) for r in csv.DictReader((run_dir / "metrics_per_case.csv").open())
                if r["class"] == first}
        cases = [dict(c, dice=dice[c["case"]], pred=str(run_dir / "predictions" / f"{c['case']}.nii.gz"))
                 for c in json.loads(cases_file.read_text())["val"] if c["case"] in dice]
        cases.sort(key=lambda c: c["dice"])
        chosen = cases if len(cases) <= 4 else cases[:2] + cases[-2:]
        window = display_window(cfg)
        written.append(overlay_montage(chosen, classes[first], window, run_dir / "validation_overlays.png",
                                       label_map=cfg["data"].get("label_map")))
    if (run_dir / "metrics.json").is_file():
        written.append(report_markdown(run_dir))
    return written
