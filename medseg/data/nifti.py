"""MONAI's NIfTI reader with ISA-L decompression and a faster row-major copy, as an ``ImageReader``.

``LoadImage`` with MONAI's ``NibabelReader`` spends most of its time on a 512x512x100 ``.nii.gz`` CT in two
places: ``gzip`` decompression (0.19 s; ISA-L 0.09 s) and the copy of nibabel's column-major int16 array into a
row-major float32 one (``np.ascontiguousarray`` then ``astype``, 0.23 s on a quiet 2-core machine; copied in 8-plane
blocks, 0.5 s against 0.66 s when the cores are shared). :class:`IsalNiftiReader` does both faster and hands
``LoadImage`` the array it would have made itself: same values, same metadata and affine. Imports only numpy, nibabel, MONAI and (optionally) ``isal``:
exported bundles ship it in ``scripts/medseg_inference/``; without ``isal`` it decompresses with ``gzip``.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

try:
    from isal import igzip as _gzip
except ImportError:  # stock environments: the standard library, slower
    _gzip = gzip

#: the name preprocessing specs give LoadImaged's reader (a dotted path MONAI's LoadImage locates)
READER_PATH = "medseg.data.nifti.IsalNiftiReader"

#: metadata flag of a 3D image read with ``reverse_axes=True``: its array is the file's array transposed
#: (axes k, j, i) and its ``affine``/``spatial_shape`` follow; ``original_affine`` stays the file's
REVERSED_AXES = "medseg_reversed_axes"


class IsalNiftiReader(NibabelReader):
    """``NibabelReader`` for ``.nii``/``.nii.gz``: ISA-L decompression, arrays returned row-major in ``dtype``.

    ``LoadImage`` tries an explicitly given reader before its defaults, so :meth:`read` refuses other formats
    at once (``ValueError``) and ``LoadImage`` moves on to the next reader.

    Args:
        dtype: the type ``LoadImage`` converts to (its default float32); the copy into row-major order converts.
        reverse_axes: for a 3D column-major image, hand ``LoadImage`` the transposed view (row-major without a
            copy) with the affine's columns and the spatial shape reversed and :data:`REVERSED_AXES` set in the
            metadata: the same voxels at the same world positions, so after ``Orientationd`` the array and affine
            equal the unreversed read's. Saves the transposing copy (0.22 s of a 512x512x100 CT); whoever
            writes a result on the file's grid puts the axes back (``InvertToLabelsd`` does, from
            ``original_affine``).
        kwargs: as for ``NibabelReader``.

    Example:
        >>> LoadImaged(keys="image", reader=["ITKReader", "medseg.data.nifti.IsalNiftiReader"], image_only=True)
    """

    def __init__(self, dtype: Any = np.float32, reverse_axes: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dtype = dtype
        self.reverse_axes = reverse_axes

    def read(self, data: Sequence[str] | str, **kwargs: Any):
        names = ensure_tuple(data)
        if not self.verify_suffix(names):
            raise ValueError(f"{type(self).__name__}: not a NIfTI file: {names[0]}")
        if kwargs or self.kwargs:  # nibabel.load arguments: nibabel's own reading
            return super().read(data, **kwargs)
        images = []
        for name in names:
            image = _read_nifti_gz(str(name)) if str(name).lower().endswith(".nii.gz") else None
            images.append(image if image is not None else super().read(name))
        self.filenames = names  # what NibabelReader.read records for get_data
        return images if len(names) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        array, meta = super().get_data(img)
        if self.reverse_axes and array.ndim == 3 and array.flags.f_contiguous and not array.flags.c_contiguous:
            return _reversed(array, meta, self.dtype)
        return _row_major(array, self.dtype), meta


_REVERSE = [2, 1, 0, 3]  # affine columns of axes (k, j, i), then the translation


def _reversed(array: np.ndarray, meta: dict, dtype: Any) -> tuple[np.ndarray, dict]:
    """The transposed (row-major) view of a column-major 3D array, in ``dtype``, and its metadata."""
    out = array.T if dtype is None else array.T.astype(dtype, copy=False)  # a sequential cast, no transposing copy
    meta = dict(meta)
    meta["affine"] = np.asarray(meta["affine"])[:, _REVERSE]
    meta["spatial_shape"] = np.asarray(meta["spatial_shape"])[::-1].copy()
    meta[REVERSED_AXES] = True
    return out, meta


def _read_nifti_gz(path: str):
    """The image ``NibabelReader.read`` gives for a single-file NIfTI-1 ``.nii.gz``, decompressed by ISA-L; None
    where it is something else or does not decompress (``nib.load`` then reads it or says why, as MONAI's does)."""
    try:
        with open(path, "rb") as f:
            raw = _gzip.decompress(f.read())
    except (OSError, EOFError, ValueError):
        return None
    if len(raw) < 352 or raw[344:348] != b"n+1\0":
        return None  # NIfTI-2, a .hdr/.img pair's header or no NIfTI: left to nib.load
    return correct_nifti_header_if_necessary(nib.Nifti1Image.from_bytes(raw))


def _row_major(array: np.ndarray, dtype: Any, planes: int = 8) -> np.ndarray:
    """``np.ascontiguousarray(array).astype(dtype)`` (LoadImage's copy), in blocks of ``planes`` along the first
    axis: a column-major source block then fits in cache (0.5 s against 0.66 s for a 512x512x100 int16 CT on a
    loaded 2-core machine; single-threaded, so other processes on the cores slow it least)."""
    if dtype is None or array.ndim < 2 or array.flags.c_contiguous or not array.flags.f_contiguous:
        return array
    out = np.empty(array.shape, dtype=dtype)
    for a in range(0, array.shape[0], planes):
        out[a:a + planes] = array[a:a + planes]  # a cast as astype's (same rounding)
    return out
