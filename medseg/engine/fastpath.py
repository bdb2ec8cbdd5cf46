"""Steps of prediction that MONAI's generic versions make slow on large CT, done with the same results.

Each is measured by ``benchmarks/bench_predict.py`` (512x512x100 CT, 2 CPU cores):

* Loading NIfTI: ``LoadImage`` copies nibabel's column-major array into row-major order
  (``np.ascontiguousarray`` of an int16 array into float32, about 0.3 s of its 0.5 s). The copy buys
  nothing here: the first transform after loading resamples the volume anyway, and torch's kernels
  take strided tensors. :func:`load_nifti_channel_first` reads through MONAI's own ``NibabelReader``
  (same array values, same metadata and affine) and keeps nibabel's memory layout; ``.nii.gz`` is
  decompressed by ISA-L (``medseg.fileio.read_gzip``: 0.09 s against 0.19 s with ``gzip``).
* Intensity window: :class:`ScaleIntensityRangedOnce`, MONAI's arithmetic on one buffer.
* Mapping the class probabilities back to the input grid: ``Invertd`` resizes all channels to the
  full input grid (3 x 512 x 512 x 100 floats) before ``argmax`` (0.38 s). :func:`invert_to_labels`
  reads the cropped probabilities in place (the inverted crop only pads zeros), fuses the resampling
  with the argmax slab by slab (:func:`resize_argmax`), and inverts the steps before it (reorientation,
  a voxel permutation) on the uint8 labels (0.15 s).
* Largest connected component: ``KeepLargestConnectedComponent`` labels the whole volume; labelling
  only the bounding box of the foreground gives the identical mask (components can't leave it), and
  cc3d labels it faster than scipy (MONAI's numbering decides ties, as in MONAI).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Flipd,
    InvertibleTransform,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
)
from monai.transforms.utils import allow_missing_keys_mode
from monai.utils import TraceKeys
from scipy import ndimage

from medseg.transforms.resample import ScaleSpacingd

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
    image = _read_nifti_gz(Path(path)) if str(path).lower().endswith(".nii.gz") else None
    if image is None:
        image = reader.read(str(path))
    else:
        reader.filenames = (str(path),)  # what reader.read records for get_data
    array, meta = reader.get_data(image)
    if array.ndim != 3:
        raise ValueError(f"expected a 3D image, got shape {array.shape}")
    tensor = torch.from_numpy(array if array.dtype != np.float64 else array.astype(np.float32, order="F"))
    meta["filename_or_obj"] = str(path)
    meta["original_channel_dim"] = float("nan")  # as EnsureChannelFirst leaves it: the channel axis was added
    return MetaTensor(tensor.to(torch.float32)[None], meta=meta)


def _read_nifti_gz(path: Path):
    """The nibabel image ``NibabelReader.read`` gives for a ``.nii.gz``, decompressed with ISA-L (half the time of
    ``gzip``); None if it is no single-file NIfTI-1 or does not decompress (nib.load then reads it or says why)."""
    import nibabel as nib
    from monai.data.utils import correct_nifti_header_if_necessary

    from medseg.fileio import read_gzip

    try:
        raw = read_gzip(path)
    except (OSError, EOFError, ValueError):
        return None
    if len(raw) < 352 or raw[344:348] != b"n+1\0":
        return None  # NIfTI-2, a .hdr/.img pair's header or no NIfTI: left to nib.load
    return correct_nifti_header_if_necessary(nib.Nifti1Image.from_bytes(raw))


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


class ScaleIntensityRangedOnce(ScaleIntensityRanged):
    """``ScaleIntensityRanged`` with MONAI's arithmetic, in its order, on one output buffer: MONAI's version
    allocates a volume per step (0.07 s against 0.02 s on the resampled 512x512x100 CT, 273x273x167)."""

    def __call__(self, data):
        d = dict(data)
        sc = self.scaler
        for key in self.key_iterator(d):
            img = d[key]
            if not (isinstance(img, torch.Tensor) and img.dtype == torch.float32 and get_track_meta()
                    and sc.dtype in (np.float32, torch.float32) and sc.b_min is not None and sc.b_max is not None
                    and sc.a_max != sc.a_min):
                d[key] = sc(img)
                continue
            x = img.as_tensor() if isinstance(img, MetaTensor) else img
            out = torch.sub(x, sc.a_min, out=torch.empty_like(x))
            out.div_(sc.a_max - sc.a_min).mul_(sc.b_max - sc.b_min).add_(sc.b_min)
            if sc.clip:
                out.clamp_(sc.b_min, sc.b_max)
            meta = img.meta if isinstance(img, MetaTensor) else None
            ops = img.applied_operations if isinstance(img, MetaTensor) else None
            d[key] = MetaTensor(out, meta=meta, applied_operations=ops)
        return d


def faster_steps(transforms: Compose) -> Compose:
    """``transforms`` with ``ScaleIntensityRanged`` computed by :class:`ScaleIntensityRangedOnce` (same values);
    every other step is the same object, so inverting through the chain is unchanged."""
    if not any(type(t) is ScaleIntensityRanged for t in transforms.transforms):
        return transforms
    steps = []
    for t in transforms.transforms:
        if type(t) is ScaleIntensityRanged:
            fused = ScaleIntensityRangedOnce.__new__(ScaleIntensityRangedOnce)
            fused.__dict__.update(t.__dict__)
            t = fused
        steps.append(t)
    return Compose(steps, map_items=transforms.map_items, unpack_items=transforms.unpack_items,
                   log_stats=transforms.log_stats, lazy=transforms.lazy)


def keep_largest_component_(labels: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
    """In place: zero the voxels of ``members`` outside the largest 26-connected component of their union.

    Same result as ``KeepLargestConnectedComponent(applied_labels=members, is_onehot=False,
    independent=False)`` on a ``(1, *spatial)`` CPU label map, ties included (components are numbered
    in the same raster order and ranked with the same call). Returns ``labels``.
    """
    array = labels.numpy()[0]  # shares memory with labels
    # column-major (NIfTI order, as resize_argmax returns it): work on the row-major transposed view
    transposed = array.flags.f_contiguous and not array.flags.c_contiguous
    work = array.T if transposed else array
    if len(members) <= 8:  # comparisons: ~6x faster than a lookup table (0.005 s vs 0.03 s on 512x512x100)
        foreground = np.zeros(work.shape, dtype=bool)
        for m in members:
            foreground |= work == m
    else:
        foreground = np.isin(work, np.asarray(members))
    box = []
    for axis in range(foreground.ndim):
        hits = np.flatnonzero(foreground.any(axis=tuple(a for a in range(foreground.ndim) if a != axis)))
        if hits.size == 0:
            return labels
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    box = tuple(box)
    inside = foreground[box]
    components = _components(inside)
    counts = _sizes(components)
    counts[0] = 0
    if np.count_nonzero(counts == counts.max()) > 1:  # a tie for the largest: MONAI's numbering decides
        original = inside.T if transposed else inside
        numbered, _ = ndimage.label(original, structure=np.ones((3,) * inside.ndim, dtype=bool))
        components = numbered.T if transposed else numbered
        counts = _sizes(components)
        counts[0] = 0
    if counts.size > 2:
        largest = int(np.argsort(counts)[::-1][0])  # MONAI's ranking, so ties resolve the same way
        work[box][(components != largest) & inside] = 0
    return labels


def _components(inside: np.ndarray) -> np.ndarray:
    """26- (8-) connected components of a 3D (2D) boolean array, numbered from 1; the caller uses their sizes.

    cc3d instead of ``scipy.ndimage.label``: 0.02 s against 0.11 s on the liver's box in a 512x512x100 CT
    (13.9M voxels, 6.6M of them liver). On a tie for the largest, the caller numbers the components with
    scipy, as MONAI does.
    """
    import cc3d

    if inside.ndim not in (2, 3):
        return ndimage.label(inside, structure=np.ones((3,) * inside.ndim, dtype=bool))[0]
    return cc3d.connected_components(np.ascontiguousarray(inside), connectivity=26 if inside.ndim == 3 else 8)


def _sizes(components: np.ndarray) -> np.ndarray:
    """Voxels per component number (``np.bincount``): torch's bincount counts 32-bit numbers as they are, numpy
    casts them to 64 bits first (0.01 s against 0.027 s for the liver's box in a 512x512x100 CT)."""
    flat = np.ascontiguousarray(components).reshape(-1)
    if flat.dtype in (np.uint32, np.uint64):
        flat = flat.view(np.int32 if flat.dtype == np.uint32 else np.int64)  # component numbers are < 2**31
    elif flat.dtype not in (np.int32, np.int64):
        flat = flat.astype(np.int32)
    return torch.bincount(torch.from_numpy(flat)).numpy()


def _linear_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of linear interpolation ``n_in -> n_out`` (align_corners=False), computed in
    float32 as torch's ``interpolate`` computes them: ``(i0, i1, w0, w1)`` with ``out = w0 * x[i0] + w1 * x[i1]``."""
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.long()
    w1 = (src - i0).clamp(0, 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, 1 - w1, w1


def resize_argmax(
    probs: torch.Tensor, size: Sequence[int], grid: Sequence[int] | None = None, offset: Sequence[int] | None = None,
    planes: int = 8,
) -> torch.Tensor:
    """``argmax`` over channels of class probabilities linearly resized to ``size``, as uint8 ``(*size)``.

    ``probs`` (C, *spatial) are the probabilities on a source grid of shape ``grid`` (default: their own
    shape), placed at ``offset`` in it; the rest of the grid is 0 (where an inverted crop pads them). The
    labels are those of ``interpolate(grid probabilities, size, mode="(bi/tri)linear", align_corners=False)``
    followed by ``torch.max(dim=0).indices`` (first channel on ties), up to float rounding, without the
    full-size float channels: linear interpolation is separable, so each slab of ``planes`` output planes
    along the first axis is interpolated from its two source planes, then along the other axes by
    ``interpolate``, and reduced to labels while it is in cache. Slabs outside the probabilities' planes
    are 0 without computing. The result is column-major (as NIfTI stores it: nibabel then writes it without
    a transposing copy).
    """
    x = probs.as_tensor() if isinstance(probs, MetaTensor) else probs
    x = x.float()
    nd = x.ndim - 1
    size = [int(n) for n in size]
    grid = [int(n) for n in (grid if grid is not None else x.shape[1:])]
    offset = [int(o) for o in (offset if offset is not None else [0] * nd)]
    if len(size) != nd or len(grid) != nd or not 2 <= nd <= 3:
        raise ValueError(f"resize_argmax: {nd}D probabilities, size {size}, grid {grid}")
    if any(o < 0 or o + n > g for o, n, g in zip(offset, x.shape[1:], grid)):
        raise ValueError(f"resize_argmax: probabilities {tuple(x.shape[1:])} at {offset} outside the grid {grid}")
    i0, i1, w0, w1 = _linear_taps(grid[0], size[0])
    n = x.shape[1]
    j0, j1 = i0 - offset[0], i1 - offset[0]  # source planes in the probabilities; outside them the grid is 0
    in0, in1 = (j0 >= 0) & (j0 < n), (j1 >= 0) & (j1 < n)
    w0, w1 = torch.where(in0, w0, 0.0), torch.where(in1, w1, 0.0)
    j0, j1 = j0.clamp(0, n - 1), j1.clamp(0, n - 1)
    touched = torch.nonzero(in0 | in1).flatten().tolist()
    out = torch.zeros(size[::-1], dtype=torch.uint8).permute(*range(nd - 1, -1, -1))  # all-zero voxels: class 0
    if not touched:
        return out
    weight = (-1,) + (1,) * (nd - 1)
    mode = {2: "linear", 3: "bilinear"}[nd]
    slab = torch.zeros((x.shape[0], planes, *grid[1:]))  # the zeros around the probabilities stay
    inner = (slice(None), slice(None), *[slice(o, o + m) for o, m in zip(offset[1:], x.shape[2:])])
    for a in range(touched[0], touched[-1] + 1, planes):
        b = min(a + planes, touched[-1] + 1)
        part = slab[:, : b - a]
        torch.mul(x.index_select(1, j0[a:b]), w0[a:b].view(weight), out=part[inner])
        part[inner].addcmul_(x.index_select(1, j1[a:b]), w1[a:b].view(weight))
        resized = torch.nn.functional.interpolate(part.transpose(0, 1), size=size[1:], mode=mode, align_corners=False)
        out[a:b] = torch.max(resized, dim=1).indices
    return out


PERMUTING = (Orientationd, Flipd)  # move voxels without interpolating: they commute with argmax


def invert_to_labels(probs: torch.Tensor, image: MetaTensor, transforms: Compose) -> MetaTensor | None:
    """The label map ``argmax(Invertd(probs))`` on the input grid, as uint8 ``(1, *spatial)``, computed faster.

    ``probs`` (C, *spatial) are class probabilities on the grid of ``image``, the output of ``transforms``
    (which must contain medseg's ``ScaleSpacingd`` with linear interpolation, preceded by no invertible
    step other than reorientation/flips). The steps after the resampling are inverted by MONAI on a mask
    of ones: where that shows them to be a zero padding/crop (an integer shift of the grid, zeros
    around), :func:`resize_argmax` reads the probabilities in place; otherwise MONAI inverts them on the
    probabilities. The resampling is fused with the argmax, and the steps before it are inverted by MONAI
    on the labels. Returns None for any other chain (then use ``Invertd``).
    """
    steps = list(transforms.flatten().transforms)
    spacing = [i for i, t in enumerate(steps) if isinstance(t, ScaleSpacingd)]
    if len(spacing) != 1 or not 3 <= probs.ndim <= 4:  # 2D and 3D images
        return None
    s = spacing[0]
    if any(isinstance(t, InvertibleTransform) and not isinstance(t, PERMUTING) for t in steps[:s]):
        return None
    key = steps[s].keys[0]  # "image"; Invertd runs the chain on the image's key, other keys may be missing

    def inverted_after(values: torch.Tensor) -> MetaTensor:  # as Invertd: the image's trace and metadata
        pred = MetaTensor(values, meta=copy.deepcopy(image.meta), applied_operations=copy.deepcopy(image.applied_operations))
        return _inverse(steps[s + 1:], key, pred)

    values = probs.as_tensor() if isinstance(probs, MetaTensor) else probs
    mask = inverted_after(torch.ones((1, *values.shape[1:]), dtype=torch.uint8))
    if not mask.applied_operations or mask.applied_operations[-1].get(TraceKeys.ID) != id(steps[s]):
        return None
    info = mask.applied_operations[-1][TraceKeys.EXTRA_INFO]
    if info["mode"] != "bilinear":
        return None
    placed = _placement(mask, image.affine, values.shape[1:])
    if placed is None:  # not a zero padding/crop: MONAI inverts the probabilities themselves
        values, grid, offset = inverted_after(values).as_tensor(), None, None
    else:
        region, offset = placed
        values, grid = values[(slice(None), *region)], mask.shape[1:]
    trace = steps[s].pop_transform(mask)
    labels = resize_argmax(values, trace[TraceKeys.ORIG_SIZE], grid, offset)[None]
    out = MetaTensor(labels, meta=dict(mask.meta), applied_operations=list(mask.applied_operations))
    out.affine = torch.as_tensor(info["affine"], dtype=torch.float64)  # what ScaleSpacingd.inverse sets
    return _inverse(steps[:s], key, out)


def _inverse(steps: Sequence, key: str, value: MetaTensor) -> MetaTensor:
    """MONAI's inverse of ``steps`` on ``{key: value}``, as ``Invertd`` runs it (other keys of the chain missing)."""
    invertible = [t for t in steps if isinstance(t, InvertibleTransform)]
    if not invertible:
        return value
    chain = Compose(invertible)
    with allow_missing_keys_mode(chain):
        return chain.inverse({key: value})[key]


def _placement(mask: MetaTensor, affine: torch.Tensor, shape: Sequence[int]) -> tuple[tuple, list[int]] | None:
    """Where the inverted chain put the network's grid (``affine``, ``shape``), from ``mask`` (the chain's inverse
    of ones): ``(slices of the network's grid that are kept, their offset in the mask's grid)``, when the
    grids differ by an integer shift and the mask is 1 on one box of that shifted grid and 0 elsewhere."""
    nd = len(shape)
    shift = torch.linalg.solve(mask.affine.to(torch.float64), torch.as_tensor(affine, dtype=torch.float64))
    t = torch.round(shift[:nd, -1])  # 2D images carry a 3x3 or a 4x4 affine
    if not torch.allclose(shift[:nd, :nd], torch.eye(nd, dtype=torch.float64), atol=1e-4) or \
            not torch.allclose(shift[:nd, -1], t, atol=1e-3):
        return None
    m = mask.as_tensor()[0].numpy()
    box = ndimage.find_objects(m.astype(bool, copy=False).view(np.uint8))
    if not box:
        return None
    box = box[0]
    region = tuple(slice(b.start - int(v), b.stop - int(v)) for b, v in zip(box, t))  # the same voxels, network grid
    if any(r.start < 0 or r.stop > n for r, n in zip(region, shape)):
        return None
    if np.count_nonzero(m) != int(np.prod([b.stop - b.start for b in box])) or not (m[box] == 1).all():
        return None
    return region, [b.start for b in box]
