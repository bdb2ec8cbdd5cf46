"""Segment image files or DICOM series with a MONAI Bundle: what ``python -m medseg.predict`` does, as a function.

Each case runs through the bundle's prediction chain (:mod:`medseg.inference`: the chain its
``inference.json`` holds) and is written as ``<case>_seg.nii.gz`` in the input's own geometry, or with
``format="dicom-seg"`` (DICOM input) as a DICOM SEG that references the source series. PNG/TIFF/JPEG pictures
(grey or colour, 8/16-bit, multi-page TIFF stacks page by page) give ``<case>_seg.png``/``.tif`` of the same size
with the label values as the dataset stores them (0/255 masks: 255), or NIfTI with ``format="nifti"``.

Example:
    >>> from medseg.workflows import predict
    >>> written = predict.run("bundles/liver_ct_segmentation", "scans/", "masks/")
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from medseg import __version__
from medseg.bundle.load import LoadedBundle, load_bundle
from medseg.data.check import read_header
from medseg.data.dicom import SEG_SOP_CLASS, SKIP_NAMES, is_dicom_file, multiframe_files
from medseg.data.dicom_seg import check_dicom_seg, is_dicom_series, write_dicom_seg
from medseg.data.formats import VOLUME_SUFFIXES as IMAGE_SUFFIXES
from medseg.data.labelmaps import case_name, write_label_nifti
from medseg.data.pictures import (PICTURE_SUFFIXES, check_format, has_pixel_size, is_picture, output_suffix,
                                  read_picture, stored_values, tiff_resolution, write_picture)
from medseg.data.dicom_reader import DicomSeriesReader
from medseg.data.tiff_units import tiff_pixel_size
from medseg.errors import MedsegError, check_folder_option, failure_line, user_error
from medseg.fileio import atomic_path
from medseg.inference import run_case, torch_forward
from medseg.inference.instances import label_instances, object_table, write_object_csv
from medseg.inference.runtimes import ENGINES, build_engine, window_input
from medseg.workflows.outputs import check_output_folder
import tempfile

#: auto: pictures (PNG/TIFF/JPEG) in their own format, everything else NIfTI
FORMATS = ("auto", "nifti", "dicom-seg")

logger = logging.getLogger(__name__)


class Written(list):
    """The paths written, one per case that succeeded; ``failed``: ``(case, reason)`` of those that failed;
    ``unexpected``: those of them whose error is not a refusal of the input (a fault to report, with ``debug``)."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[tuple[str, str]] = []
        self.unexpected: list[str] = []


#: the names of what predict writes beside a case (``<case>_seg``, ``<case>_instances``): not cases of a later run
#: into the same folder
OWN_OUTPUTS = ("_seg", "_instances")


#: how deep under ``--input`` DICOM series folders are looked for (a CD's DICOM/PA0/ST0/SE0 is 4 deep)
SERIES_DEPTH = 4


def series_folders(folder: Path, depth: int = SERIES_DEPTH) -> list[tuple[str, Path]]:
    """The DICOM series folders under ``folder`` (not itself), down to ``depth`` levels, each named by its path
    below ``folder`` with ``_`` between the parts (``PA0/ST0/SE1`` -> ``PA0_ST0_SE1``); a series folder's own
    sub-folders are not searched (its reader reads them with it). A part of the path that is the series' patient
    ID or holds a part of the patient's name (an export's ``Doe^John/CT``) is ``patient1``, ``patient2``, ... in
    the case name: case names become output file names."""
    found: list[tuple[list[str], Path]] = []

    def walk(at: Path, parts: list[str], left: int) -> None:
        for child in sorted(at.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            if is_dicom_series(child):
                found.append(([*parts, child.name], child))
            elif left > 1:
                walk(child, [*parts, child.name], left - 1)

    walk(folder, [], depth)
    stand_ins: dict[str, str] = {}
    out = []
    for parts, path in found:
        identifiers = _patient_words(path)
        named = []
        for part in parts:
            if _names_patient(part, identifiers):
                part = stand_ins.setdefault(part, f"patient{len(stand_ins) + 1}")
            named.append(part)
        out.append(("_".join(named), path))
    return out


def _patient_words(series: Path) -> set[str]:
    """The patient ID and the parts of the patient's name (lower case, 2+ characters) of a series folder's first
    DICOM file (or of the DICOM file ``series``); empty when it has none or cannot be read."""
    import pydicom  # deferred: as medseg.data.dicom

    if series.is_file():
        first = series if is_dicom_file(series) else None
    else:
        first = next((p for p in sorted(series.iterdir()) if p.is_file() and p.name not in SKIP_NAMES
                      and is_dicom_file(p)), None)
    if first is None:
        return set()
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["PatientID", "PatientName"])
    except Exception:  # a damaged file: the series reader names it
        return set()
    words = {str(ds.get("PatientID", "") or "").strip().lower()}
    words |= {w.lower() for w in re.split(r"[\^\s=,]+", str(ds.get("PatientName", "") or ""))}
    return {w for w in words if len(w) >= 2}


