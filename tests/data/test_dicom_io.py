"""DICOM series reading: geometry against the construction and SimpleITK, checks that refuse wrong volumes,
compressed transfer syntaxes, enhanced multi-frame, the files that ship in the pydicom wheel, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

from medseg.data.dicom import find_series, read_dicom, series_headers_ok, write_series
from medseg.errors import MedsegError

SHAPE = (12, 10, 7)


def oblique_affine(spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0), degrees=30.0) -> np.ndarray:
    """Index -> LPS affine rotated about two axes (a double-oblique acquisition)."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rx @ ry @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def volume(seed=0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.float64)


def corners(shape) -> np.ndarray:
    return np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]).T


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def sitk_world(image: sitk.Image, shape) -> np.ndarray:
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in c[:3]]) for c in corners(shape).T]).T


def test_oblique_reversed_series_matches_construction_sitk_and_monai(tmp_path):
    vol, affine = volume(), oblique_affine()
    # file names and InstanceNumbers run against the geometry
    write_series(tmp_path / "s", vol, affine, file_order=list(range(SHAPE[2]))[::-1])
    got = read_dicom(tmp_path / "s")
    assert got.array.shape == SHAPE and got.array.dtype == np.int16
    np.testing.assert_array_equal(got.array, vol)  # HU after RescaleIntercept -1024
    np.testing.assert_allclose(got.affine, affine, atol=1e-5)
    image = sitk_series(tmp_path / "s")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), got.array)
    np.testing.assert_allclose((got.affine @ corners(SHAPE))[:3], sitk_world(image, SHAPE), atol=1e-4)
    # RAS for NIfTI tools and MONAI: x and y negated
    from monai.transforms import LoadImage

    monai = LoadImage(image_only=True)(str(tmp_path / "s"))
    np.testing.assert_allclose(np.asarray(monai.affine), got.affine_ras, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(monai), got.array)
    assert np.allclose(got.affine_ras[:2], -affine[:2], atol=1e-5) and np.allclose(got.affine_ras[2], affine[2], atol=1e-5)


def test_slices_stacked_against_normal_are_reordered(tmp_path):
    # third axis pointing against the normal: reading stacks along +normal, so voxel k maps to nz-1-k
    affine = oblique_affine()
    affine[:3, 2] *= -1
    vol = volume(1)
    write_series(tmp_path / "s", vol, affine)
    got = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(got.array, vol[:, :, ::-1])
    world_expected = affine @ corners(SHAPE)
    flipped = corners(SHAPE)
    flipped[2] = SHAPE[2] - 1 - flipped[2]
    np.testing.assert_allclose(got.affine @ flipped, world_expected, atol=1e-4)


def test_fractional_rescale_gives_float_values(tmp_path):
    vol = np.round(volume(2) * 4) / 4  # quarter-HU steps
    write_series(tmp_path / "s", vol, oblique_affine(), slope=0.25, intercept=-1000.5)
    got = read_dicom(tmp_path / "s")
    assert got.array.dtype == np.float32
    np.testing.assert_allclose(got.array, vol, atol=1e-3)


def positions(affine, nz=SHAPE[2]):
    return np.array([affine[:3, 3] + k * affine[:3, 2] for k in range(nz)])


@pytest.mark.parametrize("problem, message", [
    ("uneven", "uneven slice spacing"), ("missing", "missing slices"), ("tilt", "gantry tilt"),
    ("duplicate", "share a position"),
])
def test_irregular_series_refused(tmp_path, problem, message):
    affine = oblique_affine()
    pos = positions(affine)
    if problem == "uneven":
        pos[4:] += 0.6 * affine[:3, 2]
    elif problem == "missing":
        pos = np.delete(positions(affine, SHAPE[2] + 1), 3, axis=0)
    elif problem == "tilt":
        pos += np.outer(np.arange(SHAPE[2]), affine[:3, 1] / np.linalg.norm(affine[:3, 1]) * 0.5)
    else:
        pos[3] = pos[2]
    write_series(tmp_path / "s", volume(), affine, positions=pos)
    with pytest.raises(MedsegError, match=message) as err:
        read_dicom(tmp_path / "s")
    assert str(tmp_path / "s") in str(err.value)
    with pytest.raises(MedsegError, match=message):
        series_headers_ok(tmp_path / "s")  # the header-only check used before training refuses it too


