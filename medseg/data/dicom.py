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
- enhanced multi-frame images (one file, many frames) are read from their per-frame and shared functional
  groups (plane position, plane orientation, pixel measures, pixel value transformation), with or without
  a FrameOfReferenceUID or DimensionIndexSequence, and pass the same ordering and spacing checks; several
  stacks, 4D series (time points, b-values, echoes at repeated positions) and mixed orientations are refused;
- a folder whose files belong to more than one patient is refused (series named by a hash of their UID).

The same code (:func:`slice_order`) orders the slices for reading, for the header-only checks before
training and prediction, for MONAI's loader (:class:`medseg.data.dicom_reader.DicomSeriesReader`) and
for the DICOM SEG writer (:func:`series_datasets`).

No patient identifier (name, ID, birth date, accession number, institution) is ever put in a message.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MedsegError  # relative: bundles ship this module (medseg.data.dicom_reader)

logger = logging.getLogger("medseg.data")

#: Relative and absolute tolerances for "the same" slice step, orientation cosines and in-plane offsets.
STEP_RTOL, STEP_ATOL_MM = 0.02, 0.02
ORIENT_ATOL = 1e-4
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: files that DICOM exports carry beside the series (a folder's or a zip's), never read as images
SKIP_NAMES = {"DICOMDIR", "Thumbs.db", "LOCKFILE", "VERSION"}


@dataclass
class SeriesInfo:
    """One series found in a folder: its files and the header fields that tell series apart without patient data.

    No free text: a SeriesDescription is typed by staff and may hold a name or an ID, so it is never read; a series
    is shown by its UID, modality, slice count and grid (what ``--series`` is chosen by)."""

    uid: str
    modality: str = ""
    files: list[Path] = field(default_factory=list)
    frames: int = 0  # total frames (one per single-frame file)
    size: tuple[int, ...] = ()  # (Columns, Rows) of its first file
    pixel_mm: tuple[float, ...] = ()  # pixel size across (between columns), down (between rows); () unknown
    slice_mm: float = 0.0  # SpacingBetweenSlices, else SliceThickness; 0 unknown

    def summary(self) -> str:
        parts = [self.modality or "?", f"{self.frames} slice{'s' if self.frames != 1 else ''}"]
        if self.size:
            parts.append("x".join(str(n) for n in self.size) + " px"
                         + (" of " + "x".join(f"{v:.3g}" for v in self.pixel_mm) + " mm" if self.pixel_mm else ""))
        if self.slice_mm:
            parts.append(f"slice {self.slice_mm:.3g} mm")
        return f"{self.uid} ({', '.join(parts)})"

    @classmethod
    def of(cls, ds, files: list[Path] | None = None) -> SeriesInfo:
        """A series' entry from one of its datasets (headers): UID, modality and grid; ``files``: its files so far."""
        return cls(str(ds.SeriesInstanceUID), str(ds.get("Modality", "") or ""), list(files or []), 0,
                   *_header_grid(ds))


def _header_grid(ds) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """(Columns x Rows, pixel size across x down in mm, slice spacing in mm) from a dataset's headers, the
    functional groups of a multi-frame file included; what cannot be read is left empty (shown as unknown)."""
    try:
        size = (int(ds.Columns), int(ds.Rows))
    except (AttributeError, TypeError, ValueError):
        size = ()
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    measures = None
    for groups in (shared[0] if shared else None, per_frame[0] if per_frame else None):
        if groups is not None and "PixelMeasuresSequence" in groups and groups.PixelMeasuresSequence:
            measures = groups.PixelMeasuresSequence[0]
            break
    try:
        spacing = _frame_value(ds, measures, "PixelSpacing") or ds.get("ImagerPixelSpacing")
        pixel = (float(spacing[1]), float(spacing[0])) if spacing is not None and len(spacing) == 2 else ()
    except (TypeError, ValueError):
        pixel = ()
    try:
        thickness = _thickness(measures) or _thickness(ds)
    except (TypeError, ValueError):
        thickness = 0.0
    return size, pixel, thickness


