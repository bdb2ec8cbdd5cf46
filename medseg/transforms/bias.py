"""N4 bias-field correction (SimpleITK's N4; MONAI has none) with an optional on-disk cache.

Intensity-only, so nothing needs inverting. Imports only torch, numpy, MONAI, SimpleITK and its sibling
:mod:`.metatensors`: exported bundles ship it in ``scripts/medseg_transforms/``.
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
from monai.transforms import MapTransform

from .metatensors import plain, with_meta


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
        # deferred: optional dependency: a bundle without N4 in its chain runs without SimpleITK installed
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
            x = plain(img).float().numpy()
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
            d[key] = with_meta(img, torch.from_numpy(out))
        return d
