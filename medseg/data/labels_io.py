"""Label maps read fast, as stored: integer voxels keep their file's dtype (uint8 stays uint8, no int64 copy).

:func:`read_labels` gives the same :class:`~medseg.data.labelmaps.LabelMap` (values and LPS affine) as
:func:`~medseg.data.labelmaps.read_labelmap`, which casts every label map to int64 after SimpleITK copies it.
For NIfTI the geometry still comes from SimpleITK, from the header alone (``ReadImageInformation``), so it is
ITK's reading of qform/sform exactly; the voxels come from nibabel: memory-mapped for ``.nii``, decompressed by
ISA-L for ``.nii.gz`` (SimpleITK has neither a memory map nor a fast gzip). On a 512x512x200 uint8 pair the
read went from ~1.0 s (SimpleITK + int64 copy) to milliseconds, the pages coming in when first used
(``benchmarks/bench_evaluate.py``); a ``.nii.gz`` label map with its class mask 0.45 s -> 0.2 s.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medseg.data.formats import NIFTI_SUFFIXES, sitk_affine
from medseg.data.images import palette_indices
from medseg.data.tiff_units import picture_affine
from medseg.data.labelmaps import LabelMap, integer_labels, read_labelmap
from medseg.errors import MedsegError
from medseg.fileio import read_gzip


def read_labels(path: Path) -> LabelMap:
    """Read a label map with its geometry; integer voxels in their stored dtype (read-only or copy-on-write).

    Float-stored labels are accepted when every value is a whole number (then int64); anything else, a
    label map with several components per voxel, or more than three dimensions is refused with one line.
    DICOM SEG goes through :func:`~medseg.data.labelmaps.read_labelmap` (highdicom).
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(".dcm") or _is_dicom(path):
        return read_labelmap(path)
    header = sitk.ImageFileReader()
    header.SetFileName(str(path))
    try:
        header.ReadImageInformation()
    except RuntimeError as err:
        raise MedsegError(f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})") from err
    if header.GetNumberOfComponents() != 1:
        indices = palette_indices(path)
        if indices is not None:  # a palette mask (CVAT, Pascal VOC): SimpleITK would give its colours
            return LabelMap(integer_labels(indices, path), picture_affine(path, sitk_affine(header)))
        raise MedsegError(f"{path}: has {header.GetNumberOfComponents()} channels; a label map has one: save it as a"
                          " greyscale (one-channel) image")
    size = tuple(int(n) for n in header.GetSize())
    if len(size) > 3:
        raise MedsegError(f"{path}: {len(size)}D image of shape {size}; a label map is 2D or 3D")
    if name.endswith(NIFTI_SUFFIXES):
        array = _nifti_voxels(path, size)
    else:
        array = _sitk_voxels(path)
    return LabelMap(integer_labels(array, path), picture_affine(path, sitk_affine(header)))  # a TIFF: medseg's pixel size


def _nifti_voxels(path: Path, size: tuple[int, ...]) -> np.ndarray:
    try:
        if path.name.lower().endswith(".gz"):
            data = read_gzip(path)
            image = _nifti_from_bytes(data)
        else:
            image = nib.load(str(path), mmap=True)
        proxy = image.dataobj
        # stored integers as they are; a header with a real scale factor gives floats, checked by integer_labels
        scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
        array = np.asarray(proxy) if scaled else proxy.get_unscaled()
    except (gzip.BadGzipFile, EOFError, OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        reason = (str(err).strip().splitlines() or [""])[0].replace(str(path), "the file")
        raise MedsegError(f"{path}: voxel data cannot be read ({type(err).__name__}: {reason}); "
                          "the file is truncated or damaged: copy or export it again") from err
    if array.shape != size:  # ITK drops trailing dimensions of length 1 (x, y, z, 1 -> x, y, z)
        if tuple(n for n in array.shape[len(size):] if n != 1) or array.shape[: len(size)] != size:
            raise MedsegError(f"{path}: voxel array {array.shape} does not match its header size {size}")
        array = array.reshape(size, order="F")
    return array


def _nifti_from_bytes(data: bytes):
    """NIfTI-1 or NIfTI-2 image over an in-memory (decompressed) file."""
    klass = nib.Nifti2Image if int.from_bytes(data[:4], "little") in (540, 0x1C020000) else nib.Nifti1Image
    holder = nib.FileHolder(fileobj=io.BytesIO(data))
    return klass.from_file_map({"header": holder, "image": holder})


def _sitk_voxels(path: Path) -> np.ndarray:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise MedsegError(f"{path}: cannot be read as an image ({str(err).strip().splitlines()[-1]})") from err
    return sitk.GetArrayFromImage(image).transpose()  # ITK's (k, j, i) -> (i, j, k)


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"
