"""The augmentation preview: training patches before and after the random augmentation, label overlaid.

One grid, drawn by :func:`write_preview`, is what ``python -m medseg.preview`` writes and what training
logs to MLflow (``augmentation_preview.png``): column i shows patch i as sampled from the preprocessed
case (top) and the same patch after augmentation (bottom), so a person can check that the deformed
anatomy is still plausible and that the label follows the image.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Compose

from medseg.transforms.pipeline import build_eval_transforms, crop_spec, instantiate, random_spec

COLOURS = ("lime", "red", "deepskyblue", "orange", "magenta")


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) else x


def preview_pairs(cfg: dict[str, Any], cases: list[dict[str, Any]], n: int = 8, seed: int = 0,
                  max_cases: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` tuples ``(patch image, patch label, augmented image, augmented label)`` (first image channel),
    from up to ``max_cases`` cases in turn, with the seeded training sampler and augmentation."""
    pre = build_eval_transforms(cfg)
    crop, rand = Compose(instantiate(crop_spec(cfg))), Compose(instantiate(random_spec(cfg)))
    crop.set_random_state(seed=seed)
    rand.set_random_state(seed=seed + 1)
    chosen = cases[: max(1, min(max_cases, len(cases)))]
    volumes = [pre(dict(c)) for c in chosen]
    pairs = []
    for i in range(n):
        patch = _first(crop(dict(volumes[i % len(volumes)])))
        augmented = rand(copy.deepcopy(patch))
        pairs.append(tuple(np.asarray(d[k][0].detach().cpu().numpy()) for d in (patch, augmented)
                           for k in ("image", "label")))
    return pairs


def _slice(volume: np.ndarray, index: int | None) -> np.ndarray:
    return volume if volume.ndim == 2 else volume[..., index]


def preview_figure(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], path: Path,
                   title: str = "") -> Path:
    """Draw the 2 x n grid (top: sampled patch, bottom: augmented) with label contours; 3D patches show the
    slice (last axis) where each patch's label is largest."""
    from medseg.reporting import _figure, _save

    plt, fig, axes = _figure(2, len(pairs), (2.6 * len(pairs), 5.6))
    for col, (img, lab, aug_img, aug_lab) in enumerate(pairs):
        lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
        for row, (im, lb, name) in enumerate(((img, lab, "patch"), (aug_img, aug_lab, "augmented"))):
            z = None
            if im.ndim == 3:
                area = (lb > 0).reshape(-1, lb.shape[-1]).sum(0)
                z = int(np.argmax(area)) if area.any() else lb.shape[-1] // 2
            ax = axes[row, col]
            ax.imshow(_slice(im, z).T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
            sl = _slice(lb, z)
            for value, colour in zip(sorted(v for v in np.unique(lb) if v > 0), COLOURS):
                mask = sl == value
                if mask.any() and not mask.all():
                    ax.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=1)
            ax.set_title(f"{name} {col + 1}" + (f" (slice {z})" if z is not None else ""), fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(plt, fig, path)


def write_preview(cfg: dict[str, Any], cases: list[dict[str, Any]], path: Path, n: int = 8, seed: int = 0) -> Path:
    """The preview grid of ``n`` patches of ``cases`` (training cases) as a PNG at ``path`` (written atomically)."""
    pairs = preview_pairs(cfg, cases, n=n, seed=seed)
    title = f"{cfg['task']}: sampled patches (top) and after augmentation (bottom), seed {seed}; labels as contours"
    return preview_figure(pairs, path, title)