def _names_patient(part: str, words: set[str]) -> bool:
    low = part.lower()
    return any(w == low or (len(w) >= 3 and w in re.split(r"[^a-z0-9]+", low)) for w in words)


def _dicom_cases(cases: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """``cases`` (DICOM series folders or files, each named by its own folder or file name) with a name that is the
    patient's ID or holds a part of the patient's name (``PID12345/``, ``Doe^John.dcm``) as ``patient1``,
    ``patient2``, ... as :func:`series_folders` names the folders below ``--input``: case names become file names
    and log lines."""
    stand_ins: dict[str, str] = {}
    return [(stand_ins.setdefault(name, f"patient{len(stand_ins) + 1}")
             if _names_patient(name, _patient_words(path)) else name, path) for name, path in cases]


def find_inputs(path: Path) -> list[tuple[str, Path]]:
    """Cases under ``path``: one image file, one DICOM series folder, or a folder of either (enhanced multi-frame
    DICOM files among them, one case each; series folders also deeper down, as on a CD under its DICOMDIR).
    A DICOM case named by the patient (its ID or a part of the name) is ``patient1``, ... (:func:`_dicom_cases`)."""
    path = Path(path)
    if path.is_file():
        return _dicom_cases([(case_name(path), path)]) if is_dicom_file(path) else [(case_name(path), path)]
    if not path.is_dir():
        raise MedsegError(f"--input {path}: no such file or folder")
    volumes: list[Path] = []
    series = series_folders(path)
    if is_dicom_series(path):
        volumes = multiframe_files(path)  # enhanced multi-frame files: a volume each, not slices of one series
        if not volumes and (not series or _only_segs(series)):
            # one series (its saved SEGs in a folder under it are left out by the reader)
            return _dicom_cases([(path.name, path)])
        loose = [] if volumes else _loose_images(path)
        if loose:
            raise MedsegError(
                f"--input {path}: {len(loose)} DICOM image file(s) at its top ({', '.join(loose[:3])}"
                f"{', ...' if len(loose) > 3 else ''}) beside series folders ({', '.join(n for n, _ in series[:3])}"
                f"{', ...' if len(series) > 3 else ''}): give one series folder as --input, or move the loose files"
                " into a folder of their own")
        if volumes and len(volumes) + len(series) < 2:
            return _dicom_cases([(path.name, path)])  # one enhanced multi-frame file
    cases = _dicom_cases([(case_name(v), v) for v in volumes])
    for child in sorted(path.iterdir()):
        if child.is_file() and child.name.lower().endswith((*IMAGE_SUFFIXES, *PICTURE_SUFFIXES)):
            cases.append((case_name(child), child))
    cases += series
    if not cases:
        raise MedsegError(f"--input {path}: no images ({', '.join((*IMAGE_SUFFIXES, *PICTURE_SUFFIXES))}) or DICOM"
                          " series folders in it")
    return cases


#: DICOMDIR's SOP class (Media Storage Directory Storage): an index of a CD's files, under any file name
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def _sop_class(path: Path) -> str | None:
    """The SOP class of a DICOM file (a DICOMDIR's from its file meta: it has none of its own); None when the file
    cannot be read."""
    import pydicom  # deferred: as medseg.data.dicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # pydicom's many errors for a damaged file
        return None
    meta = getattr(ds, "file_meta", None)
    return str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))


def _loose_images(folder: Path) -> list[str]:
    """Names of the DICOM files at the top of ``folder`` that are images or other instances (a damaged one too),
    not a DICOMDIR index."""
    return [p.name for p in sorted(folder.iterdir())
            if p.is_file() and p.name not in SKIP_NAMES and not p.name.startswith(".") and is_dicom_file(p)
            and _sop_class(p) != DICOMDIR_SOP_CLASS]


