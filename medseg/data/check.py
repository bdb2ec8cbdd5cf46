"""Dataset integrity: image/label geometry, label values, NaN/inf, empty labels, orientation and spacing summary.

Geometry comes from the headers (SimpleITK's ``ReadImageInformation``, DICOM headers without pixel
data); only label maps (for their values) and floating-point images (for NaN/inf; integer pixels cannot
hold them) are read in full.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom

from medseg.data.dicom import SEG_SOP_CLASS, is_dicom_file, series_headers_ok
from medseg.data.formats import NIFTI_SUFFIXES, PLAIN_2D_SUFFIXES, has_suffix, sitk_affine, suffix_of
from medseg.data.images import check_file, describe_geometry, read_image, sitk_information
from medseg.data.labelmaps import case_name, read_labelmap
from medseg.data.pictures import is_picture
from medseg.data.tiff_units import picture_affine
from medseg.errors import MedsegError

@dataclass
class Header:
    shape: tuple[int, ...]
    affine: np.ndarray  # LPS
    floating: bool  # pixel type can hold NaN/inf
    seg: bool = False  # a DICOM SEG file (label)

    def describe(self) -> str:
        return describe_geometry(self.shape, self.affine)


def read_header(path: Path, series_uid: str | None = None) -> Header:
    """Shape and LPS affine of an image file, DICOM series folder or DICOM (SEG) file, without reading pixels.

    Every check that needs no voxels runs here, so a bad input stops with one line before any reader
    allocates it: DICOM series geometry and choice (``series_uid``), claimed sizes, truncated NIfTI, cut
    gzip streams, 4D images, a single voxel, colour images (:func:`medseg.data.images.check_file`).
    """
    path = Path(path)
    if path.is_dir():
        vol = series_headers_ok(path, series_uid)
        return Header(tuple(vol.array.shape), vol.affine, False)
    if not path.exists():
        raise MedsegError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MedsegError(f"{path}: zero-length file")
    if is_dicom_file(path):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # pydicom raises many types for damaged files
            raise MedsegError(f"{path}: damaged or truncated DICOM file ({type(err).__name__})") from err
        if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
            lm = read_labelmap(path)
            return Header(lm.array.shape, lm.affine, False, seg=True)
        vol = series_headers_ok(path)  # a single-frame or enhanced multi-frame image, from its headers
        return Header(vol.array.shape, vol.affine, False)  # rescaled DICOM integers hold no NaN/inf
    # deferred: start-up of SimpleITK (~0.4 s) only where a header is read with it
    import SimpleITK as sitk

    components = check_file(path)[1]  # claimed size, truncation, cut gzip, 4D, a single voxel
    if components > 1 and not (is_picture(path) and components in (3, 4)):  # RGB(A) pictures: medseg.data.pictures
        raise MedsegError(f"{path}: colour image ({components} components per pixel); medseg reads greyscale images"
                          " and label maps: save it with one grey channel")
    reader = sitk_information(path)
    ndim = reader.GetDimension()
    size = tuple(int(v) for v in reader.GetSize())
    if ndim == 3 and size[2] == 1 and suffix_of(path) in PLAIN_2D_SUFFIXES:
        ndim, size = 2, size[:2]
    if ndim > 3:  # trailing dimensions of 1 (check_file refuses the rest)
        ndim, size = 3, size[:3]
    affine = picture_affine(path, sitk_affine(reader, ndim))  # a TIFF's pixel size as training's reader has it
    floating = "float" in sitk.GetPixelIDValueAsString(reader.GetPixelID()) or "double" in sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return Header(size, affine, floating)


def grids_match(a: Header, b: Header, atol_mm: float = 1e-3, allow_reorder: bool = False) -> bool:
    """Same voxel grid; with ``allow_reorder`` also the same voxels in another axis order (DICOM SEG vs image)."""
    if len(a.shape) != len(b.shape):
        return False
    if a.shape == b.shape and np.allclose(a.affine, b.affine, atol=atol_mm):
        return True
    if not allow_reorder:
        return False
    mapping = np.linalg.solve(a.affine, b.affine)
    lin, shift = mapping[:-1, :-1], mapping[:-1, -1]
    perm = np.abs(np.round(lin))
    if not (np.allclose(lin, np.round(lin), atol=1e-4) and (perm.sum(0) == 1).all() and (perm.sum(1) == 1).all()):
        return False
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in b.shape], indexing="ij")).reshape(len(b.shape), -1)
    mapped = np.rint(lin @ corners + shift[:, None])
    return bool(np.allclose(lin @ corners + shift[:, None], mapped, atol=1e-3)
                and (mapped >= 0).all() and (mapped < np.array(a.shape)[:, None]).all())


def _images(case: dict[str, Any]) -> list[Path]:
    image = case["image"]
    return [Path(p) for p in (image if isinstance(image, list) else [image])]


def header_problems(case: dict[str, Any]) -> list[str]:
    """What stops a case from training, from headers only: unreadable files, channel or label grid mismatch."""
    try:
        headers = [read_header(p) for p in _images(case)]
        label_path = Path(case["label"])
        label = read_header(label_path)
    except MedsegError as err:
        return [str(err)]
    problems = []
    for path, h in zip(_images(case)[1:], headers[1:]):
        if not grids_match(headers[0], h):
            problems.append(f"channel {path.name} ({h.describe()}) is not on the grid of {_images(case)[0].name}"
                            f" ({headers[0].describe()})")
    if label.seg:
        problems.append(f"{label_path.name} is a DICOM SEG; training reads NIfTI/NRRD/MHA/PNG labels: convert it with"
                        f" python -m medseg.convert {label_path} {label_path.with_name(label_path.stem + '.nii.gz')}"
                        " and give that file as the case's label")
    elif not grids_match(headers[0], label):
        problems.append(f"label {label_path.name} ({label.describe()}) does not match image {_images(case)[0].name}"
                        f" ({headers[0].describe()})")
    return problems


def label_values(case: dict[str, Any], expected: set[int] | None,
                 label_map: dict[int, int] | None = None) -> tuple[list[int], list[str]]:
    """The label values of a case's label file (after ``label_map``) and the problems with them."""
    path = Path(case["label"])
    if not path.is_file():
        return [], []
    try:
        values = np.unique(read_labelmap(path).array)
    except MedsegError as err:
        return [], [str(err)]
    if label_map:
        values = np.unique([label_map.get(int(v), int(v)) for v in values])
    found = [int(v) for v in values]
    if expected is not None and not set(found) <= expected:
        extra = sorted(set(found) - expected)
        return found, [f"{path.name}: unexpected label value(s) {extra}; expected {sorted(expected)} (data.labels)"]
    return found, []


