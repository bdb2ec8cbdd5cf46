"""What the ``preprocessing`` section means for the transforms: the CT windows, the network's input
channels, and one-line descriptions for bundles and reports.

The section's keys, defaults and checks are the schema's (:mod:`medseg.config.schema`); the preset and
modality tables are :mod:`medseg.config.registries`. Imports nothing heavy (no MONAI, no torch).

Example:
    >>> windows(load_config("liver", ["preprocessing.window=[liver, {min: -1000, max: 400}]"]))
    [(-45.0, 105.0), (-1000.0, 400.0)]
"""

from __future__ import annotations

from typing import Any

from medseg.config import TaskConfig, window_ranges
from medseg.config.registries import WINDOW_PRESETS
from medseg.config.schema import KeyedError
from medseg.errors import MedsegError

PRESETS = WINDOW_PRESETS  # the table itself lives in medseg.config.registries


def ct_window(window: Any) -> tuple[float, float]:
    """``(a_min, a_max)`` in HU of a ``preprocessing.window`` value (the first one when it lists several)."""
    try:
        return window_ranges(window)[0]
    except KeyedError as err:
        raise MedsegError(str(err)) from None


def windows(cfg: TaskConfig) -> list[tuple[float, float]]:
    """The CT windows of ``preprocessing.window`` as ``[(min_hu, max_hu), ...]`` (one per input channel)."""
    return window_ranges(cfg.preprocessing.window)  # checked when the config was validated


def intensity_method(cfg: TaskConfig) -> str:
    return cfg.preprocessing.intensity


def input_channels(cfg: TaskConfig) -> int:
    """Number of channels the network receives: image files per case x CT windows (+ click guidance channels).

    Example:
        >>> net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels))
    """
    per_file = len(windows(cfg)) if intensity_method(cfg) == "window" else 1
    colour = 1 if cfg.data.rgb == "grey" else int(getattr(cfg, "fitted", None) and cfg.fitted.colour_channels or 1)
    return image_files(cfg) * per_file * colour + guidance_channels(cfg)


def guidance_channels(cfg: TaskConfig) -> int:
    """Click guidance channels after the image (``interactive.enabled``: one per label; else 0)."""
    return len(cfg.data.labels) if cfg.interactive.enabled else 0


def image_files(cfg: TaskConfig) -> int:
    """Image files (channels) per case: ``preprocessing.image_channels``, or as counted on the training cases
    by :func:`medseg.transforms.fit_preprocessing` (1 until then)."""
    return cfg.effective_image_channels()


def describe_intensity(cfg: TaskConfig) -> str:
    """One line on the intensity preprocessing (bundle README and metadata).

    Example:
        >>> describe_intensity(load_config("liver"))
        'CT window [-140, 260] HU mapped to [0, 1] and clipped'
    """
    pre = cfg.preprocessing
    method = pre.intensity
    if method == "window":
        wins = windows(cfg)
        ranges = ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in wins)
        text = (f"CT window {ranges} HU mapped to [0, 1] and clipped" if len(wins) == 1 else
                f"CT windows {ranges} HU, each mapped to [0, 1] and clipped, stacked as {len(wins)} channels")
    elif method == "zscore":
        region = {"image": "the whole image", "nonzero": "the non-zero voxels",
                  "mask": "the Otsu foreground"}[pre.zscore.region]
        text = f"z-score normalised (mean and std of {region})"
    elif method == "percentile":
        text = (f"clipped to the {pre.percentile.lower:g}th-{pre.percentile.upper:g}th percentile"
                " and scaled to [0, 1]")
    elif method == "histogram":
        text = ("Nyul histogram standardisation onto landmarks learned on the training set (in inference.json) at"
                f" percentiles {pre.histogram.percentiles}")
    else:
        text = "intensities as stored"
    if pre.bias_correction.enabled:
        text = "N4 bias-field corrected, " + text
    return text


def value_range(cfg: TaskConfig) -> list[float]:
    """The network input's value range ([] when unbounded, e.g. after z-scoring)."""
    return [0.0, 1.0] if cfg.preprocessing.intensity in ("window", "percentile") else []


def display_window(cfg: TaskConfig) -> tuple[float, float] | None:
    """Intensity range for showing original images: the (first) CT window, or None (use percentiles)."""
    return windows(cfg)[0] if cfg.preprocessing.intensity == "window" else None
