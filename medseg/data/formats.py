"""Image file formats: the one suffix table, and the one index -> LPS affine of a SimpleITK image or header.

Every module that matches file names against image formats, or turns SimpleITK's spacing, origin and
direction into an affine, takes them from here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: NIfTI, the format nibabel (and MONAI's NibabelReader) reads
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: 3D image files with a geometry (SimpleITK/ITK read them; NIfTI also nibabel)
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd")
#: 2D picture formats: no origin or direction (TIFF: spacing only)
PLAIN_2D_SUFFIXES = (".png", ".tif", ".tiff")
#: everything medseg reads as an image or label file (DICOM files too; DICOM series are folders)
IMAGE_SUFFIXES = (*VOLUME_SUFFIXES, *PLAIN_2D_SUFFIXES, ".dcm")
#: what medseg writes (SimpleITK; .nhdr and DICOM are not written)
WRITE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".mha", ".mhd", *PLAIN_2D_SUFFIXES)
#: what a stock-MONAI bundle run picks up from its dataset folder (one file per image: no .nhdr/.mhd pairs)
BUNDLE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".mha")


def suffix_of(path: Path | str) -> str:
    """The image suffix of ``path`` in lower case (``.nii.gz`` counts as one), else its last suffix."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return Path(name).suffix


def has_suffix(path: Path | str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> bool:
    """True when ``path``'s name ends with one of ``suffixes`` (case-insensitive)."""
    return Path(path).name.lower().endswith(suffixes)


def strip_suffix(path: Path | str) -> str:
    """The file name without its image suffix (``case_001.nii.gz`` -> ``case_001``): how cases are matched."""
    path = Path(path)
    suffix = suffix_of(path)
    return path.name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else path.stem


def sitk_affine(image, ndim: int | None = None) -> np.ndarray:
    """Index -> LPS mm affine of a SimpleITK ``Image`` or ``ImageFileReader`` (after ``ReadImageInformation``).

    ``ndim`` keeps the first axes only (a 2D picture that a reader reports as 3D with one slice).
    """
    full = image.GetDimension()
    ndim = full if ndim is None else ndim
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(full, full)[:ndim, :ndim]
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = direction * np.array(image.GetSpacing(), dtype=np.float64)[:ndim]
    affine[:ndim, ndim] = np.array(image.GetOrigin(), dtype=np.float64)[:ndim]
    return affine
