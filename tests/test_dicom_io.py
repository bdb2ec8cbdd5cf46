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
    assert "1.2.3.4 'arterial' (CT, 7 slices)" in text and "1.2.3.5 'venous' (CT, 3 slices)" in text
    assert "--series" in text and "ANON" not in text
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
