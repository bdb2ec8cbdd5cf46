"""The ``preprocessing`` and ``augmentation`` config sections: CT window presets, per-modality defaults,
validation, and the number of network input channels they imply.

Imports nothing heavy (no MONAI, no torch), so :mod:`medseg.config` validates with it at load time.

Example:
    >>> windows({"preprocessing": {"window": ["liver", {"min": -1000, "max": 400}]}})
    [(-45.0, 105.0), (-1000.0, 400.0)]
"""

from __future__ import annotations

from typing import Any

from medseg.errors import MedsegError

#: CT windows as (level, width) in HU, the usual radiology reading windows.
PRESETS: dict[str, tuple[float, float]] = {
    "liver": (30.0, 150.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

INTENSITY_METHODS = ("window", "zscore", "percentile", "histogram", "none")
ZSCORE_REGIONS = ("image", "nonzero", "mask")
CROP_MODES = ("balanced", "random")

#: Defaults per ``data.modality``, layered between :data:`medseg.config.DEFAULTS` and the task YAML, so a
#: YAML that names only the modality gets a sensible intensity normalisation and augmentation.
MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "CT": {},
    "MR": {
        "preprocessing": {"intensity": "zscore"},
        "augmentation": {"contrast": {"prob": 0.15}, "gamma": {"prob": 0.3}, "noise": {"prob": 0.1},
                         "blur": {"prob": 0.1}, "bias_field": {"prob": 0.3}},
    },
    "XR": {
        "preprocessing": {"intensity": "percentile", "crop_foreground": False},
        "augmentation": {"contrast": {"prob": 0.3}, "gamma": {"prob": 0.3}, "noise": {"prob": 0.1}},
    },
    "microscopy": {
        "preprocessing": {"intensity": "percentile", "crop_foreground": False},
        "augmentation": {"contrast": {"prob": 0.3}, "gamma": {"prob": 0.3}, "noise": {"prob": 0.1},
                         "blur": {"prob": 0.1}},
    },
}

_WINDOW_HELP = (f"choose a preset ({', '.join(sorted(PRESETS))}), {{level, width}} or {{min, max}} in HU,"
                " or a list of these (one input channel each)")


def _one_window(item: Any, key: str) -> tuple[float, float]:
    if isinstance(item, str):
        if item not in PRESETS:
            raise MedsegError(f"key '{key}' names unknown preset '{item}'; {_WINDOW_HELP}")
        level, width = PRESETS[item]
        return level - width / 2.0, level + width / 2.0
    if isinstance(item, dict) and set(item) == {"level", "width"}:
        level, width = item["level"], item["width"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (level, width)):
            raise MedsegError(f"key '{key}' needs numbers for level and width, got {item!r}")
        if width <= 0:
            raise MedsegError(f"key '{key}.width' is {width}; a window width must be > 0 HU")
        return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0
    if isinstance(item, dict) and set(item) == {"min", "max"}:
        lo, hi = item["min"], item["max"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
            raise MedsegError(f"key '{key}' needs numbers for min and max, got {item!r}")
        if hi <= lo:
            raise MedsegError(f"key '{key}' has max {hi} <= min {lo}; a window width must be > 0 HU")
        return float(lo), float(hi)
    raise MedsegError(f"key '{key}' is {item!r}; {_WINDOW_HELP}")


def windows(cfg: dict[str, Any]) -> list[tuple[float, float]]:
    """The CT windows of ``preprocessing.window`` as ``[(min_hu, max_hu), ...]`` (one per input channel)."""
    spec = cfg["preprocessing"]["window"]
    if isinstance(spec, list):
        if not spec:
            raise MedsegError(f"key 'preprocessing.window' is an empty list; {_WINDOW_HELP}")
        return [_one_window(item, f"preprocessing.window[{i}]") for i, item in enumerate(spec)]
    return [_one_window(spec, "preprocessing.window")]


def ct_window(window: Any) -> tuple[float, float]:
    """``(a_min, a_max)`` in HU of a window spec (the first one when it lists several)."""
    return windows({"preprocessing": {"window": window}})[0]


def intensity_method(cfg: dict[str, Any]) -> str:
    return cfg["preprocessing"]["intensity"]


def input_channels(cfg: dict[str, Any]) -> int:
    """Number of image channels the network receives: image files per case x CT windows.

    Example:
        >>> net = build_network(cfg["network"], input_channels(cfg), len(cfg["data"]["labels"]))
    """
    per_file = len(windows(cfg)) if intensity_method(cfg) == "window" else 1
    return image_files(cfg) * per_file


def image_files(cfg: dict[str, Any]) -> int:
    """Image files (channels) per case: ``preprocessing.image_channels``, counted on the training cases by
    :func:`medseg.transforms.fit_preprocessing` (1 until then)."""
    return int(cfg["preprocessing"].get("image_channels") or 1)


def modality_overlay(modality: str) -> dict[str, Any]:
    """The per-modality defaults for ``modality`` (empty for an unknown one: the choice check reports it)."""
    return MODALITY_DEFAULTS.get(modality, {})


def _prob(value: Any, key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise MedsegError(f"key '{key}' is {value!r}; a probability must be between 0 and 1")


def _range(value: Any, key: str, low: float | None = None, positive: bool = False) -> None:
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or value[0] > value[1]:
        raise MedsegError(f"key '{key}' is {value!r}; give [min, max] with min <= max")
    if positive and value[0] <= 0:
        raise MedsegError(f"key '{key}' is {value!r}; both values must be > 0")
    if low is not None and value[0] < low:
        raise MedsegError(f"key '{key}' is {value!r}; values must be >= {low}")


def validate(cfg: dict[str, Any], source: str) -> None:
    """Check the ``preprocessing`` and ``augmentation`` sections; raise one line naming the key."""
    try:
        _validate(cfg)
    except MedsegError as err:
        raise MedsegError(f"{source}: {err}") from None


def _validate(cfg: dict[str, Any]) -> None:
    pre, aug, dims = cfg["preprocessing"], cfg["augmentation"], cfg["network"]["spatial_dims"]
    if cfg["network"].get("slice_mode"):  # a 2D network on 3D volumes (medseg/transforms/slices.py)
        dims = 3
    if pre["intensity"] not in INTENSITY_METHODS:
        raise MedsegError(f"key 'preprocessing.intensity' is {pre['intensity']!r}; choose one of "
                          f"{', '.join(INTENSITY_METHODS)}")
    windows(cfg)  # checks presets and widths (also for other modalities: the key must stay meaningful)
    spacing = pre["spacing"]
    if spacing != "auto" and not (isinstance(spacing, list) and len(spacing) == dims and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing)):
        raise MedsegError(f"key 'preprocessing.spacing' is {spacing!r}; it needs {dims} values (positive, mm)"
                          f" (network.spatial_dims={dims}) or 'auto' for the training set's median spacing")
    if pre["zscore"]["region"] not in ZSCORE_REGIONS:
        raise MedsegError(f"key 'preprocessing.zscore.region' is {pre['zscore']['region']!r}; choose one of "
                          f"{', '.join(ZSCORE_REGIONS)}")
    pct = pre["percentile"]
    if not 0.0 <= pct["lower"] < pct["upper"] <= 100.0:
        raise MedsegError(f"keys 'preprocessing.percentile.lower/upper' are {pct['lower']}/{pct['upper']};"
                          " need 0 <= lower < upper <= 100")
    hist = pre["histogram"]
    p = hist["percentiles"]
    if len(p) < 3 or any(not 0.0 <= a < b <= 100.0 for a, b in zip(p, p[1:])):
        raise MedsegError(f"key 'preprocessing.histogram.percentiles' is {p!r}; give at least 3 increasing"
                          " values between 0 and 100")
    if hist["landmarks"] and (len(hist["landmarks"]) != len(p)
                              or any(a >= b for a, b in zip(hist["landmarks"], hist["landmarks"][1:]))):
        raise MedsegError("key 'preprocessing.histogram.landmarks' must hold one increasing value per percentile"
                          " (leave it empty: training learns them)")
    if pre["image_channels"] < 0:
        raise MedsegError(f"key 'preprocessing.image_channels' is {pre['image_channels']}; give 0 (count them) or more")
    n4 = pre["bias_correction"]
    if n4["shrink"] < 1 or not n4["iterations"] or any(not isinstance(i, int) or i < 1 for i in n4["iterations"]):
        raise MedsegError("keys 'preprocessing.bias_correction.shrink/iterations' need shrink >= 1 and a list of"
                          " positive iteration counts, one per fitting level")
    # augmentation
    for name in ("rotate_prob", "scale_prob", "flip_prob", "intensity_prob"):
        _prob(aug[name], f"augmentation.{name}")
    for name in ("elastic", "contrast", "gamma", "noise", "blur", "bias_field"):
        _prob(aug[name]["prob"], f"augmentation.{name}.prob")
    if not 0.0 <= aug["rotate_deg"] <= 180.0:
        raise MedsegError(f"key 'augmentation.rotate_deg' is {aug['rotate_deg']}; give degrees between 0 and 180")
    _range(aug["scale"], "augmentation.scale", positive=True)
    _range(aug["elastic"]["sigma"], "augmentation.elastic.sigma", positive=True)
    _range(aug["elastic"]["magnitude"], "augmentation.elastic.magnitude", low=0.0)
    _range(aug["contrast"]["range"], "augmentation.contrast.range", positive=True)
    _range(aug["gamma"]["range"], "augmentation.gamma.range", positive=True)
    _range(aug["blur"]["sigma"], "augmentation.blur.sigma", positive=True)
    _range(aug["bias_field"]["coeff"], "augmentation.bias_field.coeff", low=0.0)
    if aug["noise"]["std"] < 0 or aug["intensity_shift"] < 0:
        raise MedsegError("keys 'augmentation.noise.std' and 'augmentation.intensity_shift' must be >= 0")
    crop = aug["crop"]
    if crop["mode"] not in CROP_MODES:
        raise MedsegError(f"key 'augmentation.crop.mode' is {crop['mode']!r}; choose one of {', '.join(CROP_MODES)}")
    patch = cfg["training"]["patch_size"]
    if crop["mode"] == "random" and any(p < 1 or p & (p - 1) for p in patch):
        raise MedsegError(f"key 'training.patch_size' is {patch}; random crops (augmentation.crop.mode: random) take"
                          " powers of two, e.g. 32, 64, 128")


def describe_intensity(cfg: dict[str, Any]) -> str:
    """One line on the intensity preprocessing (bundle README and metadata).

    Example:
        >>> describe_intensity(load_config("liver"))
        'CT window [-140, 260] HU mapped to [0, 1] and clipped'
    """
    pre = cfg["preprocessing"]
    method = pre["intensity"]
    if method == "window":
        wins = windows(cfg)
        ranges = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in wins)
        text = (f"CT window {ranges} HU mapped to [0, 1] and clipped" if len(wins) == 1 else
                f"CT windows {ranges} HU, each mapped to [0, 1] and clipped, stacked as {len(wins)} channels")
    elif method == "zscore":
        region = {"image": "the whole image", "nonzero": "the non-zero voxels",
                  "mask": "the Otsu foreground"}[pre["zscore"]["region"]]
        text = f"z-score normalised (mean and std of {region})"
    elif method == "percentile":
        text = (f"clipped to the {pre['percentile']['lower']:g}th-{pre['percentile']['upper']:g}th percentile"
                " and scaled to [0, 1]")
    elif method == "histogram":
        text = ("Nyul histogram standardisation onto landmarks learned on the training set (in inference.json) at"
                f" percentiles {pre['histogram']['percentiles']}")
    else:
        text = "intensities as stored"
    if pre["bias_correction"]["enabled"]:
        text = "N4 bias-field corrected, " + text
    return text


def value_range(cfg: dict[str, Any]) -> list[float]:
    """The network input's value range ([] when unbounded, e.g. after z-scoring)."""
    return [0.0, 1.0] if cfg["preprocessing"]["intensity"] in ("window", "percentile") else []


def display_window(cfg: dict[str, Any]) -> tuple[float, float] | None:
    """Intensity range for showing original images: the (first) CT window, or None (use percentiles)."""
    return windows(cfg)[0] if cfg["preprocessing"]["intensity"] == "window" else None
