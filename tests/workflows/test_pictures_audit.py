"""Pictures as microscopists have them (from an audit): TIFF pixel sizes by their unit (dpi is no pixel size),
colour TIFFs contiguous or planar, damaged or misnamed files in one line with nothing written, a thumbnail page
left out of a stack, very large PNGs read, and object areas in um^2 only where the picture states its pixel size."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medseg.data.pictures import has_pixel_size, is_colour, read_picture
from medseg.errors import MedsegError
from tests.workflows.test_predict_2d_outputs import _picture, bundle  # noqa: F401 (the module's 2D grey bundle)

ASYMMETRIC = (np.arange(300 * 200).reshape(300, 200) % 251).astype(np.uint8)  # 300 rows x 200 columns


@pytest.mark.parametrize("write, spacing, stated", [
    (lambda p: tifffile.imwrite(p, ASYMMETRIC, resolution=(72, 72), resolutionunit="INCH"), [1.0, 1.0], False),
    (lambda p: Image.fromarray(ASYMMETRIC).save(p, dpi=(300, 300)), [1.0, 1.0], False),  # PIL, Photoshop, scanners
    (lambda p: tifffile.imwrite(p, ASYMMETRIC, resolution=(2, 4), resolutionunit="CENTIMETER"), [5000.0, 2500.0], True),
    (lambda p: tifffile.imwrite(p, ASYMMETRIC, resolution=(2, 2), resolutionunit="MILLIMETER"), [500.0, 500.0], True),
    (lambda p: tifffile.imwrite(p, ASYMMETRIC, resolution=(2, 2), resolutionunit="MICROMETER"), [0.5, 0.5], True),
    (lambda p: tifffile.imwrite(p, ASYMMETRIC, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "um"}),
     [0.65, 0.65], True),
    (lambda p: tifffile.imwrite(p, ASYMMETRIC, imagej=True, resolution=(0.02, 0.02), metadata={"unit": "nm"}),
     [0.05, 0.05], True),
    (lambda p: tifffile.imwrite(p, ASYMMETRIC), [1.0, 1.0], False),
    (lambda p: tifffile.imwrite(p, ASYMMETRIC, imagej=True, resolution=(2, 2), metadata={"unit": "pixel"}),
     [1.0, 1.0], False),  # a unit that is no length: no pixel size, not um
    (lambda p: Image.fromarray(ASYMMETRIC).save(p, compression="tiff_lzw"), [1.0, 1.0], False),  # LZW: PIL decodes
])
def test_tiff_pixel_size_is_read_in_its_unit_and_dpi_is_no_pixel_size(tmp_path, write, spacing, stated):
    path = tmp_path / "cells.tif"
    write(path)
    array, found = read_picture(path)
    assert array.shape == (300, 200) and found == pytest.approx(spacing)
    assert has_pixel_size(path) is stated


def test_colour_tiffs_contiguous_or_planar_are_colour_and_a_grey_stack_is_not(tmp_path):
    rgb = np.stack([ASYMMETRIC, ASYMMETRIC // 2, ASYMMETRIC // 3], -1)
    tifffile.imwrite(tmp_path / "contig.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate",
                     metadata=None)
    narrow = np.zeros((4, 30, 3), np.uint8)  # four pages three pixels wide
    tifffile.imwrite(tmp_path / "narrow.tif", narrow, photometric="minisblack")
    for name in ("contig.tif", "planar.tif"):
        array, _ = read_picture(tmp_path / name)
        assert array.shape == (300, 200, 3) and np.array_equal(array, rgb) and is_colour(array, tmp_path / name)
    array, _ = read_picture(tmp_path / "narrow.tif")
    assert array.shape == (4, 30, 3) and not is_colour(array, tmp_path / "narrow.tif")
    for pages in (3, 4):  # what tifffile stores for a (3 or 4, rows, cols) array: one planar RGB(A) page
        stack = np.stack([ASYMMETRIC // (k + 1) for k in range(pages)])
        tifffile.imwrite(tmp_path / f"stack{pages}.tif", stack)
        array, _ = read_picture(tmp_path / f"stack{pages}.tif")
        assert np.array_equal(array, stack) and not is_colour(array, tmp_path / f"stack{pages}.tif")  # no page lost


def test_a_thumbnail_page_is_left_out_and_a_very_large_png_is_read(tmp_path):
    with tifffile.TiffWriter(tmp_path / "with_thumb.tif") as tif:
        tif.write(ASYMMETRIC)
        tif.write(ASYMMETRIC[:100, :100])
    array, _ = read_picture(tmp_path / "with_thumb.tif")
    assert np.array_equal(array, ASYMMETRIC)
    Image.new("L", (14000, 13000)).save(tmp_path / "slide.png")  # 182 Mpx: over PIL's default "bomb" limit
    array, _ = read_picture(tmp_path / "slide.png")
    assert array.shape == (13000, 14000)


def test_damaged_and_misnamed_pictures_are_one_line_with_nothing_written(bundle, tmp_path):  # noqa: F811
    from medseg.workflows import predict

    Image.fromarray(ASYMMETRIC).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    cases = {"png_named.tif": (data, "a PNG file with a .tif name; rename it to its format's suffix (.png)"),
             "cut.png": (data[:400], "cannot be read as a PNG (")}
    for name, (content, message) in cases.items():
        inputs = tmp_path / name.replace(".", "_")
        inputs.mkdir()
        (inputs / name).write_bytes(content)
        with pytest.raises(MedsegError, match=re.escape(message)):
            predict.run(bundle, inputs, tmp_path / "out", instances=True)
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_colour_tiff_is_read_as_the_same_colour_png_is(bundle, tmp_path):  # noqa: F811
    """The bundle turns colour into grey (data.rgb: grey): an RGB TIFF, contiguous or planar, gets the mask of the
    same picture as PNG (it was taken for a 300-page stack and failed inside MONAI)."""
    from medseg.workflows import predict

    rgb = np.stack([ASYMMETRIC, ASYMMETRIC // 2, ASYMMETRIC // 3], -1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "contig.tif", rgb, photometric="rgb")
    tifffile.imwrite(inputs / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate",
                     metadata=None)
    Image.fromarray(rgb).save(inputs / "same.png")
    predict.run(bundle, inputs, tmp_path / "out")
    png = np.asarray(Image.open(tmp_path / "out" / "same_seg.png"))
    assert png.shape == (300, 200) and len(np.unique(png)) == 2
    for name in ("contig", "planar"):
        assert np.array_equal(tifffile.imread(tmp_path / "out" / f"{name}_seg.tif"), png), name


def test_object_areas_are_in_um2_only_for_a_picture_that_states_its_pixel_size(bundle, tmp_path):  # noqa: F811
    from medseg.workflows import predict

    page = (_picture(3) * 255).astype(np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(page).save(inputs / "plain.png")
    tifffile.imwrite(inputs / "dpi.tif", page, resolution=(300, 300), resolutionunit="INCH")
    tifffile.imwrite(inputs / "sized.tif", page, resolution=(1.0, 1.0), resolutionunit="MICROMETER")
    predict.run(bundle, inputs, tmp_path / "out", instances=True)
    for name, physical in (("plain", False), ("dpi", False), ("sized", True)):
        with (tmp_path / "out" / f"{name}_objects.csv").open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
        assert ("area_um2" in reader.fieldnames) is physical and "area_px" in reader.fieldnames, name
        assert rows and all(int(r["area_px"]) > 0 for r in rows)
        if physical:  # 1 um pixels: the areas equal the pixel counts
            assert all(float(r["area_um2"]) == pytest.approx(int(r["area_px"])) for r in rows)


def test_a_picture_much_smaller_than_the_window_is_predicted_with_mirrored_borders(tmp_path):
    """Overlap-tile (reflect padding) on a 12x10 picture under a 64-pixel window: torch's reflect padding needs
    pads narrower than the image; the picture is mirrored out first, and its mask has the picture's size."""
    import torch

    from medseg.bundle.export import export_bundle
    from medseg.config import load_config
    from medseg.networks import build_network
    from medseg.transforms import input_channels
    from medseg.workflows import predict
    from tests.workflows.test_microscopy import SMALL_2D

    cfg = load_config("em_2d_folder", SMALL_2D + [f"bundle.dir={tmp_path / 'bundles'}", "data.rgb=grey",
                                                  "inference.padding_mode=reflect", "training.patch_size=[64,64]"])
    cfg = cfg.with_fitted(label_map={255: 1}, image_channels=1, colour_channels=1)
    torch.manual_seed(0)
    net = build_network(cfg.network, input_channels(cfg), len(cfg.data.labels))
    bundle = export_bundle(cfg, tmp_path, net, {"membrane": {"dice": 0.5, "hd95_mm": 1.0, "assd_mm": 1.0, "cases": 1}})
    inputs = tmp_path / "in"
    inputs.mkdir()
    small = (_picture(5, shape=(12, 10)) * 255).astype(np.uint8)
    Image.fromarray(small).save(inputs / "tiny.png")
    Image.fromarray(np.tile(small, (8, 8))).save(inputs / "tiled.png")  # 96x80: no pre-padding needed
    predict.run(bundle, inputs, tmp_path / "out")
    mask = np.asarray(Image.open(tmp_path / "out" / "tiny_seg.png"))
    assert mask.shape == (12, 10) and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(tmp_path / "out" / "tiled_seg.png")).shape == (96, 80)


