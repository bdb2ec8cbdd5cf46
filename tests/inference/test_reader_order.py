"""The chain's LoadImaged tries its readers last first and logs "unable to load" (INFO, what a stock
``monai.bundle run`` shows) for each that cannot read the file: a volume task's NIfTI case is read by the first
reader tried, a picture task's PNG likewise."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
from PIL import Image

from medseg.config import load_config
from medseg.inference import build_chain
from tests.conftest import FAST, synthetic_case


def _load(cfg, path, caplog):
    loader = build_chain(cfg).preprocessing.transforms[0]
    with caplog.at_level(logging.INFO, logger="LoadImage"):
        out = loader({"image": str(path)})
    return out, [r.getMessage() for r in caplog.records if "unable to load" in r.getMessage()]


def test_a_volume_tasks_nifti_case_is_read_without_failed_readers(tmp_path, caplog):
    image, _, affine = synthetic_case()
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    out, failed = _load(load_config("liver", FAST), tmp_path / "ct.nii.gz", caplog)
    assert tuple(out["image"].shape) in {image.shape, image.shape[::-1]} and not failed, failed


def test_a_picture_tasks_png_is_read_without_failed_readers(tmp_path, caplog):
    Image.fromarray(np.arange(35 * 20, dtype=np.uint8).reshape(35, 20)).save(tmp_path / "cell.png")
    cfg = load_config("em_2d_folder", ["network.channels=[4,8,16]"]).with_fitted(image_channels=1, colour_channels=1)
    out, failed = _load(cfg, tmp_path / "cell.png", caplog)
    assert tuple(out["image"].shape[:2]) == (20, 35) and not failed, failed