def test_mixed_orientations_refused(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.1"
    write_series(tmp_path / "s", volume(), oblique_affine(), series_uid=uid, prefix="a")
    write_series(tmp_path / "s", volume(shape=(12, 10, 1)), oblique_affine(degrees=10.0), series_uid=uid, prefix="b")
    with pytest.raises(MedsegError, match="mixed orientations"):
        read_dicom(tmp_path / "s")


def test_several_series_listed_then_picked(tmp_path):
    write_series(tmp_path / "f", volume(0), oblique_affine(), series_uid="1.2.3.4", description="arterial", prefix="a")
    write_series(tmp_path / "f", volume(1, (12, 10, 3)), np.diag([1.0, 1.0, 3.0, 1.0]), series_uid="1.2.3.5",
                 description="venous", prefix="b")
    with pytest.raises(MedsegError) as err:
        read_dicom(tmp_path / "f")
    text = str(err.value)
    assert "1.2.3.4 (CT, 7 slices, 12x10 px of 0.7x0.8 mm, slice 2.5 mm)" in text
    assert "1.2.3.5 (CT, 3 slices, 12x10 px of 1x1 mm, slice 3 mm)" in text
    assert "--series" in text and "ANON" not in text and "arterial" not in text  # no free-text description
    got = read_dicom(tmp_path / "f", series_uid="1.2.3.5")
    np.testing.assert_array_equal(got.array, volume(1, (12, 10, 3)))
    assert {s.uid: s.frames for s in find_series(tmp_path / "f").values()} == {"1.2.3.4": 7, "1.2.3.5": 3}
    with pytest.raises(MedsegError, match="no series with UID 9.9"):
        read_dicom(tmp_path / "f", series_uid="9.9")


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_compressed_series_decode_exactly(tmp_path, syntax):
    # RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless: encoded by pydicom, decoded by the pylibjpeg/pyjpegls plugins
    vol, affine = volume(3, (40, 36, 4)), oblique_affine()  # JPEG 2000 needs tiles larger than its 6 resolutions
    write_series(tmp_path / "s", vol, affine, transfer_syntax=syntax)
    import pydicom

    assert pydicom.dcmread(next((tmp_path / "s").iterdir())).file_meta.TransferSyntaxUID == syntax
    got = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(got.array, vol)
    np.testing.assert_allclose(got.affine, affine, atol=1e-5)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_implicit.dcm"])
def test_pydicom_wheel_files_decode_like_the_uncompressed_original(name):
    ref = read_dicom(Path(get_testdata_file("MR_small.dcm")))
    got = read_dicom(Path(get_testdata_file(name)))
    np.testing.assert_array_equal(got.array, ref.array)
    np.testing.assert_allclose(got.affine, ref.affine)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "JPGExtended.dcm"])
def test_single_slices_match_simpleitk(name):
    path = get_testdata_file(name)
    got = read_dicom(Path(path))
    image = sitk.ReadImage(path)
    ref = sitk.GetArrayFromImage(image)
    ref = ref.transpose(2, 1, 0) if ref.ndim == 3 else ref.T[..., None]
    assert got.array.shape == ref.shape and got.array.shape[2] == 1
    # JPGExtended is lossy 12-bit JPEG: two decoders may round differently by one
    tolerance = 1 if name == "JPGExtended.dcm" else 0
    assert np.abs(got.array.astype(np.int64) - ref).max() <= tolerance
    origin = np.array(image.GetOrigin())[:3]
    np.testing.assert_allclose(got.affine[:3, 3], origin, atol=1e-4)
    far = image.TransformIndexToPhysicalPoint([got.array.shape[0] - 1, got.array.shape[1] - 1, 0])
    np.testing.assert_allclose(got.affine @ [got.array.shape[0] - 1, got.array.shape[1] - 1, 0, 1], [*far, 1], atol=1e-4)
    if name == "CT_small.dcm":  # RescaleIntercept -1024 applied to the stored values; SliceThickness as third spacing
        import pydicom

        stored = pydicom.dcmread(path).pixel_array.astype(np.int64)
        np.testing.assert_array_equal(got.array[..., 0].T, stored - 1024)
        assert got.spacing[2] == pytest.approx(5.0)


def test_enhanced_multiframe_matches_single_frame_series(tmp_path):
    import highdicom as hd
    import pydicom

    vol, affine = volume(4), oblique_affine()
    write_series(tmp_path / "s", vol, affine)
    legacy = [pydicom.dcmread(p) for p in sorted((tmp_path / "s").iterdir())]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
    )
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "enhanced.dcm")
    for source in (tmp_path / "mf", tmp_path / "mf" / "enhanced.dcm"):
        got = read_dicom(source)
        np.testing.assert_allclose(got.array, vol)
        np.testing.assert_allclose(got.affine, affine, atol=1e-4)


def test_bad_files_named(tmp_path):
    write_series(tmp_path / "s", volume(), oblique_affine())
    empty = tmp_path / "s" / "zero.dcm"
    empty.write_bytes(b"")
    with pytest.raises(MedsegError, match=r"zero\.dcm: zero-length file"):
        read_dicom(tmp_path / "s")
    empty.unlink()
    (tmp_path / "s" / "notes.txt").write_text("exported by PACS")
    with pytest.raises(MedsegError, match=r"notes\.txt: not a DICOM file"):
        read_dicom(tmp_path / "s")
    (tmp_path / "s" / "notes.txt").unlink()
    first = sorted((tmp_path / "s").iterdir())[0]
    data = first.read_bytes()
    first.write_bytes(data[: len(data) - 50])  # pixel data cut short
    with pytest.raises(MedsegError, match=rf"{first.name}: pixel data cannot be decoded"):
        read_dicom(tmp_path / "s")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / "mr.dcm")
    with pytest.raises(MedsegError, match=r"mr\.dcm"):
        read_dicom(tmp_path / "mr.dcm")
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(MedsegError, match=r"nopix\.dcm: no pixel data"):
        read_dicom(tmp_path / "nopix.dcm")


