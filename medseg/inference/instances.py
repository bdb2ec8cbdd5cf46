"""Semantic output -> instance label image (cells, nuclei), and the per-object table.

:func:`label_instances` numbers the objects of a predicted label map: the connected components of the interior
class (``method="components"``, 4-/6-connected so a one-pixel border separates touching cells), or a seeded
watershed (``"watershed"``, scikit-image) on the distance to the border class, seeded by the interior
components, which gives the border pixels to the nearest cell (EM membranes: every pixel ends up in a cell).
With ``seed_erosion`` r > 0 the seeds are the components of the interiors eroded by r pixels (4-neighbour steps),
grown back over the interiors by the same watershed: a neck up to 2r pixels wide between two touching objects,
where the network only narrowed the border it was taught, no longer merges them, and no pixel is lost (an
interior that erodes away whole keeps its own seed).
:func:`object_table` lists each object's area in pixels and in physical units, its centroid and bounding box
(``skimage.measure.regionprops``); :func:`write_object_csv` writes it atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops
from skimage.segmentation import watershed

from medseg.fileio import atomic_write_text

METHODS = ("components", "watershed")


def label_instances(labels: np.ndarray, interior: int = 1, method: str = "components",
                    foreground: list[int] | None = None, seed_erosion: int = 0) -> np.ndarray:
    """Instance labels (int32, 0 = no object) from a semantic label map.

    Args:
        labels: the predicted label map (2D or 3D).
        interior: the label value of object interiors (cells, nuclei).
        method: ``"components"`` or ``"watershed"`` (see the module docstring).
        foreground: for the watershed, the label values that belong to some object (interior and border
            classes); default every value (all pixels are cells or membranes).
        seed_erosion: erode the interiors by this many pixels before they seed the objects (module docstring).

    Example:
        >>> instances = label_instances(pred, interior=1, method="watershed")
    """
    if method not in METHODS:
        raise ValueError(f"instance method {method!r}: choose one of {', '.join(METHODS)}")
    inside = np.asarray(labels) == interior
    seeds = _seeds(inside, int(seed_erosion))
    distance = ndimage.distance_transform_edt(inside)  # 0 on the border class, rising into each cell
    if method == "components":
        if not seed_erosion:
            return seeds
        return watershed(-distance, markers=seeds, mask=inside).astype(np.int32)
    mask = np.ones_like(inside) if foreground is None else np.isin(labels, foreground)
    return watershed(-distance, markers=seeds, mask=mask | inside).astype(np.int32)


def _seeds(inside: np.ndarray, erosion: int) -> np.ndarray:
    """Face-connected components of ``inside`` eroded by ``erosion`` pixels (a 1-px border keeps touching objects
    apart); a component that erodes away whole is a seed of its own."""
    face = ndimage.generate_binary_structure(inside.ndim, 1)
    components, n = ndimage.label(inside, structure=face)
    if not erosion or not n:
        return components.astype(np.int32)
    core = ndimage.binary_erosion(inside, face, iterations=erosion)
    seeds, k = ndimage.label(core, structure=face)
    lost = np.isin(components, np.setdiff1d(np.arange(1, n + 1), np.unique(components[core])))
    seeds[lost] = components[lost] + k
    return _renumbered(seeds)


def _renumbered(labels: np.ndarray) -> np.ndarray:
    values, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape)
    return (out if values[0] == 0 else out + 1).astype(np.int32)


def object_table(instances: np.ndarray, spacing: tuple[float, ...] | list[float] | None = None,
                 unit: str | None = "um") -> list[dict[str, Any]]:
    """One row per object: ``label``, ``area_px``, ``area_<unit>2`` (pixel area x spacing product; left out with
    ``unit`` None: a picture that states no pixel size), centroid and bounding box in pixel indices (MONAI's
    (x, y[, z]) axes); ``spacing`` in ``unit`` per pixel (default 1)."""
    spacing = tuple(float(s) for s in (spacing or (1.0,) * instances.ndim))
    pixel = float(np.prod(spacing))
    axes = "xyz"[: instances.ndim]
    rows = []
    for region in regionprops(np.asarray(instances, dtype=np.int32)):
        row: dict[str, Any] = {"label": int(region.label), "area_px": int(region.area)}
        if unit is not None:
            row[f"area_{unit}{'2' if instances.ndim == 2 else '3'}"] = round(region.area * pixel, 6)
        for axis, value in zip(axes, region.centroid):
            row[f"centroid_{axis}"] = round(float(value), 3)
        box = region.bbox
        for i, axis in enumerate(axes):
            row[f"bbox_{axis}_min"], row[f"bbox_{axis}_max"] = int(box[i]), int(box[i + instances.ndim])
        rows.append(row)
    return rows


def write_object_csv(rows: list[dict[str, Any]], path: Path, ndim: int = 2, unit: str | None = "um",
                     pages: bool = False) -> Path:
    """The object table as CSV (a header line even without objects), written atomically; ``pages``: a ``page``
    column after ``label`` (objects of a page stack found page by page)."""
    axes = "xyz"[:ndim]
    physical = [f"area_{unit}{'2' if ndim == 2 else '3'}"] if unit is not None else []
    fields = ["label", *(["page"] if pages else []), "area_px", *physical,
              *(f"centroid_{a}" for a in axes), *(f"bbox_{a}_{m}" for a in axes for m in ("min", "max"))]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)
