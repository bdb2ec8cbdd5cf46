"""DICOM SEG writing (highdicom) for predicted label maps, on the source series' own grid.

The source series is read with :mod:`medseg.data.dicom` (the one slice sorter and its checks): single-frame
files in slice order, or one enhanced multi-frame file, whose frames the SEG keeps in their stored order.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medseg.data.dicom import LPS_TO_RAS, SKIP_NAMES, is_dicom_file, series_datasets, stack_affine
from medseg.data.labelmaps import LabelMap, onto_grid
from medseg.errors import MedsegError
from medseg.fileio import atomic_path

# Coded anatomy for the segment descriptions: (category, type) by class name; anything else is "Tissue".
_CODES = {
    "liver": ("Organ", "Liver"),
    "kidney": ("Organ", "Kidney"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "lesion": ("MorphologicallyAbnormalStructure", "Neoplasm"),
}


class SegNotWritten(MedsegError):
    """A series highdicom cannot reference in a SEG: ``reason`` the why, the message also ``hint`` (what to do)."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason + hint)
        self.reason = reason


def is_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` holds DICOM files at its top (a DICOMDIR index or another of ``SKIP_NAMES`` alone does
    not make it a series: a CD's top folder holds the series in folders under it)."""
    return folder.is_dir() and any(p.is_file() and p.name not in SKIP_NAMES and not p.name.startswith(".")
                                   and is_dicom_file(p) for p in folder.iterdir())


def read_series(folder: Path) -> list:
    """The image datasets (headers) of a one-series folder, in slice order along the normal."""
    return series_datasets(folder)[0]


def _seg_grid(shape_ijk: tuple[int, ...], affine_ijk: np.ndarray) -> LabelMap:
    """An empty label map indexed (slice, row, column), as highdicom takes SEG frames, from the (column, row,
    slice) grid that :mod:`medseg.data.dicom` gives."""
    return LabelMap(np.zeros(tuple(shape_ijk)[::-1], np.int64), np.asarray(affine_ijk)[:, [2, 1, 0, 3]])


def series_grid(datasets: list) -> LabelMap:
    """An empty label map on single-frame datasets' grid, indexed (slice, row, column), with its LPS affine."""
    order, affine = stack_affine(datasets)
    first = datasets[order[0]]
    return _seg_grid((int(first.Columns), int(first.Rows), len(order)), affine)


def _with_sop_class(datasets: list) -> list:
    """Datasets whose SOPClassUID is present but empty (as some anonymisers leave it) get the class from the
    file meta's MediaStorageSOPClassUID, in memory (the files are not touched); highdicom needs it."""
    for ds in datasets:
        if not str(ds.get("SOPClassUID", "") or "").strip():
            meta = getattr(ds, "file_meta", None)
            media = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
            if not media:
                raise MedsegError(f"{getattr(ds, 'filename', 'source image')}: no SOPClassUID, neither in the dataset"
                                  " nor in the file meta; a DICOM SEG must name its source images' class")
            ds.SOPClassUID = media
    return datasets


def _segmentation(datasets: list, pixels: np.ndarray, names: dict[int, str], model_name: str, version: str,
                  series_dir: Path):
    """highdicom's SEG of ``pixels`` (slice, row, column label values) over ``datasets``; what highdicom refuses
    about the series comes out as :class:`SegNotWritten`."""
    # deferred: start-up of highdicom (~0.9 s) and pydicom's SR code dictionary only when a DICOM SEG is written
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions = []
    try:
        algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=version,
                                                       family=codes.cid7162.ArtificialIntelligence)
        for number, value in enumerate(sorted(names), start=1):
            if value != number:
                raise MedsegError(f"labels {sorted(names)} must be 1..N to become DICOM SEG segment numbers")
            category, kind = _CODES.get(names[value].lower(), ("Tissue", "Tissue"))
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=names[value],
                segmented_property_category=getattr(codes.SCT, category), segmented_property_type=getattr(codes.SCT, kind),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            ))
        with warnings.catch_warnings():  # highdicom warns of a one-component PatientName by printing the name
            warnings.filterwarnings("ignore", message=r"The string .* is unlikely to represent the intended person")
            return hd.seg.Segmentation(
                source_images=datasets, pixel_array=pixels.astype(np.uint8),
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
                series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
                manufacturer="medseg", manufacturer_model_name=model_name, software_versions=version,
                device_serial_number="none", series_description=f"{model_name} segmentation",
            )
    except MedsegError:
        raise
    except Exception as err:  # highdicom/pydicom raise KeyError, ValueError, TypeError, AttributeError, ...
        raise _not_written(series_dir, err) from err


def _not_written(series_dir: Path, err: Exception) -> SegNotWritten:
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return SegNotWritten(f"{series_dir}: DICOM SEG cannot be written from this series ({type(err).__name__}"
                         f"{': ' + reason if reason else ''})", "; write NIfTI instead (--format nifti)")


def check_dicom_seg(series_dir: Path, names: dict[int, str], model_name: str, version: str) -> None:
    """Whether a SEG of ``names`` can reference ``series_dir``, from its headers and before any inference: the
    SEG of a label map with one voxel per segment is built (not written); :class:`MedsegError` if not."""
    datasets, vol = series_datasets(series_dir)
    datasets = _with_sop_class(datasets)
    shape = tuple(vol.array.shape)[::-1]  # (slice, row, column)
    pixels = np.zeros(shape, np.uint8)
    for k, value in enumerate(sorted(names)):
        pixels.flat[min(k, pixels.size - 1)] = value
    _segmentation(datasets, pixels, names, model_name, version, series_dir)


def write_dicom_seg(
    labels: np.ndarray, affine_ras: np.ndarray, series_dir: Path, out_path: Path, names: dict[int, str],
    model_name: str, version: str,
) -> Path:
    """Write ``labels`` (any axis order, RAS ``affine_ras``) as a DICOM SEG that references ``series_dir``.

    Args:
        labels: predicted label map on the series' voxels.
        affine_ras: its index -> RAS mm affine (as MONAI and nibabel give it).
        series_dir: the source DICOM series folder (or enhanced multi-frame file).
        out_path: the ``.dcm`` file to write (atomically).
        names: label value -> segment name (background excluded).
        model_name: the algorithm's name in the segment descriptions.
        version: the software version recorded in the SEG.
    """
    datasets, vol = series_datasets(series_dir)
    datasets = _with_sop_class(datasets)
    grid = _seg_grid(vol.array.shape, vol.affine)
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)  # its own inverse
    pixels = onto_grid(LabelMap(np.asarray(labels, np.int64), lps), grid, resample=False, what=str(series_dir))
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        stored = np.empty_like(pixels)  # one multi-frame source: SEG frames follow its stored frame order
        stored[vol.order] = pixels
        pixels = stored
    seg = _segmentation(datasets, pixels, names, model_name, version, series_dir)
    try:
        with atomic_path(out_path) as tmp:
            seg.save_as(str(tmp))
    except Exception as err:  # pydicom's encoder
        raise _not_written(series_dir, err) from err
    return out_path
