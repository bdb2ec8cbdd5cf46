"""Images with their geometry: NIfTI, NRRD, MHA/MHD, PNG/TIFF (SimpleITK) and DICOM series (:mod:`medseg.data.dicom`).

:func:`read_image` returns an :class:`Image`: the array indexed ``[i, j(, k)]`` and the affine from those
indices to LPS millimetres (ITK's convention; NIfTI headers store RAS, SimpleITK converts both ways).
:func:`write_image` writes one back with spacing, origin and direction; formats that cannot hold a
geometry (PNG, and TIFF's origin/direction) are refused unless the geometry is the trivial one, so a
written file never silently loses its position.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.data.dicom import is_dicom_file, read_dicom
from medseg.data.formats import PLAIN_2D_SUFFIXES, WRITE_SUFFIXES, sitk_affine, suffix_of
from medseg.data.tiff_units import picture_affine
from medseg.errors import MedsegError
from medseg.fileio import atomic_path


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


def _sitk_error(path: Path, err: Exception) -> MedsegError:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    reason = lines[-1].strip() if lines else type(err).__name__
    return MedsegError(f"{path}: cannot be read as an image ({reason[:200]})")


def palette_indices(path: Path) -> np.ndarray | None:
    """The ``(x, y)`` palette indices of a palette ("P" mode) PNG or TIFF, e.g. a CVAT or Pascal VOC mask; None for
    any other file. SimpleITK reads such a file as its palette's RGB colours, not the label values it stores."""
    if suffix_of(path) not in PLAIN_2D_SUFFIXES:
        return None
    from PIL import Image as PILImage, UnidentifiedImageError  # deferred: pictures only

    try:
        with PILImage.open(path) as img:
            if img.mode != "P" or getattr(img, "n_frames", 1) != 1:
                return None
            return np.ascontiguousarray(np.asarray(img).T)  # rows x columns -> (x, y), as SimpleITK's array.T
    except (OSError, UnidentifiedImageError, ValueError):
        return None  # not a picture PIL reads: SimpleITK's reader names the problem


def read_image(path: Path, series_uid: str | None = None) -> Image:
    """Read an image file or DICOM series folder with its geometry.

    Args:
        path: NIfTI/NRRD/MHA/MHD/PNG/TIFF file, a DICOM file, or a DICOM series folder.
        series_uid: for a folder holding several series, which one.
    """
    path = Path(path)
    if path.is_dir() or (path.is_file() and is_dicom_file(path)):
        vol = read_dicom(path, series_uid)
        return Image(np.asarray(vol.array), vol.affine)
    check_file(path)  # before SimpleITK allocates what the header claims
    # deferred: start-up of SimpleITK (~0.4 s) only where an image is read or written with it
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise _sitk_error(path, err) from err
    if image.GetNumberOfComponentsPerPixel() != 1:
        indices = palette_indices(path)
        if indices is not None:  # a palette mask: its indices are the labels
            return Image(indices, picture_affine(path, sitk_affine(image)))
        if suffix_of(path) in PLAIN_2D_SUFFIXES and image.GetNumberOfComponentsPerPixel() in (3, 4):
            # an RGB(A) PNG/TIFF of a greyscale picture: accept when the colour channels agree
            rgb = sitk.GetArrayFromImage(image)[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise MedsegError(f"{path}: colour image; medseg reads greyscale images and label maps")
            return Image(np.ascontiguousarray(rgb[..., 0].T), picture_affine(path, sitk_affine(image)))
        raise MedsegError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected one")
    # a TIFF's pixel size as medseg's picture reader (training's chain) has it, not SimpleITK's (medseg.data.tiff_units)
    return Image(sitk.GetArrayFromImage(image).transpose(), picture_affine(path, sitk_affine(image)))


def write_image(array: np.ndarray, affine_lps: np.ndarray, path: Path) -> Path:
    """Write ``array[i, j(, k)]`` with its LPS affine, atomically; the format follows the suffix."""
    # deferred: start-up of SimpleITK (~0.4 s) only where an image is read or written with it
    import SimpleITK as sitk

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
    if suffix in PLAIN_2D_SUFFIXES:
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
    check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".mhd":  # a header + data file pair: both under temporary names first
        return _write_metaimage_pair(image, path)
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix in (".tif", ".tiff"):  # the pixel size in cm, as medseg reads it back (medseg.data.tiff_units);
            import tifffile  # SimpleITK writes it as dots per inch, which medseg (and PIL, Photoshop) take for a
            # display density
            tags = ({} if np.allclose(spacing, 1.0) else
                    {"resolution": tuple(1e4 / float(v) for v in spacing[:2]), "resolutionunit": "CENTIMETER"})
            tifffile.imwrite(tmp, np.ascontiguousarray(array.T), photometric="minisblack", **tags)
        else:
            sitk.WriteImage(image, str(tmp), suffix in (".nii.gz", ".nrrd", ".mha"))
    return path


def _write_metaimage_pair(image, path: Path) -> Path:
    """``path`` (``.mhd`` header) and its compressed data file ``<stem>.zraw`` beside it, written under temporary
    names in the same folder and renamed into place, the data file first and the header last: a killed run leaves
    no half-written pair (at most a data file without its header, never a header naming a partial file)."""
    import SimpleITK as sitk  # deferred, as in write_image

    data = path.with_suffix(".zraw")
    with atomic_path(path, suffix=".mhd") as header_tmp, atomic_path(data, suffix=".zraw") as data_tmp:
        beside = [header_tmp.with_suffix(s) for s in (".zraw", ".raw")]  # the data file sitk writes with that header
        try:
            sitk.WriteImage(image, str(header_tmp), True)
            lines = header_tmp.read_text().splitlines()
            named = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == "ElementDataFile"]
            os.replace(header_tmp.parent / lines[named[-1]].split("=", 1)[1].strip(), data_tmp)
            lines[named[-1]] = f"ElementDataFile = {data.name}"  # the name it will have, beside the header
            header_tmp.write_text("\n".join(lines) + "\n")
        finally:
            for left in beside:
                if left.exists():
                    left.unlink()
        # leaving the inner block renames the data file into place, then the outer one the header
    return path


