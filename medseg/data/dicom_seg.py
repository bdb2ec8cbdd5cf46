"""DICOM series geometry and DICOM SEG writing (highdicom) for predicted label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.dicom import is_dicom_file
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


def is_dicom_series(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and is_dicom_file(p) for p in folder.iterdir())


def read_series(folder: Path) -> list:
    """The image datasets of a one-series folder, sorted along the slice normal (not by file name)."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir()) if p.is_file() and is_dicom_file(p)]
    datasets = [d for d in datasets if "ImagePositionPatient" in d and "PixelData" in d]
    if not datasets:
        raise MedsegError(f"{folder}: no DICOM images with ImagePositionPatient")
    uids = {d.SeriesInstanceUID for d in datasets}
    if len(uids) > 1:
        raise MedsegError(f"{folder}: holds {len(uids)} series; put each series in its own folder")
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=np.float64))))


def series_grid(datasets: list) -> LabelMap:
    """An empty label map on the series' own grid, indexed (slice, row, column), with its LPS affine."""
    first = datasets[0]
    iop = np.array(first.ImageOrientationPatient, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    affine = np.eye(4)
    if len(datasets) > 1:
        step = (np.array(datasets[-1].ImagePositionPatient, float) - np.array(first.ImagePositionPatient, float))
        affine[:3, 0] = step / (len(datasets) - 1)
    else:
        affine[:3, 0] = np.cross(iop[:3], iop[3:]) * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    affine[:3, 1] = iop[3:] * row_spacing
    affine[:3, 2] = iop[:3] * col_spacing
    affine[:3, 3] = np.array(first.ImagePositionPatient, dtype=np.float64)
    shape = (len(datasets), int(first.Rows), int(first.Columns))
    return LabelMap(np.zeros(shape, np.int64), affine)


def write_dicom_seg(
    labels: np.ndarray, affine_ras: np.ndarray, series_dir: Path, out_path: Path, names: dict[int, str],
    model_name: str, version: str,
) -> Path:
    """Write ``labels`` (any axis order, RAS ``affine_ras``) as a DICOM SEG that references ``series_dir``.

    Args:
        labels: predicted label map on the series' voxels.
        affine_ras: its index -> RAS mm affine (as MONAI and nibabel give it).
        series_dir: the source DICOM series folder.
        out_path: the ``.dcm`` file to write (atomically).
        names: label value -> segment name (background excluded).
        model_name: the algorithm's name in the segment descriptions.
        version: the software version recorded in the SEG.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets = read_series(series_dir)
    grid = series_grid(datasets)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)
    pixels = onto_grid(LabelMap(np.asarray(labels, np.int64), lps), grid, resample=False, what=str(series_dir))
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=version, family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(sorted(names), start=1):
        if value != number:
            raise MedsegError(f"labels {sorted(names)} must be 1..N to become DICOM SEG segment numbers")
        category, kind = _CODES.get(names[value].lower(), ("Tissue", "Tissue"))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[value],
            segmented_property_category=getattr(codes.SCT, category), segmented_property_type=getattr(codes.SCT, kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
        ))
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="medseg", manufacturer_model_name=model_name, software_versions=version,
        device_serial_number="none", series_description=f"{model_name} segmentation",
    )
    with atomic_path(out_path) as tmp:
        seg.save_as(str(tmp))
    return out_path
