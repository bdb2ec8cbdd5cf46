"""medseg's own intensity and augmentation transforms, for what MONAI lacks.

- :class:`StackWindowsd`: several CT windows of one image stacked as channels (MONAI windows one range).
- :class:`ForegroundZScored`: z-score inside an Otsu foreground mask (MONAI's NormalizeIntensityd takes
  the whole image or its non-zero voxels only).
- :class:`HistogramStandardized` and :func:`learn_landmarks`: Nyul-Udupa histogram standardisation
  (MONAI's HistogramNormalize equalises each image on its own; nothing learned across a training set).
- :class:`N4BiasFieldd`: SimpleITK's N4 bias-field correction with an optional on-disk cache.
- :class:`RandElastic2Dd`: 2D elastic deformation with a Gaussian-smoothed displacement field (MONAI's
  Rand2DElastic interpolates a control-point grid instead; Rand3DElasticd already smooths with sigma).

All are intensity-only or training-only, so nothing here needs inverting. The module imports only MONAI,
torch, numpy, scipy and SimpleITK, so exported bundles ship it unchanged in their ``scripts/`` folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform


def _replace(img: Any, values: torch.Tensor) -> Any:
    """``values`` with the metadata and transform history of ``img``."""
    if isinstance(img, MetaTensor):
        return MetaTensor(values, meta=dict(img.meta), applied_operations=list(img.applied_operations))
    return values


def _tensor(img: Any) -> torch.Tensor:
    return img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)


def _per_channel(transform: MapTransform, data: Mapping[Hashable, Any], fn) -> dict[Hashable, Any]:
    """Apply ``fn`` to each channel (as float) of each of ``transform``'s keys; metadata is kept."""
    d = dict(data)
    for key in transform.key_iterator(d):
        x = _tensor(d[key]).float()
        d[key] = _replace(d[key], torch.stack([fn(x[c]) for c in range(x.shape[0])]))
    return d


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
            x = _tensor(d[key]).float()
            out = torch.cat([((x - lo) / (hi - lo)).clamp(0.0, 1.0) for lo, hi in self.windows], dim=0)
            d[key] = _replace(d[key], out)
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
        return _per_channel(self, data, self._normalise)

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
        p = foreground_percentiles(_tensor(img), percentiles)
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
        return _per_channel(self, data, self._standardise)

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


class N4BiasFieldd(MapTransform):
    """SimpleITK N4 bias-field correction of each image channel (mask: Otsu foreground of the image).

    N4 takes seconds to minutes per volume, so results can be cached on disk: ``cache_dir`` holds one
    ``.npy`` per distinct (image content, geometry, parameters); "" turns the cache off.
    """

    def __init__(self, keys: KeysCollection, shrink: int = 4, iterations: Sequence[int] = (50, 50, 30),
                 cache_dir: str = "", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.shrink, self.iterations, self.cache_dir = int(shrink), [int(i) for i in iterations], cache_dir

    def _correct(self, x: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(x.T, dtype=np.float32))  # sitk wants (z, y, x)
        img.SetSpacing([float(s) for s in spacing])
        mask = sitk.OtsuThreshold(img, 0, 1, 200)
        shrink = [min(self.shrink, max(1, n // 8)) for n in img.GetSize()]
        small, small_mask = sitk.Shrink(img, shrink), sitk.Shrink(mask, shrink)
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations(self.iterations)
        n4.Execute(small, small_mask)
        log_field = n4.GetLogBiasFieldAsImage(img)
        return (sitk.GetArrayFromImage(img) / np.exp(sitk.GetArrayFromImage(log_field))).T.astype(np.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            x = _tensor(img).float().numpy()
            dims = x.ndim - 1
            affine = np.asarray(img.affine if isinstance(img, MetaTensor) else np.eye(dims + 1), dtype=np.float64)
            spacing = np.linalg.norm(affine[:dims, :dims], axis=0)
            path = None
            if self.cache_dir:
                h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
                h.update(repr((x.shape, spacing.round(6).tolist(), self.shrink, self.iterations)).encode())
                path = Path(self.cache_dir) / f"{h.hexdigest()[:32]}.npy"
            if path is not None and path.is_file():
                out = np.load(path)
            else:
                out = np.stack([self._correct(x[c], spacing) for c in range(x.shape[0])])
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
                    with open(tmp, "wb") as f:
                        np.save(f, out)
                    tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
            d[key] = _replace(img, torch.from_numpy(out))
        return d


class RandElastic2Dd(RandomizableTransform, MapTransform):
    """2D elastic deformation: a uniform random displacement field smoothed by a Gaussian of ``sigma``
    voxels and scaled by ``magnitude`` (voxels), the same model as MONAI's Rand3DElasticd in 3D.

    Example:
        >>> RandElastic2Dd(keys=["image", "label"], sigma_range=(5, 8), magnitude_range=(50, 150), prob=0.3,
        ...                mode=["bilinear", "nearest"])
    """

    def __init__(self, keys: KeysCollection, sigma_range: Sequence[float], magnitude_range: Sequence[float],
                 prob: float = 0.1, mode: str | Sequence[str] = "bilinear", allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.sigma_range, self.magnitude_range = tuple(sigma_range), tuple(magnitude_range)
        self.mode = [mode] * len(self.keys) if isinstance(mode, str) else list(mode)
        self.offset: np.ndarray | None = None

    def randomize(self, shape: Sequence[int]) -> None:  # type: ignore[override]
        super().randomize(None)
        if not self._do_transform:
            return
        from scipy.ndimage import gaussian_filter

        sigma = self.R.uniform(*self.sigma_range)
        magnitude = self.R.uniform(*self.magnitude_range)
        noise = self.R.uniform(-1.0, 1.0, (2, *shape))
        self.offset = np.stack([gaussian_filter(n, sigma, mode="constant") for n in noise]) * magnitude

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = next(self.key_iterator(d), None)
        if first is None:
            return d
        shape = tuple(d[first].shape[1:])
        self.randomize(shape)
        if not self._do_transform:
            return d
        coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij"))
        moved = coords + torch.from_numpy(self.offset)
        # grid_sample wants (x, y) = (last axis, first axis) normalised to [-1, 1] (align_corners=True)
        grid = torch.stack([2 * moved[1] / max(shape[1] - 1, 1) - 1, 2 * moved[0] / max(shape[0] - 1, 1) - 1], -1)
        for key, mode in zip(self.key_iterator(d), self.mode):
            x = _tensor(d[key])
            out = torch.nn.functional.grid_sample(x[None].float(), grid[None].float(), mode=mode,
                                                  padding_mode="zeros", align_corners=True)[0]
            d[key] = _replace(d[key], out if x.dtype.is_floating_point else out.round().to(x.dtype))
        return d
