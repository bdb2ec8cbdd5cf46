"""Images with their geometry: NIfTI, NRRD, MHA/MHD, PNG/TIFF (SimpleITK) and DICOM series (:mod:`medseg.data.dicom`).

:func:`read_image` returns an :class:`Image`: the array indexed ``[i, j(, k)]`` and the affine from those
indices to LPS millimetres (ITK's convention; NIfTI headers store RAS, SimpleITK converts both ways).
:func:`write_image` writes one back with spacing, origin and direction; formats that cannot hold a
geometry (PNG, and TIFF's origin/direction) are refused unless the geometry is the trivial one, so a
written file never silently loses its position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".tif", ".tiff", ".dcm")
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff")
_PLAIN_2D = (".png", ".tif", ".tiff")


@dataclass
class Image:
    array: np.ndarray  # [i, j(, k)]
    affine: np.ndarray  # (ndim+1, ndim+1): index -> LPS mm

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:-1, :-1], axis=0))

    def describe(self) -> str:
        return describe_geometry(self.array.shape, self.affine)


def describe_geometry(shape, affine: np.ndarray) -> str:
    """One line: shape, spacing, origin and direction (for messages that compare two geometries)."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:-1, :-1], axis=0)
    direction = affine[:-1, :-1] / np.where(spacing == 0, 1, spacing)
    return (f"shape {tuple(int(s) for s in shape)}, spacing ({', '.join(f'{v:.4g}' for v in spacing)}) mm,"
            f" origin ({', '.join(f'{v:.2f}' for v in affine[:-1, -1])}),"
            f" direction [{'; '.join(' '.join(f'{v:.3g}' for v in row) for row in direction)}]")


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def sitk_affine(image) -> np.ndarray:
    ndim = image.GetDimension()
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = np.array(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim) * np.array(image.GetSpacing())
    affine[:ndim, ndim] = image.GetOrigin()
    return affine


def _sitk_error(path: Path, err: Exception) -> MedsegError:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    reason = lines[-1].strip() if lines else type(err).__name__
    return MedsegError(f"{path}: cannot be read as an image ({reason[:200]})")


def read_image(path: Path, series_uid: str | None = None) -> Image:
    """Read an image file or DICOM series folder with its geometry.

    Args:
        path: NIfTI/NRRD/MHA/MHD/PNG/TIFF file, a DICOM file, or a DICOM series folder.
        series_uid: for a folder holding several series, which one.
    """
    from medseg.data.dicom import is_dicom_file, read_dicom

    path = Path(path)
    if path.is_dir() or (path.is_file() and is_dicom_file(path)):
        vol = read_dicom(path, series_uid)
        return Image(np.asarray(vol.array), vol.affine)
    if not path.exists():
        raise MedsegError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MedsegError(f"{path}: zero-length file")
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise _sitk_error(path, err) from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        if suffix_of(path) in _PLAIN_2D and image.GetNumberOfComponentsPerPixel() in (3, 4):
            # an RGB(A) PNG/TIFF of a greyscale picture: accept when the colour channels agree
            rgb = sitk.GetArrayFromImage(image)[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise MedsegError(f"{path}: colour image; medseg reads greyscale images and label maps")
            return Image(np.ascontiguousarray(rgb[..., 0].T), sitk_affine(image))
        raise MedsegError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected one")
    return Image(sitk.GetArrayFromImage(image).transpose(), sitk_affine(image))


def write_image(array: np.ndarray, affine_lps: np.ndarray, path: Path) -> Path:
    """Write ``array[i, j(, k)]`` with its LPS affine, atomically; the format follows the suffix."""
    import SimpleITK as sitk

    from medseg.fileio import atomic_path

    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in WRITE_SUFFIXES:
        raise MedsegError(f"{path}: unknown output format; use one of {', '.join(WRITE_SUFFIXES)}")
    array = np.asarray(array)
    affine = np.asarray(affine_lps, dtype=np.float64)
    ndim = array.ndim
    if affine.shape != (ndim + 1, ndim + 1):
        raise MedsegError(f"{path}: affine {affine.shape} does not fit a {ndim}D array")
    spacing = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    direction = affine[:ndim, :ndim] / spacing
    if not np.allclose(direction.T @ direction, np.eye(ndim), atol=1e-4):
        raise MedsegError(f"{path}: sheared voxel grid; NIfTI/NRRD/MHA writers need orthogonal axes")
    if suffix in _PLAIN_2D:
        if ndim != 2:
            raise MedsegError(f"{path}: {ndim}D array; PNG/TIFF hold 2D images (use .nii.gz, .nrrd or .mha)")
        if not (np.allclose(direction, np.eye(2), atol=1e-6) and np.allclose(affine[:2, 2], 0)):
            raise MedsegError(f"{path}: PNG/TIFF cannot store origin {affine[:2, 2].tolist()} and direction;"
                              " write .nrrd or .mha to keep the position")
    if suffix == ".png" and array.dtype not in (np.uint8, np.uint16):
        if array.min() < 0 or array.max() > 65535 or not np.all(np.mod(array, 1) == 0):
            raise MedsegError(f"{path}: PNG holds whole numbers 0..65535; this image has {array.min()}..{array.max()}")
        array = array.astype(np.uint8 if array.max() <= 255 else np.uint16)
    if array.dtype == np.int64:  # NIfTI/NRRD writers handle int64 poorly in other tools; labels fit int32
        array = array.astype(np.int32)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in affine[:ndim, ndim]])
    image.SetDirection([float(v) for v in direction.reshape(-1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mhd":  # header + .raw pair: write both under their final names (the raw file name is in the header)
        sitk.WriteImage(image, str(path), True)
        return path
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), suffix in (".nii.gz", ".nrrd", ".mha"))
    return path