@dataclass
class CaseResult:
    case: str
    problems: list[str] = field(default_factory=list)
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    axcodes: str = ""
    label_values: list[int] = field(default_factory=list)


def axcodes(affine: np.ndarray) -> str:
    """Orientation letters in RAS terms (what NIfTI tools show) for an LPS affine."""
    if affine.shape != (4, 4):
        return "2D"
    return "".join(nib.orientations.aff2axcodes(np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine))


def check_case(case: dict[str, Any], expected: set[int] | None, label_map: dict[int, int] | None = None) -> CaseResult:
    """Every check on one case: headers, then label values and emptiness, then NaN/inf in floating images."""
    images = _images(case)
    result = CaseResult(case_name(images[0]) if images[0].is_file() else images[0].name)
    try:
        header = read_header(images[0])
    except MedsegError as err:
        result.problems.append(str(err))
        return result
    result.shape = tuple(int(v) for v in header.shape)
    result.spacing = tuple(float(v) for v in np.linalg.norm(header.affine[:-1, :-1], axis=0))
    result.axcodes = axcodes(header.affine)
    result.problems += header_problems(case)  # a DICOM SEG label too: training refuses it, with the fix
    values, problems = label_values(case, expected, label_map)
    result.label_values = values
    result.problems += problems
    if values == [0]:
        result.problems.append(f"{Path(case['label']).name}: empty label (background only)")
    result.problems += nonfinite_problems(case)
    return result


def nonfinite_problems(case: dict[str, Any]) -> list[str]:
    """NaN/inf voxels in a case's floating-point images (integer pixel types cannot hold them; not read)."""
    problems = []
    for path in _images(case):
        try:
            if not read_header(path).floating:
                continue
            if has_suffix(path, NIFTI_SUFFIXES):
                # nibabel gives the stored values; SimpleITK's NIfTI reader turned a NaN voxel into 0 here
                array = np.asanyarray(nib.load(str(path)).dataobj)
            else:
                array = read_image(path).array
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                problems.append(f"{path.name}: {bad} NaN/inf voxel(s); replace them (e.g. by the background value)"
                                " before training or prediction")
        except MedsegError:
            pass  # reported by the header checks
    return problems


def data_problems(case: dict[str, Any], expected: set[int] | None, label_map: dict[int, int] | None = None) -> list[str]:
    """What the voxels say, after the headers passed: label values (see :func:`label_values`), NaN/inf images."""
    return label_values(case, expected, label_map)[1] + nonfinite_problems(case)


def summarise(results: list[CaseResult]) -> list[str]:
    """The orientation/spacing/label summary lines of a check report."""
    readable = [r for r in results if r.shape]
    lines = [f"{len(results)} case(s), {sum(1 for r in results if r.problems)} with problems"]
    if readable:
        dims = Counter(len(r.shape) for r in readable)
        lines.append("dimensions: " + ", ".join(f"{d}D x{n}" for d, n in sorted(dims.items())))
        lines.append("orientations: " + ", ".join(f"{k} x{n}" for k, n in Counter(r.axcodes for r in readable).most_common()))
        for d in sorted(dims):
            sp = np.array([r.spacing for r in readable if len(r.spacing) == d])
            fmt = lambda v: "(" + ", ".join(f"{x:.3g}" for x in v) + ")"  # noqa: E731
            lines.append(f"spacing {d}D (mm): median {fmt(np.median(sp, 0))}, min {fmt(sp.min(0))}, max {fmt(sp.max(0))}")
            sh = np.array([r.shape for r in readable if len(r.shape) == d])
            lines.append(f"shape {d}D: median {tuple(int(v) for v in np.median(sh, 0))}, min {tuple(int(v) for v in sh.min(0))},"
                         f" max {tuple(int(v) for v in sh.max(0))}")
        values = sorted({v for r in readable for v in r.label_values})
        lines.append(f"label values: {values}")
    return lines
