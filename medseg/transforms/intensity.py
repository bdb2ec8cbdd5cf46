"""Intensity normalisations MONAI lacks: stacked CT windows, foreground z-score, Nyul-Udupa standardisation.

- :class:`StackWindowsd`: several CT windows of one image stacked as channels (MONAI windows one range).
- :class:`ForegroundZScored`: z-score inside an Otsu foreground mask (MONAI's NormalizeIntensityd takes
  the whole image or its non-zero voxels only); :func:`otsu_threshold`.
- :class:`HistogramStandardized` and :func:`learn_landmarks`: Nyul-Udupa histogram standardisation
  (MONAI's HistogramNormalize equalises each image on its own; nothing learned across a training set).

Intensity-only, so nothing needs inverting. Imports only torch, numpy, MONAI and its sibling
:mod:`.metatensors`: exported bundles ship it in ``scripts/medseg_transforms/`` and run it on stock MONAI.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .metatensors import map_channels, plain, with_meta


class StackWindowsd(MapTransform):
    """Map each channel through every window ``[a_min, a_max]`` to [0, 1] (clipped); channels become C x W.

    Example:
        >>> StackWindowsd(keys="image", windows=[[-45, 105], [-1000, 400]])  # liver and lung-ish windows
    """

    def __init__(self, keys: KeysCollection, windows: Sequence[Sequence[float]], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.windows = [(float(lo), float(hi)) for lo, hi in windows]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = plain(d[key]).float()
            out = torch.cat([((x - lo) / (hi - lo)).clamp(0.0, 1.0) for lo, hi in self.windows], dim=0)
            d[key] = with_meta(d[key], out)
        return d


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (between-class variance maximised over a ``bins`` histogram)."""
    v = values.flatten().double()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = torch.histc(v, bins=bins, min=lo, max=hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = torch.cumsum(hist, 0)
    w1 = w0[-1] - w0
    m0 = torch.cumsum(hist * centres, 0)
    mean0 = m0 / w0.clamp(min=1)
    mean1 = (m0[-1] - m0) / w1.clamp(min=1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(torch.argmax(between))] + (hi - lo) / bins / 2)


class ForegroundZScored(MapTransform):
    """Per channel: subtract the mean and divide by the std of the voxels above Otsu's threshold (the body
    or organ mask); the whole image is transformed, only the statistics come from the mask."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return map_channels(self, data, self._normalise)

    @staticmethod
    def _normalise(x: torch.Tensor) -> torch.Tensor:
        inside = x[x > otsu_threshold(x)]
        inside = inside if inside.numel() > 1 else x.flatten()
        return (x - inside.mean()) / inside.std().clamp(min=1e-8)


def foreground_percentiles(x: torch.Tensor, percentiles: Sequence[float]) -> np.ndarray:
    """Percentiles of the voxels above the image mean (Nyul's foreground), in the image's units."""
    v = x.flatten().double()
    fg = v[v > v.mean()]
    fg = fg if fg.numel() >= 2 else v
    if fg.numel() > 2_000_000:  # percentiles of a regular subsample: same values to well under a grey level
        fg = fg[:: fg.numel() // 1_000_000]
    return np.percentile(fg.numpy(), list(percentiles))


def learn_landmarks(images: Sequence[torch.Tensor], percentiles: Sequence[float]) -> list[float]:
    """Nyul-Udupa training: each image's foreground percentiles, mapped linearly so the first goes to 0 and
    the last to 1, averaged over the images."""
    mapped = []
    for img in images:
        p = foreground_percentiles(plain(img), percentiles)
        if p[-1] <= p[0]:
            continue
        mapped.append((p - p[0]) / (p[-1] - p[0]))
    if not mapped:
        raise ValueError("histogram standardisation: no training image has a spread of intensities")
    return [round(float(v), 6) for v in np.mean(mapped, axis=0)]


class HistogramStandardized(MapTransform):
    """Piecewise-linear map of an image's foreground percentiles onto learned ``landmarks`` (Nyul-Udupa);
    values outside the first/last percentile follow the end segments.

    Example:
        >>> HistogramStandardized(keys="image", percentiles=[1, 50, 99], landmarks=[0.0, 0.4, 1.0])
    """

    def __init__(self, keys: KeysCollection, percentiles: Sequence[float], landmarks: Sequence[float],
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.percentiles = [float(p) for p in percentiles]
        self.landmarks = np.asarray(landmarks, dtype=np.float64)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return map_channels(self, data, self._standardise)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        src = foreground_percentiles(x, self.percentiles)
        src = np.maximum.accumulate(src + np.arange(len(src)) * 1e-6)  # strictly increasing knots
        return _piecewise_linear(x, src, self.landmarks)


def _piecewise_linear(x: torch.Tensor, src: np.ndarray, dst: np.ndarray) -> torch.Tensor:
    xs, ys = torch.as_tensor(src, dtype=torch.float64), torch.as_tensor(dst, dtype=torch.float64)
    v = x.double()
    seg = torch.clamp(torch.searchsorted(xs, v.contiguous(), right=True) - 1, 0, len(xs) - 2)
    x0, x1, y0, y1 = xs[seg], xs[seg + 1], ys[seg], ys[seg + 1]
    return (y0 + (v - x0) * (y1 - y0) / (x1 - x0)).float()
