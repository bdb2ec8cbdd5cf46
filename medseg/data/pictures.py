"""2D pictures (PNG, TIFF, JPEG) as MONAI images, and label maps written back in the picture's own format.

:class:`PictureReader` is a MONAI ``ImageReader`` for ``.png``, ``.tif``/``.tiff``, ``.jpg``/``.jpeg``: grey 8- or
16-bit pictures as ``(W, H)``, colour ones as ``(W, H, 3)`` (alpha dropped; channel last, so ``EnsureChannelFirstd``
makes three channels), multi-page TIFFs as a ``(W, H, pages)`` stack. Own reader, because MONAI's defaults
split the formats between readers that disagree (``PILReader`` for PNG with an identity affine, ``ITKReader`` for
TIFF with ITK's, a multi-page TIFF read as channels). Axes are ``(x, y)`` as MONAI's ``PILReader`` gives
them (``reverse_indexing``); the affine is ITK's (the identity in LPS), TIFF resolution tags give the spacing.

:func:`write_picture` writes a label map in a picture's format and size (JPEG input: PNG, lossless), with the
label values mapped back to the stored ones (``{1: 255}`` for 0/255 masks); :class:`SavePictured` is the same
as a transform for the bundle's ``inference.json``. Imports only numpy, torch, PIL, MONAI, (optionally)
``tifffile``, ``..errors`` and ``.tiff_units`` (relative): exported bundles ship it in
``scripts/medseg_inference/`` (with ``tiff_units.py``) beside ``scripts/errors.py``.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import MapTransform
from monai.utils import MetaKeys, ensure_tuple
from PIL import Image as PILImage
from PIL import ImageSequence

from ..errors import MedsegError
from .tiff_units import pixel_size_of, tiff_pixel_size

try:
    import tifffile
except ImportError:  # stock environments: PIL reads TIFF (8/16-bit grey, 8-bit colour)
    tifffile = None

#: what this reader takes (lower case)
PICTURE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: the name preprocessing specs give LoadImaged's reader (a dotted path MONAI's LoadImage locates)
READER_PATH = "medseg.data.pictures.PictureReader"


def is_picture(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(PICTURE_SUFFIXES)


def _is_tiff(path: str) -> bool:
    return path.lower().endswith((".tif", ".tiff"))


# medseg checks an image's claimed size against this machine's memory before reading it (medseg.data.images):
# PIL's own guard (178 Mpx) refused a valid 14000x14000 slide scan as a "decompression bomb"
PILImage.MAX_IMAGE_PIXELS = None

#: the first bytes of each picture format, to name a file whose suffix is not its format
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"II+\x00": "TIFF", b"MM\x00+": "TIFF",
          b"\xff\xd8\xff": "JPEG"}
_SUFFIX_FORMAT = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG"}


def check_format(path: str | os.PathLike) -> None:
    """One line when a picture's bytes are another format than its suffix says (a PNG named ``.tif``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
        path = str(path)
    except OSError:
        return  # the reader's own error names it
    found = next((fmt for magic, fmt in _MAGIC.items() if head.startswith(magic)), None)
    expected = _SUFFIX_FORMAT.get(Path(path).suffix.lower())
    if found is not None and expected is not None and found != expected:
        raise MedsegError(f"{path}: a {found} file with a {Path(path).suffix} name; rename it to its format's"
                          f" suffix ({ {'PNG': '.png', 'TIFF': '.tif', 'JPEG': '.jpg'}[found] })")


def read_picture(path: str | os.PathLike) -> tuple[np.ndarray, list[float]]:
    """``(array, spacing)``: rows x columns (``(pages, rows, cols)`` for a multi-page TIFF, ``[..., 3]`` for
    colour, planar TIFFs too), as stored; spacing per pixel axis (x, y) in um from TIFF resolution tags (see
    :func:`_tiff_spacing`), else 1. A damaged, truncated or misnamed file: one :class:`MedsegError` line."""
    path = str(path)
    check_format(path)
    try:
        array, spacing = _read(path)
    except MedsegError:
        raise
    except MemoryError:
        raise MedsegError(f"{path}: too large to read into this machine's memory; crop or downsample it") from None
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError, zlib.error) as err:
        # PIL's and tifffile's errors for a truncated, damaged or unsupported file (tifffile's derive ValueError)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise MedsegError(f"{path}: cannot be read as a {_SUFFIX_FORMAT.get(Path(path).suffix.lower(), 'picture')}"
                          f" ({reason}); the file is damaged or cut short: export it again") from None
    if array.ndim >= 3 and array.shape[-1] == 4:  # alpha
        array = array[..., :3]
    if array.ndim >= 3 and array.shape[-1] == 2:  # grey + alpha
        array = array[..., 0]
    return np.ascontiguousarray(array), spacing


