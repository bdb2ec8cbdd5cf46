"""MONAI transform chains for a task: loading, orientation, resampling, intensity, cropping, augmentation.

The deterministic part is written once as data (:func:`preprocess_spec`: MONAI class names and
arguments) and used twice: instantiated here for training and validation, and written verbatim into
the exported bundle's ``inference.json``, so deployment sees exactly the intensities and grid that
training saw (learned values, such as histogram landmarks or an ``auto`` spacing, are in the spec's
arguments). ``CacheDataset`` caches everything up to the first random transform; the random part
(:func:`augment_spec`) runs per draw, in the DataLoader's workers when there are any.

Order: load, channel first, orientation, resampling, [N4 bias correction], intensity (CT window(s),
z-score, percentile scaling or histogram standardisation), foreground crop (before the intensity step
for MRI-style normalisations, whose background is no longer 0 afterwards), [padding to the network's
multiple]. Everything spatial is invertible, so ``Invertd`` maps predictions back to the input grid.
"""

from __future__ import annotations

import math
from typing import Any

from monai import transforms as mt

from medseg.data.dicom_reader import READER_PATH as DICOM_READER
from medseg.data.nifti import READER_PATH as NIFTI_READER
from medseg.data.pictures import READER_PATH as PICTURE_READER
from medseg.errors import MedsegError
from medseg.networks import input_multiple
from medseg.transforms import bias, deform, guidance, intensity, metatensors, microscopy, resample, sampling, window
from medseg.transforms.guidance import AddGuidanced
from medseg.transforms.bias import N4BiasFieldd
from medseg.transforms.crops import KEYS, WEIGHTED_LOSSES, balanced_crop_spec, crop_spec, sample_keys  # noqa: F401
from medseg.transforms.deform import RandDeformd
from medseg.transforms.intensity import ForegroundZScored, HistogramStandardized, StackWindowsd
from medseg.transforms.microscopy import RGBToGreyd, WeightMapd, WeightMapLoss
from medseg.transforms.resample import ScaleSpacingd
from medseg.transforms.sampling import FgBgSampleIndicesd
from medseg.transforms.settings import ct_window, windows  # noqa: F401  (ct_window re-exported)
from medseg.transforms.window import OnePassScaleIntensityRanged

#: medseg's own transforms, by the name the specs use (bundles import them from their scripts/ folder)
OWN_TRANSFORMS = {
    "AddGuidanced": AddGuidanced,
    "ScaleSpacingd": ScaleSpacingd,
    "StackWindowsd": StackWindowsd,
    "ForegroundZScored": ForegroundZScored,
    "HistogramStandardized": HistogramStandardized,
    "N4BiasFieldd": N4BiasFieldd,
    "RandDeformd": RandDeformd,
    "FgBgSampleIndicesd": FgBgSampleIndicesd,
    "OnePassScaleIntensityRanged": OnePassScaleIntensityRanged,
    "RGBToGreyd": RGBToGreyd,
    "WeightMapd": WeightMapd,
    "WeightMapLoss": WeightMapLoss,  # a loss, shipped with the weight map it reads
}

#: the package a bundle's ``scripts/`` folder holds medseg's own transforms in, and the modules it holds
#: (each imports only torch, numpy, scipy, MONAI, SimpleITK and its siblings here, by relative imports)
SCRIPT_PACKAGE = "medseg_transforms"
SCRIPT_MODULES = (metatensors, resample, intensity, bias, deform, sampling, window, microscopy, guidance)


def script_target(name: str) -> str:
    """The bundle config ``_target_`` of own transform ``name`` (its copy in the bundle's ``scripts/``)."""
    return f"scripts.{SCRIPT_PACKAGE}.{OWN_TRANSFORMS[name].__name__}"


def network_multiple(cfg: dict[str, Any]) -> int:
    """The factor every spatial size must divide by for the network (medseg.networks knows it per network)."""
    return input_multiple(cfg.network)


