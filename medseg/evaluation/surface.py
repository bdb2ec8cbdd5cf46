"""Surface extraction and surface-to-surface distances in millimetres.

Surface: the voxels of a mask that have at least one face-connected (6-neighbourhood in 3D,
4 in 2D) neighbour outside the mask; voxels on the image border count as surface, as if the image
were padded with background. This is ``mask XOR binary_erosion(mask)``, the definition MONAI's
``get_mask_edges`` and medpy use.

Distances: from each surface voxel centre of one mask to the nearest surface voxel centre of the
other, Euclidean, with coordinates scaled by the voxel spacing (so anisotropic spacing is exact).

medseg computes these itself rather than through MONAI's metric functions because each of MONAI's
metrics re-extracts both surfaces and re-queries the distances; here the surfaces are extracted once,
each inside its own mask's bounding box (not the whole volume), and one pair of nearest-neighbour
queries over the surface points serves HD, HD95, ASSD, MASD, NSD and boundary F1 together
(``benchmarks/bench_surface_metrics.py`` measures the difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree


def bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding ``mask`` grown by ``margin`` (clipped to the image); None if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def surface_points(mask: np.ndarray) -> np.ndarray:
    """Integer voxel coordinates (N, ndim) of the surface voxels of a boolean mask."""
    box = bounding_box(mask)
    if box is None:
        return np.zeros((0, mask.ndim), dtype=np.int64)
    sub = mask[box]
    edges = sub & ~binary_erosion(sub, border_value=0)
    return np.argwhere(edges) + np.array([s.start for s in box])


def directed_distances(src: np.ndarray, dst: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance in mm from each point of ``src`` to the nearest point of ``dst`` (both voxel coordinates)."""
    scale = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(dst * scale, leafsize=32)
    return tree.query(src * scale, k=1, workers=-1)[0]


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(pred→ref, ref→pred)`` surface distances in mm for two non-empty boolean masks."""
    p, r = surface_points(pred), surface_points(ref)
    return directed_distances(p, r, spacing), directed_distances(r, p, spacing)