def test_a_palette_mask_is_read_as_its_indices_by_every_label_reader(tmp_path):
    """CVAT and Pascal VOC export masks as palette PNGs: SimpleITK reads their palette's colours (3 channels, a
    red 255), which the planner refused as a colour image; the stored indices are the labels."""
    from medseg.data.images import read_image
    from medseg.data.labelmaps import read_labelmap
    from medseg.data.labels_io import read_labels
    from medseg.data.pictures import PictureReader

    indices = np.zeros((20, 30), np.uint8)
    indices[5:10, 5:15], indices[12:18, 20:28] = 1, 2
    mask = Image.fromarray(indices, mode="P")
    mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    mask.save(tmp_path / "cell.png")
    for read in (read_image, read_labels, read_labelmap):
        array = np.asarray(read(tmp_path / "cell.png").array)
        assert array.shape == (30, 20) and np.array_equal(array, indices.T), read.__name__  # (x, y), as for grey
    reader = PictureReader()
    data, _ = reader.get_data(reader.read(tmp_path / "cell.png"))  # what training's chain reads: the same
    assert np.array_equal(data, indices.T)


def test_evaluate_on_pictures_says_pixels_or_micrometres(tmp_path, capsys):
    from medseg.evaluate import main

    mask = np.zeros((40, 50), np.uint8)
    mask[10:30, 10:35] = 255
    moved = np.roll(mask, 3, axis=1)
    for folder, array in (("ref", mask), ("pred", moved)):
        (tmp_path / folder).mkdir()
        Image.fromarray(array).save(tmp_path / folder / "c1.png")
    assert main(["--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--labels", "cell=255",
                 "--output", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "HD95 (px)" in out and "ASSD (px)" in out and "HD95 (mm)" not in out
    assert "note: the reference pictures state no pixel size: distances are in pixels" in out
    with (tmp_path / "ev" / "metrics_per_case.csv").open(newline="") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["hd95_mm"]) == pytest.approx(3.0)  # 3 pixels, whatever the column says
    sized = tmp_path / "sized"
    for folder, array in (("ref", mask), ("pred", moved)):
        (sized / folder).mkdir(parents=True)
        tifffile.imwrite(sized / folder / "c1.tif", array, resolution=(2000.0, 2000.0), resolutionunit="CENTIMETER")
    assert main(["--pred", str(sized / "pred"), "--ref", str(sized / "ref"), "--labels", "cell=255",
                 "--output", str(sized / "ev")]) == 0
    out = capsys.readouterr().out
    assert "HD95 (µm)" in out and "note: the reference pictures are TIFFs with their pixel size: distances are in µm" in out
    with (sized / "ev" / "metrics_per_case.csv").open(newline="") as fh:
        assert float(next(csv.DictReader(fh))["hd95_mm"]) == pytest.approx(15.0)  # 3 pixels of 5 um


def test_the_planner_refuses_an_rgb_mask_as_training_does_and_takes_a_palette_mask(tmp_path):
    """A white-on-black mask saved as RGB passed medseg.plan and was then refused by training for every case;
    the planner reads masks as training does (a palette mask is its indices)."""
    from medseg.plan.fingerprint import fingerprint
    from medseg.plan.planner import dataset_cases

    rng = np.random.default_rng(0)
    for kind in ("rgb", "palette"):
        root = tmp_path / kind
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        for i in range(3):
            image = rng.integers(0, 255, (40, 50), dtype=np.uint8)
            mask = np.zeros((40, 50), np.uint8)
            mask[5 + i:20, 10:30] = 1
            Image.fromarray(image).save(root / "images" / f"c{i}.png")
            if kind == "rgb":
                Image.fromarray(np.stack([mask * 255] * 3, -1)).save(root / "labels" / f"c{i}.png")
            else:
                pal = Image.fromarray(mask, mode="P")
                pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
                pal.save(root / "labels" / f"c{i}.png")
    _, cases, labels = dataset_cases(tmp_path / "rgb", None)
    with pytest.raises(MedsegError, match=r"c0\.png: has 3 channels; a label map has one: save it as a greyscale"):
        fingerprint(cases, labels, "microscopy")
    _, cases, labels = dataset_cases(tmp_path / "palette", None)
    fp = fingerprint(cases, labels, "microscopy")
    assert all(e["label_values"] == [0, 1] for e in fp["cases"])


def test_the_planner_warns_that_instance_masks_would_become_one_class_per_object(tmp_path, caplog):
    from medseg.plan.planner import _fingerprint_dataset

    rng = np.random.default_rng(1)
    root = tmp_path / "instances"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(2):
        image = rng.integers(0, 255, (60, 80), dtype=np.uint8)
        mask = np.zeros((60, 80), np.uint16)
        for n in range(12):  # twelve separate nuclei, numbered 1..12 (DSB style)
            r, c = 5 + 18 * (n // 4), 5 + 19 * (n % 4)
            mask[r:r + 8, c:c + 8] = n + 1
        Image.fromarray(image).save(root / "images" / f"c{i}.png")
        tifffile.imwrite(root / "labels" / f"c{i}.tif", mask)
    _, _, fp, _ = _fingerprint_dataset(root, "microscopy", None, {})
    assert len(fp["labels"]) == 13
    assert "they look like instance masks (one number per object), planned here as 13 classes" in caplog.text


def test_every_reader_gives_a_tiff_the_pixel_size_training_reads(tmp_path):
    """Planning, label checks and evaluation read TIFFs with SimpleITK, training's chain with PictureReader: one
    pixel size for all (SimpleITK alone took an ImageJ um TIFF as 1 mm and a unit-less one as inches)."""
    from medseg.data.check import read_header
    from medseg.data.images import read_image
    from medseg.data.labelmaps import read_labelmap
    from medseg.data.labels_io import read_labels
    from medseg.data.pictures import PictureReader

    mask = np.zeros((30, 20), np.uint8)
    mask[5:10, 3:8] = 1
    cases = {"imagej": ({"imagej": True, "resolution": (1 / 0.65, 1 / 0.65), "metadata": {"unit": "um"}}, 0.65),
             "cm": ({"resolution": (2000, 2000), "resolutionunit": "CENTIMETER"}, 5.0),
             "no_unit": ({"resolution": (2, 2)}, 1.0), "dpi": ({"resolution": (300, 300), "resolutionunit": "INCH"}, 1.0)}
    for name, (tags, size) in cases.items():
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, mask, **tags)
        reader = PictureReader()
        _, meta = reader.get_data(reader.read(path))
        for affine in (read_image(path).affine, read_header(path).affine, read_labels(path).affine,
                       read_labelmap(path).affine, meta["affine"]):
            spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:2, :2], axis=0)
            assert spacing == pytest.approx([size, size]), name