def _only_segs(series: list[tuple[str, Path]]) -> bool:
    """Whether every one of these folders holds only DICOM SEGs (saved corrections kept beside a series' slices:
    the series reader leaves them out)."""
    return all(_seg_folder(folder) for _, folder in series)


def _seg_folder(folder: Path) -> bool:
    """Whether every DICOM file under ``folder`` is a SEG (a damaged file is not: the series reader names it)."""
    return all(_sop_class(p) == SEG_SOP_CLASS for p in folder.rglob("*")
               if p.is_file() and p.name not in SKIP_NAMES and is_dicom_file(p))


def _device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError("--device cuda: no CUDA device is visible")
    return device


def _labels(pred: MetaTensor) -> np.ndarray:
    """The label map (spatial axes) as uint8, whatever type the chain's last step gave it."""
    labels = pred[0].detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)[0]
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise MedsegError(f"label values {labels.min()}..{labels.max()} do not fit a uint8 label map")
        labels = labels.astype(np.uint8)
    return labels


def stored_value_map(bundle: LoadedBundle) -> dict[int, int]:
    """Label value -> the value the task's label files store (the inverse of its label map: ``{1: 255}``)."""
    cfg = bundle.cfg
    if cfg is None or not hasattr(cfg, "effective_label_map"):
        return {}
    return {int(v): int(k) for k, v in cfg.effective_label_map().items()}


def _two_d(bundle: LoadedBundle) -> bool:
    cfg = bundle.cfg
    return cfg is not None and int(cfg.network.spatial_dims) == 2 and not cfg.network.slice_mode


def _picture_pages(bundle: LoadedBundle, path: Path, device: torch.device, tta: bool) -> np.ndarray:
    """A multi-page TIFF through a 2D network page by page: labels ``(x, y, pages)``. Each page goes to the chain
    as a one-page TIFF of its stored values and the file's pixel size (a float page is not cut to integers, and
    a page is resampled as the same picture on its own would be)."""
    import tifffile  # deferred: only multi-page TIFFs come here

    pages = []
    resolution = tiff_resolution(path)
    with tifffile.TiffFile(path) as tif, tempfile.TemporaryDirectory(prefix="medseg-pages-") as tmp:
        for i, page in enumerate(tif.pages):
            one = Path(tmp) / f"page{i:04d}.tif"
            tifffile.imwrite(one, page.asarray(), photometric="minisblack", **resolution)
            pred = run_case(bundle.chain, torch_forward(bundle.network), {"image": str(one)}, device, tta)
            pages.append(_labels(pred))
    return np.stack(pages, axis=-1)