def _read(path: str) -> tuple[np.ndarray, list[float]]:
    spacing = [1.0, 1.0]
    if _is_tiff(path) and tifffile is not None:
        with tifffile.TiffFile(path) as tif:
            first = tif.pages[0]
            spacing = _tiff_spacing(tif)
            # the pages of the first page's size (a reduced-resolution copy or thumbnail page is not a slice)
            kept = [page for page in tif.pages if page.shape == first.shape and page.dtype == first.dtype]
            try:
                pages = [_channels_last(page.asarray(), page, tif) for page in kept]
            except (KeyError, ValueError) as err:
                if "imagecodecs" not in str(err):
                    raise
                pages = None  # LZW, JPEG, ... without the imagecodecs package: PIL decodes the common ones
        if pages is not None:
            return (pages[0] if len(pages) == 1 else np.stack(pages)), spacing
    with PILImage.open(path) as img:
        frames = []
        for frame in ImageSequence.Iterator(img):
            if frame.mode in ("RGBA", "CMYK", "YCbCr", "LA"):  # palette ("P") masks keep their indices
                frame = frame.convert("L" if frame.mode == "LA" else "RGB")
            frames.append(np.asarray(frame))
    frames = [f for f in frames if f.shape == frames[0].shape]  # as for tifffile: no thumbnail page in a stack
    return (frames[0] if len(frames) == 1 else np.stack(frames)), spacing


def _stack_as_planar(page: Any, tif: Any) -> bool:
    """A (3 or 4, rows, cols) array that ``tifffile.imwrite`` stored, without ``photometric``, as one planar RGB(A)
    page (its shaped metadata): slices, not colour (medseg's own 3- and 4-page masks were written so)."""
    return (int(getattr(page, "planarconfig", 1)) == 2 and bool(getattr(tif, "is_shaped", False))
            and page.index == 0 and len(tif.pages) == 1)


def _channels_last(array: np.ndarray, page: Any, tif: Any) -> np.ndarray:
    """A TIFF page's pixels with its samples (RGB) last: a planar ("separate") colour page is stored (3, rows,
    cols); a tifffile stack stored as one planar page stays (slices, rows, cols)."""
    if (int(getattr(page, "samplesperpixel", 1)) > 1 and int(getattr(page, "planarconfig", 1)) == 2
            and array.ndim == 3 and not _stack_as_planar(page, tif)):
        return np.moveaxis(array, 0, -1)
    return array


def _tiff_spacing(tif: Any) -> list[float]:
    """Pixel size (um) of an open TIFF (:func:`medseg.data.tiff_units.pixel_size_of`), 1 where it states none."""
    return pixel_size_of(tif)[0]


def has_pixel_size(path: str | os.PathLike) -> bool:
    """Whether the picture at ``path`` states its pixel size (:mod:`medseg.data.tiff_units`): the object table's
    areas are then in um^2, else in pixels only."""
    return tiff_pixel_size(path)[1]


def tiff_resolution(source: str | os.PathLike | None) -> dict[str, Any]:
    """``tifffile.imwrite`` keywords that give a written TIFF the pixel size of the TIFF ``source`` (its
    XResolution, YResolution and ResolutionUnit tags, as stored); empty where it has none or is no TIFF."""
    if source is None or not _is_tiff(str(source)) or tifffile is None:
        return {}
    try:
        with tifffile.TiffFile(source) as tif:
            tags = tif.pages[0].tags
            out = {"resolution": (tuple(tags["XResolution"].value), tuple(tags["YResolution"].value))}
            if "ResolutionUnit" in tags:
                out["resolutionunit"] = int(tags["ResolutionUnit"].value)
            return out
    except (KeyError, TypeError, ValueError, OSError, IndexError):
        return {}


def is_colour(array: np.ndarray, path: str | os.PathLike) -> bool:
    """A colour picture: a trailing axis of 3 on a 2D picture; a TIFF by its pages' samples per pixel (a stack of
    pages 3 pixels wide is not colour, an RGB page of any height is)."""
    if array.ndim != 3 or array.shape[-1] != 3:
        return False
    if not _is_tiff(str(path)) or tifffile is None:
        return True
    try:
        with tifffile.TiffFile(path) as tif:
            return int(tif.pages[0].samplesperpixel) >= 3 and not _stack_as_planar(tif.pages[0], tif)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return array.shape[0] <= 3


