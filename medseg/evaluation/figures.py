"""The figures of a run: training curves, validation overlays, and the augmentation preview.

- :func:`training_curves` (``training_curves.png``): loss and learning rate per epoch; validation Dice
  and IoU per class.
- :func:`overlay_montage` (``validation_overlays.png``): image with the reference (green) and predicted
  (red) contours on the slices where a class is largest.
- :func:`write_preview` (``augmentation_preview.png``, also ``python -m medseg.preview``): training
  patches before (top) and after (bottom) the random augmentation, labels as contours, so a person can
  check that the deformed anatomy is still plausible and that the label follows the image.

Every PNG is written atomically (:mod:`medseg.fileio`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.data.case import Case
from medseg.data.images import read_image
from medseg.data.labelmaps import mapped_labels
from medseg.fileio import atomic_write_bytes
from medseg.transforms.preview import preview_pairs

COLOURS = ("tab:green", "tab:red", "tab:blue", "tab:orange", "tab:purple")
PREVIEW_COLOURS = ("lime", "red", "deepskyblue", "orange", "magenta")


def figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, np.ndarray]:
    """A matplotlib figure with a ``rows`` x ``cols`` array of axes on the Agg canvas (no pyplot state)."""
    # deferred: start-up time (matplotlib costs ~0.5 s to import; commands that draw nothing skip it)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a 100 dpi PNG at ``path`` (atomically); returns ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # --out new/folder/preview.png
    atomic_write_bytes(path, buf.getvalue())
    return path


def training_curves(history: dict[str, Any], path: Path) -> Path:
    """Loss/lr, Dice and IoU per epoch, as a paper's training-curve figure (1500 x 400 px)."""
    return save_png(curves_figure(history), path)


