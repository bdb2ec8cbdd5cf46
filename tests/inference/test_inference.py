"""The prediction chain's own transforms give what the MONAI steps they replace give: the ISA-L NIfTI reader
(LoadImage's NibabelReader), the one-pass CT window (ScaleIntensityRanged), the fused inverse resampling + argmax
(Invertd + argmax), the cc3d largest component (KeepLargestConnectedComponentd); and the chain medseg.predict
builds is the bundle's inference.json chain."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    KeepLargestConnectedComponentd,
    LoadImage,
    LoadImaged,
    Orientationd,
)

from medseg.config import load_config
from medseg.data.nifti import READER_PATH, IsalNiftiReader
from medseg.inference import InvertToLabelsd, KeepLargestComponentd, build_chain, inference_spec
from medseg.transforms.resample import ScaleSpacingd, resize_argmax
from medseg.transforms.window import OnePassScaleIntensityRanged


def invert_argmax(probs, data, chain):
    """MONAI's way to the label map on the input grid: Invertd of the probabilities, then argmax (uint8)."""
    image = data["image"]
    pred = MetaTensor(probs, meta=image.meta, applied_operations=image.applied_operations)
    inverted = Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=False)({**data, "pred": pred})
    labels = torch.max(inverted["pred"].as_tensor(), dim=0, keepdim=True).indices.to(torch.uint8)
    return MetaTensor(labels, meta=inverted["pred"].meta)


def invert_to_labels(probs, data, chain):
    return InvertToLabelsd(keys="pred", transform=chain, orig_keys="image")({**data, "pred": probs})["pred"]


def keep_largest(labels, members):
    return KeepLargestComponentd(keys="pred", applied_labels=members)({"pred": labels})["pred"]


def monai_largest(labels, members):
    step = KeepLargestConnectedComponentd(keys="pred", applied_labels=members, is_onehot=False, independent=False)
    return step({"pred": labels})["pred"]


