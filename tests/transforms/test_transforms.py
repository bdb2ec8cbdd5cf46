from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, Spacingd

from medseg.config import load_config
from medseg.transforms import build_eval_transforms, build_train_transforms, ct_window
from medseg.transforms.resample import ScaleSpacingd


def _volume(shape=(40, 30, 12), spacing=(0.8, 0.9, 2.5)):
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = torch.diag(torch.tensor(spacing, dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-20.0, 5.0, 30.0])
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))
    image = MetaTensor(torch.from_numpy(np.sin(grid[0] / 7) + grid[2] / 30)[None].float(), affine=affine)
    label = MetaTensor(torch.from_numpy((grid[0] > 12) * 1 + (grid[2] > 15) * 1)[None].to(torch.uint8), affine=affine)
    return {"image": image, "label": label}


def test_scale_spacing_geometry_and_inverse():
    data = _volume()
    t = ScaleSpacingd(keys=["image", "label"], pixdim=[1.5, 1.5, 1.5], mode=["bilinear", "nearest"])
    out = t(data)
    assert tuple(out["image"].shape[1:]) == (21, 18, 20)  # round(n * s / 1.5)
    spacing = torch.linalg.norm(out["image"].affine[:3, :3], dim=0)
    torch.testing.assert_close(spacing, torch.tensor([40 * 0.8 / 21, 30 * 0.9 / 18, 12 * 2.5 / 20], dtype=torch.float64))
    # the physical extent (outer voxel corners) is unchanged
    for a, n in ((data["image"].affine, data["image"].shape[1:]), (out["image"].affine, out["image"].shape[1:])):
        corner = a[:3, :3] @ torch.full((3,), -0.5, dtype=torch.float64) + a[:3, 3]
        far = a[:3, :3] @ (torch.tensor(n, dtype=torch.float64) - 0.5) + a[:3, 3]
        torch.testing.assert_close(corner, torch.tensor([-20.4, 4.55, 28.75], dtype=torch.float64))
        torch.testing.assert_close(far, torch.tensor([11.6, 31.55, 58.75], dtype=torch.float64))
    assert set(torch.unique(out["label"]).tolist()) == {0, 1, 2} and out["label"].dtype == torch.uint8
    back = t.inverse(out)
    assert back["image"].shape == data["image"].shape
    torch.testing.assert_close(back["image"].affine, data["image"].affine)
    assert (back["label"] == data["label"]).float().mean() > 0.97


def test_scale_spacing_of_column_major_input():
    """NIfTI data as nibabel reads it (column-major) is resampled through its transposed view: same values."""
    data = _volume()
    column_major = {k: MetaTensor(v.as_tensor()[0].permute(2, 1, 0).contiguous().permute(2, 1, 0)[None], affine=v.affine)
                    for k, v in data.items()}
    assert not column_major["image"].is_contiguous()
    t = ScaleSpacingd(keys=["image", "label"], pixdim=[1.5, 1.3, 1.7], mode=["bilinear", "nearest"])
    rows, cols = t(dict(data)), t(column_major)
    assert cols["image"].shape == rows["image"].shape == (1, 21, 21, 18)
    torch.testing.assert_close(cols["image"].as_tensor(), rows["image"].as_tensor(), atol=1e-6, rtol=1e-6)
    assert torch.equal(cols["label"].as_tensor(), rows["label"].as_tensor()) and cols["label"].dtype == torch.uint8
    torch.testing.assert_close(cols["image"].affine, rows["image"].affine)
    back = t.inverse(cols)
    assert back["label"].shape == data["label"].shape and (back["label"] == data["label"]).float().mean() > 0.97


def _error_against_truth(img: MetaTensor) -> float:
    """Mean |value - analytic value| over interior voxels, at each voxel centre's world position."""
    n = img.shape[1:]
    idx = torch.stack(torch.meshgrid(*[torch.arange(k, dtype=torch.float64) for k in n], indexing="ij")).reshape(3, -1)
    world = img.affine[:3, :3] @ idx + img.affine[:3, 3:4]
    truth = torch.sin((world[0] + 20.0) / 7) + (world[2] - 30.0) / 30
    err = (img[0].reshape(-1).double() - truth).abs().reshape(n)
    return float(err[2:-2, 2:-2, 2:-2].mean())


def test_scale_spacing_is_as_accurate_as_monai_spacing():
    data = _volume()
    ours = ScaleSpacingd(keys="image", pixdim=[1.6, 1.8, 2.5])(dict(data))["image"]
    theirs = Spacingd(keys="image", pixdim=[1.6, 1.8, 2.5])(dict(data))["image"]
    assert _error_against_truth(ours) < 0.02
    assert _error_against_truth(ours) <= _error_against_truth(theirs) + 0.01


def test_invertd_through_the_eval_chain_returns_the_original_grid(tmp_path):
    import nibabel as nib

    from tests.conftest import synthetic_case

    image, _, affine = synthetic_case(shape=(30, 26, 14), spacing=(0.9, 1.1, 2.5))
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    cfg = load_config("liver")
    chain = build_eval_transforms(cfg, with_label=False)
    data = chain({"image": str(tmp_path / "ct.nii.gz")})
    a_min, a_max = ct_window(cfg.preprocessing.window)
    assert float(data["image"].min()) >= 0.0 and float(data["image"].max()) <= 1.0
    data["pred"] = MetaTensor(data["image"].clone(), meta=data["image"].meta,
                              applied_operations=data["image"].applied_operations)
    back = Invertd(keys="pred", transform=chain, orig_keys="image")(data)["pred"]
    assert tuple(back.shape[1:]) == image.shape
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-5)
    expected = np.clip((image - a_min) / (a_max - a_min), 0, 1)
    assert np.abs(back[0].numpy() - expected).mean() < 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_training_chain_is_reproducible_with_a_seed(tmp_path, seed):
    import nibabel as nib
    from monai.utils import set_determinism

    from tests.conftest import synthetic_case

    image, label, affine = synthetic_case()
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "l.nii.gz")
    cfg = load_config("liver", ["training.patch_size=[16,16,16]"])
    case = {"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")}
    outs = []
    for _ in range(2):
        set_determinism(seed=seed)
        chain = build_train_transforms(cfg)
        chain.set_random_state(seed=seed)
        outs.append(chain(dict(case))[0]["image"])
    torch.testing.assert_close(outs[0], outs[1])
    assert tuple(outs[0].shape) == (1, 16, 16, 16)