# --- images in other formats, conversion, privacy -------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_image_round_trip_keeps_geometry(tmp_path, suffix):
    from medseg.data.images import read_image, write_image

    vol, affine = volume(5).astype(np.int16), oblique_affine()
    out = write_image(vol, affine, tmp_path / f"img{suffix}")
    back = read_image(out)
    np.testing.assert_array_equal(back.array, vol)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_allclose(back.affine @ corners(SHAPE), affine @ corners(SHAPE), atol=1e-4)
    if suffix.startswith(".nii"):  # what NIfTI tools (and 3D Slicer) see: the RAS affine in the header
        import nibabel as nib

        np.testing.assert_allclose(nib.load(out).affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, atol=1e-5)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_2d_round_trip_and_refusals(tmp_path, suffix):
    from medseg.data.images import read_image, write_image

    mask = (np.random.default_rng(6).random((20, 14)) > 0.5).astype(np.uint8) * 255
    affine = np.diag([0.5, 0.25, 1.0])
    back = read_image(write_image(mask, affine, tmp_path / f"m{suffix}"))
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.spacing, (0.5, 0.25), atol=1e-6)
    shifted = affine.copy()
    shifted[:2, 2] = (3.0, 4.0)
    with pytest.raises(MedsegError, match="cannot store origin"):
        write_image(mask, shifted, tmp_path / f"shifted{suffix}")
    with pytest.raises(MedsegError, match="PNG/TIFF hold 2D"):
        write_image(volume().astype(np.int16), oblique_affine(), tmp_path / f"v{suffix}")


