"""medseg.predict on pictures with a 2D bundle: multi-page TIFFs page by page as the same pictures alone, the
outputs of each case under its own name, and one-line refusals of what a 2D network cannot take."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.errors import MedsegError
from tests.workflows.test_microscopy import SMALL_2D


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A 2D grey bundle whose untrained network (seed 0, as initialised) gives masks that follow the image."""
    import torch

    from medseg.bundle.export import export_bundle
    from medseg.config import load_config
    from medseg.networks import build_network
    from medseg.transforms import input_channels

    tmp = tmp_path_factory.mktemp("grey2d")
    cfg = load_config("em_2d_folder", SMALL_2D + [f"bundle.dir={tmp / 'bundles'}", "data.rgb=grey"])
    cfg = cfg.with_fitted(label_map={255: 1}, image_channels=1, colour_channels=1)
    torch.manual_seed(0)
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels))
    return export_bundle(cfg, tmp, net, {"membrane": {"dice": 0.5, "hd95_mm": 1.0, "assd_mm": 1.0, "cases": 1}})


def _picture(seed: int = 0, shape=(45, 70)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy // 6 + xx // 7) % 2) * 0.6 + rng.uniform(0, 0.4, shape)).astype(np.float32)  # values in [0, 1)


def test_float_multipage_tiff_pages_are_segmented_as_the_pages_alone(bundle, tmp_path):
    from medseg.workflows import predict

    page = _picture()
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "single.tif", page)
    tifffile.imwrite(inputs / "stack.tif", np.stack([page, page, page]), photometric="minisblack")
    predict.run(bundle, inputs, tmp_path / "out", instances=False)
    single = tifffile.imread(tmp_path / "out" / "single_seg.tif")
    stack = tifffile.imread(tmp_path / "out" / "stack_seg.tif")
    assert len(np.unique(single)) == 2  # a real mask, not a constant one
    assert stack.shape == (3, *page.shape)
    for p in stack:  # float pages kept as floats (not cut to 0/1 integers, a constant image)
        assert np.array_equal(p, single)


def test_multipage_tiff_pages_keep_the_files_pixel_size(bundle, tmp_path):
    from medseg.workflows import predict

    page = (_picture(1) * 200).astype(np.uint16)
    inputs = tmp_path / "in"
    inputs.mkdir()
    res = dict(resolution=(2.0, 2.0), resolutionunit="MICROMETER")  # 0.5 um pixels: resampled to the 1.0 grid
    tifffile.imwrite(inputs / "single.tif", page, **res)
    tifffile.imwrite(inputs / "stack.tif", np.stack([page, page]), photometric="minisblack", **res)
    tifffile.imwrite(inputs / "plain.tif", page)
    predict.run(bundle, inputs, tmp_path / "out", instances=False)
    single = tifffile.imread(tmp_path / "out" / "single_seg.tif")
    plain = tifffile.imread(tmp_path / "out" / "plain_seg.tif")
    assert not np.array_equal(single, plain)  # the pixel size matters to this bundle
    for p in tifffile.imread(tmp_path / "out" / "stack_seg.tif"):
        assert np.array_equal(p, single)


def test_instance_outputs_of_cases_with_seg_in_their_names_are_their_own(bundle, tmp_path):
    from medseg.workflows import predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in (1, 2):
        Image.fromarray((_picture(i) * 255).astype(np.uint8)).save(inputs / f"nuc_seg0{i}.png")
    predict.run(bundle, inputs, tmp_path / "out", instances=True)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["nuc_seg01_instances.tif", "nuc_seg01_objects.csv", "nuc_seg01_seg.png",
                     "nuc_seg02_instances.tif", "nuc_seg02_objects.csv", "nuc_seg02_seg.png"]