def curves_figure(history: dict[str, Any]) -> Any:
    """The figure of :func:`training_curves`: loss and learning rate (one legend for both axes), Dice, IoU."""
    fig, axes = figure(1, 3, (15, 4))
    ax = axes[0, 0]
    ax.plot(history["epoch"], history["loss"], color="black", label="training loss")
    ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.set_title("Training loss")
    twin = ax.twinx()
    twin.plot(history["epoch"], history["lr"], color="tab:gray", linestyle="--", label="learning rate")
    twin.set_ylabel("learning rate")
    # the learning rate is on its own (right) axis: its line joins the loss's legend, drawn on the twin axis,
    # which lies above the loss axis (a legend of the loss axis alone had no learning-rate entry)
    lines = ax.get_lines() + twin.get_lines()
    twin.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    for ax, prefix, title in ((axes[0, 1], "val_dice_", "Validation Dice"), (axes[0, 2], "val_iou_", "Validation IoU")):
        for i, (key, values) in enumerate(k for k in history["val"].items() if k[0].startswith(prefix)):
            ax.plot(history["val_epoch"], values, marker="o", markersize=3, color=COLOURS[i % len(COLOURS)],
                    label=key[len(prefix):])
        ax.set_xlabel("epoch"), ax.set_ylim(0, 1), ax.set_title(title), ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _window(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    lo, hi = window if window is not None else np.percentile(image, [0.5, 99.5])  # no CT window: percentiles
    hi = hi if hi > lo else lo + 1.0
    return np.clip((image - lo) / (hi - lo), 0, 1)


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
    fig, axes = figure(len(cases), n_slices, (3.2 * n_slices, 3.2 * len(cases)))
    for row, case in enumerate(cases):
        read = read_image(Case.from_item(case).image)  # any format, DICOM too
        image = np.asarray(read.array, dtype=np.float32)
        ref = np.isin(mapped_labels(read_image(case["label"]).array, label_map), members)
        pred = np.isin(np.asarray(nib.load(case["pred"]).dataobj), members)
        (image, ref, pred), aspect = _axial(read.affine, image, ref, pred)
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
            ax.imshow(_window(image[..., z], window).T, cmap="gray", origin="upper", aspect=aspect)
            for mask, colour in ((ref, "lime"), (pred, "red")):
                if mask[..., z].any() and not mask[..., z].all():
                    ax.contour(mask[..., z].T.astype(float), levels=[0.5], colors=colour, linewidths=1)
            ax.set_title(f"{case['case']}  slice {z}  Dice {case['dice']:.3f}", fontsize=8)
    fig.suptitle("reference: green, prediction: red; axial slices, patient's right on the left, anterior up",
                 fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def _axial(affine_lps: np.ndarray, *arrays: np.ndarray) -> tuple[list[np.ndarray], float]:
    """``arrays`` (on the grid of ``affine_lps``) with their axes turned to (towards the patient's left, towards
    posterior, towards superior), whatever order the file stores them in: slices along the last axis are axial,
    and ``array[..., z].T`` drawn with the origin at the top is the radiological view (patient's right on the
    left, anterior at the top). Also the height/width ratio of a displayed pixel. 2D arrays are left as they are."""
    affine = np.asarray(affine_lps, dtype=np.float64)
    if arrays[0].ndim != 3 or affine.shape != (4, 4):
        return list(arrays), 1.0
    ornt = nib.orientations.io_orientation(affine)  # per array axis: the LPS world axis it runs along, and sign
    turned = [nib.orientations.apply_orientation(a, ornt) for a in arrays]  # to +L, +P, +S
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new = np.empty(3)
    new[ornt[:, 0].astype(int)] = spacing
    return [np.ascontiguousarray(a) for a in turned], float(new[1] / new[0])


def _slice(volume: np.ndarray, index: int | None) -> np.ndarray:
    return volume if volume.ndim == 2 else volume[..., index]


def codes_affine(axcodes: str) -> np.ndarray:
    """The LPS affine of a unit grid whose array axes run towards ``axcodes`` (``"RAS"``: +R, +A, +S)."""
    ras = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for i, code in enumerate(axcodes.upper()):
        axis, sign = ras[code]
        affine[axis, i] = -sign if axis < 2 else sign  # RAS -> LPS: x and y turn round
    return affine


def preview_figure(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], path: Path,
                   title: str = "", axcodes: str | None = None) -> Path:
    """Draw the 2 x n grid (top: sampled patch, bottom: augmented) with label contours; 3D patches show the
    axial slice where each patch's label is largest, in the radiological view (patient's right on the left,
    anterior up) when ``axcodes`` says which way the patches' axes run (``preprocessing.orientation``), else the
    slice along the last axis as stored."""
    weights = all(len(p) == 5 for p in pairs) and bool(pairs)  # a weighted loss: the U-Net weight map as a third row
    fig, axes = figure(3 if weights else 2, len(pairs), (2.6 * len(pairs), 8.4 if weights else 5.6))
    origin = "lower"
    if axcodes and len(axcodes) == 3 and pairs and pairs[0][0].ndim == 3:
        pairs = [tuple(_axial(codes_affine(axcodes), *p)[0]) for p in pairs]
        origin = "upper"  # (+L, +P, +S) arrays: .T drawn from the top is the radiological view
    for col, (img, lab, aug_img, aug_lab, *weight) in enumerate(pairs):
        if weights:
            w = weight[0]
            z = None if w.ndim == 2 else int(np.argmax(w.reshape(-1, w.shape[-1]).max(0)))
            ax = axes[2, col]
            ax.imshow(_slice(w, z).T, cmap="magma", origin=origin)
            ax.set_title(f"weight map {col + 1} (max {float(w.max()):.1f})", fontsize=8)
            ax.axis("off")
        lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
        for row, (im, lb, name) in enumerate(((img, lab, "patch"), (aug_img, aug_lab, "augmented"))):
            z = None
            if im.ndim == 3:
                area = (lb > 0).reshape(-1, lb.shape[-1]).sum(0)
                z = int(np.argmax(area)) if area.any() else lb.shape[-1] // 2
            ax = axes[row, col]
            ax.imshow(_slice(im, z).T, cmap="gray", origin=origin, vmin=lo, vmax=hi if hi > lo else lo + 1)
            sl = _slice(lb, z)
            for value, colour in zip(sorted(v for v in np.unique(lb) if v > 0), PREVIEW_COLOURS):
                mask = sl == value
                if mask.any() and not mask.all():
                    ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=1)
            ax.set_title(f"{name} {col + 1}" + (f" (slice {z})" if z is not None else ""), fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def write_preview(cfg: dict[str, Any], cases: list[dict[str, Any]], path: Path, n: int = 8, seed: int = 0) -> Path:
    """The preview grid of ``n`` patches of ``cases`` (training cases) as a PNG at ``path`` (written atomically)."""
    pairs = preview_pairs(cfg, cases, n=n, seed=seed)
    title = f"{cfg.task}: sampled patches (top) and after augmentation (bottom), seed {seed}; labels as contours"
    axcodes = str(cfg.preprocessing.orientation)
    three_d = bool(pairs) and pairs[0][0].ndim == 3
    if three_d:
        title += "; axial slices, patient's right on the left, anterior up"
    return preview_figure(pairs, path, title, axcodes if three_d else None)