def check_output_path(path: Path, flag: str = "") -> None:
    """One line when the file ``path`` cannot be written: it is a folder, or a folder above it is a file (a
    traceback from ``mkdir`` otherwise, after all the work). ``flag``: the option that named it, for the message."""
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise MedsegError(f"{name}: is a folder; give a file name")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise MedsegError(f"{name}: {folder} is a file, not a folder; give an output path in a folder")
            check_can_write(folder, name)
            return


def check_can_write(folder: Path, name: str) -> None:
    """One line when no file can be created in the existing ``folder`` (tried, not read from the permission bits:
    root ignores those, a read-only or special file system does not)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise MedsegError(f"{name}: cannot write in {folder} ({err.strerror or type(err).__name__}); give a path in a"
                          " folder you can write to") from None


def memory_limit() -> int:
    """The most bytes one image may claim before medseg reads it: this machine's memory (64 GiB where unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return ""


def check_file(path: Path) -> tuple[tuple[int, ...], int]:
    """Refuse an image file whose header cannot be what it claims, before anything is allocated or read.

    NIfTI: the header's dimensions times the voxel size against the memory of this machine, and against
    the file (uncompressed: its size; gzip: the stream's length, from its trailer or, where that does not
    match, by decompressing it without keeping the data, which also finds a stream cut short). Other
    formats: the dimensions from SimpleITK's header reading against the memory. Then the shape: more than
    3 dimensions (a 4D series) or a single voxel are refused. Returns (shape, components per voxel).
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MedsegError(f"{path}: zero-length file")
    nifti = suffix_of(path) in (".nii", ".nii.gz")
    shape, itemsize, components, offset = _nifti_header(path) if nifti else _sitk_header(path)
    needed = int(np.prod(shape, dtype=object)) * itemsize * components if shape else 0
    limit = memory_limit()
    if needed > limit:
        dims = "x".join(str(v) for v in shape)
        raise MedsegError(f"{path}: header claims {dims} voxels ({_size(needed)}), more than this machine's memory"
                          f" ({_size(limit)}); a damaged or hostile header: not read")
    if offset is not None:
        end = offset + needed
        held = _gzip_length(path, end) if suffix_of(path) == ".nii.gz" else path.stat().st_size
        if held < end:
            raise MedsegError(f"{path}: truncated: header and data need {end} bytes, the file holds {held}"
                              f"{' (decompressed)' if suffix_of(path) == '.nii.gz' else ''}; re-export or re-copy it")
    spatial = shape[:3]
    if any(v > 1 for v in shape[3:]):
        raise MedsegError(f"{path}: {len(shape)}D image (shape {tuple(shape)}); medseg reads one 2D or 3D image per file"
                          " (a case with several channels lists one file per channel)")
    if sum(v > 1 for v in spatial) < 2:
        raise MedsegError(f"{path}: an image of {'x'.join(str(v) for v in spatial)} voxels; nothing to segment")
    return tuple(spatial), components


def sitk_information(path: Path):
    """SimpleITK's ImageFileReader with the header read (no voxels); a file it cannot read gives one line."""
    # deferred: start-up of SimpleITK (~0.4 s) only where an image is read or written with it
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise _sitk_error(path, err) from err
    return reader


