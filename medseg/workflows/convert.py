"""A DICOM series (or any readable image) to NIfTI/NRRD/MHA with its geometry, as a plain function (the body
of ``python -m medseg.convert``).

Only voxels and geometry are written: no DICOM header field (patient name, IDs, dates) reaches the output,
and a folder output names each series by a hash of its UID.

Example (a notebook):
    >>> from medseg.workflows import convert
    >>> convert.run("exports/CT_abdomen/", "ct.nii.gz")
    [Converted(path=PosixPath('ct.nii.gz'), ...)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from medseg.data.check import SEG_SOP_CLASS
from medseg.data.dicom import find_series, hashed_uid, is_dicom_file
from medseg.data.formats import WRITE_SUFFIXES, suffix_of
from medseg.data.images import check_output_path, describe_geometry, read_image, write_image
from medseg.data.labelmaps import _as_labels, read_labelmap
from medseg.errors import MedsegError


@dataclass
class Converted:
    """One file written: its path, shape, index -> LPS affine, voxel type, and the series it came from."""

    path: Path
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: str
    series: str = ""  # SeriesInfo.summary() for a folder output

    def describe(self) -> str:
        return f"{describe_geometry(self.shape, self.affine)} (LPS), {self.dtype}"


def run(src: str | Path, dst: str | Path, series: str | None = None, *, label: bool = False,
        force: bool = False) -> list[Converted]:
    """Convert ``src`` into ``dst``; returns what was written.

    Args:
        src: a DICOM series folder, a DICOM file (enhanced multi-frame image, or a DICOM SEG: written as a
            label map), or a NIfTI/NRRD/MHA/MHD/PNG/TIFF file.
        dst: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``, or ``.png``/``.tif`` for 2D images at the
            origin; or a folder (existing, or a string ending in ``/``): every series of ``src`` as
            ``series-<hash of its UID>.nii.gz``.
        series: the SeriesInstanceUID to convert when the folder holds several.
        label: the input is a label map: whole numbers kept, written as uint8/int32.
        force: replace an existing output file.
    """
    src = Path(src)
    if Path(dst).is_dir() or str(dst).endswith(("/", "\\")):
        return _all_series(src, Path(dst), force)
    dst = Path(dst)
    if suffix_of(dst) not in WRITE_SUFFIXES:
        raise MedsegError(f"{dst}: unknown output format; use one of {', '.join(WRITE_SUFFIXES)}")
    if dst.exists() and not force:
        raise MedsegError(f"{dst}: exists; pass --force to replace it")
    check_output_path(dst)  # a folder above it that is a file: one line before the input is read
    if src.resolve() == dst.resolve():
        raise MedsegError(f"{dst}: is the input; inputs are never overwritten")
    if not src.exists():
        raise MedsegError(f"{src}: no such file or folder")
    if _is_seg(src):
        lm = read_labelmap(src)
        array, affine = image_axis_order(lm.array, lm.affine)
        label = True
    else:
        image = read_image(src, series)
        array, affine = image.array, image.affine
    if label:
        array = _as_labels(np.asarray(array), src)
        array = array.astype(np.uint8 if array.min() >= 0 and array.max() <= 255 else np.int32)
    write_image(array, affine, dst)
    return [Converted(dst, tuple(array.shape), affine, str(array.dtype))]


def image_axis_order(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM SEG's label volume (highdicom: ``[slice, row, column]``) in the axis order of the images it labels
    as medseg reads a series (``[column, row, slice]``, slices ascending along the row x column normal), so the
    converted label map lies on the grid of the converted series voxel for voxel, not only after reordering."""
    array, affine = np.asarray(array), np.asarray(affine, dtype=np.float64).copy()
    if array.ndim != 3 or affine.shape != (4, 4):
        return array, affine
    array = array.transpose(2, 1, 0)
    affine[:3, :3] = affine[:3, [2, 1, 0]]
    if np.dot(np.cross(affine[:3, 0], affine[:3, 1]), affine[:3, 2]) < 0:  # slices stored descending
        affine[:3, 3] += affine[:3, 2] * (array.shape[2] - 1)
        affine[:3, 2] = -affine[:3, 2]
        array = array[:, :, ::-1]
    return np.ascontiguousarray(array), affine + 0.0  # + 0.0: no -0 in the printed direction


def _is_seg(path: Path) -> bool:
    if not (path.is_file() and is_dicom_file(path)):
        return False
    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPClassUID", "")) == SEG_SOP_CLASS
    except Exception:  # a damaged file: the image reader reports it with its name
        return False


def _all_series(folder: Path, out_dir: Path, force: bool) -> list[Converted]:
    """Every series of a DICOM folder to ``out_dir/series-<hash of its UID>.nii.gz`` (no patient data in names)."""
    if not folder.is_dir():
        raise MedsegError(f"{folder}: a folder output needs a DICOM folder as input")
    for above in (out_dir, *out_dir.parents):
        if above.exists():
            if not above.is_dir():
                raise MedsegError(f"{out_dir}: {above} is a file, not a folder; give a folder for the series' files")
            break
    series = find_series(folder)
    targets = {uid: out_dir / f"{hashed_uid(uid)}.nii.gz" for uid in sorted(series)}
    taken = [t.name for t in targets.values() if t.exists()]
    if taken and not force:  # before any series is written: no half-converted folder
        raise MedsegError(f"{out_dir}: already holds {', '.join(taken)}; pass --force to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for uid, target in targets.items():
        image = read_image(folder, uid)
        write_image(image.array, image.affine, target)
        written.append(Converted(target, tuple(image.array.shape), image.affine, str(image.array.dtype),
                                 series[uid].summary()))
    return written
