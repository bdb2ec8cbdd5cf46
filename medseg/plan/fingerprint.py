"""The dataset fingerprint the planner decides from: one pass over the cases (each image and label read once),
keeping per case its geometry and, per class, voxel share and connected components, plus a bounded random
sample of foreground intensities per channel (at most :data:`SAMPLE_PER_CASE` voxels per case).

``fingerprint.json`` holds no patient identifiers: cases are named by their file stems (``Case.name``), and
nothing of a DICOM header but the geometry and the voxel values is read.

Bad input stops with one line naming the cases (:class:`medseg.errors.MedsegError`, exit code 2): mixed
channel counts or dimensionalities, a single labelled case, label values not declared, every label empty,
images smaller than any sensible patch.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg.data.case import Case
from medseg.data.check import nonfinite_problems
from medseg.data.images import describe_geometry, read_image
from medseg.data.labelmaps import integer_labels, read_labelmap
from medseg.data.pictures import is_picture
from medseg.errors import MedsegError
from medseg.fileio import atomic_write_text

logger = logging.getLogger("medseg.plan")

#: foreground voxels sampled per case and channel for the intensity statistics (bounded memory, one pass)
SAMPLE_PER_CASE = 20_000
#: the smallest image size per axis any patch makes sense for (voxels); smaller cases are refused
MIN_SIZE = 8
PERCENTILES = (0.5, 50.0, 99.5)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ras_geometry(shape: tuple[int, ...], affine_lps: np.ndarray) -> tuple[list[int], list[float], str]:
    """(shape, spacing, orientation code) along the axes the pipeline gives the array after reorienting to RAS
    (3D); 2D images keep their axes (orientation ``"2D"``)."""
    dims = len(shape)
    spacing = np.linalg.norm(np.asarray(affine_lps)[:dims, :dims], axis=0)
    if dims != 3:
        return [int(n) for n in shape], [round(float(s), 4) for s in spacing], "2D"
    ras = _LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)
    code = "".join(nib.aff2axcodes(ras))
    ornt = nib.orientations.io_orientation(ras)
    out_shape, out_spacing = [0] * 3, [0.0] * 3
    for i in range(3):
        out_shape[int(ornt[i, 0])], out_spacing[int(ornt[i, 0])] = int(shape[i]), round(float(spacing[i]), 4)
    return out_shape, out_spacing, code


def _progress(i: int, n: int, name: str) -> None:
    if sys.stderr.isatty():
        print(f"\rfingerprint: case {i}/{n} ({name})" + " " * 10, end="" if i < n else "\n", file=sys.stderr,
              flush=True)
    elif i == n or i % max(1, n // 10) == 0:
        logger.info("fingerprint: %d/%d cases read", i, n)


def _case_entry(case: Case, rng: np.random.Generator, label_map: dict[int, int]) -> tuple[dict[str, Any],
                                                                                          list[np.ndarray],
                                                                                          dict[int, np.ndarray]]:
    """One case's entry, its sampled foreground intensities per channel, and per label value its sampled
    intensities (first channel)."""
    # a picture's mask as training reads it (an RGB mask refused, a palette mask its indices); a volume's as before
    # (read_labelmap's int64 copy would be 8x a uint8 volume's memory)
    label = read_labelmap(case.label) if is_picture(case.label) else read_image(case.label)
    # whole numbers only (as training checks them): a label resampled with linear interpolation holds thousands
    # of fractional values, each of which the per-class statistics below would treat as a class
    lab = integer_labels(np.asarray(label.array), case.label)
    if label_map:
        lab = _mapped(lab, label_map)
    shape, spacing, orientation = ras_geometry(lab.shape, label.affine)
    voxels = int(lab.size)
    values, counts = np.unique(lab, return_counts=True)
    classes: dict[str, Any] = {}
    for v, c in zip(values.tolist(), counts.tolist()):
        if v == 0:
            continue
        mask = lab == v
        components, n_comp = ndimage.label(mask)
        sizes = np.bincount(components.ravel())[1:] if n_comp else np.array([0])
        classes[str(int(v))] = {"voxels": int(c), "share": c / voxels, "components": int(n_comp),
                                "largest_share": float(sizes.max() / c) if c else 0.0,
                                "volume_mm3": float(c * np.prod(spacing)), "border": _border_shares(lab, mask)}
    fg = lab > 0
    sampled: list[np.ndarray] = []
    per_class: dict[int, np.ndarray] = {}
    pick = None
    image_min = 0.0
    for k, path in enumerate(case.images):
        img = read_image(path)
        arr = np.asarray(img.array, dtype=np.float32)
        if arr.shape != lab.shape or not np.allclose(img.affine, label.affine, atol=1e-3):
            raise MedsegError(f"{case.name}: label {case.label.name} ({describe_geometry(lab.shape, label.affine)})"
                              f" is not on the grid of image {path.name} ({describe_geometry(arr.shape, img.affine)});"
                              " resample the label onto its image (nearest neighbour) or leave the case out")
        where = np.flatnonzero(fg)
        if pick is None:
            pick = rng.choice(where, size=min(SAMPLE_PER_CASE, where.size), replace=False) if where.size else where
        sampled.append(arr.ravel()[pick])
        if k == 0:
            image_min = float(arr.min())
            flat_lab = lab.ravel()[pick]
            per_class = {int(v): sampled[0][flat_lab == v] for v in np.unique(flat_lab)}
    nonfinite = nonfinite_problems(case)  # SimpleITK reads a NaN voxel of a NIfTI file as 0: read as stored
    if nonfinite:
        raise MedsegError(nonfinite[0])
    entry = {"case": case.name, "shape": shape, "spacing": spacing, "orientation": orientation,
             "dims": len(shape), "channels": len(case.images), "label_values": [int(v) for v in values],
             "classes": classes, "image_min": image_min}
    return entry, sampled, per_class


def _border_shares(lab: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """What lies around one class (``mask``, not empty): the share of the voxels just outside it (face
    neighbours) that hold each label value (a tumour inside the liver: mostly the liver's value)."""
    box = ndimage.find_objects(mask.view(np.uint8))[0]
    box = tuple(slice(max(0, b.start - 1), min(n, b.stop + 1)) for b, n in zip(box, lab.shape))
    part = lab[box]
    inside = mask[box]
    shell = ndimage.binary_dilation(inside, ndimage.generate_binary_structure(part.ndim, 1)) & ~inside
    around, counts = np.unique(part[shell], return_counts=True)
    total = max(1, int(counts.sum()))
    return {str(int(a)): round(float(c) / total, 4) for a, c in zip(around, counts)}


def _mapped(lab: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    out = lab.astype(np.int64, copy=True)
    for src, dst in label_map.items():
        out[lab == src] = dst
    return out


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"p0.5": 0.0, "p50": 0.0, "p99.5": 0.0, "mean": 0.0, "std": 0.0, "n": 0}
    p = np.percentile(values, PERCENTILES)
    return {"p0.5": float(p[0]), "p50": float(p[1]), "p99.5": float(p[2]), "mean": float(values.mean()),
            "std": float(values.std()), "n": int(values.size)}


def _names(cases: list[Case], bad: list[int]) -> str:
    shown = ", ".join(cases[i].name for i in bad[:6])
    return shown + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")


def check_cases(cases: list[Case]) -> None:
    """Refusals that need only the case list."""
    if len(cases) < 2:
        raise MedsegError(f"{len(cases)} labelled case(s) ({_names(cases, list(range(len(cases))))}): planning"
                          " and validation need at least 2 labelled cases")
    counts = [len(c.images) for c in cases]
    common = max(set(counts), key=counts.count)
    odd = [i for i, n in enumerate(counts) if n != common]
    if odd:
        raise MedsegError(f"mixed channel counts: {_names(cases, odd)} have {sorted({counts[i] for i in odd})}"
                          f" image file(s), the others {common}; every case needs the same channels")


def check_entries(cases: list[Case], entries: list[dict[str, Any]], labels: dict[str, int] | None) -> None:
    """Refusals that need the voxels: dimensionality, undeclared label values, all labels empty, tiny images."""
    dims = [e["dims"] for e in entries]
    common = max(set(dims), key=dims.count)
    odd = [i for i, d in enumerate(dims) if d != common]
    if odd:
        raise MedsegError(f"mixed dimensionalities: {_names(cases, odd)} are {sorted({dims[i] for i in odd})}D,"
                          f" the others {common}D; plan 2D and 3D images as separate datasets")
    if labels is not None:
        declared = set(labels.values())
        odd = [i for i, e in enumerate(entries) if not set(e["label_values"]) <= declared]
        if odd:
            extra = sorted({v for i in odd for v in entries[i]["label_values"]} - declared)
            raise MedsegError(f"label values {extra} in {_names(cases, odd)} are not declared (labels"
                              f" {labels}); declare them with --labels name=value,... or fix the label files")
    if all(not e["classes"] for e in entries):
        raise MedsegError(f"every label is empty ({_names(cases, list(range(len(cases))))}): no foreground voxel"
                          " to learn from")
    small = [i for i, e in enumerate(entries) if min(e["shape"]) < MIN_SIZE]
    if small:
        raise MedsegError(f"images smaller than any sensible patch ({MIN_SIZE} voxels per axis): "
                          + ", ".join(f"{cases[i].name} {entries[i]['shape']}" for i in small[:6]))


def spacing_unit(cases: list[Case], entries: list[dict[str, Any]]) -> str:
    """``"px"`` when every image is a picture (PNG, JPEG, TIFF) storing no pixel size (every spacing 1, what the
    readers give then): its spacings and extents are pixels, not millimetres; ``"mm"`` otherwise (a TIFF with
    resolution tags has a physical pixel size)."""
    pictures = all(is_picture(p) for c in cases for p in c.images)
    return "px" if pictures and all(s == 1.0 for e in entries for s in e["spacing"]) else "mm"


def fingerprint(cases: list[Case], labels: dict[str, int] | None = None, modality: str = "CT",
                label_map: dict[int, int] | None = None, seed: int = 0) -> dict[str, Any]:
    """The fingerprint of ``cases`` (see the module docstring); ``labels``: the declared ``name -> value``
    (``None``: taken from the values found, named ``label_<v>``)."""
    check_cases(cases)
    rng = np.random.default_rng(seed)
    entries, samples, per_class = [], [], {}
    for i, case in enumerate(cases, 1):
        entry, sampled, classes = _case_entry(case, rng, label_map or {})
        entries.append(entry)
        samples.append(sampled)
        for v, vals in classes.items():
            per_class.setdefault(v, []).append(vals)
        _progress(i, len(cases), case.name)
    check_entries(cases, entries, labels)
    found = sorted({v for e in entries for v in e["label_values"]} | {0})
    if labels is None:
        labels = {("background" if v == 0 else f"label_{v}"): v for v in found}
    spacings = np.array([e["spacing"] for e in entries])
    shapes = np.array([e["shape"] for e in entries])
    median_spacing = np.median(spacings, axis=0)
    n_channels = len(cases[0].images)
    intensity = [_stats(np.concatenate([s[c] for s in samples])) for c in range(n_channels)]
    class_stats = {}
    for name, v in labels.items():
        if v == 0:
            continue
        present = [e["classes"].get(str(v)) for e in entries if str(v) in e["classes"]]
        shares = [p["share"] for p in present]
        class_stats[name] = {
            "value": v, "cases_present": len(present),
            "median_share": float(np.median(shares)) if shares else 0.0,
            "median_components": float(np.median([p["components"] for p in present])) if present else 0.0,
            "median_largest_share": float(np.median([p["largest_share"] for p in present])) if present else 0.0,
            "median_volume_mm3": float(np.median([p["volume_mm3"] for p in present])) if present else 0.0,
            # per other label: the median share of this class's outer border it makes up (0 where absent)
            "median_border": {other: float(np.median([p["border"].get(str(ov), 0.0) for p in present]))
                              for other, ov in labels.items() if ov != v} if present else {},
            "intensity": _stats(np.concatenate(per_class.get(v, [np.zeros(0, np.float32)]))),
        }
    return {
        "modality": modality, "n_cases": len(cases), "dims": entries[0]["dims"], "channels": n_channels,
        "labels": labels, "label_map": {str(k): v for k, v in (label_map or {}).items()},
        "spacing_unit": spacing_unit(cases, entries),  # of the spacings here and of the plan's reasons
        "median_spacing": [round(float(s), 4) for s in median_spacing],
        "spacing_p10": [round(float(s), 4) for s in np.percentile(spacings, 10, axis=0)],
        "median_shape": [int(round(float(s))) for s in np.median(shapes, axis=0)],
        "min_shape": [int(s) for s in shapes.min(axis=0)], "max_shape": [int(s) for s in shapes.max(axis=0)],
        "anisotropy": round(float(median_spacing.max() / median_spacing.min()), 3),
        "foreground_intensity": intensity, "classes": class_stats, "cases": entries,
        "sample_per_case": SAMPLE_PER_CASE,
    }


def write_fingerprint(fp: dict[str, Any], path: Path) -> Path:
    atomic_write_text(path, json.dumps(fp, indent=1))
    return path