def _sitk_header(path: Path) -> tuple[tuple[int, ...], int, int, None]:
    """Shape, bytes per component and components per voxel from SimpleITK's header reading."""
    # deferred: start-up of SimpleITK (~0.4 s) only where an image is read or written with it
    import SimpleITK as sitk

    reader = sitk_information(path)
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = re.search(r"(\d+)-bit", kind)
    itemsize = int(bits.group(1)) // 8 if bits else 8
    if "complex" in kind:
        itemsize *= 2
    shape = tuple(int(v) for v in reader.GetSize())
    if len(shape) == 3 and shape[2] == 1 and suffix_of(path) in PLAIN_2D_SUFFIXES:
        shape = shape[:2]
    return shape, itemsize, int(reader.GetNumberOfComponents()), None


def _nifti_header(path: Path) -> tuple[tuple[int, ...], int, int, int]:
    opener = gzip.open if suffix_of(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(540)
    except (OSError, EOFError) as err:
        raise MedsegError(f"{path}: cannot be read as an image (not a {'gzip' if opener is gzip.open else 'NIfTI'}"
                          f" file: {err})") from err
    try:
        kind = nib.Nifti2Header if raw[:4] in ((540).to_bytes(4, "little"), (540).to_bytes(4, "big")) else nib.Nifti1Header
        header = kind.from_fileobj(io.BytesIO(raw), check=False)
        shape = tuple(int(v) for v in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
    except Exception as err:  # nibabel raises HeaderDataError, ValueError, struct errors for a broken header
        raise MedsegError(f"{path}: cannot be read as an image (no valid NIfTI header: {type(err).__name__}: {err})") from err
    if any(v < 0 for v in shape):
        raise MedsegError(f"{path}: NIfTI header with negative dimensions {shape}")
    components = len(dtype.names) if dtype.names else 1  # RGB NIfTI: a structured voxel type
    return shape, dtype.itemsize // components, components, offset


def _gzip_length(path: Path, expected: int) -> int:
    """Decompressed length of a gzip file. Its trailer (ISIZE: the length mod 2**32) agreeing with ``expected``
    is taken as it is; otherwise the stream is decompressed (and dropped) chunk by chunk to count, which finds
    a stream cut short (MedsegError) and reads multi-member files (bgzip) right."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(size - 4, 0))
        if int.from_bytes(fh.read(4), "little") == expected % (1 << 32):
            return expected
        fh.seek(0)
        total, pending, started = 0, b"", False
        d = zlib.decompressobj(wbits=31)
        while True:
            if not pending:
                pending = fh.read(1 << 20)
                if not pending:
                    break
            try:
                total += len(d.decompress(pending, 1 << 24))
            except zlib.error as err:
                if not started and total:  # padding after the last member, as gzip itself ignores it
                    break
                raise MedsegError(f"{path}: corrupt gzip data ({err}); re-copy or re-export it") from err
            if d.eof:
                pending, started = d.unused_data, False
                d = zlib.decompressobj(wbits=31)
            else:
                pending, started = d.unconsumed_tail, True
    if started:
        raise MedsegError(f"{path}: gzip stream cut short (the file ends inside its compressed data: a partial copy"
                          " or download); re-copy it")
    return total
