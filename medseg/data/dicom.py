"""DICOM image series as volumes with exact geometry, and the checks that refuse a silently wrong volume.

A folder may hold one or several series (and sub-folders); :func:`find_series` groups the files by
SeriesInstanceUID from their headers. :func:`read_dicom` reads one series (or one enhanced multi-frame
file) into an array indexed ``[column, row, slice]`` with its index -> patient affine:

- slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of the
  ImageOrientationPatient cosines), never by InstanceNumber or file name;
- RescaleSlope/Intercept are applied per slice (CT in Hounsfield units);
- the affine is in DICOM's LPS; :attr:`DicomVolume.affine_ras` is the RAS one that NIfTI tools and
  MONAI show;
- uneven slice spacing, missing slices, gantry tilt, mixed orientations or matrix sizes, duplicate
  positions, colour images and images without pixel data are refused with a message naming the
  series or file; a single slice is read with its thickness as third spacing;
- compressed transfer syntaxes decode through pydicom's pixel handlers (pylibjpeg-openjpeg for JPEG 2000,
  pylibjpeg-libjpeg for JPEG baseline/extended/lossless, pyjpegls for JPEG-LS, pylibjpeg-rle for RLE);
- enhanced multi-frame images go through highdicom, whose volume code reads the per-frame functional
  groups and checks their spacing.

No patient identifier (name, ID, birth date, accession number, institution) is ever put in a message.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import MedsegError

logger = logging.getLogger("medseg.data")

#: Relative and absolute tolerances for "the same" slice step, orientation cosines and in-plane offsets.
STEP_RTOL, STEP_ATOL_MM = 0.02, 0.02
ORIENT_ATOL = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SKIP_NAMES = {"DICOMDIR", "Thumbs.db", "LOCKFILE", "VERSION"}


@dataclass
class SeriesInfo:
    """One series found in a folder: its files and the header fields that identify it (no patient data)."""

    uid: str
    description: str = ""
    modality: str = ""
    files: list[Path] = field(default_factory=list)
    frames: int = 0  # total frames (one per single-frame file)

    def summary(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid}{desc} ({self.modality or '?'}, {self.frames} slice{'s' if self.frames != 1 else ''})"


@dataclass
class DicomVolume:
    """A series read as a volume: ``array[i, j, k]`` (column, row, slice) and its index -> LPS mm affine."""

    array: np.ndarray
    affine: np.ndarray  # LPS
    series_uid: str
    description: str = ""
    modality: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def hashed_uid(uid: str) -> str:
    """A stable, non-identifying case name for a series: ``series-`` and 12 hex digits of its UID's SHA-256."""
    return "series-" + hashlib.sha256(uid.encode()).hexdigest()[:12]


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble or a ``.dcm`` suffix."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.name not in _SKIP_NAMES
    )


