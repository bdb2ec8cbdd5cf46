"""medseg's faster NIfTI loading and largest-component step give exactly what MONAI's versions give."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, KeepLargestConnectedComponent, LoadImage, LoadImaged

from medseg.engine.fastpath import keep_largest_component_, load_nifti_channel_first, split_loading


@pytest.mark.parametrize("dtype,slope", [(np.int16, None), (np.int16, 2.0), (np.float32, None), (np.uint8, None)])
def test_nifti_loading_matches_monai(tmp_path, dtype, slope):
    rng = np.random.default_rng(1)
    data = rng.integers(-500, 500, (23, 17, 9)).astype(dtype) if dtype != np.uint8 else rng.integers(0, 3, (23, 17, 9)).astype(dtype)
    affine = np.array([[0.0, -0.7, 0.1, 12.5], [0.8, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    if slope is not None:
        image.header.set_slope_inter(slope, -1024.0)
    path = tmp_path / "ct.nii.gz"
    nib.save(image, path)
    before = path.read_bytes()

    reference = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    fast = load_nifti_channel_first(path)

    assert fast.shape == reference.shape == (1, 23, 17, 9)
    assert fast.dtype == reference.dtype == torch.float32
    assert torch.equal(fast.as_tensor(), reference.as_tensor())
    assert torch.equal(fast.affine, reference.affine)
    assert fast.affine.dtype == torch.float64
    for key in ("spatial_shape", "original_affine", "filename_or_obj"):
        assert np.array_equal(np.asarray(fast.meta[key]), np.asarray(reference.meta[key])), key
    assert path.read_bytes() == before


def test_split_loading_only_for_image_only_nifti_chains(tmp_path):
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), path)
    chain = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image")])
    rest, case = split_loading(chain, {"image": str(path)})
    assert len(rest.transforms) == 0 and case["image"].shape == (1, 4, 5, 6)
    with_label = Compose([LoadImaged(keys=["image", "label"], image_only=True), EnsureChannelFirstd(keys=["image", "label"])])
    assert split_loading(with_label, {"image": str(path), "label": str(path)}) is None
    nrrd = tmp_path / "a.nrrd"
    nrrd.write_bytes(b"")
    assert split_loading(chain, {"image": str(nrrd)}) is None


def _blobs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((30, 26, 20), np.uint8)
    for _ in range(6):  # boxes of labels 1 and 2, some touching, some apart
        lo = rng.integers(0, [24, 20, 15])
        size = rng.integers(2, 7, 3)
        labels[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = rng.integers(1, 4)
    labels[0, 0, 0] = 1  # a lone corner voxel: diagonal neighbours count (26-connectivity)
    labels[1, 1, 1] = 2
    return labels


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("members", [[1], [1, 2], [2, 3]])
def test_largest_component_matches_monai(seed, members):
    labels = torch.from_numpy(_blobs(seed))[None]
    expected = KeepLargestConnectedComponent(applied_labels=members, is_onehot=False, independent=False)(labels.clone())
    ours = keep_largest_component_(labels.clone(), members)
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(expected).to(ours.dtype))
    kept = np.isin(ours.numpy(), members)
    assert kept.sum() <= np.isin(labels.numpy(), members).sum()


def test_largest_component_tie_and_empty():
    labels = torch.zeros((1, 9, 3, 3), dtype=torch.uint8)
    labels[0, 1, 1, 1] = 1
    labels[0, 6, 1, 1] = 1  # two single voxels: the tie resolves as MONAI resolves it
    expected = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, independent=False)(labels.clone())
    ours = keep_largest_component_(labels.clone(), [1])
    assert int(ours.sum()) == 1 and torch.equal(ours, torch.as_tensor(expected).to(torch.uint8))
    empty = torch.zeros((1, 4, 4, 4), dtype=torch.uint8)
    assert torch.equal(keep_largest_component_(empty.clone(), [1]), empty)
