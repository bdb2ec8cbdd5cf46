"""MONAI ``ImageReader`` for DICOM: series folders and DICOM files through medseg's checked series reader.

``LoadImaged(keys, reader="medseg.data.dicom_reader.DicomSeriesReader")`` reads DICOM with
:func:`medseg.data.dicom.read_dicom` (slices ordered along the normal, spacing, gaps, tilt and series
checks, per-slice rescale, enhanced multi-frame functional groups) and gives what MONAI's ``ITKReader``
gives for the same series: the array indexed ``[i, j, k]`` (column, row, slice) and a meta dict with the
RAS ``affine``/``original_affine``, ``spacing``, ``spatial_shape``, ``space`` and ``original_channel_dim``
(no header fields: nothing identifying reaches the metadata). Any other file goes to the reader MONAI's
``LoadImage`` would pick for it by suffix, so NIfTI, NRRD, MHA and PNG load exactly as before.

Why a reader that also hands on other files: with a user-given reader, ``LoadImage`` tries every reader
in turn and swallows their errors, so a series that medseg refuses (a tilted gantry, missing slices)
would silently be read by ITK instead. This reader reads everything itself or by delegation, and does
the DICOM work in ``get_data``, where errors propagate.

This module imports only MONAI, numpy, :mod:`medseg.data.dicom` (pydicom) and :mod:`medseg.errors`, so
exported bundles ship them in their ``scripts/`` folder (:data:`SCRIPT_MODULES`, medseg.bundle.scripts)
and read series the same way on stock MONAI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.transforms import LoadImage
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

# relative imports: bundles ship this module and its siblings as scripts/medseg_data/ (and errors.py beside it)
from ..errors import MedsegError
from .dicom import is_dicom_file, read_dicom

#: the name preprocessing specs give LoadImaged's reader (a dotted path MONAI's LoadImage locates)
READER_PATH = "medseg.data.dicom_reader.DicomSeriesReader"
#: a bundle's scripts/ package for this reader (its modules and exported classes: SCRIPT_MODULES, SCRIPT_CLASSES)
SCRIPT_PACKAGE = "medseg_data"
BUNDLE_READER = f"scripts.{SCRIPT_PACKAGE}.DicomSeriesReader"


def is_dicom_input(path) -> bool:
    """A DICOM series folder or a DICOM file (what this reader reads itself)."""
    path = Path(path)
    if path.is_dir():
        return True  # MONAI's readers take folders as DICOM series too (ITKReader, PydicomReader)
    return path.is_file() and is_dicom_file(path)


class _Series:
    """What ``read`` returns for DICOM: the path; the checked reading happens in ``get_data``."""

    def __init__(self, path: str, series_uid: str | None):
        self.path, self.series_uid = path, series_uid


class DicomSeriesReader(ImageReader):
    """DICOM series folders and DICOM files through medseg's validated reader; other files through MONAI's.

    Args:
        series_uid: which series when a folder holds several (otherwise several series is an error).
        affine_lps_to_ras: the affine in RAS (default, as ITKReader and NibabelReader give it) or DICOM's LPS.
    """

    def __init__(self, series_uid: str | None = None, affine_lps_to_ras: bool = True):
        super().__init__()
        self.series_uid = series_uid
        self.affine_lps_to_ras = affine_lps_to_ras
        self._others = None  # MONAI's default readers, built on first use

    def verify_suffix(self, filename: Sequence | str | Path) -> bool:
        return all(is_dicom_input(f) for f in ensure_tuple(filename))

    def _delegate(self, filenames: tuple):
        """The reader ``LoadImage`` itself would choose for these files (last registered first, by suffix)."""
        if self._others is None:
            self._others = [r for r in LoadImage().readers[::-1] if not isinstance(r, DicomSeriesReader)]
        for reader in self._others:
            if reader.verify_suffix(filenames):
                return reader
        raise MedsegError(f"{filenames[0]}: no reader for this file type (NIfTI, NRRD, MHA/MHD, PNG/TIFF or DICOM)")

    def read(self, data, **kwargs):
        filenames = tuple(str(f) for f in ensure_tuple(data))
        dicom = [is_dicom_input(f) for f in filenames]
        if any(dicom) and not all(dicom):  # raised by get_data: LoadImage would swallow it here and try ITK
            return self, MedsegError(f"{filenames[0]}: the channels of one case mix DICOM and other files; convert"
                                     " the DICOM series with python -m medseg.convert first")
        if not all(dicom):
            reader = self._delegate(filenames)
            return reader, reader.read(data, **kwargs)
        handles = [_Series(f, self.series_uid) for f in filenames]
        return self, handles if len(handles) > 1 else handles[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        reader, obj = img
        if reader is not self:
            return reader.get_data(obj)
        if isinstance(obj, MedsegError):
            raise obj
        arrays, meta = [], {}
        for series in ensure_tuple(obj):
            array, header = self._series_data(series)
            if meta and (not np.allclose(header[MetaKeys.AFFINE], meta[MetaKeys.AFFINE], atol=1e-4)
                         or array.shape != arrays[0].shape):
                raise MedsegError(f"{series.path}: not on the grid of {ensure_tuple(obj)[0].path}; the channels of a"
                                  " case must share one voxel grid")
            arrays.append(array)
            meta = meta or header
        if len(arrays) > 1:  # channels stacked first, as MONAI's readers stack several files
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
            return np.stack(arrays, axis=0), meta
        return arrays[0], meta

    def _series_data(self, series: _Series) -> tuple[np.ndarray, dict]:
        vol = read_dicom(Path(series.path), series.series_uid)
        affine = vol.affine_ras if self.affine_lps_to_ras else np.array(vol.affine)
        meta = {
            "spacing": np.asarray(vol.spacing, dtype=np.float64),
            MetaKeys.ORIGINAL_AFFINE: affine,
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
            MetaKeys.SPATIAL_SHAPE: np.asarray(vol.array.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # no channel: EnsureChannelFirst adds one
        }
        return vol.array, meta


def select_series(spec: list[dict], series_uid: str | None) -> list[dict]:
    """A preprocessing spec whose loader reads series ``series_uid`` from folders holding several: the reader
    entry becomes ``{"_target_": <reader>, "series_uid": ...}``, which MONAI's ConfigParser instantiates and
    ``LoadImaged`` takes as a reader instance (no MONAI internals touched). ``None``: the spec unchanged."""
    if not series_uid:
        return spec

    def chosen(reader):
        if reader in (READER_PATH, BUNDLE_READER):
            return {"_target_": reader, "series_uid": series_uid}
        return reader

    out = []
    for step in spec:
        if step.get("_target_") in ("LoadImaged", "LoadImage") and "reader" in step:
            readers = step["reader"]
            step = {**step, "reader": [chosen(r) for r in readers] if isinstance(readers, list) else chosen(readers)}
        out.append(step)
    return out


SCRIPT_MODULES = (sys.modules[read_dicom.__module__], sys.modules[__name__])
SCRIPT_CLASSES = (DicomSeriesReader,)