def _dcmread(path: Path, headers_only: bool):
    """Parse one file; a file that is not DICOM, is empty or is cut short raises MedsegError naming it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if path.stat().st_size == 0:
        raise MedsegError(f"{path}: zero-length file; remove it or re-export the series")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=headers_only)
            except InvalidDicomError:  # no preamble: accept only what parses as an image instance
                ds = pydicom.dcmread(path, stop_before_pixels=headers_only, force=True)
                if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
                    raise MedsegError(f"{path}: not a DICOM file; remove it from the series folder") from None
    except MedsegError:
        raise
    except Exception as err:  # pydicom raises EOFError, struct.error, ValueError, ... for a damaged file
        raise MedsegError(f"{path}: damaged or truncated DICOM file ({type(err).__name__}: {err})") from err
    if "SeriesInstanceUID" not in ds:
        raise MedsegError(f"{path}: DICOM file without SeriesInstanceUID; not an image of a series")
    return ds


def _scan(folder: Path, headers_only: bool) -> tuple[dict[str, SeriesInfo], dict[Path, object]]:
    if not folder.is_dir():
        raise MedsegError(f"{folder}: no such folder")
    files = _candidate_files(folder)
    if not files:
        raise MedsegError(f"{folder}: empty folder; expected DICOM files of one or more series")
    series: dict[str, SeriesInfo] = {}
    datasets: dict[Path, object] = {}
    for path in files:
        ds = _dcmread(path, headers_only)
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10" or "Rows" not in ds:
            continue  # DICOMDIR, structured reports, RT structures, presentation states: not images
        uid = str(ds.SeriesInstanceUID)
        info = series.setdefault(uid, SeriesInfo(uid, str(ds.get("SeriesDescription", "") or ""), str(ds.get("Modality", ""))))
        info.files.append(path)
        info.frames += int(ds.get("NumberOfFrames", 1) or 1)
        datasets[path] = ds
    if not series:
        raise MedsegError(f"{folder}: no DICOM image files in it")
    return series, datasets


def find_series(folder: Path) -> dict[str, SeriesInfo]:
    """The series under ``folder`` (headers only), by SeriesInstanceUID."""
    return _scan(folder, headers_only=True)[0]


def _pick(series: dict[str, SeriesInfo], folder: Path, series_uid: str | None) -> SeriesInfo:
    if series_uid:
        if series_uid not in series:
            found = "; ".join(s.summary() for s in series.values())
            raise MedsegError(f"{folder}: no series with UID {series_uid}; found: {found}")
        return series[series_uid]
    if len(series) > 1:
        found = "; ".join(s.summary() for s in sorted(series.values(), key=lambda s: s.uid))
        raise MedsegError(f"{folder}: holds {len(series)} series: {found}; choose one with --series UID")
    return next(iter(series.values()))


def read_dicom(path: Path, series_uid: str | None = None) -> DicomVolume:
    """Read a DICOM series folder (or one DICOM file) as a checked volume.

    Args:
        path: a folder holding the series' files (sub-folders included), or a single DICOM file.
        series_uid: which series when the folder holds several (otherwise several series is an error).
    """
    path = Path(path)
    if path.is_file():
        ds = _dcmread(path, headers_only=False)
        info = SeriesInfo(str(ds.SeriesInstanceUID), str(ds.get("SeriesDescription", "") or ""),
                          str(ds.get("Modality", "")), [path], int(ds.get("NumberOfFrames", 1) or 1))
        datasets = {path: ds}
        where = path
    else:
        series, datasets = _scan(path, headers_only=False)
        info = _pick(series, path, series_uid)
        where = path
    members = [datasets[p] for p in info.files]
    multi = [p for p, d in zip(info.files, members) if int(d.get("NumberOfFrames", 1) or 1) > 1]
    if multi:
        if len(info.files) > 1:
            raise MedsegError(f"{where}: series {info.uid} mixes a multi-frame file ({multi[0].name}) with other files;"
                              " put the multi-frame file in its own folder")
        return _read_multiframe(multi[0], members[0], info)
    return _read_single_frames(where, info, members)


def _geometry(path: Path, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if key not in ds or ds[key].value in (None, ""):
            raise MedsegError(f"{path}: no {key}; a volume needs the position, orientation and pixel spacing of every slice")
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    spacing = np.asarray([float(v) for v in ds.PixelSpacing], dtype=np.float64)  # (between rows, between columns)
    if iop.shape != (6,) or ipp.shape != (3,) or spacing.shape != (2,) or (spacing <= 0).any():
        raise MedsegError(f"{path}: malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing")
    return iop, ipp, spacing


def _check_series_geometry(where: Path, info: SeriesInfo, members: list) -> tuple[list[int], np.ndarray, list[str]]:
    """Slice order along the normal and the LPS affine; refuses what a regular grid cannot describe."""
    files = info.files
    if len(files) == 1 and not {"ImageOrientationPatient", "ImagePositionPatient"} <= set(members[0].dir()):
        # one 2D image without patient geometry (secondary capture, photo): pixel grid at the origin
        d = members[0]
        spacing = d.get("PixelSpacing") or d.get("ImagerPixelSpacing") or [1.0, 1.0]
        affine = np.diag([float(spacing[1]), float(spacing[0]), 1.0, 1.0])
        return [0], affine, ["no ImagePositionPatient/ImageOrientationPatient: pixel grid placed at the origin"]
    geo = [_geometry(p, d) for p, d in zip(files, members)]
    iop0, _, spacing0 = geo[0]
    for (iop, _, spacing), p, d in zip(geo, files, members):
        if not np.allclose(iop, iop0, atol=ORIENT_ATOL):
            raise MedsegError(f"{where}: mixed orientations in series {info.uid} ({files[0].name} and {p.name} differ in"
                              " ImageOrientationPatient); split the series or pick one orientation")
        if not np.allclose(spacing, spacing0, rtol=1e-4) or (int(d.Rows), int(d.Columns)) != (int(members[0].Rows), int(members[0].Columns)):
            raise MedsegError(f"{where}: slices of series {info.uid} differ in matrix size or pixel spacing"
                              f" ({files[0].name} and {p.name})")
    row, col = iop0[:3], iop0[3:]
    if abs(np.dot(row, col)) > 1e-3 or not np.allclose([np.linalg.norm(row), np.linalg.norm(col)], 1.0, atol=1e-3):
        raise MedsegError(f"{files[0]}: ImageOrientationPatient cosines are not orthonormal")
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = np.stack([g[1] for g in geo])
    depth = positions @ normal
    order = [int(i) for i in np.argsort(depth, kind="stable")]
    notes: list[str] = []
    affine = np.eye(4)
    affine[:3, 0] = row * spacing0[1]
    affine[:3, 1] = col * spacing0[0]
    affine[:3, 3] = positions[order[0]]
    if len(order) == 1:
        d = members[0]
        thickness = float(d.get("SpacingBetweenSlices", 0) or 0) or float(d.get("SliceThickness", 0) or 0)
        if thickness <= 0:
            thickness = 1.0
            notes.append("single slice without SliceThickness: third spacing set to 1 mm")
        affine[:3, 2] = normal * thickness
        return order, affine, notes
    sorted_depth = depth[order]
    steps = np.diff(sorted_depth)
    dup = np.flatnonzero(steps < STEP_ATOL_MM)
    if dup.size:
        a, b = files[order[dup[0]]], files[order[dup[0] + 1]]
        raise MedsegError(
            f"{where}: slices of series {info.uid} share a position"
            f" (e.g. {a.name} and {b.name}); several echoes, phases or acquisitions in one series are not one volume"
        )
    step = float(np.median(steps))
    # in-plane shift from one slice to the next: zero for an orthogonal grid, non-zero for a tilted gantry
    deltas = np.diff(positions[order], axis=0)
    in_plane = deltas - np.outer(deltas @ normal, normal)
    shift = np.linalg.norm(in_plane, axis=1)
    if (shift > STEP_ATOL_MM + 1e-3 * step).any():
        tilt = float(np.degrees(np.arctan2(np.median(shift), step)))
        raise MedsegError(
            f"{where}: gantry tilt / sheared slices in series {info.uid} (slice positions move {np.median(shift):.3g} mm"
            f" in-plane per slice, about {tilt:.1f} degrees); a regular grid cannot hold it: resample it to an"
            " untilted grid (e.g. dcm2niix's tilt correction) first"
        )
    tol = max(STEP_ATOL_MM, STEP_RTOL * step)
    off = np.flatnonzero(np.abs(steps - step) > tol)
    if off.size:
        k = int(off[0])
        ratio = steps[k] / step
        a, b = files[order[k]], files[order[k + 1]]
        if abs(ratio - round(ratio)) * step <= tol and round(ratio) >= 2:
            raise MedsegError(
                f"{where}: missing slices in series {info.uid}: {steps[k]:.4g} mm between {a.name} and {b.name}"
                f" where the spacing is {step:.4g} mm ({round(ratio) - 1} slice(s) absent); re-export the full series"
            )
        raise MedsegError(
            f"{where}: uneven slice spacing in series {info.uid}: steps from {steps.min():.4g} to {steps.max():.4g} mm"
            f" (first irregular step between {a.name} and {b.name}); resample it to even spacing first"
        )
    affine[:3, 2] = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    return order, affine, notes


def _pixels(path: Path, ds) -> np.ndarray:
    """The stored pixel values of one frame/file, decoded by pydicom's pixel handlers."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedsegError(f"{path}: no pixel data (a DICOM image file without its image)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise MedsegError(f"{path}: colour image ({ds.get('PhotometricInterpretation', '?')}); medseg reads greyscale only")
    try:
        return ds.pixel_array
    except Exception as err:  # truncated data, missing decoder, corrupt stream: pydicom raises several types
        name = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        syntax = f" ({name.name})" if name is not None else ""
        raise MedsegError(f"{path}: pixel data cannot be decoded{syntax}: {str(err).splitlines()[0]}") from err