@dataclass
class DicomVolume:
    """A series read as a volume: ``array[i, j, k]`` (column, row, slice) and its index -> LPS mm affine."""

    array: np.ndarray
    affine: np.ndarray  # LPS
    series_uid: str
    modality: str = ""
    notes: list[str] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # stored file/frame index of each slice k

    @property
    def affine_ras(self) -> np.ndarray:
        return LPS_TO_RAS @ self.affine

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


#: DICOM SEG (Segmentation Storage): a label object, never the image a series folder is read for
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


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


def multiframe_files(folder: Path) -> list[Path]:
    """The DICOM files at the top of ``folder`` when each one is a whole volume (a multi-frame image, as enhanced
    CT/MR files are; SEG files left out): such a folder holds one case per file, not one series. Empty when any
    of them is a single-frame slice or cannot be read (a classic series: the folder is one case)."""
    import pydicom  # deferred: as _dcmread

    volumes = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name in SKIP_NAMES or path.name.startswith(".") or not is_dicom_file(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "NumberOfFrames"])
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception:  # pydicom's many errors for a damaged file: the series reader names it
            return []
        if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
            continue
        if frames <= 1:
            return []  # a slice of a classic series (checked first: its first file ends the scan)
        volumes.append(path)
    return volumes


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.name not in SKIP_NAMES
    )


def _dcmread(path: Path, headers_only: bool):
    """Parse one file; a file that is not DICOM, is empty or is cut short raises MedsegError naming it."""
    # deferred: optional dependency: bundles ship this module, and stock-MONAI runs on NIfTI need no pydicom
    import pydicom
    from pydicom.errors import InvalidDicomError

    if path.stat().st_size == 0:
        raise MedsegError(f"{path}: zero-length file; remove it or re-export the series")
    # headers only: large values (the pixel data) are skipped, not read, but their presence stays visible
    defer = {"defer_size": 4096} if headers_only else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, **defer)
            except InvalidDicomError:  # no preamble: accept only what parses as an image instance
                ds = pydicom.dcmread(path, force=True, **defer)
                if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
                    raise MedsegError(f"{path}: not a DICOM file; remove it from the series folder") from None
    except MedsegError:
        raise
    except Exception as err:  # pydicom raises EOFError, struct.error, ValueError, ... for a damaged file
        raise MedsegError(f"{path}: damaged or truncated DICOM file ({type(err).__name__}: {err}); remove it from the"
                          " folder or re-export the series") from err
    if "SeriesInstanceUID" not in ds:
        raise MedsegError(f"{path}: DICOM file without SeriesInstanceUID; not an image of a series: remove it from the"
                          " series folder")
    return ds


def _scan(folder: Path, headers_only: bool) -> tuple[dict[str, SeriesInfo], dict[Path, object]]:
    if not folder.is_dir():
        raise MedsegError(f"{folder}: no such folder")
    files = _candidate_files(folder)
    if not files:
        raise MedsegError(f"{folder}: empty folder; expected DICOM files of one or more series")
    series: dict[str, SeriesInfo] = {}
    datasets: dict[Path, object] = {}
    patients: dict[str, set[str]] = {}  # hashed patient identity -> series UIDs (never shown)
    segs = 0
    for path in files:
        ds = _dcmread(path, headers_only)
        if str(ds.get("SOPClassUID", "")) == "1.2.840.10008.1.3.10" or "Rows" not in ds:
            continue  # DICOMDIR, structured reports, RT structures, presentation states: not images
        if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
            segs += 1  # a segmentation beside its series (e.g. a saved correction): labels, not the image
            continue
        _require_pixels(path, ds)
        uid = str(ds.SeriesInstanceUID)
        patients.setdefault(_patient_key(ds), set()).add(uid)
        info = series.setdefault(uid, SeriesInfo.of(ds))
        info.files.append(path)
        info.frames += int(ds.get("NumberOfFrames", 1) or 1)
        datasets[path] = ds
    if not series:
        skipped = f" (only {segs} DICOM SEG file(s): segmentations, not images)" if segs else ""
        raise MedsegError(f"{folder}: no DICOM image files in it{skipped}; give the folder that holds the image"
                          " series' files")
    if len(patients) > 1:
        listing = "; ".join(f"patient {n}: {', '.join(hashed_uid(u) for u in sorted(uids))}"
                            for n, uids in enumerate(sorted(patients.values(), key=sorted), 1))
        raise MedsegError(f"{folder}: holds series of {len(patients)} different patients ({listing}); put each"
                          " patient's series in its own folder")
    return series, datasets


