"""Preprocessing values learned from the training set before training: ``spacing: auto`` (the median
voxel spacing, read from headers) and Nyul histogram landmarks. They are written into the config, so
they reach ``config.yaml``, the bundle's ``inference.json`` (as transform arguments) and
``medseg_task.json``; inference therefore uses exactly what training learned.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.formats import NIFTI_SUFFIXES, has_suffix
from medseg.errors import MedsegError

logger = logging.getLogger("medseg.transforms")


def _first_image(case: dict[str, Any]) -> str:
    image = case["image"]
    return str(image[0] if isinstance(image, (list, tuple)) else image)


def header_geometry(path: str, axcodes: str = "RAS") -> tuple[list[int], list[float]]:
    """``(shape, spacing)`` of an image along the array axes it gets after reorientation to ``axcodes``.

    NIfTI headers are read without the voxels; other formats (DICOM series, NRRD, PNG) through MONAI's
    reader.
    """
    import nibabel as nib

    if has_suffix(path, NIFTI_SUFFIXES):
        img = nib.load(path)
        shape, affine = list(img.shape[:3]), np.asarray(img.affine, dtype=np.float64)
    else:
        from monai.transforms import LoadImage

        from medseg.data.dicom_reader import READER_PATH  # DICOM through medseg's checked series reader

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


def learn_histogram_landmarks(cfg: dict[str, Any], cases: list[dict[str, Any]]) -> list[float]:
    """Nyul landmarks from the training images after the spatial preprocessing (and N4 when enabled)."""
    from monai.transforms import Compose

    from medseg.transforms.intensity import learn_landmarks
    from medseg.transforms.pipeline import instantiate, preprocess_spec

    chain = Compose(instantiate(preprocess_spec(cfg, ("image",), before_intensity=True)))
    images = [chain({"image": c["image"]})["image"] for c in cases]
    return learn_landmarks(images, cfg["preprocessing"]["histogram"]["percentiles"])


def check_patch_fits(cfg: dict[str, Any], geometries: list[tuple[list[int], list[float]]]) -> None:
    """Without padding to the patch size, every resampled training image (``(shape, spacing)`` from its
    header) must hold a whole patch."""
    patch = cfg["training"]["patch_size"]
    target = cfg["preprocessing"]["spacing"]
    multiple = 1
    if cfg["preprocessing"]["pad_to_multiple"]:
        from medseg.transforms.pipeline import network_multiple

        multiple = network_multiple(cfg)
    for i, (shape, spacing) in enumerate(geometries):
        size = [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target)]
        padded = [-(-n // multiple) * multiple for n in size]
        if any(p > n for p, n in zip(patch, padded)):
            raise MedsegError(
                f"training.patch_size {patch} is larger than the padded image {padded} of training case #{i};"
                f" choose a patch_size <= {padded} in every axis, or set augmentation.crop.pad_to_patch: true")


def fit_preprocessing(cfg: dict[str, Any], train_cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with the image files per case counted, and ``spacing: auto`` and empty histogram
    landmarks learned on ``train_cases``."""
    cfg = copy.deepcopy(cfg)
    pre = cfg["preprocessing"]
    counts = {len(c["image"]) if isinstance(c["image"], (list, tuple)) else 1 for c in train_cases}
    if len(counts) > 1 or (pre["image_channels"] and counts != {pre["image_channels"]}):
        raise MedsegError(f"training cases have {sorted(counts)} image files each; preprocessing.image_channels is"
                          f" {pre['image_channels']}: every case needs the same number of channel files")
    pre["image_channels"] = counts.pop() if counts else (pre["image_channels"] or 1)
    check_fit = not cfg["augmentation"]["crop"]["pad_to_patch"]
    if pre["spacing"] == "auto" or check_fit:  # each header read once, for both
        logger.info("reading the headers of %d training cases", len(train_cases))
        geometries = [header_geometry(_first_image(c), pre["orientation"]) for c in train_cases]
    if pre["spacing"] == "auto":
        pre["spacing"] = median_spacing(geometries)
        logger.info("preprocessing.spacing auto: median spacing of %d training cases is %s mm",
                    len(train_cases), pre["spacing"])
    if check_fit:
        check_patch_fits(cfg, geometries)
    if pre["intensity"] == "histogram" and not pre["histogram"]["landmarks"]:
        logger.info("preprocessing.histogram: reading %d training images to learn the landmarks", len(train_cases))
        pre["histogram"]["landmarks"] = learn_histogram_landmarks(cfg, train_cases)
        logger.info("preprocessing.histogram: learned landmarks %s on %d training cases",
                    pre["histogram"]["landmarks"], len(train_cases))
    return cfg
