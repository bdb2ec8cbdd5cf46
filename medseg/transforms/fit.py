"""Preprocessing values learned from the training set before training, into the config's ``fitted`` section
(the one place they live): the median voxel spacing for ``spacing: auto`` (read from headers), Nyul histogram
landmarks, the image files per case, and a 0/255 label map. Through ``cfg.effective_spacing()`` and its
siblings they reach ``config.yaml``, the bundle's ``inference.json`` (as transform arguments) and
``medseg_task.json``; inference therefore uses exactly what training learned.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.transforms import Compose, LoadImage

from medseg.config import TaskConfig
from medseg.data.dicom_reader import READER_PATH  # DICOM through medseg's checked series reader
from medseg.data.formats import NIFTI_SUFFIXES, has_suffix
from medseg.data.labelmaps import detect_255_label_map
from medseg.data.pictures import is_colour, is_picture, read_picture
from medseg.errors import MedsegError
from medseg.transforms.intensity import learn_landmarks
from medseg.transforms.pipeline import instantiate, network_multiple, preprocess_spec

logger = logging.getLogger("medseg.transforms")


def _images(case: Any) -> list[str]:
    """The image paths of a case (a :class:`~medseg.data.case.Case` or a MONAI dict), one per channel."""
    image = case["image"]
    return [str(p) for p in image] if isinstance(image, (list, tuple)) else [str(image)]


def header_geometry(path: str, axcodes: str = "RAS") -> tuple[list[int], list[float]]:
    """``(shape, spacing)`` of an image along the array axes it gets after reorientation to ``axcodes``.

    NIfTI headers are read without the voxels; other formats (DICOM series, NRRD, PNG) through MONAI's
    reader.
    """
    if has_suffix(path, NIFTI_SUFFIXES):
        img = nib.load(path)
        shape, affine = list(img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
    else:
        img = LoadImage(image_only=True, ensure_channel_first=True, reader=READER_PATH)(path)
        shape, affine = list(img.shape[1:]), np.asarray(img.affine, dtype=np.float64)
    dims = len(shape)
    lin = affine[:dims, :dims]
    spacing = np.linalg.norm(lin, axis=0)
    if dims != 3:
        return shape, [float(s) for s in spacing]
    ornt = nib.orientations.io_orientation(affine)  # output axis per input axis
    out_shape, out_spacing = [0] * dims, [0.0] * dims
    for i in range(dims):
        out_shape[int(ornt[i, 0])], out_spacing[int(ornt[i, 0])] = shape[i], float(spacing[i])
    return out_shape, out_spacing


def median_spacing(geometries: list[tuple[list[int], list[float]]]) -> list[float]:
    """Median voxel spacing per axis over ``(shape, spacing)`` header geometries (mm, 3 decimals)."""
    spacings = np.array([spacing for _, spacing in geometries])
    return [round(float(s), 3) for s in np.median(spacings, axis=0)]


def learn_histogram_landmarks(cfg: TaskConfig, cases: list[Any]) -> list[float]:
    """Nyul landmarks from the training images after the spatial preprocessing (and N4 when enabled)."""
    chain = Compose(instantiate(preprocess_spec(cfg, ("image",), before_intensity=True)))
    images = [chain({"image": c["image"]})["image"] for c in cases]
    return learn_landmarks(images, cfg.preprocessing.histogram.percentiles)


def check_patch_fits(cfg: TaskConfig, geometries: list[tuple[list[int], list[float]]]) -> None:
    """Without padding to the patch size, every resampled training image (``(shape, spacing)`` from its
    header) must hold a whole patch."""
    patch = cfg.training.patch_size
    target = cfg.effective_spacing()
    multiple = 1
    if cfg.preprocessing.pad_to_multiple:
        multiple = network_multiple(cfg)
    for i, (shape, spacing) in enumerate(geometries):
        size = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target)]
        padded = [-(-n // multiple) * multiple for n in size]
        if any(p > n for p, n in zip(patch, padded)):
            raise MedsegError(
                f"training.patch_size {patch} is larger than the padded image {padded} of training case #{i};"
                f" choose a patch_size <= {padded} in every axis, or set augmentation.crop.pad_to_patch: true")


def colour_channels(path: str) -> int:
    """3 for a colour (RGB/RGBA) PNG/TIFF/JPEG picture, else 1 (``fitted.colour_channels``; medseg.data.pictures)."""
    if not is_picture(path):
        return 1
    return 3 if is_colour(read_picture(path)[0], path) else 1


def fit_preprocessing(cfg: TaskConfig, train_cases: list[Any]) -> TaskConfig:
    """A new config whose ``fitted`` section holds what ``train_cases`` give (``cfg`` is left alone).

    ``fitted.image_channels``: the image files per case (checked against ``preprocessing.image_channels``);
    ``fitted.spacing``: the median header spacing for ``preprocessing.spacing: auto``; ``fitted.landmarks``:
    Nyul landmarks for ``intensity: histogram`` without listed ones; ``fitted.label_map``: ``{255: 1}`` for
    0/255 masks when ``data.label_map`` is empty. Values already fitted (a resumed run) are kept.

    Args:
        cfg: the validated config.
        train_cases: :class:`~medseg.data.case.Case` objects or MONAI case dicts.
    """
    pre, fitted = cfg.preprocessing, cfg.fitted
    found: dict[str, Any] = {}
    counts = {len(_images(c)) for c in train_cases}
    if len(counts) > 1 or (pre.image_channels and counts and counts != {pre.image_channels}):
        raise MedsegError(f"training cases have {sorted(counts)} image files each; preprocessing.image_channels is"
                          f" {pre.image_channels}: every case needs the same number of channel files")
    if fitted.image_channels is None:
        found["image_channels"] = counts.pop() if counts else (pre.image_channels or 1)
    if fitted.colour_channels is None and train_cases:
        found["colour_channels"] = colour_channels(_images(train_cases[0])[0])
    if not cfg.data.label_map and fitted.label_map is None:
        found["label_map"] = detect_255_label_map(cfg.data.labels, train_cases)
        if found["label_map"]:
            logger.info("labels are 0/255 masks: mapping 255 to 1 (fitted.label_map)")
    auto = pre.spacing == "auto" and fitted.spacing is None
    check_fit = not cfg.augmentation.crop.pad_to_patch
    if auto or check_fit:  # each header read once, for both
        logger.info("reading the headers of %d training cases", len(train_cases))
        geometries = [header_geometry(_images(c)[0], pre.orientation) for c in train_cases]
    if auto:
        found["spacing"] = median_spacing(geometries)
        logger.info("preprocessing.spacing auto: median spacing of %d training cases is %s mm (fitted.spacing)",
                    len(train_cases), found["spacing"])
    out = cfg.with_fitted(**found)
    if check_fit:
        check_patch_fits(out, geometries)
    if pre.intensity == "histogram" and not out.effective_landmarks():
        logger.info("preprocessing.histogram: reading %d training images to learn the landmarks", len(train_cases))
        landmarks = learn_histogram_landmarks(out, train_cases)
        logger.info("preprocessing.histogram: learned landmarks %s on %d training cases (fitted.landmarks)",
                    landmarks, len(train_cases))
        out = out.with_fitted(landmarks=landmarks)
    return out
