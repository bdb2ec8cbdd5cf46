"""Label maps from disk with their geometry: NIfTI, NRRD, MHA/MHD, PNG/TIFF (SimpleITK) and DICOM SEG (highdicom).

Every reader returns a :class:`LabelMap`: an integer array indexed ``[i, j, k]`` and the affine that maps
those indices to patient coordinates in millimetres (LPS, the DICOM/ITK convention). Comparing two label
maps means comparing those affines, whatever the file format or axis order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.data.formats import NIFTI_SUFFIXES, PLAIN_2D_SUFFIXES, has_suffix, sitk_affine, strip_suffix, suffix_of
from medseg.data.images import palette_indices, read_image
from medseg.data.tiff_units import picture_affine
from medseg.errors import MedsegError
from medseg.fileio import atomic_path, atomic_write_gzip




def mapped_labels(labels: np.ndarray, label_map: dict | None) -> np.ndarray:
    """Label values as stored -> as trained (``data.label_map``, e.g. 0/255 masks -> 0/1), as int64."""
    out = np.asarray(labels).astype(np.int64)
    source = out.copy()
    for stored, value in (label_map or {}).items():
        out[source == int(stored)] = int(value)
    return out


@dataclass
class LabelMap:
    array: np.ndarray  # integer labels, index order [i, j(, k)]
    affine: np.ndarray  # (ndim+1, ndim+1): index -> LPS millimetres

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:-1, :-1], axis=0))

    def describe(self) -> str:
        origin = ", ".join(f"{v:.2f}" for v in self.affine[:-1, -1])
        spacing = ", ".join(f"{v:.3g}" for v in self.spacing)
        return f"shape {self.array.shape}, spacing ({spacing}) mm, origin ({origin})"


def case_name(path: Path) -> str:
    """File name without its image suffix: the key that matches a prediction to its reference."""
    return strip_suffix(path)


def integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels as they are (bool as a uint8 view); whole-number floats as int64; anything else refused."""
    if array.dtype == bool:
        return array.view(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    finite = np.isfinite(array)
    rounded = np.round(array)
    bad = ~finite | (np.abs(array - rounded) > 1e-3)
    if bad.any():
        example = float(array[bad].flat[0])
        raise MedsegError(f"{path}: non-integer label value {example:g}; expected a label map of whole numbers"
                          " (resample label maps with nearest neighbour, not linear interpolation)")
    return rounded.astype(np.int64)


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    return integer_labels(array, path).astype(np.int64)


def _read_sitk(path: Path) -> LabelMap:
    # deferred: start-up of SimpleITK (~0.4 s) only where a label file is read with it
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise MedsegError(f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})") from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        indices = palette_indices(path)
        if indices is not None:  # a palette mask (CVAT, Pascal VOC): SimpleITK would give its colours
            return LabelMap(_as_labels(indices, path), picture_affine(path, sitk_affine(image)))
        raise MedsegError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} channels; a label map has one: save it as a"
                          " greyscale (one-channel) image")
    array = sitk.GetArrayFromImage(image).transpose()  # ITK's (k, j, i) -> (i, j, k)
    return LabelMap(_as_labels(array, path), picture_affine(path, sitk_affine(image)))  # a TIFF: medseg's pixel size


def _read_dicom_seg(path: Path) -> LabelMap:
    # deferred: start-up of highdicom (~0.9 s) only for DICOM SEG labels
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:  # pydicom/highdicom raise many types for a file that is no DICOM SEG
        raise MedsegError(f"{path}: not a readable DICOM SEG ({type(err).__name__}: {err})") from err
    volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.int64)
    return LabelMap(np.asarray(volume.array, dtype=np.int64), np.asarray(volume.affine, dtype=np.float64))


def read_labelmap(path: Path) -> LabelMap:
    """Read a label map with its geometry; DICOM SEG segment numbers become the label values."""
    if not path.is_file():
        raise MedsegError(f"{path}: no such file")
    if path.name.lower().endswith(".dcm") or _is_dicom(path):
        return _read_dicom_seg(path)
    return _read_sitk(path)


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def same_grid(a: LabelMap, b: LabelMap, atol_mm: float = 1e-3) -> bool:
    return a.array.shape == b.array.shape and np.allclose(a.affine, b.affine, atol=atol_mm)