class PictureReader(ImageReader):
    """MONAI ``ImageReader`` for PNG/TIFF/JPEG (see the module docstring). Refuses other suffixes at once, so
    ``LoadImage`` moves on to its next reader."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return all(is_picture(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> list[tuple]:
        out = []
        for name in ensure_tuple(data):
            if not is_picture(name):
                raise ValueError(f"{name}: not a PNG/TIFF/JPEG picture")
            out.append((str(name), *read_picture(name)))
        return out

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        arrays, meta = [], {}
        for name, array, spacing in img if isinstance(img, list) else [img]:
            colour = is_colour(array, name)
            # stored rows x cols (x pages first) -> MONAI's (x, y[, pages]) with colour last
            if colour:
                data = np.moveaxis(array, 0, 1)
            elif array.ndim == 3:
                data = np.transpose(array, (2, 1, 0))
            else:
                data = array.T
            spatial = data.shape[:-1] if colour else data.shape
            ndim = len(spatial)
            # SimpleITK's (and MONAI's ITKReader's) geometry of a picture: identity in LPS, i.e. x and y flipped in
            # MONAI's RAS, so predictions and labels read by SimpleITK (medseg.data.images) share one world frame
            affine = np.diag([-spacing[0], -spacing[1], 1.0, 1.0])
            arrays.append(np.ascontiguousarray(data))
            if not meta:
                meta = {MetaKeys.AFFINE: affine, MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                        MetaKeys.SPATIAL_SHAPE: np.asarray(spatial),
                        MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if colour else float("nan"),
                        "format": Path(name).suffix.lower(), "pages": int(array.shape[0]) if ndim == 3 else 1,
                        "stored_dtype": str(array.dtype)}
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta


def output_suffix(source: str | os.PathLike) -> str:
    """The suffix a label map predicted from ``source`` is written with: the picture's own, PNG for JPEG."""
    name = str(source).lower()
    for suffix in (".png", ".tiff", ".tif"):
        if name.endswith(suffix):
            return suffix
    return ".png"


def stored_values(labels: np.ndarray, value_map: Mapping[int, int] | None) -> np.ndarray:
    """Label values -> the values the dataset stores (``{1: 255}`` for 0/255 masks); uint8, or uint16 past 255."""
    out = np.asarray(labels).astype(np.int64)
    if value_map:
        mapped = out.copy()
        for label, stored in value_map.items():
            mapped[out == int(label)] = int(stored)
        out = mapped
    if out.size and (out.min() < 0 or out.max() > 65535):
        raise ValueError(f"label values {out.min()}..{out.max()} do not fit a PNG/TIFF label map")
    return out.astype(np.uint8 if not out.size or out.max() <= 255 else np.uint16)


def write_picture(labels: np.ndarray, path: str | os.PathLike, value_map: Mapping[int, int] | None = None,
                  source: str | os.PathLike | None = None) -> Path:
    """Write ``labels`` in MONAI's ``(x, y)`` (or ``(x, y, pages)``) order as a PNG or (multi-page) TIFF, atomically;
    a TIFF gets the pixel size of a TIFF ``source`` (the input picture).

    Example:
        >>> write_picture(labels, "masks/cell_seg.png", {1: 255})
    """
    path = Path(path)
    array = stored_values(labels, value_map)
    stored = array.T if array.ndim == 2 else np.transpose(array, (2, 1, 0))  # rows x cols (pages first)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        if _is_tiff(str(path)) and tifffile is not None:
            tifffile.imwrite(tmp, np.ascontiguousarray(stored), photometric="minisblack",  # pages, never colour
                             **tiff_resolution(source))
        elif stored.ndim == 3:
            frames = [PILImage.fromarray(np.ascontiguousarray(p)) for p in stored]
            frames[0].save(tmp, save_all=True, append_images=frames[1:])
        else:
            PILImage.fromarray(np.ascontiguousarray(stored)).save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class SavePictured(MapTransform):
    """Write the label map under ``keys`` (``(1, x, y[, pages])``) into ``output_dir`` as ``<name><postfix><suffix>``
    in its input picture's format (:func:`write_picture`), values mapped by ``value_map`` (label -> stored).

    The bundle's ``inference.json`` ends with it for a 2D task, as ``SaveImaged`` ends a 3D one.
    """

    def __init__(self, keys: KeysCollection, output_dir: str, value_map: Mapping[Any, int] | None = None,
                 output_postfix: str = "_seg", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.value_map = {int(k): int(v) for k, v in (value_map or {}).items()}
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            source = str(pred.meta.get("filename_or_obj", "pred")) if hasattr(pred, "meta") else "pred"
            labels = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
            name = Path(source).name
            for suffix in PICTURE_SUFFIXES:
                if name.lower().endswith(suffix):
                    name = name[: -len(suffix)]
            write_picture(labels[0], Path(self.output_dir) / f"{name}{self.output_postfix}{output_suffix(source)}",
                          self.value_map, source=source)
        return d
