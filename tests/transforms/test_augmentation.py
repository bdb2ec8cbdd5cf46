"""Augmentation: elastic deformation bounds, image/label alignment, seeded batches with workers, preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.networks.layers import GaussianFilter
from monai.transforms import Compose
from torch.utils.data import RandomSampler

from medseg.config import load_config
from medseg.transforms import build_train_transforms, data_generator
from medseg.transforms.deform import RandDeformd, grid_sample_slabs
from medseg.transforms.pipeline import instantiate, random_spec

from tests.conftest import FAST, write_msd

ONLY = ["augmentation.rotate_prob=0", "augmentation.scale_prob=0", "augmentation.flip_prob=0",
        "augmentation.intensity_prob=0", "augmentation.elastic.prob=0"]


def _chain(overrides: list[str]) -> Compose:
    return Compose(instantiate(random_spec(load_config("liver", overrides))))


def _cube(shape, centre, half=2):
    label = torch.zeros((1, *shape), dtype=torch.float32)
    label[(0, *[slice(c - half, c + half + 1) for c in centre])] = 1
    return label


def _centroid(label: torch.Tensor) -> np.ndarray:
    return np.argwhere(label[0].numpy() > 0.5).mean(0)


@pytest.mark.parametrize("dims", [3, 2])
def test_elastic_keeps_the_label_binary_and_moves_a_point_within_the_field_bound(dims):
    shape, centre = (32,) * dims, (16,) * dims
    overrides = ONLY + ["augmentation.elastic.prob=1", "augmentation.elastic.sigma=[3,3]",
                        "augmentation.elastic.magnitude=[300,300]"]
    if dims == 2:
        overrides += ["network.spatial_dims=2", "training.patch_size=[32,32]", "preprocessing.spacing=[1,1]"]
    chain = _chain(overrides)
    assert [type(t).__name__ for t in chain.transforms] == ["RandDeformd"]
    chain.set_random_state(seed=3)
    label = _cube(shape, centre)
    out = chain({"image": MetaTensor(label.clone()), "label": MetaTensor(label.clone())})
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0} and out["label"].sum() > 0
    t = chain.transforms[0]
    assert t.matrix is None and t.flips == [] and t.offset.shape == (dims, *shape)
    field = t.offset
    longest = float(field.norm(dim=0).max())
    assert 0.5 < longest <= 300 * np.sqrt(dims)  # it deforms, by no more than magnitude per axis
    moved = np.linalg.norm(_centroid(out["label"]) - np.array(centre))
    assert moved <= longest + 1.0
    # the image (same content as the label) is deformed with the label
    assert float(((out["image"] > 0.5) == (out["label"] > 0.5)).float().mean()) > 0.995


@pytest.mark.parametrize("sigma", [4.0, 7.0])
def test_coarse_elastic_field_has_the_statistics_of_the_full_resolution_field(sigma):
    """RandDeformd draws its noise on a grid sigma/2 apart; its displacements must match MONAI's model
    (full-resolution uniform noise smoothed by a Gaussian of sigma), in size and in smoothness."""
    shape, magnitude = (56, 64, 56), 100.0
    t = RandDeformd(keys="image", elastic_prob=1.0, sigma_range=(sigma, sigma), magnitude_range=(magnitude, magnitude))
    t.set_random_state(seed=0)
    ours = [t._elastic_field(shape, sigma, magnitude) for _ in range(12)]
    rng = np.random.default_rng(0)
    smooth = GaussianFilter(3, sigma, 3.0)
    full = [smooth(torch.from_numpy(rng.uniform(-1, 1, (3, *shape))).float()[None])[0] * magnitude for _ in range(12)]
    inner = (slice(None), *[slice(16, n - 16) for n in shape])  # away from the zero padding at the borders

    def stats(fields):
        f = torch.stack([x[inner] for x in fields])
        step = (f[..., 2:] - f[..., :-2]).std() / f.std()  # relative change over 2 voxels: smoothness
        return float(f.std()), float(step)

    (std_ours, step_ours), (std_full, step_full) = stats(ours), stats(full)
    assert std_full > 0.3  # a deformation of a voxel or more, not a vanishing one
    assert std_ours == pytest.approx(std_full, rel=0.12)
    assert step_ours == pytest.approx(step_full, rel=0.12)


def test_flips_are_exact_with_and_without_a_resampling():
    x = torch.arange(2 * 5 * 6 * 7, dtype=torch.float32).reshape(2, 5, 6, 7)
    label = (x[:1] % 3 == 0).float()
    for affine_prob in (0.0, 1.0):  # 1.0 with no rotation and no scaling: flips folded into the resampling
        t = RandDeformd(keys=["image", "label"], affine_prob=affine_prob, flip_prob=0.5, mode=["bilinear", "nearest"])
        seen = set()
        for seed in range(12):
            t.set_random_state(seed=seed)
            out = t({"image": MetaTensor(x.clone()), "label": MetaTensor(label.clone())})
            axes = [a + 1 for a in t.flips]
            seen.add(tuple(t.flips))
            torch.testing.assert_close(out["image"].as_tensor(), torch.flip(x, axes), rtol=0, atol=1e-3)
            assert torch.equal(out["label"].as_tensor(), torch.flip(label, axes))
        assert len(seen) >= 4  # several flip combinations were drawn


def test_rotation_and_scaling_keep_image_and_label_aligned():
    chain = _chain(ONLY + ["augmentation.rotate_prob=1", "augmentation.scale_prob=1", "augmentation.rotate_deg=15"])
    grid = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij")).astype(np.float32)
    # test pattern: an off-centre ellipsoid (label) whose image is a smooth ramp across its boundary
    r = np.sqrt(((grid[0] - 11) / 7) ** 2 + ((grid[1] - 28) / 6) ** 2 + ((grid[2] - 20) / 10) ** 2)
    image = torch.from_numpy(np.clip(1.5 - r, 0, 1))[None]
    label = (image > 0.5).float()
    moved = []
    for seed in range(4):
        chain.set_random_state(seed=seed)
        out = chain({"image": MetaTensor(image.clone()), "label": MetaTensor(label.clone())})
        img, lab = out["image"] > 0.5, out["label"] > 0.5
        dice = 2 * float((img & lab).sum()) / float(img.sum() + lab.sum())
        assert dice > 0.9, seed  # half-voxel boundary differences only
        # same place: centroids of the thresholded image and of the label agree to a fraction of a voxel
        # (a label one voxel off would be 1.0 away)
        assert np.linalg.norm(_centroid(img.float()) - _centroid(lab.float())) < 0.2, seed
        moved.append(float(np.linalg.norm(_centroid(lab.float()) - _centroid(label))))
    assert max(moved) > 2.0  # the pattern did move (rotation about the centre moves an off-centre object)


def _batches(cfg, cases, workers: int, seed: int) -> list[torch.Tensor]:
    ds = CacheDataset(cases, build_train_transforms(cfg), progress=False)
    gen = data_generator(seed)
    sampler = RandomSampler(ds, replacement=True, num_samples=4, generator=gen)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, generator=gen)
    return [torch.cat([b["image"].as_tensor(), b["label"].as_tensor()], 1) for _ in range(2) for b in loader]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2: worker processes
def test_a_seed_gives_identical_augmented_batches_with_and_without_workers(tmp_path, workers):
    root = write_msd(tmp_path / "ds", n_cases=2)
    cases = [{"image": str(p), "label": str(root / "labelsTr" / p.name)} for p in sorted((root / "imagesTr").iterdir())]
    cfg = load_config("liver", FAST + ["augmentation.elastic.prob=1"])
    torch.manual_seed(123)  # the global stream must not matter
    first = _batches(cfg, cases, workers, seed=5)
    torch.manual_seed(999)
    second = _batches(cfg, cases, workers, seed=5)
    other = _batches(cfg, cases, workers, seed=6)
    assert len(first) == 4 and first[0].shape == (2, 2, 16, 16, 16)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(first[0], first[2])  # the second epoch draws new patches


def test_mri_and_random_crop_chains_run_every_intensity_augmentation():
    overrides = FAST + ["data.modality=MR", "augmentation.crop.mode=random", "augmentation.contrast.prob=1",
                        "augmentation.gamma.prob=1", "augmentation.noise.prob=1", "augmentation.blur.prob=1",
                        "augmentation.bias_field.prob=1"]
    cfg = load_config("liver", overrides)
    names = [t["_target_"] for t in random_spec(cfg)]
    assert names[-5:] == ["RandScaleIntensityFixedMeand", "RandAdjustContrastd", "RandBiasFieldd",
                          "RandGaussianNoised", "RandGaussianSmoothd"]
    rng = np.random.default_rng(0)
    image = MetaTensor(torch.from_numpy(rng.normal(0, 1, (1, 16, 16, 16)).astype(np.float32)))
    label = MetaTensor(torch.zeros((1, 16, 16, 16)))
    chain = Compose(instantiate(random_spec(cfg)))
    chain.set_random_state(seed=0)
    out = chain({"image": image, "label": label})
    assert out["image"].shape == (1, 16, 16, 16) and torch.isfinite(out["image"]).all()
    assert not torch.allclose(out["image"], image)
    ran = {type(t).__name__ for t in chain.transforms if getattr(t, "_do_transform", False)}
    assert set(names[-5:]) <= ran  # each one at prob 1 was drawn, not skipped
    assert torch.equal(out["label"].as_tensor(), label.as_tensor())  # intensity augmentation leaves the label alone


def test_preview_command_writes_the_grid_training_logs(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from medseg.preview import main

    write_msd(tmp_path / "data" / "Synthetic", n_cases=2)
    monkeypatch.chdir(tmp_path)
    args = ["liver", "--n", "4", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "p.png")]
    args += [a for o in FAST + ["data.dataset=Synthetic"] for a in ("--set", o)]
    assert main(args) == 0
    with Image.open(tmp_path / "p.png") as img:
        assert img.size == (1040, 560)  # 4 columns x 2.6 in, 5.6 in, at 100 dpi
        pixels = np.asarray(img.convert("RGB")).astype(int)
    # label contours in colour (lime / red) are drawn on the grey patches
    assert ((pixels[..., 1] > 200) & (pixels[..., 0] < 100) & (pixels[..., 2] < 100)).sum() > 20
    assert main(args[:-2 * len(FAST) - 2] + ["--n", "0"]) == 2
    assert "--n 0: give between 1 and 64" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_grid_sampling_in_slabs_equals_one_call(threads):
    """RandDeformd samples in one slab per torch thread (torch's CPU sampler is parallel over the batch
    only); the result must be the very same as one grid_sample call, for sizes the slabs do not divide."""
    gen = torch.Generator().manual_seed(0)
    for shape in [(7, 6, 5), (9, 8)]:
        x = torch.rand((2, *shape), generator=gen)
        grid = torch.rand((1, *shape, len(shape)), generator=gen) * 2.2 - 1.1  # some points outside: zeros
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for mode in ("bilinear", "nearest"):
                ours = grid_sample_slabs(x, grid, mode)
                ref = torch.nn.functional.grid_sample(x[None], grid, mode=mode, padding_mode="zeros",
                                                      align_corners=True)[0]
                assert ours.shape == x.shape and torch.equal(ours, ref), (shape, mode)
        finally:
            torch.set_num_threads(before)


def test_training_batches_are_plain_tensors_with_the_collated_values(tmp_path):
    from monai.data import list_data_collate

    from medseg.engine.trainer import collate_plain

    root = write_msd(tmp_path / "ds", n_cases=2)
    cases = [{"image": str(p), "label": str(root / "labelsTr" / p.name)} for p in sorted((root / "imagesTr").iterdir())]
    chain = build_train_transforms(load_config("liver", FAST))
    chain.set_random_state(seed=0)
    items = [chain(dict(c)) for c in cases]  # each a list of one patch (the balanced crop's num_samples)
    ours, monai_batch = collate_plain(items), list_data_collate(items)
    assert set(ours) == set(monai_batch) >= {"image", "label"}  # other keys (e.g. crop coordinates) as MONAI's
    for key in ("image", "label"):
        assert type(ours[key]) is torch.Tensor and isinstance(monai_batch[key], MetaTensor)
        assert ours[key].shape == (2, 1, 16, 16, 16)
        assert torch.equal(ours[key], monai_batch[key].as_tensor())


ALL_ON = ["augmentation.elastic.prob=1", "augmentation.rotate_prob=1", "augmentation.scale_prob=1",
          "augmentation.flip_prob=0.5", "augmentation.intensity_prob=1", "augmentation.contrast.prob=1",
          "augmentation.gamma.prob=1", "augmentation.noise.prob=1", "augmentation.blur.prob=1",
          "augmentation.bias_field.prob=1"]


@pytest.mark.parametrize("mode", ["3d", "slices", "none"])
def test_draws_never_write_to_the_uncopied_cache(tmp_path, mode):
    """The training dataset hands its cached volumes to the random steps without a copy: no draw, with
    every augmentation on (or none, where the crop's view is all that is returned), may change them."""
    from medseg.engine.trainer import collate_plain, training_dataset

    root = write_msd(tmp_path / "ds", n_cases=2)
    cases = [{"image": str(p), "label": str(root / "labelsTr" / p.name)} for p in sorted((root / "imagesTr").iterdir())]
    overrides = FAST + (ALL_ON if mode != "none" else ONLY)
    if mode == "slices":
        overrides += ["network.spatial_dims=2", "network.slice_mode=true", "network.slice_axis=2",
                      "training.patch_size=[16,16]"]
    ds = training_dataset(cases, load_config("liver", overrides))
    ds.transform.set_random_state(seed=0)
    before = [{k: v.clone() if isinstance(v, torch.Tensor) else np.copy(v) for k, v in item.items()
               if isinstance(v, (torch.Tensor, np.ndarray))} for item in ds._cache]
    ops = [{k: len(v.applied_operations) for k, v in item.items() if isinstance(v, MetaTensor)} for item in ds._cache]
    batches = [collate_plain([ds[i % 2] for i in range(2)]) for _ in range(6)]
    assert batches[0]["image"].shape[:2] == (2, 1) and batches[0]["image"].ndim == (4 if mode == "slices" else 5)
    for item, saved, n_ops in zip(ds._cache, before, ops):
        for key, value in saved.items():
            now = item[key]
            assert (torch.equal(now, value) if isinstance(value, torch.Tensor) else np.array_equal(now, value)), key
        assert {k: len(v.applied_operations) for k, v in item.items() if isinstance(v, MetaTensor)} == n_ops