@pytest.mark.parametrize("dtype,slope", [(np.int16, None), (np.int16, 2.0), (np.float32, None), (np.uint8, None)])
def test_nifti_reader_matches_monai(tmp_path, dtype, slope):
    rng = np.random.default_rng(1)
    data = rng.integers(-500, 500, (23, 17, 9)).astype(dtype) if dtype != np.uint8 else rng.integers(0, 3, (23, 17, 9)).astype(dtype)
    affine = np.array([[0.0, -0.7, 0.1, 12.5], [0.8, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(data, affine)
    if slope is not None:
        image.header.set_slope_inter(slope, -1024.0)
    path = tmp_path / "ct.nii.gz"
    nib.save(image, path)
    before = path.read_bytes()

    reference = LoadImage(image_only=True, ensure_channel_first=True)(str(path))  # MONAI's NibabelReader
    for reader in (IsalNiftiReader(), READER_PATH):
        ours = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(str(path))
        assert ours.shape == reference.shape == (1, 23, 17, 9)
        assert ours.dtype == reference.dtype == torch.float32
        assert torch.equal(ours.as_tensor(), reference.as_tensor())
        assert torch.equal(ours.affine, reference.affine) and ours.affine.dtype == torch.float64
        assert ours.meta.keys() == reference.meta.keys()
        for key in ("spatial_shape", "original_affine", "filename_or_obj", "pixdim", "dim"):
            assert np.array_equal(np.asarray(ours.meta[key]), np.asarray(reference.meta[key])), key
    assert path.read_bytes() == before


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_reversed_axes_read_is_the_same_image_after_reorientation(tmp_path, dtype):
    """reverse_axes=True: the transposed view with reversed affine columns and shape (original_affine stays the
    file's); after Orientationd the voxels and the affine equal the plain read's exactly."""
    from monai.transforms import Orientation

    from medseg.data.nifti import REVERSED_AXES

    data = np.random.default_rng(2).integers(-500, 500, (23, 17, 9)).astype(dtype)
    affine = np.array([[0.0, -0.7, 0.1, 12.5], [0.8, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    plain = LoadImage(reader=IsalNiftiReader(), image_only=True, ensure_channel_first=True)(str(path))
    reversed_ = LoadImage(reader=IsalNiftiReader(reverse_axes=True), image_only=True, ensure_channel_first=True)(str(path))
    assert reversed_.shape == (1, 9, 17, 23) and reversed_.dtype == torch.float32
    assert torch.equal(reversed_.as_tensor()[0], plain.as_tensor()[0].permute(2, 1, 0))
    stored = nib.load(path).affine  # the header's float32 rows
    assert np.array_equal(reversed_.affine.numpy(), stored[:, [2, 1, 0, 3]])
    assert np.array_equal(np.asarray(reversed_.meta["original_affine"]), stored)
    assert list(reversed_.meta["spatial_shape"]) == [9, 17, 23] and reversed_.meta[REVERSED_AXES]
    assert REVERSED_AXES not in plain.meta
    a, b = Orientation("RAS")(plain), Orientation("RAS")(reversed_)
    assert torch.equal(a.as_tensor(), b.as_tensor()) and torch.equal(a.affine, b.affine)


def test_foreground_mask_crops_the_box_monai_crops():
    from monai.transforms import CropForegroundd

    from medseg.inference.postprocess import foreground_mask

    x = torch.zeros(1, 26, 17, 19)
    x[0, 3:20, 5:9, 2:17] = torch.rand(17, 4, 15) + 0.1
    x[0, 24, 16, 18] = 0.5  # one far voxel widens the box
    x[0, 1, 1, 1] = -3.0  # negative values are background
    image = MetaTensor(x)
    theirs = CropForegroundd("image", source_key="image", allow_smaller=True)({"image": image})["image"]
    ours = CropForegroundd("image", source_key="image", allow_smaller=True, select_fn=foreground_mask)({"image": image})
    assert ours["image"].shape == theirs.shape == (1, 22, 12, 17)
    assert torch.equal(ours["image"].as_tensor(), theirs.as_tensor())
    assert torch.equal(ours["image"].affine, theirs.affine)


def test_file_axes_puts_permuted_labels_back_in_file_order():
    from medseg.inference.postprocess import file_axes

    file_affine = torch.tensor([[0.0, -0.7, 0.1, 12.5], [0.8, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]],
                               dtype=torch.float64)
    # label axes 0, 1, 2 are file axes k, i, j: the file grid is (3, 4, 2)
    labels = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(1, 2, 3, 4)
    permuted = MetaTensor(labels, affine=file_affine[:, [2, 0, 1, 3]], meta={"original_affine": file_affine.numpy()})
    out = file_axes(permuted)
    assert out.shape == (1, 3, 4, 2) and torch.equal(out.as_tensor(), labels.permute(0, 2, 3, 1))
    assert out.as_tensor()[0, 1, 2, 0] == labels[0, 0, 1, 2]
    assert torch.equal(out.affine, file_affine) and list(out.meta["spatial_shape"]) == [3, 4, 2]
    same = MetaTensor(labels, affine=file_affine, meta={"original_affine": file_affine.numpy()})
    assert file_axes(same) is same
    other = MetaTensor(labels, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64)),
                       meta={"original_affine": file_affine.numpy()})  # resampled, not permuted: left alone
    assert file_axes(other) is other


def test_nifti_reader_hands_other_files_on(tmp_path):
    """In the chain's reader list it reads NIfTI; anything else goes to the next reader, as MONAI would read it."""
    import SimpleITK as sitk

    from medseg.inference.chain import local_targets

    values = np.random.default_rng(0).normal(0, 100, (6, 7, 8)).astype(np.float32)
    mha = tmp_path / "ct.mha"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(mha))
    with pytest.raises(ValueError, match="not a NIfTI file"):
        IsalNiftiReader().read(str(mha))
    chain = build_chain(load_config("liver"))
    loader = chain.preprocessing.transforms[0]
    assert isinstance(loader, LoadImaged) and any(isinstance(r, IsalNiftiReader) for r in loader._loader.readers)
    theirs = LoadImage(image_only=True)(str(mha))
    ours = loader({"image": str(mha)})["image"]
    assert torch.equal(ours.as_tensor(), theirs.as_tensor()) and torch.equal(ours.affine, theirs.affine)
    assert local_targets({"reader": ["a", READER_PATH]}) == {"reader": ["a", READER_PATH]}


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
    labels = MetaTensor(torch.from_numpy(_blobs(seed))[None], affine=torch.diag(torch.tensor([0.8, 0.9, 2.5, 1.0])))
    expected = monai_largest(labels.clone(), members)
    ours = keep_largest(labels, members)
    assert torch.equal(ours.as_tensor(), expected.as_tensor().to(ours.dtype))
    assert torch.equal(ours.affine, labels.affine)
    kept = np.isin(ours.numpy(), members)
    assert kept.sum() <= np.isin(labels.numpy(), members).sum()
    assert torch.equal(labels.as_tensor(), torch.from_numpy(_blobs(seed))[None])  # the input is left as it was


def test_largest_component_tie_and_empty():
    labels = torch.zeros((1, 9, 3, 3), dtype=torch.uint8)
    labels[0, 1, 1, 1] = 1
    labels[0, 6, 1, 1] = 1  # two single voxels: the tie resolves as MONAI resolves it
    expected = monai_largest(labels.clone(), [1])
    ours = keep_largest(labels, [1])
    assert int(ours.sum()) == 1 and torch.equal(ours, torch.as_tensor(expected).to(torch.uint8))
    empty = torch.zeros((1, 4, 4, 4), dtype=torch.uint8)
    assert torch.equal(keep_largest(empty, [1]), empty)


@pytest.mark.parametrize("members", [[1], [1, 2]])
def test_largest_component_of_column_major_labels_matches_monai(members):
    """resize_argmax returns NIfTI-ordered (column-major) label maps; those are labelled through the transposed view."""
    for seed in range(6):
        labels = torch.from_numpy(np.asfortranarray(_blobs(seed)))[None]
        assert not labels.is_contiguous() and labels[0].permute(2, 1, 0).is_contiguous()
        expected = monai_largest(labels.clone(), members)
        ours = keep_largest(labels, members)
        assert torch.equal(torch.as_tensor(ours), torch.as_tensor(expected).to(ours.dtype)), seed


def test_largest_component_tie_in_column_major_order():
    # two single voxels: raster order (x, y, z) puts (1, 5, 1) first, the transposed order (z, y, x) puts (6, 1, 1) first
    labels = torch.zeros((1, 9, 7, 3), dtype=torch.uint8)
    labels[0, 1, 5, 1] = 1
    labels[0, 6, 1, 1] = 1
    column_major = labels[0].permute(2, 1, 0).contiguous().permute(2, 1, 0)[None]
    expected = monai_largest(labels.clone(), [1])
    ours = keep_largest(column_major, [1])
    assert int(ours.sum()) == 1 and torch.equal(ours, torch.as_tensor(expected).to(torch.uint8))


def test_nifti_gz_read_errors_are_nibabels(tmp_path):
    """ISA-L decompression falls back to nib.load for files it can't read, so errors read as MONAI's."""
    data = np.random.default_rng(0).normal(0, 100, (40, 30, 20)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(EOFError) as ours:
        LoadImage(reader=IsalNiftiReader(), image_only=True)(str(path))
    with pytest.raises(EOFError) as monai:
        LoadImage(image_only=True)(str(path))
    assert str(ours.value) == str(monai.value) and "ended before the end-of-stream" in str(ours.value)
    plain = tmp_path / "plain.nii"  # uncompressed: nibabel reads it as before
    nib.save(nib.Nifti1Image(data, np.eye(4)), plain)
    assert torch.equal(LoadImage(reader=IsalNiftiReader(), image_only=True)(str(plain)).as_tensor(),
                       torch.from_numpy(data).float())


def _blob_probabilities(shape, channels=3, seed=0, cells=5, sharpness=6.0):
    """Softmax of smooth random logits: class regions with boundaries through the volume."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, channels, *[cells] * len(shape)), generator=g) * sharpness
    mode = {2: "bilinear", 3: "trilinear"}[len(shape)]
    logits = torch.nn.functional.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=False)[0]
    return torch.softmax(logits, 0)


def _reference_labels(probs, size):
    mode = {2: "bilinear", 3: "trilinear"}[probs.ndim - 1]
    resized = torch.nn.functional.interpolate(probs[None], size=tuple(size), mode=mode, align_corners=False)[0]
    return torch.max(resized, dim=0).indices.to(torch.uint8)


@pytest.mark.parametrize("shape,size", [((21, 17, 9), (40, 30, 23)), ((30, 26, 20), (12, 41, 20)), ((15, 9), (31, 4))])
def test_resize_argmax_matches_interpolate_then_argmax(shape, size):
    probs = _blob_probabilities(shape, seed=len(size))
    probs[(slice(None), *[slice(0, 3)] * len(shape))] = 0.25  # a tie between all classes: the first one wins
    probs[(slice(None), *[slice(-2, None)] * len(shape))] = 0.0  # zero padding, as an inverted crop leaves it
    expected = _reference_labels(probs, size)
    for planes in (3, 8, 1000):  # slabs of 3 planes (the last one shorter), of 8, all planes in one
        ours = resize_argmax(probs, size, planes=planes)
        assert ours.shape == expected.shape and ours.dtype == torch.uint8
        assert (ours == expected).double().mean() >= 0.9999
        assert set(torch.unique(ours).tolist()) == {0, 1, 2}
    assert ours.permute(*range(len(size) - 1, -1, -1)).is_contiguous()  # column-major, as NIfTI stores it
    assert int(ours[(0,) * len(size)]) == 0


def test_resize_argmax_of_noise():
    """Class boundaries between every pair of voxels, four classes."""
    probs = torch.softmax(torch.randn((4, 9, 8, 7), generator=torch.Generator().manual_seed(3)), 0)
    expected = _reference_labels(probs, (20, 5, 15))
    assert (resize_argmax(probs, (20, 5, 15)) == expected).double().mean() >= 0.999


def _spy_resize(monkeypatch) -> list:
    """Record how the fused inverse calls resize_argmax (grid None: MONAI inverted the probabilities)."""
    import medseg.transforms.resample as resample

    calls, original = [], resample.resize_argmax

    def spy(probs, size, grid=None, offset=None, **kw):
        calls.append({"shape": tuple(probs.shape[1:]), "grid": grid and tuple(grid), "offset": offset})
        return original(probs, size, grid, offset, **kw)

    monkeypatch.setattr(resample, "resize_argmax", spy)
    return calls


@pytest.mark.parametrize("pad_to_multiple", [False, True])
def test_fused_inverse_equals_invertd_then_argmax(tmp_path, pad_to_multiple, monkeypatch):
    """An oblique, anisotropic, non-RAS image through the eval chain (reorient, resample, crop, [pad]): the label
    map from invert_to_labels equals argmax(Invertd(probabilities)), on the same grid with the same affine."""
    from tests.conftest import synthetic_case
    from tests.workflows.test_predict import oblique_affine

    image, _, _ = synthetic_case(shape=(34, 30, 22), seed=4)
    image[:5], image[:, -4:], image[..., :3] = -1000.0, -1000.0, -1000.0  # air around the body: the crop removes it
    swap_flip = np.array([[0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1.0]])  # array axes: -y, x, -z
    affine = oblique_affine(spacing=(1.3, 0.9, 2.4)) @ swap_flip
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), path)
    cfg = load_config("liver", [f"preprocessing.pad_to_multiple={str(pad_to_multiple).lower()}"])
    chain = build_chain(cfg).preprocessing  # the prediction chain's preprocessing (the bundle's)
    data = chain({"image": str(path)})
    image_t = data["image"]
    assert [op["class"] for op in image_t.applied_operations][:2] == ["Orientation", "ScaleSpacingd"]
    probs = _blob_probabilities(image_t.shape[1:], seed=7)
    # the chain's reader hands over the transposed view: MONAI's Invertd ends on that grid (axes k, j, i)
    expected = invert_argmax(probs, data, chain)
    assert expected.shape == (1, *image.shape[::-1])
    expected = MetaTensor(expected.as_tensor().permute(0, 3, 2, 1), meta=expected.meta)
    calls = _spy_resize(monkeypatch)
    ours = invert_to_labels(probs, data, chain)
    # the probabilities were read in place: the inverted crop (and pad) is an integer shift with zeros around
    assert calls[0]["grid"] is not None and calls[0]["grid"] != calls[0]["shape"]
    assert ours.shape == expected.shape == (1, *image.shape) and ours.dtype == torch.uint8
    # InvertToLabelsd puts the file's axis order back, with the file's affine exactly
    assert np.array_equal(ours.affine.numpy(), nib.load(path).affine)
    np.testing.assert_allclose(ours.affine.numpy(), affine, atol=1e-6)
    assert ours.meta["filename_or_obj"] == expected.meta["filename_or_obj"] == str(path)
    assert (ours.as_tensor() == expected.as_tensor()).double().mean() >= 0.999
    assert set(torch.unique(ours.as_tensor()).tolist()) == {0, 1, 2}
    assert [op["class"] for op in image_t.applied_operations][:2] == ["Orientation", "ScaleSpacingd"]  # untouched


def test_fused_inverse_after_a_flip_inverts_the_probabilities(tmp_path, monkeypatch):
    """A step after the resampling that is no zero padding/crop (a flip): MONAI inverts the probabilities."""
    from monai.transforms import CropForegroundd, Flipd

    from tests.conftest import synthetic_case

    image, _, affine = synthetic_case(shape=(30, 26, 14), spacing=(0.9, 1.1, 2.5), seed=2)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(image + 100.0, affine), path)
    chain = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image"),
                     Orientationd(keys="image", axcodes="LPS"), ScaleSpacingd(keys="image", pixdim=[1.5, 1.5, 1.5]),
                     Flipd(keys="image", spatial_axis=0),
                     CropForegroundd(keys="image", source_key="image", select_fn=lambda x: x > 0, margin=1)])
    data = chain({"image": str(path)})
    probs = _blob_probabilities(data["image"].shape[1:], seed=5)
    expected = invert_argmax(probs, data, chain)
    calls = _spy_resize(monkeypatch)
    ours = invert_to_labels(probs, data, chain)
    assert calls[0]["grid"] is None
    assert ours.shape == expected.shape == (1, 30, 26, 14) and torch.equal(ours.affine, expected.affine)
    assert (ours.as_tensor() == expected.as_tensor()).double().mean() >= 0.999


def test_fused_inverse_of_a_2d_image(monkeypatch):
    from monai.transforms import CropForegroundd

    affine = torch.tensor([[0.7, 0.0, 0.0, 3.0], [0.0, 0.6, 0.0, -2.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]], dtype=torch.float64)
    pixels = torch.zeros((1, 50, 44))
    pixels[0, 6:41, 9:40] = torch.rand((35, 31), generator=torch.Generator().manual_seed(0)) + 0.1
    chain = Compose([ScaleSpacingd(keys="image", pixdim=[1.1, 0.9]), CropForegroundd(keys="image", source_key="image")])
    data = chain({"image": MetaTensor(pixels, affine=affine)})
    probs = _blob_probabilities(data["image"].shape[1:], seed=9)
    expected = invert_argmax(probs, data, chain)
    calls = _spy_resize(monkeypatch)
    ours = invert_to_labels(probs, data, chain)
    assert calls[0]["grid"] is not None and calls[0]["grid"] != calls[0]["shape"]  # read in place
    assert ours.shape == expected.shape == (1, 50, 44) and torch.equal(ours.affine, expected.affine)
    assert (ours.as_tensor() == expected.as_tensor()).double().mean() >= 0.999


def test_fused_inverse_leaves_other_chains_to_invertd(tmp_path, monkeypatch):
    from monai.transforms import Spacingd

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 1, (12, 10, 8)).astype(np.float32), np.eye(4)), path)
    chain = Compose([LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image"),
                     Spacingd(keys="image", pixdim=(1.5, 1.5, 1.5))])  # MONAI's resampling: Invertd's job
    data = chain({"image": str(path)})
    probs = _blob_probabilities(data["image"].shape[1:])
    calls = _spy_resize(monkeypatch)
    ours = invert_to_labels(probs, data, chain)
    expected = invert_argmax(probs, data, chain)
    assert not calls and ours.dtype == torch.uint8 and ours.shape == (1, 12, 10, 8)
    assert torch.equal(ours.as_tensor(), expected.as_tensor()) and torch.equal(ours.affine, expected.affine)


def test_label_nifti_written_through_isal_is_what_nibabel_writes(tmp_path):
    import gzip

    from medseg.data.labelmaps import write_label_nifti

    labels = np.asfortranarray(_blobs(2))
    affine = np.array([[0.0, -0.7, 0.1, 12.5], [0.8, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])
    out = tmp_path / "case_seg.nii.gz"
    write_label_nifti(labels, affine, out)
    reference = nib.Nifti1Image(labels, affine)
    reference.header.set_xyzt_units("mm")
    nib.save(reference, tmp_path / "reference.nii.gz")
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert gzip.decompress(out.read_bytes()) == gzip.decompress((tmp_path / "reference.nii.gz").read_bytes())
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8 and back.shape == labels.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
    np.testing.assert_array_equal(back.affine, nib.load(tmp_path / "reference.nii.gz").affine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_seg.nii.gz", "reference.nii.gz"]  # no temporary left
    write_label_nifti(labels, affine, tmp_path / "plain.nii")  # uncompressed where the name says so
    assert (tmp_path / "plain.nii").read_bytes() == gzip.decompress(out.read_bytes())


@pytest.mark.parametrize("clip", [True, False])
def test_intensity_window_in_one_pass_equals_monai(clip):
    from monai.transforms import ScaleIntensityRanged

    affine = torch.diag(torch.tensor([0.8, 0.9, 2.5, 1.0], dtype=torch.float64))
    values = torch.from_numpy(np.random.default_rng(0).normal(0, 300, (1, 23, 17, 9)).astype(np.float32))
    image = MetaTensor(values.permute(0, 3, 2, 1).contiguous().permute(0, 3, 2, 1), affine=affine)  # column-major
    args = {"keys": "image", "a_min": -140.0, "a_max": 260.0, "b_min": 0.0, "b_max": 1.0, "clip": clip}
    orient = Orientationd(keys="image", axcodes="RAS")
    monai_chain = Compose([orient, ScaleIntensityRanged(**args)])
    ours_chain = Compose([orient, OnePassScaleIntensityRanged(**args)])
    expected = monai_chain({"image": image.clone()})["image"]
    ours = ours_chain({"image": image})["image"]
    assert torch.equal(ours.as_tensor(), expected.as_tensor()) and ours.dtype == torch.float32  # bit for bit
    assert torch.equal(ours.affine, expected.affine) and len(ours.applied_operations) == 1
    assert float(values.min()) < -140 and (float(ours.min()) == 0.0) == clip
    assert torch.equal(image.as_tensor(), values)  # the input is left as it was
    double = MetaTensor(values.double(), affine=affine)  # not float32: MONAI's own code runs
    assert torch.equal(ours_chain({"image": double})["image"].as_tensor(), monai_chain({"image": double})["image"].as_tensor())


def test_medseg_chain_is_the_bundles_inference_json(tmp_path):
    """build_chain instantiates the spec export writes into inference.json: same steps, same arguments."""
    from medseg.bundle.export import inference_config
    from medseg.inference.chain import bundle_targets, local_targets

    cfg = load_config("liver", ["evaluation.keep_largest_component=[liver]"])
    spec = inference_spec(cfg)
    written = inference_config(cfg)
    for part in ("preprocessing", "inferer"):
        assert written[part] == bundle_targets(spec[part]), part
    assert written["postprocessing"]["transforms"][:-1] == bundle_targets(spec["postprocessing"])["transforms"]
    assert written["postprocessing"]["transforms"][-1]["_target_"] == "SaveImaged"
    assert local_targets(spec) != spec and bundle_targets(local_targets(spec)) == bundle_targets(spec)
    chain = build_chain(cfg)
    names = [type(t).__name__ for t in chain.preprocessing.transforms]
    assert names == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "ScaleSpacingd", "OnePassScaleIntensityRanged",
                     "CropForegroundd", "EnsureTyped"]
    post = chain.postprocessing.transforms
    assert [type(t).__name__ for t in post] == ["Activationsd", "InvertToLabelsd", "KeepLargestComponentd"]
    assert post[1].transform is chain.preprocessing  # the inverse runs through the very steps that ran
    assert post[2].applied_labels == [1, 2]
    assert type(chain.inferer).__name__ == "SlidingWindowInferer" and chain.in_channels == 1


def test_a_case_with_other_channels_than_the_network_takes_gets_one_line(tmp_path):
    import dataclasses

    from medseg.errors import MedsegError
    from medseg.inference import run_case

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 18, 12), np.float32), np.eye(4)), path)
    chain = dataclasses.replace(build_chain(load_config("liver")), in_channels=2)
    never = []
    with pytest.raises(MedsegError, match=r"ct.nii.gz: 1 image channels; the network takes 2"):
        run_case(chain, lambda x: never.append(x), {"image": str(path)})
    assert not never  # refused before any forward pass


def test_without_cc3d_and_isal_the_results_are_the_same(tmp_path, monkeypatch):
    """A stock environment without the optional speed-ups (cc3d, isal) gets the same masks and images."""
    import gzip

    import medseg.data.nifti as nifti
    import medseg.inference.postprocess as postprocess

    labels = torch.from_numpy(_blobs(4))[None]
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(_blobs(5).astype(np.int16) * 100 - 50, np.diag([0.8, 0.9, 2.5, 1.0])), path)
    with_extras = keep_largest(labels, [1, 2]), LoadImage(reader=IsalNiftiReader(), image_only=True)(str(path))
    monkeypatch.setattr(postprocess, "cc3d", None)
    monkeypatch.setattr(nifti, "_gzip", gzip)
    without = keep_largest(labels, [1, 2]), LoadImage(reader=IsalNiftiReader(), image_only=True)(str(path))
    assert torch.equal(with_extras[0], without[0]) and torch.equal(with_extras[0], monai_largest(labels.clone(), [1, 2]))
    assert torch.equal(with_extras[1].as_tensor(), without[1].as_tensor())
    assert torch.equal(with_extras[1].affine, without[1].affine)