def write_instances(bundle: LoadedBundle, labels: np.ndarray, spacing: list[float], out: Path,
                    source: Path | None = None, pages: bool = False) -> list[Path]:
    """``<case>_instances.tif`` (2D; uint16/32 object numbers; the pixel size of a TIFF ``source``) and
    ``<case>_objects.csv`` beside the mask ``out``:
    the task's ``inference.instance_method`` on its ``inference.instance_class`` (:mod:`medseg.inference.instances`);
    areas in um^2 for pictures (TIFF resolution, else 1 per pixel), mm^2/mm^3 for volumes. ``pages``: ``labels``
    ``(x, y, pages)`` are the pages of a multi-page TIFF that a 2D network segmented one by one: objects are
    found on each page (numbered on through the stack; the table has a ``page`` column and areas in um^2), as
    the network saw no page beside another."""
    cfg = bundle.cfg
    inf = cfg.inference if cfg is not None else None
    interior = int(inf.instance_class) if inf is not None else 1
    method = inf.instance_method if inf is not None else "components"
    named = {int(v): k for k, v in cfg.data.labels.items()} if cfg is not None else {0: "background"}
    # the watershed grows over every class but a background one (EM: membranes 0 belong to the cells around them)
    foreground = [v for v in named if named[v] != "background"] if named.get(0) == "background" else None
    erosion = int(inf.instance_seed_erosion) if inf else 0
    # the mask is <case>_seg<suffix>: its last "_seg" is predict's own (a case may have "_seg" in its name)
    stem = out.name.rsplit("_seg", 1)[0] if "_seg" in out.name else out.name.split(".")[0]
    # a picture's areas in um^2 only where it states its pixel size (TIFF resolution in a length unit), else pixels
    picture = is_picture(out) or (source is not None and is_picture(source))  # --format nifti of a picture too
    unit = ("um" if source is not None and has_pixel_size(source) else None) if picture else "mm"
    if pages and labels.ndim == 3:
        found = np.zeros(labels.shape, np.int32)
        rows: list[dict] = []
        for k in range(labels.shape[-1]):
            page = label_instances(labels[..., k], interior, method, foreground, erosion)
            page[page > 0] += len(rows)  # numbered on through the stack
            found[..., k] = page
            rows += [{**row, "page": k} for row in object_table(page, spacing[:2], unit)]
        written = [write_object_csv(rows, out.with_name(f"{stem}_objects.csv"), 2, unit, pages=True)]
    else:
        found = label_instances(labels, interior, method, foreground, erosion)
        written = [write_object_csv(object_table(found, spacing, unit), out.with_name(f"{stem}_objects.csv"),
                                    labels.ndim, unit)]
    if labels.ndim == 2 or is_picture(out):
        image = out.with_name(f"{stem}_instances.tif")
        import tifffile  # deferred: only instance output writes 32-bit TIFFs

        stored = found.T if found.ndim == 2 else np.transpose(found, (2, 1, 0))
        with atomic_path(image, ".tif") as tmp:  # a kill leaves no partial file under the final name
            tifffile.imwrite(tmp, np.ascontiguousarray(stored.astype(np.uint16 if found.max() < 65536 else np.uint32)),
                             photometric="minisblack",  # a 3- or 4-page stack is pages, not an RGB(A) page
                             **tiff_resolution(source))  # the input TIFF's pixel size (none for PNG input)
        written.append(image)
    return written


def _pages(path: Path) -> bool:
    """A TIFF, whose pages a 2D network segments one by one (``format="auto"``)."""
    return str(path).lower().endswith((".tif", ".tiff"))


def _check_pixel_unit(bundle: LoadedBundle, path: Path) -> None:
    """A warning when a picture and the bundle's training pictures are not in one unit: a TIFF that states its
    pixel size for a bundle trained at 1 per pixel (it is resampled as if a training pixel were 1 um), or a
    picture without one for a bundle trained in um (its pixels are taken for 1 um)."""
    if bundle.cfg is None or is_dicom_file(path):
        return
    unit = bundle.cfg.distance_unit()
    size, stated = tiff_pixel_size(path)
    if unit == "px" and stated:
        logger.warning("%s: states a pixel size of %s um, and this bundle was trained on pictures without one (1"
                       " per pixel): it is resampled as if a training pixel were 1 um; remove its resolution tags to"
                       " segment it pixel for pixel", path.name, "x".join(f"{v:.4g}" for v in size))
    elif unit == "µm" and not stated:
        logger.warning("%s: states no pixel size, and this bundle was trained in um: its pixels are taken for 1 um",
                       path.name)


def check_input(bundle: LoadedBundle, path: Path, series: str | None = None, pages: bool = True) -> None:
    """Every check that needs no voxels, before any pixel is read: the header's (DICOM series order, spacing,
    tilt, gaps, choice; claimed size, truncated or cut files, 4D, a single voxel, colour), a 2D image for a 3D
    network and a 3D one for a 2D network (but a multi-page TIFF where ``pages``: segmented page by page);
    one :class:`MedsegError` line."""
    if is_picture(path):  # a PNG named .tif: SimpleITK reads it by its content, PictureReader would not
        check_format(path)
        _check_pixel_unit(bundle, path)
    header = read_header(path, series)
    cfg = bundle.cfg
    if cfg is not None and int(cfg.network.spatial_dims) == 3 and len(header.shape) == 2:
        raise MedsegError(f"{path}: a 2D image {tuple(header.shape)}, and this bundle's network is 3D; give a 3D "
                          "volume, or use a bundle trained on 2D images")
    if _two_d(bundle) and len(header.shape) == 3 and not (pages and _pages(path)):
        hint = (" (a multi-page TIFF is segmented page by page with --format auto)" if _pages(path)
                else ", or use a bundle trained on 3D volumes")
        raise MedsegError(f"{path}: a 3D image {tuple(header.shape)}, and this bundle's network is 2D; give 2D "
                          f"images{hint}")