def _patient_key(ds) -> str:
    """A hash of who the file belongs to (PatientID, PatientName, PatientBirthDate): compared, never printed."""
    fields = [str(ds.get(k, "") or "") for k in ("PatientID", "PatientName", "PatientBirthDate")]
    return hashlib.sha256("\x00".join(fields).encode()).hexdigest()


def _require_pixels(path: Path, ds) -> None:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise MedsegError(f"{path}: no pixel data (a DICOM image file without its image); remove it or re-export the series")


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


def _select(path: Path, series_uid: str | None, headers_only: bool) -> tuple[SeriesInfo, list]:
    """The series to read under ``path`` (a folder, or one DICOM file) and its datasets, in file order."""
    path = Path(path)
    if path.is_file():
        ds = _dcmread(path, headers_only)
        if str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS:
            raise MedsegError(f"{path}: a DICOM SEG (a segmentation, not an image); give the image series it"
                              " segments (python -m medseg.convert turns a SEG into a label map)")
        _require_pixels(path, ds)
        info = SeriesInfo.of(ds, [path])
        info.frames = int(ds.get("NumberOfFrames", 1) or 1)
        return info, [ds]
    series, datasets = _scan(path, headers_only)
    info = _pick(series, path, series_uid)
    members = [datasets[p] for p in info.files]
    multi = [p for p, d in zip(info.files, members) if int(d.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(info.files) > 1:
        raise MedsegError(f"{path}: series {info.uid} mixes a multi-frame file ({multi[0].name}) with other files;"
                          " put the multi-frame file in its own folder")
    return info, members


def _is_multiframe(members: list) -> bool:
    return len(members) == 1 and int(members[0].get("NumberOfFrames", 1) or 1) > 1


def read_dicom(path: Path, series_uid: str | None = None) -> DicomVolume:
    """Read a DICOM series folder (or one DICOM file) as a checked volume.

    Args:
        path: a folder holding the series' files (sub-folders included), or a single DICOM file.
        series_uid: which series when the folder holds several (otherwise several series is an error).
    """
    path = Path(path)
    info, members = _select(path, series_uid, headers_only=False)
    if _is_multiframe(members):
        return _read_multiframe(info.files[0], members[0], info)
    return _read_single_frames(path, info, members)


def series_headers_ok(path: Path, series_uid: str | None = None) -> DicomVolume:
    """Run every geometry check on a series (folder or multi-frame file) from its headers alone (no pixel decoding).

    Returns a volume whose ``array`` is an empty placeholder of the right shape ``(i, j, k)`` with dtype
    ``uint8`` and zero strides (no memory); used by dataset checks before training and by prediction.
    """
    return series_datasets(path, series_uid)[1]


def series_datasets(path: Path, series_uid: str | None = None) -> tuple[list, DicomVolume]:
    """The series' datasets (headers) in slice order (a multi-frame file: its one dataset) and its checked
    geometry as a placeholder volume (see :func:`series_headers_ok`); what the DICOM SEG writer references."""
    path = Path(path)
    info, members = _select(path, series_uid, headers_only=True)
    if _is_multiframe(members):
        planes = _frame_planes(info.files[0], members[0])[0]
        order, affine, notes = slice_order(info.files[0], info.uid, planes)
        ordered = members
    else:
        order, affine, notes = _check_series_geometry(path, info, members)
        ordered = [members[i] for i in order]
    first = members[0]
    shape = (int(first.Columns), int(first.Rows), len(order))
    placeholder = np.broadcast_to(np.zeros((), np.uint8), shape)
    return ordered, DicomVolume(placeholder, affine, info.uid, info.modality, notes, order)


def _geometry(path: Path, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if key not in ds or ds[key].value in (None, ""):
            raise MedsegError(f"{path}: no {key}; a volume needs the position, orientation and pixel spacing of every"
                              " slice: remove the file (a localiser or a screenshot, say) or re-export the series")
    return _vectors(path, ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing)


def _vectors(where, iop, ipp, spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        iop = np.asarray([float(v) for v in iop], dtype=np.float64)
        ipp = np.asarray([float(v) for v in ipp], dtype=np.float64)
        spacing = np.asarray([float(v) for v in spacing], dtype=np.float64)  # (between rows, between columns)
    except (TypeError, ValueError):
        raise MedsegError(f"{where}: non-numeric ImageOrientationPatient, ImagePositionPatient or PixelSpacing; the"
                          " header is damaged: re-export the series") from None
    if iop.shape != (6,) or ipp.shape != (3,) or spacing.shape != (2,) or (spacing <= 0).any():
        raise MedsegError(f"{where}: malformed ImageOrientationPatient, ImagePositionPatient or PixelSpacing; the header"
                          " is damaged: re-export the series")
    return iop, ipp, spacing


@dataclass
class Planes:
    """The geometry of each slice (a file of a series, or a frame of a multi-frame file), in stored order."""

    names: list[str]  # file names or "frame N", for messages
    orientation: np.ndarray  # (n, 6) ImageOrientationPatient: row then column direction cosines
    position: np.ndarray  # (n, 3) ImagePositionPatient of the first stored pixel
    spacing: np.ndarray  # (n, 2) PixelSpacing: between rows, between columns
    matrix: list[tuple[int, int]]  # (Rows, Columns)
    thickness: float = 0.0  # SpacingBetweenSlices or SliceThickness (the third spacing of a single slice)


def slice_order(where: Path, uid: str, planes: Planes) -> tuple[list[int], np.ndarray, list[str]]:
    """The one slice sorter: stored slices in order along the slice normal, and the index -> LPS affine.

    Refuses mixed orientations, matrix sizes or pixel spacings, duplicate positions, gantry tilt, missing
    slices and uneven spacing, naming the series and the slices; a regular grid is all that passes.
    """
    names, iop0, spacing0 = planes.names, planes.orientation[0], planes.spacing[0]
    for n, iop, spacing, matrix in zip(names, planes.orientation, planes.spacing, planes.matrix):
        if not np.allclose(iop, iop0, atol=ORIENT_ATOL):
            raise MedsegError(f"{where}: mixed orientations in series {uid} ({names[0]} and {n} differ in"
                              " ImageOrientationPatient); split the series or pick one orientation")
        if not np.allclose(spacing, spacing0, rtol=1e-4) or matrix != planes.matrix[0]:
            raise MedsegError(f"{where}: slices of series {uid} differ in matrix size or pixel spacing ({names[0]} and {n});"
                              " remove the odd slices (a localiser, say) or export each part as its own series")
    row, col = iop0[:3], iop0[3:]
    if abs(np.dot(row, col)) > 1e-3 or not np.allclose([np.linalg.norm(row), np.linalg.norm(col)], 1.0, atol=1e-3):
        raise MedsegError(f"{where}: ImageOrientationPatient cosines of {names[0]} are not orthonormal; the header is"
                          " damaged: re-export the series")
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    positions = planes.position
    depth = positions @ normal
    order = [int(i) for i in np.argsort(depth, kind="stable")]
    notes: list[str] = []
    affine = np.eye(4)
    affine[:3, 0] = row * spacing0[1]
    affine[:3, 1] = col * spacing0[0]
    affine[:3, 3] = positions[order[0]]
    if len(order) == 1:
        thickness = planes.thickness
        if thickness <= 0:
            thickness = 1.0
            notes.append("single slice without SliceThickness: third spacing set to 1 mm")
        affine[:3, 2] = normal * thickness
        return order, affine, notes
    steps = np.diff(depth[order])
    dup = np.flatnonzero(steps < STEP_ATOL_MM)
    if dup.size:
        a, b = names[order[dup[0]]], names[order[dup[0] + 1]]
        raise MedsegError(f"{where}: slices of series {uid} share a position (e.g. {a} and {b}); several echoes,"
                          " phases or acquisitions in one series are not one volume")
    step = float(np.median(steps))
    # in-plane shift from one slice to the next: zero for an orthogonal grid, non-zero for a tilted gantry
    deltas = np.diff(positions[order], axis=0)
    shift = np.linalg.norm(deltas - np.outer(deltas @ normal, normal), axis=1)
    if (shift > STEP_ATOL_MM + 1e-3 * step).any():
        tilt = float(np.degrees(np.arctan2(np.median(shift), step)))
        raise MedsegError(
            f"{where}: gantry tilt / sheared slices in series {uid} (slice positions move {np.median(shift):.3g} mm"
            f" in-plane per slice, about {tilt:.1f} degrees); a regular grid cannot hold it: resample it to an"
            " untilted grid (e.g. dcm2niix's tilt correction) first"
        )
    tol = max(STEP_ATOL_MM, STEP_RTOL * step)
    off = np.flatnonzero(np.abs(steps - step) > tol)
    if off.size:
        k = int(off[0])
        ratio = steps[k] / step
        a, b = names[order[k]], names[order[k + 1]]
        if abs(ratio - round(ratio)) * step <= tol and round(ratio) >= 2:
            raise MedsegError(
                f"{where}: missing slices in series {uid}: {steps[k]:.4g} mm between {a} and {b}"
                f" where the spacing is {step:.4g} mm ({round(ratio) - 1} slice(s) absent); re-export the full series"
            )
        raise MedsegError(
            f"{where}: uneven slice spacing in series {uid}: steps from {steps.min():.4g} to {steps.max():.4g} mm"
            f" (first irregular step between {a} and {b}); resample it to even spacing first"
        )
    affine[:3, 2] = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    return order, affine, notes


def _thickness(item) -> float:
    if item is None:
        return 0.0
    return float(item.get("SpacingBetweenSlices", 0) or 0) or float(item.get("SliceThickness", 0) or 0)


def _check_series_geometry(where: Path, info: SeriesInfo, members: list) -> tuple[list[int], np.ndarray, list[str]]:
    """Slice order along the normal and the LPS affine of single-frame files; see :func:`slice_order`."""
    files = info.files
    if len(files) == 1 and not {"ImageOrientationPatient", "ImagePositionPatient"} <= set(members[0].dir()):
        # one 2D image without patient geometry (secondary capture, photo): pixel grid at the origin
        d = members[0]
        spacing = d.get("PixelSpacing") or d.get("ImagerPixelSpacing") or [1.0, 1.0]
        affine = np.diag([float(spacing[1]), float(spacing[0]), 1.0, 1.0])
        return [0], affine, ["no ImagePositionPatient/ImageOrientationPatient: pixel grid placed at the origin"]
    geo = [_geometry(p, d) for p, d in zip(files, members)]
    planes = Planes([p.name for p in files], np.stack([g[0] for g in geo]), np.stack([g[1] for g in geo]),
                    np.stack([g[2] for g in geo]), [(int(d.Rows), int(d.Columns)) for d in members],
                    _thickness(members[0]))
    return slice_order(where, info.uid, planes)


def _functional_group(ds, shared, per_frame, i: int, sequence: str):
    """Frame ``i``'s item of functional group ``sequence``: its per-frame one, else the shared one."""
    for groups in ((per_frame[i] if per_frame else None), shared):
        if groups is not None and sequence in groups and groups[sequence].value:
            return groups[sequence][0]
    return None


def _frame_value(ds, item, key):
    """``key`` from a functional group item, else from the top-level dataset (legacy-style exports)."""
    for where in (item, ds):
        if where is not None and key in where and where[key].value not in (None, ""):
            return where[key].value
    return None


def _frame_planes(path: Path, ds) -> tuple[Planes, np.ndarray, np.ndarray]:
    """Per-frame geometry and rescale of an enhanced multi-frame image, from its functional groups.

    Own code: highdicom's volume API needs a FrameOfReferenceUID and a DimensionIndexSequence, which real
    exports (e.g. Philips enhanced MR) lack although their plane positions define a clean volume.
    Returns the planes and per-frame RescaleSlope and RescaleIntercept.
    """
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != n:
        raise MedsegError(f"{path}: PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n} frames; the file"
                          " is damaged or incomplete: re-export it")
    group = lambda i, name: _functional_group(ds, shared, per_frame, i, name)  # noqa: E731
    iops, ipps, spacings, slopes, intercepts, dims = [], [], [], [], [], []
    for i in range(n):
        position = _frame_value(ds, group(i, "PlanePositionSequence"), "ImagePositionPatient")
        if position is None:
            groups = "its functional groups have no PlanePositionSequence" if (per_frame or shared) else \
                "it has no per-frame or shared functional groups"
            raise MedsegError(f"{path}: multi-frame image without frame positions ({groups}); its {n} frames cannot be"
                              " placed in a volume")
        orientation = _frame_value(ds, group(i, "PlaneOrientationSequence"), "ImageOrientationPatient")
        measures = group(i, "PixelMeasuresSequence")
        spacing = _frame_value(ds, measures, "PixelSpacing")
        if orientation is None or spacing is None:
            missing = "ImageOrientationPatient (PlaneOrientationSequence)" if orientation is None else \
                "PixelSpacing (PixelMeasuresSequence)"
            raise MedsegError(f"{path}: frame {i + 1} has no {missing}; a volume needs it for every frame: re-export the"
                              " series (as single-frame files, if the scanner offers it)")
        iop, ipp, sp = _vectors(f"{path} frame {i + 1}", orientation, position, spacing)
        iops.append(iop), ipps.append(ipp), spacings.append(sp)
        rescale = group(i, "PixelValueTransformationSequence")
        slopes.append(float(_frame_value(ds, rescale, "RescaleSlope") or 1.0))
        intercepts.append(float(_frame_value(ds, rescale, "RescaleIntercept") or 0.0))
        content, diffusion = group(i, "FrameContentSequence"), group(i, "MRDiffusionSequence")
        echo = group(i, "MREchoSequence")
        direction = None
        if diffusion is not None and "DiffusionGradientDirectionSequence" in diffusion \
                and diffusion.DiffusionGradientDirectionSequence:
            direction = tuple(diffusion.DiffusionGradientDirectionSequence[0].get("DiffusionGradientOrientation") or ())
        dims.append({
            "stack": None if content is None else content.get("StackID"),
            "time point": None if content is None else content.get("TemporalPositionIndex"),
            "b-value": None if diffusion is None else (diffusion.get("DiffusionBValue"), direction),
            "echo": None if echo is None else echo.get("EffectiveEchoTime"),
        })
    rows, cols = int(ds.Rows), int(ds.Columns)
    planes = Planes([f"frame {i + 1}" for i in range(n)], np.stack(iops), np.stack(ipps), np.stack(spacings),
                    [(rows, cols)] * n, _thickness(group(0, "PixelMeasuresSequence")) or _thickness(ds))
    _refuse_non_volumes(path, planes, dims)
    return planes, np.asarray(slopes), np.asarray(intercepts)


def _refuse_non_volumes(path: Path, planes: Planes, dims: list[dict]) -> None:
    """Several stacks, or a 4D series (frames repeating positions over time, b-values or echoes): one line each."""
    n = len(planes.names)
    stacks = sorted({str(d["stack"]) for d in dims if d["stack"] not in (None, "")})
    if len(stacks) > 1:
        raise MedsegError(f"{path}: not one volume: {len(stacks)} stacks (StackID {', '.join(stacks[:5])}) in one"
                          " multi-frame file; export each stack as its own series")
    if not np.allclose(planes.orientation, planes.orientation[0], atol=ORIENT_ATOL):
        return  # slice_order names the mixed orientations
    distinct = len(np.unique(np.round(planes.position / STEP_ATOL_MM).astype(np.int64), axis=0))
    if distinct == n:
        return
    varying = [name for name in ("time point", "b-value", "echo")
               if len({repr(d[name]) for d in dims if d[name] is not None}) > 1]
    what = f"{len({repr(d[varying[0]]) for d in dims})} {varying[0]}s" if varying else \
        "repeated positions (time points, b-values or echoes)"
    raise MedsegError(f"{path}: not one volume: a 4D series with {what}, {n} frames at {distinct} positions;"
                      " medseg reads 3D volumes: export one time point / b-value / echo as its own series")


def _pixels(path: Path, ds) -> np.ndarray:
    """The stored pixel values of one frame/file, decoded by pydicom's pixel handlers."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedsegError(f"{path}: no pixel data (a DICOM image file without its image); remove it or re-export the"
                          " series")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise MedsegError(f"{path}: colour image ({ds.get('PhotometricInterpretation', '?')}); medseg reads greyscale only:"
                          " give the original greyscale series, not a rendered or annotated copy")
    try:
        return ds.pixel_array
    except Exception as err:  # truncated data, missing decoder, corrupt stream: pydicom raises several types
        name = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
        syntax = f" ({name.name})" if name is not None else ""
        raise MedsegError(f"{path}: pixel data cannot be decoded{syntax}: {str(err).splitlines()[0]}; re-export the"
                          " series uncompressed (or convert it, e.g. gdcmconv --raw)") from err


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


def _rescaled(stored: np.ndarray, slopes, intercepts) -> np.ndarray:
    """Stored values (slice, row, column) to real values, slice by slice: whole numbers stay integers."""
    slopes, intercepts = [float(s) for s in slopes], [float(b) for b in intercepts]
    if all(s == 1.0 for s in slopes) and all(b.is_integer() for b in intercepts):
        lo = int(stored.min()) + int(min(intercepts))
        hi = int(stored.max()) + int(max(intercepts))
        dtype = np.int16 if -32768 <= lo and hi <= 32767 else np.int32
        volume = stored.astype(dtype, copy=False)
        if any(intercepts):
            volume += np.asarray(intercepts, dtype=dtype)[:, None, None]
        return volume
    volume = stored.astype(np.float32)
    volume *= np.asarray(slopes, dtype=np.float32)[:, None, None]
    volume += np.asarray(intercepts, dtype=np.float32)[:, None, None]
    return volume


def _read_single_frames(where: Path, info: SeriesInfo, members: list) -> DicomVolume:
    order, affine, notes = _check_series_geometry(where, info, members)
    first = members[order[0]]
    slopes = [float(members[i].get("RescaleSlope", 1) or 1) for i in order]
    intercepts = [float(members[i].get("RescaleIntercept", 0) or 0) for i in order]
    rows, cols = int(first.Rows), int(first.Columns)
    stored = None
    for n, i in enumerate(order):
        raw = _native_plane(members[i], rows, cols)
        if raw is None:
            raw = _pixels(info.files[i], members[i])
        if raw.shape != (rows, cols):
            raise MedsegError(f"{info.files[i]}: pixel data is {raw.shape}, header says {rows}x{cols}; the file is damaged:"
                              " re-export the series")
        if stored is None:
            stored = np.empty((len(order), rows, cols), dtype=raw.dtype)  # (slice, row, column)
        elif raw.dtype != stored.dtype:
            stored = stored.astype(np.result_type(stored.dtype, raw.dtype))
        stored[n] = raw
    volume = _rescaled(stored, slopes, intercepts)
    if str(first.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        notes.append("MONOCHROME1: values kept as stored (bright = low)")
    return DicomVolume(volume.transpose(2, 1, 0), affine, info.uid, info.modality, notes, order)


def _read_multiframe(path: Path, ds, info: SeriesInfo) -> DicomVolume:
    """An enhanced (or legacy-converted enhanced) multi-frame image: frames placed by their functional groups."""
    planes, slopes, intercepts = _frame_planes(path, ds)
    order, affine, notes = slice_order(path, info.uid, planes)
    frames = _pixels(path, ds)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape != (len(planes.names), *planes.matrix[0]):
        raise MedsegError(f"{path}: pixel data is {frames.shape}, header says {len(planes.names)} frames of"
                          f" {planes.matrix[0][0]}x{planes.matrix[0][1]}; the file is damaged: re-export the series")
    volume = _rescaled(frames[order], slopes[order], intercepts[order])
    return DicomVolume(volume.transpose(2, 1, 0), affine, info.uid, info.modality, notes, order)


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
    # deferred: optional dependency: bundles ship this module, and stock-MONAI runs on NIfTI need no pydicom
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


def stack_affine(datasets: list) -> tuple[list[int], np.ndarray]:
    """Slice order and index (column, row, slice) -> LPS affine of single-frame datasets, by :func:`slice_order`."""
    files = [Path(str(getattr(d, "filename", "") or f"slice {n + 1}")) for n, d in enumerate(datasets)]
    info = SeriesInfo(str(datasets[0].get("SeriesInstanceUID", "?")), files=files)
    order, affine, _ = _check_series_geometry(files[0].parent, info, datasets)
    return order, affine