def test_instance_tiff_is_written_atomically(bundle, tmp_path, monkeypatch):
    from medseg.workflows import predict

    Image.fromarray((_picture(3) * 255).astype(np.uint8)).save(tmp_path / "s.png")

    def interrupted(path, *args, **kwargs):  # a write that stops half-way (disk full, a kill)
        Path(path).write_bytes(b"II*\x00")
        raise OSError("No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    written = predict.run(bundle, tmp_path / "s.png", tmp_path / "out", instances=True)
    assert written.failed and not (tmp_path / "out" / "s_instances.tif").exists()
    assert [p.name for p in (tmp_path / "out").iterdir() if "instances" in p.name] == []


@pytest.mark.parametrize("other", ["a.tif", "a.jpg"])
def test_two_files_of_one_case_name_are_refused_before_anything_is_written(bundle, tmp_path, other):
    from medseg.workflows import predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    grey = Image.fromarray((_picture(4) * 255).astype(np.uint8))
    grey.save(inputs / "a.png")
    grey.save(inputs / other)
    with pytest.raises(MedsegError, match=r"(a\.png and a\.tif|a\.jpg and a\.png) are both case 'a'"):
        predict.run(bundle, inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_3d_input_for_a_2d_network_is_refused_in_one_line(bundle, tmp_path):
    from medseg.workflows import predict

    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 6)).astype(np.float32), np.eye(4)),
             tmp_path / "vol.nii.gz")
    with pytest.raises(MedsegError, match=r"a 3D image \(32, 32, 6\), and this bundle's network is 2D"):
        predict.run(bundle, tmp_path / "vol.nii.gz", tmp_path / "out")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([_picture(5)] * 4), photometric="minisblack")
    with pytest.raises(MedsegError, match="segmented page by page with --format auto"):
        predict.run(bundle, tmp_path / "stack.tif", tmp_path / "out", format="nifti")


def test_tiff_outputs_carry_the_input_tiffs_pixel_size(bundle, tmp_path):
    """<case>_seg.tif and <case>_instances.tif had no resolution tags: opened in Fiji or QuPath beside the input
    they had 1-unit pixels, and areas measured on them were off by the pixel size squared."""
    from medseg.workflows import predict

    page = (_picture(4) * 200).astype(np.uint16)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "cells.tif", page, resolution=(2.0, 4.0), resolutionunit="MICROMETER")
    Image.fromarray((_picture(5) * 255).astype(np.uint8)).save(inputs / "plain.png")
    predict.run(bundle, inputs, tmp_path / "out", instances=True)
    for name in ("cells_seg.tif", "cells_instances.tif"):
        with tifffile.TiffFile(tmp_path / "out" / name) as tif:
            tags = tif.pages[0].tags
            assert tags["XResolution"].value == (2, 1) and tags["YResolution"].value == (4, 1), name
            assert int(tags["ResolutionUnit"].value) == int(tifffile.RESUNIT.MICROMETER), name
    with tifffile.TiffFile(tmp_path / "out" / "plain_instances.tif") as tif:  # a PNG has none to carry
        assert tif.pages[0].tags["XResolution"].value == (1, 1)


def test_a_picture_bundle_describes_its_data_as_pictures(bundle):
    """metadata.json and the bundle's README said "nibabel" data "resampled to [1.0, 1.0] mm" for PNG/TIFF."""
    import json

    meta = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    assert meta["data_type"] == "png/tiff"
    assert "resampled to [1.0, 1.0] um (pixel size" in meta["image_classes"] and " mm" not in meta["image_classes"]
    assert "resampled to [1.0, 1.0] um (pixel size" in (Path(bundle) / "docs" / "README.md").read_text()


def test_objects_of_a_page_stack_are_found_page_by_page(bundle, tmp_path):
    """A 2D network segments a multi-page TIFF page by page, so its objects are each page's own: the same
    objects under the same place on two pages were one 3D object (6-connected through the stack)."""
    import csv

    from medseg.workflows import predict

    page = _picture(2)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "single.tif", page)
    tifffile.imwrite(inputs / "stack.tif", np.stack([page, page]), photometric="minisblack")
    predict.run(bundle, inputs, tmp_path / "out", instances=True)
    single = list(csv.DictReader((tmp_path / "out" / "single_objects.csv").open()))
    stack = list(csv.DictReader((tmp_path / "out" / "stack_objects.csv").open()))
    n = len(single)
    assert n > 1 and len(stack) == 2 * n
    assert [r["page"] for r in stack] == ["0"] * n + ["1"] * n
    assert [int(r["label"]) for r in stack] == list(range(1, 2 * n + 1))
    keys = [k for k in single[0] if k != "label"]
    for k in (0, 1):
        assert [[r[key] for key in keys] for r in stack[k * n:(k + 1) * n]] == [[r[key] for key in keys] for r in single]
    pages = tifffile.imread(tmp_path / "out" / "stack_instances.tif")
    one = tifffile.imread(tmp_path / "out" / "single_instances.tif")
    assert pages.shape == (2, *one.shape)
    assert np.array_equal(pages[0], one) and np.array_equal(pages[1], np.where(one > 0, one + n, 0))