_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian


def _native_plane(ds, rows: int, cols: int) -> np.ndarray | None:
    """Uncompressed little-endian greyscale with all allocated bits stored: the pixel bytes viewed in place.

    Own fast path: pydicom's ``pixel_array`` spends ~1 ms per 512x512 slice on checks and a copy, which made
    reading a 300-slice CT ~1.3x slower than SimpleITK; anything else goes through pydicom's decoders.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax not in _NATIVE_LE or "PixelData" not in ds or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    bits, stored_bits = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)
    if bits not in (8, 16, 32) or not 0 < stored_bits <= bits:
        return None
    signed = bool(int(ds.get("PixelRepresentation", 0) or 0))
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    data = ds.PixelData
    if len(data) < rows * cols * dtype.itemsize:
        return None  # short data: pydicom's decoder names the problem
    plane = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
    unused = bits - stored_bits
    if unused and signed:  # e.g. 12 of 16 bits: sign-extend from the highest stored bit
        plane = (plane << unused) >> unused
    elif unused:
        plane = plane & dtype.type((1 << stored_bits) - 1)
    return plane


def _read_single_frames(where: Path, info: SeriesInfo, members: list) -> DicomVolume:
    order, affine, notes = _check_series_geometry(where, info, members)
    first = members[order[0]]
    slopes = [float(members[i].get("RescaleSlope", 1) or 1) for i in order]
    intercepts = [float(members[i].get("RescaleIntercept", 0) or 0) for i in order]
    integral = all(s == 1.0 for s in slopes) and all(float(b).is_integer() for b in intercepts)
    rows, cols = int(first.Rows), int(first.Columns)
    stored = None
    for n, i in enumerate(order):
        raw = _native_plane(members[i], rows, cols)
        if raw is None:
            raw = _pixels(info.files[i], members[i])
        if raw.shape != (rows, cols):
            raise MedsegError(f"{info.files[i]}: pixel data is {raw.shape}, header says {rows}x{cols}")
        if stored is None:
            stored = np.empty((len(order), rows, cols), dtype=raw.dtype)  # (slice, row, column)
        elif raw.dtype != stored.dtype:
            stored = stored.astype(np.result_type(stored.dtype, raw.dtype))
        stored[n] = raw
    if integral:
        lo = int(stored.min()) + int(min(intercepts))
        hi = int(stored.max()) + int(max(intercepts))
        dtype = np.int16 if -32768 <= lo and hi <= 32767 else np.int32
        volume = stored.astype(dtype, copy=False)
        if any(intercepts):
            volume += np.asarray(intercepts, dtype=dtype)[:, None, None]
    else:
        volume = stored.astype(np.float32)
        volume *= np.asarray(slopes, dtype=np.float32)[:, None, None]
        volume += np.asarray(intercepts, dtype=np.float32)[:, None, None]
    if str(first.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        notes.append("MONOCHROME1: values kept as stored (bright = low)")
    return DicomVolume(volume.transpose(2, 1, 0), affine, info.uid, info.description, info.modality, notes)


def _read_multiframe(path: Path, ds, info: SeriesInfo) -> DicomVolume:
    """Enhanced (and legacy-converted enhanced) multi-frame images through highdicom's volume code."""
    import highdicom as hd

    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise MedsegError(f"{path}: no pixel data (a DICOM image file without its image)")
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        raise MedsegError(f"{path}: multi-frame image without functional groups (not an enhanced image); its frames"
                          " carry no positions to build a volume from")
    try:
        image = hd.Image.from_dataset(ds, copy=False)
        vol = image.get_volume(dtype=np.float32)
    except Exception as err:  # highdicom raises ValueError/RuntimeError when frames do not form a regular volume
        raise MedsegError(f"{path}: enhanced multi-frame frames do not form a regular volume ({err})") from err
    # highdicom indexes (slice, row, column) with an LPS affine; reorder to (column, row, slice)
    array = np.asarray(vol.array)
    affine = np.asarray(vol.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    if array.ndim == 4:
        array = array[..., 0]
    values = array.transpose(2, 1, 0)
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if values.shape[2] > 1 and np.dot(affine[:3, 2], normal) < 0:  # same convention as single frames: +normal
        affine[:3, 3] += (values.shape[2] - 1) * affine[:3, 2]
        affine[:3, 2] *= -1
        values = values[:, :, ::-1]
    if np.all(np.mod(values, 1) == 0) and values.min() >= -32768 and values.max() <= 32767:
        values = values.astype(np.int16)
    return DicomVolume(values, affine, info.uid, info.description, info.modality, [])


def write_series(
    folder: Path, volume: np.ndarray, affine_lps: np.ndarray, *, slope: float = 1.0, intercept: float = -1024.0,
    series_uid: str | None = None, description: str = "synthetic", patient_name: str = "ANON^", patient_id: str = "0",
    transfer_syntax: str | None = None, file_order: list[int] | None = None, positions: np.ndarray | None = None,
    prefix: str = "slice",
) -> list[Path]:
    """Write ``volume[i, j, k]`` (values in HU) as a CT series, one file per slice (tests, benchmarks, demos).

    ``affine_lps`` maps ``(i, j, k)`` to LPS mm; its first two columns must be orthogonal. ``positions``
    overrides the ImagePositionPatient of each slice (uneven spacing, tilt); ``file_order`` permutes
    the file names and InstanceNumbers (so neither follows the geometry); ``transfer_syntax`` compresses
    the pixel data with pydicom's encoders (RLE, JPEG-LS, JPEG 2000 lossless).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    nx, ny, nz = volume.shape
    col_sp, row_sp = (float(np.linalg.norm(affine_lps[:3, a])) for a in (0, 1))
    row_cos = affine_lps[:3, 0] / col_sp
    col_cos = affine_lps[:3, 1] / row_sp
    stored = np.rint((np.asarray(volume, dtype=np.float64) - intercept) / slope).astype(np.int16)
    thickness = float(np.linalg.norm(affine_lps[:3, 2]))
    order = file_order if file_order is not None else list(range(nz))
    paths = []
    for number, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "19700101", "O"
        ds.AccessionNumber, ds.InstitutionName = "ACC" + patient_id, "General Hospital"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "CT", description, 1, number + 1
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20240101", "120000", "1", ""
        ds.Manufacturer, ds.ImageType = "medseg", ["ORIGINAL", "PRIMARY", "AXIAL"]
        pos = positions[k] if positions is not None else affine_lps[:3, 3] + k * affine_lps[:3, 2]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row_cos, *col_cos)]
        ds.PixelSpacing = [f"{row_sp:.6f}", f"{col_sp:.6f}"]
        ds.SliceThickness = f"{thickness:.6f}"
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
        plane = np.ascontiguousarray(stored[:, :, k].T)  # (row, column)
        ds.PixelData = plane.tobytes()
        if transfer_syntax:
            ds.compress(transfer_syntax, plane)
        path = folder / f"{prefix}{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def series_headers_ok(folder: Path, series_uid: str | None = None) -> DicomVolume:
    """Run every geometry check on a single-frame series from its headers alone (no pixel decoding).

    Returns a volume whose ``array`` is an empty placeholder of the right shape ``(i, j, k)`` with dtype
    ``uint8`` and zero strides (no memory); used by dataset checks before training.
    """
    series, datasets = _scan(folder, headers_only=True)
    info = _pick(series, folder, series_uid)
    members = [datasets[p] for p in info.files]
    if any(int(d.get("NumberOfFrames", 1) or 1) > 1 for d in members):
        vol = read_dicom(folder, series_uid)  # enhanced multi-frame: geometry lives in the functional groups
        return vol
    order, affine, notes = _check_series_geometry(folder, info, members)
    first = members[order[0]]
    shape = (int(first.Columns), int(first.Rows), len(order))
    placeholder = np.broadcast_to(np.zeros((), np.uint8), shape)
    return DicomVolume(placeholder, affine, info.uid, info.description, info.modality, notes)