def predict_one(bundle: LoadedBundle, path: Path, out: Path, device: torch.device, fmt: str = "nifti",
                tta: bool = False, series: str | None = None, instances: bool = False) -> Path:
    """Predict the case at ``path`` and write it to ``out``; returns ``out``. ``instances``: also the instance
    label image and the per-object CSV (:func:`write_instances`)."""
    check_input(bundle, path, series, pages=fmt == "auto")
    names = {v: k for v, k in bundle.labels.items() if v != 0}
    if fmt == "dicom-seg":  # what highdicom refuses about the series, before the inference rather than after it
        check_dicom_seg(path, names, bundle.name, __version__)
    if fmt == "auto" and is_picture(path):
        stack, spacing = read_picture(path)
        if _two_d(bundle) and _pages(path) and stack.ndim == 3 and stack.shape[-1] != 3:
            labels, by_page = _picture_pages(bundle, path, device, tta), True
        else:
            labels = _labels(run_case(bundle.chain, torch_forward(bundle.network), {"image": str(path)}, device, tta))
            by_page = False
        written = write_picture(labels, out, stored_value_map(bundle), source=path)
        if instances:
            write_instances(bundle, labels, spacing + [1.0] * (labels.ndim - 2), out, source=path, pages=by_page)
        return written
    pred = run_case(bundle.chain, torch_forward(bundle.network), {"image": str(path)}, device, tta)
    labels, affine = _labels(pred), pred.affine.numpy()
    if fmt == "dicom-seg":
        written = write_dicom_seg(labels, affine, path, out, names, bundle.name, __version__)
    else:
        # the values the dataset's label files store (a plan renumbers 0/255 or BraTS's 0/1/2/4 to 0..K-1 for the
        # network): masks comparable with the references as they are, as the picture outputs are
        written = write_label_nifti(stored_values(labels, stored_value_map(bundle)), affine, out, source=path)
    if instances:  # after the mask: a mask that cannot be written leaves no instance files without it
        write_instances(bundle, labels, list(np.linalg.norm(affine[: labels.ndim, : labels.ndim], axis=0)), out,
                        source=path)
    return Path(written) if written is not None else out


def use_series(bundle: LoadedBundle, series: str | None) -> None:
    """Read the series ``series`` (SeriesInstanceUID) of a DICOM folder that holds several (``--series``)."""
    if series is not None:  # registered last, so LoadImage tries it first: the chosen series of a DICOM folder
        for step in bundle.chain.preprocessing.transforms:
            if isinstance(step, LoadImaged):
                step.register(DicomSeriesReader(series_uid=series))


def without_masks(cases: list[tuple[str, Path]],
                  on_skip: Callable[[str, str], None] | None = None) -> list[tuple[str, Path]]:
    """``cases`` without the masks medseg wrote beside them (``<case>_seg``, ``<case>_instances`` of a case that is
    also there: medseg.predict into the input folder, a saved correction): a label map is not a case to label."""
    names = {name for name, _ in cases}
    kept = []
    for name, path in cases:
        of = next((name[: -len(s)] for s in OWN_OUTPUTS if name.endswith(s) and name[: -len(s)] in names), None)
        if of is None:
            kept.append((name, path))
        elif on_skip is not None:
            on_skip(name, f"{path.name} is a mask of case '{of}' (medseg's <case>_seg name), not a case")
    return kept


def check_unique_cases(cases: list[tuple[str, Path]], inputs: str | Path, why: str) -> None:
    """One line when two inputs are one case (a.png + a.tif, a.nii + a.nii.gz); ``why``: what would go wrong, with
    ``{name}`` for the case."""
    first: dict[str, Path] = {}
    for name, path in cases:
        if name in first:
            raise MedsegError(f"--input {inputs}: {first[name].name} and {path.name} are both case '{name}' "
                              f"({why.format(name=name)}); rename one")
        first[name] = path