def onto_grid(src: LabelMap, ref: LabelMap, resample: bool, what: str) -> np.ndarray:
    """``src``'s labels on ``ref``'s grid.

    Identical grids pass through. Grids that coincide voxel for voxel but with axes permuted or
    flipped (a DICOM SEG against a NIfTI reference, say) are reordered exactly. Anything else is
    resampled with nearest neighbour when ``resample`` is set, and refused otherwise.
    """
    if same_grid(src, ref):
        return src.array
    if src.array.ndim != ref.array.ndim:
        raise MedsegError(f"{what}: {src.array.ndim}D prediction ({src.describe()}) against a {ref.array.ndim}D"
                          f" reference ({ref.describe()}); predict with a network of the reference's dimensions (or"
                          " compare 2D masks with 2D references)")
    mapping = np.linalg.solve(src.affine, ref.affine)  # ref index -> src index
    lin, shift = mapping[:-1, :-1], mapping[:-1, -1]
    exact = np.allclose(lin, np.round(lin), atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-3)
    signed_permutation = np.abs(np.round(lin))
    exact = exact and bool((signed_permutation.sum(axis=0) == 1).all() and (signed_permutation.sum(axis=1) == 1).all())
    if not (exact or resample):
        raise MedsegError(
            f"{what}: prediction geometry ({src.describe()}) differs from the reference ({ref.describe()});"
            " pass --resample to map it onto the reference grid with nearest neighbour"
        )
    grid = np.indices(ref.array.shape, dtype=np.float64).reshape(ref.array.ndim, -1)
    # nearest neighbour by rounding: exact for coinciding grids, where scipy's map_coordinates would
    # drop the last row when rounding error puts it a hair past the edge
    index = np.rint(lin @ grid + shift[:, None]).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(src.array.shape)[:, None]), axis=0)
    out = np.zeros(index.shape[1], dtype=src.array.dtype)
    out[inside] = src.array[tuple(index[:, inside])]
    return out.reshape(ref.array.shape)


def write_label_nifti(labels: np.ndarray, affine: np.ndarray, path: Path, source: Path | None = None) -> None:
    """Write a label map as uint8 NIfTI (uint16 when a value is over 255), atomically; when ``source`` is the NIfTI
    it was predicted from and the grids agree, its header affine is copied bit for bit."""
    if source is not None and source.is_file() and has_suffix(source, NIFTI_SUFFIXES):
        original = nib.load(str(source))
        if original.shape[:3] == labels.shape and np.allclose(original.affine, affine, atol=1e-4):
            affine = original.affine
    labels = np.asarray(labels)
    wide = labels.size and labels.dtype != np.uint8 and int(labels.max()) > 255
    image = nib.Nifti1Image(labels.astype(np.uint16 if wide else np.uint8, copy=False), affine)
    image.header.set_xyzt_units("mm")
    if path.name.lower().endswith(".nii.gz"):  # what nib.save writes, compressed by ISA-L (see medseg.fileio)
        atomic_write_gzip(path, image.to_bytes())
        return
    with atomic_path(path, suffix=".nii") as tmp:
        nib.save(image, str(tmp))


def detect_255_label_map(labels: dict[str, int], cases: list) -> dict[int, int]:
    """``{255: 1}`` when the cases' labels are 8-bit PNG/TIFF masks stored as 0/255 (microscopy, e.g. EM
    membranes) and no label is declared as 255; ``{}`` otherwise. Reads the first such mask only.

    ``cases``: :class:`~medseg.data.case.Case` objects or MONAI case dicts (``{"label": path}``).
    """
    if 255 in labels.values():
        return {}
    paths = [Path(c["label"]) for c in cases if c.get("label") is not None]
    two_d = [p for p in paths if suffix_of(p) in PLAIN_2D_SUFFIXES]
    if not two_d:
        return {}
    values = np.unique(read_image(two_d[0]).array)
    return {255: 1} if set(values.tolist()) <= {0, 255} and 255 in values else {}
