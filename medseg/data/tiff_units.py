"""A TIFF's pixel size in micrometres from its resolution tags: one rule for every reader of medseg.

:func:`tiff_pixel_size` is what :class:`medseg.data.pictures.PictureReader` (training's and prediction's chain)
gives a TIFF, and what :func:`picture_affine` puts in place of SimpleITK's spacing where medseg reads a TIFF's
header or pixels with SimpleITK (planning, label checks, evaluation). Own rule, because SimpleITK's is not one:
with no unit it takes the inch (2 px per unit: 12.7), an ImageJ um file as 1, cm and inch as mm. Imports only
numpy and (optionally) tifffile: exported bundles ship it beside ``pictures.py``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    import tifffile
except ImportError:  # stock environments: no pixel size from tags
    tifffile = None

#: micrometres per TIFF ResolutionUnit (3 cm; tifffile's 4 mm and 5 um) and per ImageJ unit (ResolutionUnit 1)
UM_PER_UNIT = {3: 1e4, 4: 1e3, 5: 1.0}
UM_PER_IMAGEJ_UNIT = {"micron": 1.0, "microns": 1.0, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "mm": 1e3,
                      "cm": 1e4}


def is_tiff(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith((".tif", ".tiff"))


def pixel_size_of(tif: Any) -> tuple[list[float], bool]:
    """``(pixel size in um, stated)`` of an open ``tifffile.TiffFile`` from its first page's XResolution/YResolution
    (pixels per unit) and ResolutionUnit: cm, mm and um converted; no unit (1): ImageJ's unit where the file names
    a length; inch (2, also what a file without ResolutionUnit means): a display density (72 or 300 dpi, as PIL,
    Photoshop and scanners write for any picture), no pixel size; an unknown unit, none either.
    ``([1, 1], False)`` without."""
    none = ([1.0, 1.0], False)
    try:
        tags = tif.pages[0].tags
        xr, yr = tags["XResolution"].value, tags["YResolution"].value
        sx, sy = xr[1] / xr[0], yr[1] / yr[0]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return none
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit == 1:
        named = str((getattr(tif, "imagej_metadata", None) or {}).get("unit", "")).strip().lower()
        factor = UM_PER_IMAGEJ_UNIT.get(named)
    else:
        factor = UM_PER_UNIT.get(unit)  # inch and unknown units: None
    if factor is None or not (sx > 0 and sy > 0):
        return none
    return [float(sx * factor), float(sy * factor)], True


def tiff_pixel_size(path: str | os.PathLike) -> tuple[list[float], bool]:
    """:func:`pixel_size_of` of the TIFF at ``path`` (``([1, 1], False)`` for any other file or one it cannot
    open)."""
    if not is_tiff(path) or tifffile is None:
        return [1.0, 1.0], False
    try:
        with tifffile.TiffFile(path) as tif:
            return pixel_size_of(tif)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return [1.0, 1.0], False


def picture_affine(path: str | os.PathLike, affine: np.ndarray) -> np.ndarray:
    """``affine`` (an LPS index -> mm affine SimpleITK gave a TIFF at ``path``) with the pixel size of
    :func:`tiff_pixel_size` on its first two axes (``affine`` itself for any other file)."""
    if not is_tiff(path):
        return affine
    spacing, _ = tiff_pixel_size(path)
    out = np.array(affine, dtype=np.float64)
    for axis, size in enumerate(spacing[: out.shape[0] - 1]):
        norm = np.linalg.norm(out[:-1, axis])
        out[:-1, axis] = out[:-1, axis] / (norm if norm > 0 else 1.0) * size
    return out