def run(bundle: str | Path, inputs: str | Path, output: str | Path, *, format: str = "auto", tta: bool = False,
        device: str = "cpu", series: str | None = None, trust: bool = False,
        on_case: Callable[[str, Path | None, str | None], None] | None = None, engine: str = "torch",
        int8: bool = False, instances: bool | None = None, debug: bool = False) -> Written:
    """Segment every case under ``inputs`` with the bundle at ``bundle``, writing into ``output``.

    Args:
        bundle: a MONAI Bundle folder or ``.zip`` (a foreign one runs its own inference.json: needs ``trust``).
        inputs: an image file, a DICOM series folder, or a folder of either.
        output: the output folder (created).
        format: ``"auto"`` (pictures as ``<case>_seg.png``/``.tif``, the rest NIfTI), ``"nifti"``
            (``<case>_seg.nii.gz``) or ``"dicom-seg"`` (DICOM input only, ``<case>_seg.dcm``).
        tta: average over mirrored copies of the input (2^d forward runs).
        device: ``"cpu"`` or ``"cuda"``.
        series: which series (SeriesInstanceUID) where a DICOM folder holds several.
        trust: allow a bundle not written by medseg to run its config code.
        on_case: called after each case with ``(case, written path or None, reason it was skipped or None)``.
        engine: the runtime of the forward passes, one of :data:`ENGINES` (:mod:`medseg.inference.runtimes`).
        int8: run the bundle's INT8 model (``models/model_int8.onnx``; an ONNX engine, openvino for torch).
        instances: also write instance label images and per-object CSVs (default: the task's
            ``inference.instances``).
        debug: raise an error that is not a refusal of the input (with its traceback) instead of going on.

    Returns:
        the written paths; ``.failed`` lists ``(case, reason)`` for cases skipped (an error in one case does not
        stop the others; with a single case it is raised).
    """
    if format not in FORMATS:
        raise MedsegError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    output = Path(output)
    check_folder_option(output, "--output", "the masks go to")
    check_output_folder(output, "the masks")  # before the bundle loads: every case would fail at its end
    dev = _device(device)
    cases = find_inputs(Path(inputs))
    if Path(inputs).is_dir() and Path(inputs).resolve() == output.resolve():
        # this command's own masks from an earlier run into the input folder are not cases
        cases = [(name, path) for name, path in cases if not name.endswith(OWN_OUTPUTS)]
        if not cases:
            raise MedsegError(f"--input {inputs}: holds only masks medseg wrote (*_seg); give the image folder")
    check_unique_cases(cases, inputs, f"their {{name}}_seg / {{name}}_instances outputs would overwrite each other")
    if format == "dicom-seg":
        not_dicom = [name for name, path in cases if not (is_dicom_series(path) or (path.is_file() and is_dicom_file(path)))]
        if not_dicom:
            raise MedsegError(f"--format dicom-seg needs DICOM input (a series folder or an enhanced multi-frame file);"
                              f" not DICOM: {', '.join(not_dicom)}")
    loaded = load_bundle(Path(bundle), dev, trust=trust)
    if engine != "torch" or int8:  # the engine's forward module stands in for the network in every pass below
        loaded.network = build_engine(engine, loaded.network, loaded.root / "models" if loaded.root else None,
                                      int8=int8, device=dev, window=window_input(loaded.chain)).forward
    use_series(loaded, series)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file on the way, no permission
        raise MedsegError(f"--output {output}: cannot create the folder ({err.strerror or type(err).__name__})") from None
    written = Written()
    want_instances = bool(instances) if instances is not None else bool(
        loaded.cfg is not None and loaded.cfg.inference.instances)
    suffix = "_seg.dcm" if format == "dicom-seg" else "_seg.nii.gz"
    for name, path in cases:
        try:
            target = output / (f"{name}_seg{output_suffix(path)}" if format == "auto" and is_picture(path)
                               else f"{name}{suffix}")
            out = predict_one(loaded, path, target, dev, format, tta, series, want_instances)
        except Exception as err:  # one unreadable case must not stop the others
            found = user_error(err)  # medseg's line, also behind MONAI's "applying transform" wrapper
            if found is not None and len(cases) == 1:
                raise found from None
            if found is None and debug:
                raise
            reason = failure_line(err)
            written.failed.append((name, reason))
            if found is None:
                written.unexpected.append(name)
            if on_case is not None:
                on_case(name, None, reason)
            continue
        written.append(out)
        if on_case is not None:
            on_case(name, out, None)
    return written


__all__ = ["ENGINES", "FORMATS", "Written", "check_input", "check_unique_cases", "find_inputs", "predict_one", "run",
           "use_series", "without_masks"]