def test_convert_dicom_to_nifti_and_nrrd_keeps_geometry_and_no_identifiers(tmp_path, capsys):
    import nibabel as nib

    from medseg.convert import main as convert
    from medseg.data.__main__ import main as check

    vol, affine = volume(7), oblique_affine()
    series = tmp_path / "export" / "case01"
    write_series(series, vol, affine, patient_name="DOE^JANE", patient_id="PID-4711", file_order=[3, 1, 0, 6, 2, 5, 4])
    with caplog_all() as records:
        assert convert([str(series), str(tmp_path / "ct.nii.gz")]) == 0
        assert convert([str(series), str(tmp_path / "ct.nrrd")]) == 0
    nii = nib.load(tmp_path / "ct.nii.gz")
    np.testing.assert_array_equal(np.asarray(nii.dataobj), vol)
    np.testing.assert_allclose(nii.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, atol=1e-5)
    nrrd = sitk.ReadImage(str(tmp_path / "ct.nrrd"))
    np.testing.assert_allclose(sitk_world(nrrd, SHAPE), (affine @ corners(SHAPE))[:3], atol=1e-4)
    # a label on the series' grid makes a dataset; check must pass and say nothing identifying either
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "labels").mkdir()
    shutil.copytree(series, tmp_path / "ds" / "images" / "case01")
    from medseg.data.images import write_image

    write_image((vol > 500).astype(np.uint8), affine, tmp_path / "ds" / "labels" / "case01.nii.gz")
    with caplog_all() as more:
        assert check(["check", str(tmp_path / "ds"), "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr()
    written = b"".join(p.read_bytes() for p in (tmp_path / "ct.nii.gz", tmp_path / "ct.nrrd", tmp_path / "report.json"))
    import gzip

    written += gzip.decompress((tmp_path / "ct.nii.gz").read_bytes())
    text = out.out + out.err + "".join(r.getMessage() for r in records + more) + written.decode("latin-1")
    for secret in ("DOE", "JANE", "PID-4711", "19700101", "ACCPID-4711", "General Hospital"):
        assert secret not in text
    import json

    assert "OK: 0 of 1" in out.out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["cases"][0]["case"] == "case01" and report["cases"][0]["orientation"] == "".join(
        nib.orientations.aff2axcodes(nii.affine))


class caplog_all:
    """Collect every log record from every logger while the block runs."""

    def __enter__(self):
        import logging

        self.records: list = []
        self.handler = logging.Handler(level=logging.DEBUG)
        self.handler.emit = self.records.append
        logging.getLogger().addHandler(self.handler)
        self._level = logging.getLogger().level
        logging.getLogger().setLevel(logging.DEBUG)
        return self.records

    def __exit__(self, *exc):
        import logging

        logging.getLogger().removeHandler(self.handler)
        logging.getLogger().setLevel(self._level)


def test_convert_bad_input_exit_2_without_traceback(tmp_path, capsys):
    from medseg.convert import main as convert

    write_series(tmp_path / "s", volume(), oblique_affine())
    (tmp_path / "s" / "empty.dcm").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert convert([str(tmp_path / "s"), str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "empty.dcm: zero-length file" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.nii.gz").exists()
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before  # input untouched
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image at all")
    assert convert([str(tmp_path / "junk.nii.gz"), str(tmp_path / "o.nrrd")]) == 2
    assert "junk.nii.gz: cannot be read as an image" in capsys.readouterr().err
    with pytest.raises(MedsegError):
        convert([str(tmp_path / "junk.nii.gz"), str(tmp_path / "o.nrrd"), "--debug"])


def test_convert_picks_series_and_dicom_seg_to_labels(tmp_path):
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    from medseg.convert import main as convert
    from medseg.data.images import read_image

    vol, affine = volume(8), oblique_affine()
    write_series(tmp_path / "f", vol, affine, series_uid="1.2.3.10", prefix="a")
    write_series(tmp_path / "f", volume(9), np.diag([1.0, 1.0, 2.0, 1.0]), series_uid="1.2.3.11", prefix="b")
    assert convert([str(tmp_path / "f"), str(tmp_path / "a.mha")]) == 2
    assert convert([str(tmp_path / "f"), str(tmp_path / "a.mha"), "--series", "1.2.3.10"]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "a.mha").array, vol)
    # a folder as output: every series, named by a hash of its UID (no patient data in file names)
    from medseg.data.dicom import hashed_uid

    assert convert([str(tmp_path / "f"), str(tmp_path / "all") + "/"]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(
        f"{hashed_uid(u)}.nii.gz" for u in ("1.2.3.10", "1.2.3.11"))
    np.testing.assert_array_equal(read_image(tmp_path / "all" / f"{hashed_uid('1.2.3.11')}.nii.gz").array, volume(9))
    # a DICOM SEG made by highdicom on that series converts to a label map on the series' grid
    sources = sorted((pydicom.dcmread(p) for p in (tmp_path / "f").glob("a*.dcm")), key=lambda d: d.InstanceNumber)
    mask = (vol > 800).transpose(2, 1, 0)  # (slice, row, column) in the order of `sources` (k = 0..)
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="hot", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint8), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="t", manufacturer_model_name="t", software_versions="1", device_serial_number="1")
    seg.save_as(tmp_path / "seg.dcm")
    assert convert([str(tmp_path / "seg.dcm"), str(tmp_path / "seg.nii.gz")]) == 0
    labels = read_image(tmp_path / "seg.nii.gz")
    from medseg.data.check import Header, grids_match

    assert grids_match(Header(vol.shape, affine, False), Header(labels.array.shape, labels.affine, False), allow_reorder=True)
    # same voxels once the axis order is matched: world position of every labelled voxel agrees
    lab_world = labels.affine @ np.vstack([np.argwhere(labels.array > 0).T, np.ones((1, int((labels.array > 0).sum())))])
    ref_world = affine @ np.vstack([np.argwhere(vol > 800).T, np.ones((1, int((vol > 800).sum())))])
    key = lambda w: sorted(map(tuple, np.round(w[:3].T, 2)))  # noqa: E731
    assert key(lab_world) == key(ref_world)


@pytest.mark.parametrize("signed", [1, 0])
def test_12_bit_pixels_match_pydicom(tmp_path, signed):
    """The uncompressed fast path masks / sign-extends BitsStored < BitsAllocated exactly as pydicom does."""
    import pydicom

    write_series(tmp_path / "s", volume(10), oblique_affine(), intercept=0.0 if signed else -1024.0)
    expected = []
    for path in sorted((tmp_path / "s").iterdir()):
        ds = pydicom.dcmread(path)
        raw = np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2").copy()
        raw = (raw & 0x0FFF) | (0x5000 if not signed else 0)  # 12 stored bits, junk in the unused high bits
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
        ds.PixelData = raw.astype("<u2").tobytes()
        ds.save_as(path)
        expected.append((ds.InstanceNumber, pydicom.dcmread(path).pixel_array.astype(np.int64) + int(ds.RescaleIntercept)))
    got = read_dicom(tmp_path / "s")
    reference = np.stack([plane for _, plane in sorted(expected)]).transpose(2, 1, 0)
    np.testing.assert_array_equal(got.array, reference)


def test_non_image_objects_beside_a_series_are_ignored(tmp_path):
    import pydicom

    vol, affine = volume(11), oblique_affine()
    write_series(tmp_path / "s", vol, affine)
    report = pydicom.dcmread(get_testdata_file("test-SR.dcm"))  # a structured report in the same export folder
    report.save_as(tmp_path / "s" / "report.dcm")
    got = read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(got.array, vol)
    assert len(find_series(tmp_path / "s")) == 1


# --- the one DICOM path: MONAI's loader, the bundle's scripts/ copy ------------------------------------------

def test_reader_gives_what_itkreader_gives_and_hands_on_other_files(tmp_path):
    import nibabel as nib
    from monai.transforms import LoadImage

    from medseg.data.dicom_reader import READER_PATH

    vol, affine = volume(12), oblique_affine()
    write_series(tmp_path / "s", vol, affine, file_order=list(range(SHAPE[2]))[::-1])
    itk = LoadImage(image_only=True, reader="ITKReader")(str(tmp_path / "s"))
    ours = LoadImage(image_only=True, reader=READER_PATH)(str(tmp_path / "s"))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(itk))
    np.testing.assert_array_equal(np.asarray(ours), vol)
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(itk.affine), atol=1e-6)
    assert set(ours.meta) == set(itk.meta)
    for key in ("spacing", "spatial_shape", "original_affine"):
        np.testing.assert_allclose(np.asarray(ours.meta[key], float), np.asarray(itk.meta[key], float), atol=1e-6)
    assert np.isnan(ours.meta["original_channel_dim"]) and ours.meta["space"] == itk.meta["space"] == "RAS"
    # a NIfTI goes to the reader LoadImage picks itself: same voxels, affine and metadata keys
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([-0.7, -0.8, 2.5, 1.0])), tmp_path / "x.nii.gz")
    plain = LoadImage(image_only=True)(str(tmp_path / "x.nii.gz"))
    through = LoadImage(image_only=True, reader=READER_PATH)(str(tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(np.asarray(through), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(through.affine), np.asarray(plain.affine))
    assert set(through.meta) == set(plain.meta)
    # two series folders as the channels of one case: stacked first, as MONAI stacks files
    write_series(tmp_path / "t", volume(13), affine)
    both = LoadImage(image_only=True, reader=READER_PATH)([str(tmp_path / "s"), str(tmp_path / "t")])
    assert both.shape == (2, *SHAPE)
    np.testing.assert_array_equal(np.asarray(both[1]), volume(13))


def test_loader_refuses_a_tilted_series_instead_of_falling_back_to_itk(tmp_path):
    from monai.transforms import LoadImage, LoadImaged

    from medseg.config import load_config
    from medseg.data.dicom_reader import READER_PATH
    from medseg.errors import user_error
    from medseg.transforms import preprocess_spec

    affine = oblique_affine()
    pos = positions(affine) + np.outer(np.arange(SHAPE[2]), affine[:3, 1] / np.linalg.norm(affine[:3, 1]) * 0.5)
    write_series(tmp_path / "s", volume(), affine, positions=pos)
    assert LoadImage(image_only=True, reader="ITKReader")(str(tmp_path / "s")).shape == SHAPE  # ITK stacks it anyway
    spec = preprocess_spec(load_config("liver", ["preprocessing.spacing=[1.5, 1.5, 2.0]"]), ("image",))
    readers = spec[0]["reader"] if isinstance(spec[0]["reader"], list) else [spec[0]["reader"]]
    assert spec[0]["_target_"] == "LoadImaged" and READER_PATH in readers
    with pytest.raises(Exception) as err:
        LoadImaged(keys="image", reader=readers, image_only=True)({"image": str(tmp_path / "s")})
    assert "gantry tilt" in str(user_error(err.value))


def test_bundle_scripts_read_series_on_stock_monai(tmp_path, monkeypatch):
    """The bundle's scripts/medseg_data copy reads a series like medseg does, with every medseg import blocked."""
    import sys

    from monai.transforms import LoadImage

    from medseg.bundle.export import _bundle_spec, _write_scripts
    from medseg.config import load_config
    from medseg.data.dicom_reader import BUNDLE_READER, READER_PATH
    from medseg.transforms import preprocess_spec

    vol, affine = volume(14), oblique_affine()
    write_series(tmp_path / "s", vol, affine, file_order=[3, 1, 0, 6, 2, 5, 4])
    pos = positions(affine)
    pos[4:] += 0.6 * affine[:3, 2]
    write_series(tmp_path / "uneven", vol, affine, positions=pos)
    expected = LoadImage(image_only=True, reader=READER_PATH)(str(tmp_path / "s"))
    spec = _bundle_spec(preprocess_spec(load_config("liver", ["preprocessing.spacing=[1.5, 1.5, 2.0]"]), ("image",)))
    reader = spec[0]["reader"]
    assert BUNDLE_READER in (reader if isinstance(reader, list) else [reader]) and READER_PATH not in str(reader)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    _write_scripts(bundle)
    assert {"medseg_data/dicom.py", "medseg_data/dicom_reader.py", "errors.py"} <= {
        p.relative_to(bundle / "scripts").as_posix() for p in (bundle / "scripts").rglob("*.py")}
    monkeypatch.syspath_prepend(str(bundle))
    for name in [m for m in sys.modules if m.split(".")[0] in ("medseg", "scripts")]:
        monkeypatch.setitem(sys.modules, name, None) if name.startswith("medseg") else monkeypatch.delitem(sys.modules, name)
    got = LoadImage(image_only=True, reader=BUNDLE_READER)(str(tmp_path / "s"))
    assert type(LoadImage(reader=BUNDLE_READER).readers[-1]).__module__ == "scripts.medseg_data.dicom_reader"
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(got.affine), np.asarray(expected.affine))
    with pytest.raises(Exception) as err:
        LoadImage(image_only=True, reader=BUNDLE_READER)(str(tmp_path / "uneven"))
    assert "uneven slice spacing" in str(err.value)


# --- enhanced multi-frame images -----------------------------------------------------------------------------

def write_enhanced(path: Path, vol: np.ndarray, affine: np.ndarray, *, frame_order=None, slopes=None, intercept=0.0,
                   frame_of_reference=False, dimension_index=False, positions=None, orientations=None, stacks=None,
                   temporal=None) -> Path:
    """An enhanced MR file as vendors write them: shared orientation and pixel measures, per-frame plane positions
    and rescale; by default no FrameOfReferenceUID and no DimensionIndexSequence (as the Philips export has none)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    nx, ny, nz = vol.shape
    n = nz if positions is None else len(positions)
    order = list(range(n)) if frame_order is None else list(frame_order)
    slopes = np.ones(n) if slopes is None else np.asarray(slopes, float)
    col_sp, row_sp = (float(np.linalg.norm(affine[:3, a])) for a in (0, 1))
    cosines = [f"{v:.8f}" for v in (*(affine[:3, 0] / col_sp), *(affine[:3, 1] / row_sp))]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4.1", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "MR"
    ds.PatientName, ds.PatientID = "DOE^JOHN", "PID-0815"
    if frame_of_reference:
        ds.FrameOfReferenceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = ny, nx, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [f"{row_sp:.6f}", f"{col_sp:.6f}"]
    measures.SliceThickness = f"{np.linalg.norm(affine[:3, 2]):.6f}"
    shared.PixelMeasuresSequence = Seq([measures])
    if orientations is None:
        orientation = Dataset()
        orientation.ImageOrientationPatient = cosines
        shared.PlaneOrientationSequence = Seq([orientation])
    ds.SharedFunctionalGroupsSequence = Seq([shared])
    if dimension_index:
        index = Dataset()
        index.DimensionIndexPointer, index.FunctionalGroupPointer = 0x00209057, 0x00209111
        ds.DimensionIndexSequence = Seq([index])
    frames, groups = [], []
    for k in order:
        item = Dataset()
        plane = Dataset()
        pos = positions[k] if positions is not None else affine[:3, 3] + k * affine[:3, 2]
        plane.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        item.PlanePositionSequence = Seq([plane])
        if orientations is not None:
            own = Dataset()
            own.ImageOrientationPatient = [f"{v:.8f}" for v in orientations[k]]
            item.PlaneOrientationSequence = Seq([own])
        rescale = Dataset()
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = f"{slopes[k]:g}", f"{intercept:g}", "US"
        item.PixelValueTransformationSequence = Seq([rescale])
        if stacks is not None or temporal is not None:
            content = Dataset()
            if stacks is not None:
                content.StackID = str(stacks[k])
            if temporal is not None:
                content.TemporalPositionIndex = int(temporal[k])
            item.FrameContentSequence = Seq([content])
        groups.append(item)
        frames.append(np.rint((vol[:, :, min(k, nz - 1)] - intercept) / slopes[k]).astype(np.uint16).T)
    ds.PerFrameFunctionalGroupsSequence = Seq(groups)
    ds.PixelData = np.stack(frames).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def world_of_values(array: np.ndarray, affine: np.ndarray) -> dict:
    """Voxel value -> world position (mm, rounded) for every voxel: compares two readings in any axis order."""
    idx = np.indices(array.shape).reshape(3, -1)
    world = (affine @ np.vstack([idx, np.ones((1, idx.shape[1]))]))[:3].T
    return dict(zip(map(tuple, np.round(world, 2)), array.reshape(-1).tolist()))


def test_real_enhanced_ct_matches_simpleitk():
    path = get_testdata_file("eCT_Supplemental.dcm")  # pydicom-data: enhanced CT, frames stored against the normal
    got = read_dicom(Path(path))
    image = sitk.ReadImage(path)
    ref = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    assert got.array.shape == ref.shape == (512, 512, 2)
    from medseg.data.formats import sitk_affine

    assert world_of_values(got.array, got.affine) == world_of_values(ref, sitk_affine(image))
    assert got.spacing == pytest.approx((0.388672, 0.388672, 10.0))
    assert got.order == [1, 0]  # stored frame 2 lies first along the normal
    header = series_headers_ok(Path(path))  # the header-only check before training and prediction agrees
    np.testing.assert_allclose(header.affine, got.affine)
    assert header.array.shape == got.array.shape


def test_enhanced_mr_without_functional_groups_refused():
    with pytest.raises(MedsegError, match=r"emri_small\.dcm: multi-frame image without frame positions \(it has no"
                                          r" per-frame or shared functional groups\); its 10 frames cannot be placed"):
        read_dicom(Path(get_testdata_file("emri_small.dcm")))


@pytest.mark.parametrize("frame_order", [None, [5, 4, 3, 2, 1, 0], [2, 5, 0, 3, 1, 4]], ids=["in order", "reversed", "shuffled"])
def test_vendor_style_enhanced_mr_reads_as_its_construction(tmp_path, frame_order):
    shape = (12, 10, 6)
    vol = np.random.default_rng(20).integers(0, 1500, shape).astype(np.float64) * 2  # even: exact under slope 2
    affine = oblique_affine()
    slopes = [1, 2, 1, 2, 2, 1]  # per-frame rescale (PixelValueTransformationSequence per frame)
    path = write_enhanced(tmp_path / "enhanced.dcm", vol, affine, frame_order=frame_order, slopes=slopes, intercept=-100.0)
    before = path.read_bytes()
    got = read_dicom(path)
    np.testing.assert_array_equal(got.array, vol)
    np.testing.assert_allclose(got.affine, affine, atol=1e-5)
    assert got.array.dtype == np.float32 and path.read_bytes() == before
    if frame_order is None:  # SimpleITK stacks frames in stored order: it agrees where that order is the geometry's
        image = sitk.ReadImage(str(path))
        np.testing.assert_allclose(sitk_world(image, shape), (got.affine @ corners(shape))[:3], atol=1e-4)
    # through the command: NIfTI with the RAS affine of the construction
    import nibabel as nib

    from medseg.convert import main as convert

    assert convert([str(path), str(tmp_path / "mr.nii.gz")]) == 0
    nii = nib.load(tmp_path / "mr.nii.gz")
    np.testing.assert_allclose(nii.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine, atol=1e-5)
    np.testing.assert_allclose(np.asarray(nii.dataobj), vol)


def test_enhanced_with_frame_of_reference_and_dimension_index_reads_the_same(tmp_path):
    vol, affine = volume(21, (12, 10, 5)) + 1000, oblique_affine()
    a = read_dicom(write_enhanced(tmp_path / "a.dcm", vol, affine, frame_order=[4, 3, 2, 1, 0]))
    b = read_dicom(write_enhanced(tmp_path / "b.dcm", vol, affine, frame_order=[4, 3, 2, 1, 0],
                                  frame_of_reference=True, dimension_index=True))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.array, vol)


def _refused(tmp_path, message, **kwargs):
    vol, affine = volume(22, (12, 10, 4)) + 1000, oblique_affine()
    path = write_enhanced(tmp_path / "bad.dcm", vol, affine, **kwargs)
    before = path.read_bytes()
    for read in (read_dicom, series_headers_ok):
        with pytest.raises(MedsegError, match=message) as err:
            read(path)
        assert "DOE" not in str(err.value) and "PID-0815" not in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == before


def test_enhanced_4d_series_refused(tmp_path):
    affine = oblique_affine()
    pos = [affine[:3, 3] + (k % 4) * affine[:3, 2] for k in range(8)]  # 4 positions x 2 time points
    _refused(tmp_path, r"not one volume: a 4D series with 2 time points, 8 frames at 4 positions",
             positions=pos, temporal=[1 + k // 4 for k in range(8)])
    _refused(tmp_path, r"not one volume: a 4D series with repeated positions \(time points, b-values or echoes\),"
                       r" 8 frames at 4 positions", positions=pos)


def test_enhanced_several_stacks_and_mixed_orientations_refused(tmp_path):
    _refused(tmp_path, r"not one volume: 2 stacks \(StackID 1, 2\)", stacks=[1, 1, 2, 2])
    tilted = oblique_affine(degrees=10.0)
    base = oblique_affine()
    cos = lambda a: [*(a[:3, 0] / np.linalg.norm(a[:3, 0])), *(a[:3, 1] / np.linalg.norm(a[:3, 1]))]  # noqa: E731
    _refused(tmp_path, r"mixed orientations in series .* \(frame 1 and frame 3 differ in ImageOrientationPatient\)",
             orientations=[cos(base), cos(base), cos(tilted), cos(tilted)])
    pos = positions(oblique_affine(), 5)
    _refused(tmp_path, r"missing slices in series .*frame 2 and frame 3", positions=np.delete(pos, 2, axis=0))


def test_convert_is_a_plain_function_too(tmp_path):
    """``medseg.workflows.convert.run`` does what the command does, from Python, and says what it wrote."""
    from medseg.workflows import convert

    vol, affine = volume(15), oblique_affine()
    write_series(tmp_path / "f", vol, affine, series_uid="1.2.3.20", prefix="a")
    write_series(tmp_path / "f", volume(16), affine, series_uid="1.2.3.21", prefix="b")
    with pytest.raises(MedsegError, match="holds 2 series"):
        convert.run(tmp_path / "f", tmp_path / "a.nrrd")
    (done,) = convert.run(tmp_path / "f", tmp_path / "a.nrrd", "1.2.3.21")
    assert done.path == tmp_path / "a.nrrd" and done.shape == SHAPE and done.dtype == "int16"
    np.testing.assert_allclose(done.affine, affine, atol=1e-5)
    image = sitk.ReadImage(str(done.path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), volume(16))
    every = convert.run(tmp_path / "f", str(tmp_path / "all") + "/")
    assert [c.series.split(" ")[0] for c in every] == ["1.2.3.20", "1.2.3.21"]
    with pytest.raises(MedsegError, match="exists; pass --force"):
        convert.run(tmp_path / "f", tmp_path / "a.nrrd", "1.2.3.21")


def test_loader_spec_picks_a_series_from_a_folder_holding_several(tmp_path):
    from monai.bundle import ConfigParser

    from medseg.config import load_config
    from medseg.data.dicom_reader import select_series
    from medseg.transforms import preprocess_spec

    write_series(tmp_path / "f", volume(17), oblique_affine(), series_uid="1.2.3.30", prefix="a")
    write_series(tmp_path / "f", volume(18), oblique_affine(), series_uid="1.2.3.31", prefix="b")
    spec = preprocess_spec(load_config("liver", ["preprocessing.spacing=[1.5, 1.5, 2.0]"]), ("image",))[:1]
    assert select_series(spec, None) is spec
    load = ConfigParser({"pre": {"_target_": "Compose", "transforms": spec}}).get_parsed_content("pre")
    with pytest.raises(Exception) as err:
        load({"image": str(tmp_path / "f")})
    from medseg.errors import user_error

    assert "holds 2 series" in str(user_error(err.value))
    chosen = ConfigParser({"pre": {"_target_": "Compose", "transforms": select_series(spec, "1.2.3.31")}})
    got = chosen.get_parsed_content("pre")({"image": str(tmp_path / "f")})["image"]
    np.testing.assert_array_equal(np.asarray(got), volume(18))


def test_channels_mixing_dicom_and_nifti_refused_not_read_by_itk(tmp_path):
    import nibabel as nib
    from monai.transforms import LoadImage

    from medseg.data.dicom_reader import READER_PATH

    write_series(tmp_path / "s", volume(19), oblique_affine())
    nib.save(nib.Nifti1Image(volume(19).astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    with pytest.raises(MedsegError, match="the channels of one case mix DICOM and other files"):
        LoadImage(image_only=True, reader=READER_PATH)([str(tmp_path / "s"), str(tmp_path / "x.nii.gz")])


def test_a_dicom_seg_beside_its_series_is_not_read_as_an_image(tmp_path):
    """A folder holding a CT series and a DICOM SEG of it (a saved correction, an archive's export) reads as
    that one series; a SEG alone, as a folder or a file, is one line naming what it is."""
    from medseg.data.dicom_seg import write_dicom_seg

    vol, affine = volume(3), oblique_affine()
    write_series(tmp_path / "ct", vol, affine, series_uid="1.2.3.40")
    ct = read_dicom(tmp_path / "ct")
    labels = (ct.array > np.median(ct.array)).astype(np.uint8)
    (tmp_path / "seg").mkdir()
    seg = write_dicom_seg(labels, ct.affine_ras, tmp_path / "ct", tmp_path / "seg" / "mask.dcm", {1: "hot"},
                          "test-model", "0.1")
    both = tmp_path / "both"
    shutil.copytree(tmp_path / "ct", both)
    shutil.copy(seg, both / "zz_mask.dcm")
    assert list(find_series(both)) == ["1.2.3.40"]  # was two series: "choose one with --series UID"
    again = read_dicom(both)
    np.testing.assert_array_equal(again.array, ct.array)
    np.testing.assert_allclose(again.affine, ct.affine)
    with pytest.raises(MedsegError, match=r"no DICOM image files in it \(only 1 DICOM SEG file\(s\)"):
        read_dicom(tmp_path / "seg")
    with pytest.raises(MedsegError, match=r"mask\.dcm: a DICOM SEG \(a segmentation, not an image\)"):
        read_dicom(seg)


def test_damaged_series_refusals_say_what_to_do(tmp_path):
    """Each header fault of a series is refused with what to do about it, not only what is wrong."""
    import pydicom

    from medseg.data.dicom import write_series
    from medseg.data.images import read_image

    def series(name, change):
        folder = tmp_path / name
        write_series(folder, np.zeros((12, 10, 4), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
        files = sorted(folder.iterdir())
        for path in files if change is skewed else files[1:2]:  # every slice's orientation, or one slice
            ds = pydicom.dcmread(path)
            change(ds)
            ds.save_as(path)
        return folder

    def no_position(ds):
        del ds.ImagePositionPatient

    def skewed(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.5, 0]

    def other_spacing(ds):
        ds.PixelSpacing = [0.5, 0.5]

    def colour(ds):
        ds.SamplesPerPixel = 3

    for change, expected in [
        (no_position, r"no ImagePositionPatient; .* every slice: remove the file \(a localiser or a screenshot, say\) or"
                      r" re-export the series$"),
        (skewed, r"are not orthonormal; the header is damaged: re-export the series$"),
        (other_spacing, r"differ in matrix size or pixel spacing \(.*\); remove the odd slices \(a localiser, say\) or"
                        r" export each part as its own series$"),
        (colour, r"colour image \(.*\); medseg reads greyscale only: give the original greyscale series"),
    ]:
        with pytest.raises(MedsegError, match=expected):
            read_image(series(change.__name__, change))