def test_a_picture_task_gives_its_distances_in_pixels_or_micrometres_everywhere(tmp_path):
    """report.md, the bundle's README, MLflow's description and the tables said mm for pixel distances."""
    import yaml

    from medseg.bundle.export import _readme
    from medseg.config import load_config
    from medseg.evaluation.metrics import distance_unit, format_table
    from medseg.tracking import markdown_summary
    from medseg.workflows import report
    from tests.workflows.test_data_commands_audit import _run_folder

    nuclei = load_config("nuclei_2d")
    assert distance_unit(nuclei) == "px" and distance_unit(load_config("liver")) == "mm"
    assert distance_unit(load_config("nuclei_2d", ["preprocessing.spacing=[0.65, 0.65]"])) == "µm"
    summary = {"nucleus": {"dice": 0.8, "dice_std": 0.0, "hd95_mm": 3.0, "hd95_mm_std": 0.0, "assd_mm": 1.0,
                           "assd_mm_std": 0.0, "cases": 2}}
    assert "HD95 (px)" in format_table(summary, distance_unit(nuclei))
    readme = _readme(nuclei, summary, None)
    assert "Distances in pixels from the image spacing." in readme and "| class | Dice | HD95 (px) |" in readme
    described = markdown_summary(nuclei, {}, summary)
    assert "HD95 (px)" in described and "HD95 (mm)" not in described
    run = _run_folder(tmp_path)
    (run / "cases.json").unlink()  # no overlays: the run's images are volumes
    (run / "config.yaml").write_text(yaml.safe_dump(nuclei.to_dict()))
    report.run(run)
    text = (run / "report.md").read_text()
    assert "distances below are in px" in text and "| HD95 (px) | ASSD (px) |" in text and "(mm)" not in text


def test_a_tiff_with_a_pixel_size_for_a_bundle_trained_without_one_gets_a_warning(bundle, tmp_path, caplog):  # noqa: F811
    from medseg.bundle.load import load_bundle
    from medseg.workflows.predict import check_input

    loaded = load_bundle(bundle, "cpu")
    assert loaded.cfg.distance_unit() == "px"
    tifffile.imwrite(tmp_path / "sized.tif", ASYMMETRIC, resolution=(2.0, 2.0), resolutionunit="MICROMETER")
    tifffile.imwrite(tmp_path / "plain.tif", ASYMMETRIC)
    check_input(loaded, tmp_path / "plain.tif")
    assert "pixel size" not in caplog.text
    check_input(loaded, tmp_path / "sized.tif")
    assert "sized.tif: states a pixel size of 0.5x0.5 um, and this bundle was trained on pictures without one" in caplog.text