def _intensity_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    pre = cfg.preprocessing
    method = pre.intensity
    if method == "window":
        wins = windows(cfg)
        if len(wins) == 1:
            a_min, a_max = wins[0]
            # MONAI's ScaleIntensityRanged, bit for bit, in one buffer (medseg.transforms.window)
            return [{"_target_": "OnePassScaleIntensityRanged", "keys": "image", "a_min": a_min, "a_max": a_max,
                     "b_min": 0.0, "b_max": 1.0, "clip": True}]
        return [{"_target_": "StackWindowsd", "keys": "image", "windows": [list(w) for w in wins]}]
    if method == "zscore":
        region = pre.zscore.region
        if region == "mask":
            return [{"_target_": "ForegroundZScored", "keys": "image"}]
        return [{"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": region == "nonzero",
                 "channel_wise": True}]
    if method == "percentile":
        pct = pre.percentile
        return [{"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": pct.lower,
                 "upper": pct.upper, "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True}]
    if method == "histogram":
        hist, landmarks = pre.histogram, cfg.effective_landmarks()
        if not landmarks:
            raise MedsegError("preprocessing.histogram.landmarks: not learned yet; medseg.train learns them on the"
                              " training set (medseg.transforms.fit_preprocessing), or list them in the YAML")
        return [{"_target_": "HistogramStandardized", "keys": "image", "percentiles": list(hist.percentiles),
                 "landmarks": landmarks}]
    return []


def orientation_codes(cfg: Any) -> str:
    """``preprocessing.orientation`` for the data's dimensions: its first two letters for 2D pictures (a 2D
    network not in slice mode), which is what MONAI's Orientation uses of three letters anyway, without its
    warning on every picture."""
    net = cfg.network
    return cfg.preprocessing.orientation[:2] if net.spatial_dims == 2 and not net.slice_mode else \
        cfg.preprocessing.orientation


def preprocess_spec(cfg: dict[str, Any], keys: tuple[str, ...] = KEYS, *,
                    before_intensity: bool = False) -> list[dict[str, Any]]:
    """The deterministic preprocessing as MONAI-bundle style entries ``{"_target_": name, **kwargs}``.

    Args:
        cfg: resolved task config (``spacing: auto`` and empty histogram landmarks must have been fitted).
        keys: ``("image", "label")`` for training data, ``("image",)`` for inference.
        before_intensity: stop before the intensity normalisation (what histogram landmarks are learned on).

    Example:
        >>> [t["_target_"] for t in preprocess_spec(cfg, ("image",))][:3]
        ['LoadImaged', 'EnsureChannelFirstd', 'Orientationd']
    """
    pre = cfg.preprocessing
    spacing = cfg.effective_spacing()  # the fitted median for spacing: auto (one line when not fitted yet)
    k = list(keys)
    modes = ["bilinear" if key == "image" else "nearest" for key in keys]
    # medseg's checked DICOM series reader; ISA-L NIfTI; PNG/TIFF/JPEG pictures. LoadImage tries the last reader
    # first and logs "unable to load" (INFO, shown by a stock bundle run) for each one before the reader that
    # reads the file: a volume task tries NIfTI first, a picture task the pictures
    pictures = cfg.network.spatial_dims == 2 and not cfg.network.slice_mode
    readers = [DICOM_READER, NIFTI_READER, PICTURE_READER] if pictures else [PICTURE_READER, DICOM_READER, NIFTI_READER]
    spec: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": k, "image_only": True, "reader": readers},
        {"_target_": "EnsureChannelFirstd", "keys": k},
        *([{"_target_": "RGBToGreyd", "keys": "image"}] if cfg.data.rgb == "grey" else []),
        {"_target_": "Orientationd", "keys": k, "axcodes": orientation_codes(cfg), "labels": None},
        {"_target_": "ScaleSpacingd", "keys": k, "pixdim": spacing, "mode": modes},
    ]
    label_map = cfg.effective_label_map()
    if "label" in keys and label_map:  # file values -> label values, e.g. 0/255 masks (medseg.data.layouts)
        spec.insert(1, {"_target_": "MapLabelValued", "keys": "label", "orig_labels": [int(v) for v in label_map],
                        "target_labels": [int(v) for v in label_map.values()]})
    n4 = pre.bias_correction
    if n4.enabled:
        # cached on disk for training data only; a deployed bundle does not write caches
        spec.append({"_target_": "N4BiasFieldd", "keys": "image", "shrink": n4.shrink,
                     "iterations": list(n4.iterations), "cache_dir": n4.cache_dir if "label" in keys else ""})
    crop = [{"_target_": "CropForegroundd", "keys": k, "source_key": "image", "allow_smaller": True}]
    crop_first = pre.intensity in ("zscore", "histogram", "none")  # their output has no zero background
    if pre.crop_foreground and crop_first:
        spec += crop
    if before_intensity:
        return spec
    spec += _intensity_spec(cfg)
    if pre.crop_foreground and not crop_first:
        spec += crop
    if pre.pad_to_multiple:
        spec.append({"_target_": "DivisiblePadd", "keys": k, "k": network_multiple(cfg)})
    spec.append({"_target_": "EnsureTyped", "keys": k, "track_meta": True})
    if cfg.interactive.enabled:  # click channels after the image (zeros unless the item has "clicks")
        spec.append({"_target_": "AddGuidanced", "keys": "image", "n_labels": len(cfg.data.labels),
                     "sigma": cfg.interactive.sigma})
    return spec


def instantiate(spec: list[dict[str, Any]]) -> list:
    """MONAI (or medseg's own) transform objects from bundle-style entries."""
    return [
        (OWN_TRANSFORMS.get(s["_target_"]) or getattr(mt, s["_target_"]))(**{a: v for a, v in s.items() if a != "_target_"})
        for s in spec
    ]


def random_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The augmentation applied to a sampled patch: spatial (both keys), then intensity (image only)."""
    aug = cfg.augmentation
    keys = sample_keys(cfg)
    both = ["bilinear", "nearest", "bilinear"][: len(keys)]  # the weight map is resampled like an image
    spec: list[dict[str, Any]] = []
    elastic = aug.elastic
    affine_prob = max(aug.rotate_prob, aug.scale_prob)  # rotation and scaling are drawn together
    if elastic.prob > 0 or affine_prob > 0 or aug.flip_prob > 0:
        # one resampling for elastic + rotation + scaling + flips (medseg.transforms.deform.RandDeformd)
        spec.append({
            "_target_": "RandDeformd", "keys": keys, "mode": both,
            "elastic_prob": elastic.prob, "sigma_range": list(elastic.sigma),
            "magnitude_range": list(elastic.magnitude), "affine_prob": affine_prob,
            "rotate_range": math.radians(aug.rotate_deg) if aug.rotate_prob > 0 else 0.0,
            "scale_range": list(aug.scale) if aug.scale_prob > 0 else [1.0, 1.0],
            "flip_prob": aug.flip_prob,
        })
    if aug.intensity_prob > 0:
        spec += [
            {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": aug.intensity_shift,
             "prob": aug.intensity_prob},
            {"_target_": "RandScaleIntensityd", "keys": "image", "factors": aug.intensity_shift,
             "prob": aug.intensity_prob},
        ]
    if aug.contrast.prob > 0:
        lo, hi = aug.contrast.range
        spec.append({"_target_": "RandScaleIntensityFixedMeand", "keys": "image", "factors": [lo - 1.0, hi - 1.0],
                     "prob": aug.contrast.prob})
    if aug.gamma.prob > 0:
        spec.append({"_target_": "RandAdjustContrastd", "keys": "image", "gamma": list(aug.gamma.range),
                     "prob": aug.gamma.prob})
    if aug.bias_field.prob > 0:
        spec.append({"_target_": "RandBiasFieldd", "keys": "image", "degree": aug.bias_field.degree,
                     "coeff_range": list(aug.bias_field.coeff), "prob": aug.bias_field.prob})
    if aug.noise.prob > 0:
        spec.append({"_target_": "RandGaussianNoised", "keys": "image", "mean": 0.0, "std": aug.noise.std,
                     "prob": aug.noise.prob})
    if aug.blur.prob > 0:
        sigma = list(aug.blur.sigma)
        spec.append({"_target_": "RandGaussianSmoothd", "keys": "image", "sigma_x": sigma, "sigma_y": sigma,
                     "sigma_z": sigma, "prob": aug.blur.prob})
    return spec


def weight_map_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The U-Net weight map of each training label (the weighted losses only), before any random step (cached)."""
    if cfg.training.loss not in WEIGHTED_LOSSES:
        return []
    wm = cfg.training.weight_map
    return [{"_target_": "WeightMapd", "keys": "label", "weight_key": "weight", "w0": float(wm.w0),
             "sigma": float(wm.sigma), "objects": int(wm.objects)}]


def weight_to_label_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The weight map as the label's second channel, where the loss reads it (MONAI's trainers pass the label)."""
    if cfg.training.loss not in WEIGHTED_LOSSES:
        return []
    return [{"_target_": "ConcatItemsd", "keys": ["label", "weight"], "name": "label", "dim": 0},
            {"_target_": "DeleteItemsd", "keys": "weight"}]


def augment_spec(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Patch sampling and augmentation after preprocessing, as bundle-style entries (used for ``train.json`` too)."""
    return weight_map_spec(cfg) + crop_spec(cfg) + random_spec(cfg) + weight_to_label_spec(cfg)


def build_train_transforms(cfg: dict[str, Any]) -> mt.Compose:
    """Preprocessing, then label-balanced patch sampling and augmentation for training."""
    return mt.Compose(instantiate(preprocess_spec(cfg, KEYS) + augment_spec(cfg)))


def build_eval_transforms(cfg: dict[str, Any], with_label: bool = True) -> mt.Compose:
    """Deterministic preprocessing for validation and inference (invertible with ``Invertd``)."""
    return mt.Compose(instantiate(preprocess_spec(cfg, KEYS if with_label else ("image",))))
