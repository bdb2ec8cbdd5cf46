"""Two steps of prediction that MONAI's generic versions make slow on large CT, done with the same results.

Both are measured by ``benchmarks/bench_predict.py`` (512x512x100 CT, 2 CPU cores):

* Loading NIfTI: ``LoadImage`` copies nibabel's column-major array into row-major order
  (``np.ascontiguousarray`` of an int16 array into float32, about 0.3 s of its 0.5 s). The copy buys
  nothing here: the first transform after loading resamples the volume anyway, and torch's kernels
  take strided tensors. :func:`load_nifti_channel_first` reads through MONAI's own ``NibabelReader``
  (same array values, same metadata and affine) and keeps nibabel's memory layout.
* Largest connected component: ``KeepLargestConnectedComponent`` labels the whole volume; labelling
  only the bounding box of the foreground gives the identical mask (components can't leave it) and
  costs a fraction when the organ fills a small part of the scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from scipy import ndimage

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti_file(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def load_nifti_channel_first(path: str | Path) -> MetaTensor:
    """What ``LoadImaged(image_only=True)`` + ``EnsureChannelFirstd`` give for a 3D NIfTI, without the copy.

    Returns a float32 ``MetaTensor`` of shape ``(1, X, Y, Z)`` with MONAI's metadata (affine,
    original affine, spatial shape, file name); its strides follow nibabel's column-major array.
    """
    reader = NibabelReader()
    image = reader.read(str(path))
    array, meta = reader.get_data(image)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {array.shape}")
    tensor = torch.from_numpy(array if array.dtype != np.float64 else array.astype(np.float32, order="F"))
    meta["filename_or_obj"] = str(path)
    meta["original_channel_dim"] = float("nan")  # as EnsureChannelFirst leaves it: the channel axis was added
    return MetaTensor(tensor.to(torch.float32)[None], meta=meta)


def split_loading(transforms: Compose, case: dict) -> tuple[Compose, dict] | None:
    """For a NIfTI image and a chain that starts by loading it, ``(rest of the chain, case with the image
    loaded)``; None when the generic path must run (other formats, label loading, other chains)."""
    steps = list(transforms.transforms)
    if len(steps) < 2 or not isinstance(steps[0], LoadImaged) or not isinstance(steps[1], EnsureChannelFirstd):
        return None
    if tuple(steps[0].keys) != ("image",) or tuple(steps[1].keys) != ("image",) or not is_nifti_file(case["image"]):
        return None
    try:
        image = load_nifti_channel_first(case["image"])
    except ValueError:  # not 3D: leave it to the generic loader and its messages
        return None
    return Compose(steps[2:]), {**case, "image": image}


def keep_largest_component_(labels: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
    """In place: zero the voxels of ``members`` outside the largest 26-connected component of their union.

    Same result as ``KeepLargestConnectedComponent(applied_labels=members, is_onehot=False,
    independent=False)`` on a ``(1, *spatial)`` CPU label map, ties included (components are numbered
    in the same raster order and ranked with the same call). Returns ``labels``.
    """
    array = labels.numpy()[0]  # shares memory with labels
    if array.dtype == np.uint8:  # a lookup table is ~10x faster than np.isin on uint8
        table = np.zeros(256, dtype=bool)
        table[[m for m in members if 0 <= m < 256]] = True
        foreground = table[array]
    else:
        foreground = np.isin(array, np.asarray(members))
    box = []
    for axis in range(foreground.ndim):
        hits = np.flatnonzero(foreground.any(axis=tuple(a for a in range(foreground.ndim) if a != axis)))
        if hits.size == 0:
            return labels
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    box = tuple(box)
    inside = foreground[box]
    components, count = ndimage.label(inside, structure=np.ones((3,) * inside.ndim, dtype=bool))
    if count > 1:
        counts = np.bincount(components.ravel())
        counts[0] = 0
        largest = int(np.argsort(counts)[::-1][0])  # MONAI's ranking, so ties resolve the same way
        array[box][(components != largest) & inside] = 0
    return labels
