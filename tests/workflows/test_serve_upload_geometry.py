"""medseg.serve: an uploaded MetaImage/NRRD header that names a file of the server is refused (it would be read and
shown), and a label PUT for a DICOM series must lie on the series' grid (its affine, not only its shape)."""

from __future__ import annotations

import gzip
import io
import json
import urllib.error
import urllib.request

import nibabel as nib
import numpy as np
import pytest

from medseg.workflows.serve import Server, create_app
from tests.conftest import needs_chromium
from tests.workflows.test_serve import Running, call, chromium, multipart, threshold_bundle

pytestmark = pytest.mark.slow


@pytest.fixture
def running(tmp_path):
    inputs = tmp_path / "inputs"
    server = Server(threshold_bundle(), tmp_path / "out", inputs if inputs.is_dir() else None, max_upload_mb=2)
    run = Running(create_app(server))
    yield run.url, server, tmp_path
    run.stop()


def detached_headers(secret) -> dict[str, bytes]:
    meta = ("ObjectType = Image\nNDims = 3\nDimSize = 32 32 32\nElementSpacing = 1 1 1\nElementType = MET_UCHAR\n"
            f"ElementDataFile = {secret}\n").encode()
    nrrd = ("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 32 32 32\nspacings: 1 1 1\nencoding: raw\n"
            f"data file: {secret}\n\n").encode()
    return {"a.mha": meta, "b.mhd": meta, "c.nrrd": nrrd, "d.nhdr": nrrd}


def test_uploaded_headers_that_read_a_server_file_are_refused(running):
    url, server, tmp_path = running
    secret = tmp_path / "secret.raw"
    secret.write_bytes(np.arange(32 ** 3, dtype=np.uint32).astype(np.uint8).tobytes())  # any file the server reads
    for name, header in detached_headers(secret).items():
        status, body, _ = call(f"{url}/api/upload?name={name}", "POST", header)
        assert status == 400 and "another file" in json.loads(body)["detail"], (name, body)
        assert name.split(".")[0] not in server.cases
        body, kind = multipart({"file": header})
        body = body.replace(b'filename="file"', f'filename="{name}"'.encode())  # MONAI Label's upload of a file
        req = urllib.request.Request(f"{url}/datastore/?image=x{name.split('.')[0]}", method="PUT", data=body,
                                     headers={"Content-Type": kind})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, answer = r.status, r.read()
        except urllib.error.HTTPError as err:
            status, answer = err.code, err.read()
        assert status == 400 and b"another file" in answer, (name, answer)
    assert not server.uploaded
    # a MetaImage with its voxels in it still opens
    local = (b"ObjectType = Image\nNDims = 3\nDimSize = 32 32 32\nElementSpacing = 1 1 1\nElementType = MET_UCHAR\n"
             b"ElementDataFile = LOCAL\n" + bytes(32 ** 3))
    status, body, _ = call(f"{url}/api/upload?name=ok.mha", "POST", local)
    assert status == 200 and json.loads(body)["shape"] == [32, 32, 32]


def _nifti(array: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array.astype(np.uint8), affine)
    buffer = io.BytesIO()
    holder = nib.FileHolder(fileobj=buffer)
    image.to_file_map({"image": holder, "header": holder})
    return gzip.compress(buffer.getvalue())


def test_label_put_for_a_dicom_series_must_lie_on_its_grid(tmp_path):
    from medseg.data.dicom import write_series
    from tests.conftest import synthetic_case

    image, _, _ = synthetic_case()
    lps = np.diag([1.5, 1.5, 2.0, 1.0])
    lps[:3, 3] = [10.0, -20.0, 5.0]
    write_series(tmp_path / "inputs" / "series", image.astype(np.float64), lps, prefix="s")
    server = Server(threshold_bundle(), tmp_path / "out", tmp_path / "inputs")
    run = Running(create_app(server))
    try:
        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        label = (image > image.mean()).astype(np.uint8)

        def put(affine):
            body, kind = multipart({"label": _nifti(label, affine)})
            req = urllib.request.Request(f"{run.url}/datastore/label?image=series", data=body, method="PUT",
                                         headers={"Content-Type": kind})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()

        for wrong in (np.eye(4), np.diag([1.0, 1.0, 1.0, 1.0]) @ lps, np.diag([-1.0, 1.0, 1.0, 1.0]) @ ras):
            status, body = put(wrong)
            assert status == 400 and b"affine" in body, body
            assert not (tmp_path / "out" / "series_seg.nii.gz").exists()
        status, body = put(ras)
        assert status == 200, body
        saved = nib.load(tmp_path / "out" / "series_seg.nii.gz")
        np.testing.assert_allclose(saved.affine, ras, atol=1e-5)
        assert np.array_equal(np.asarray(saved.dataobj), label)
    finally:
        run.stop()


@needs_chromium
def test_page_shows_and_clicks_a_2d_picture(tmp_path):
    """A 2D case (shape [x, y]) is drawn on the axial view with the picture's first row on top, and a click there
    is sent as [i, j] of the picture (the page drew nothing and refused clicks: a 3D index into a 2D shape)."""
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.engine.test_interactive_own_data import tiny_2d_bundle

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    picture = np.full((40, 48), 60, np.uint8)
    picture[:10] = 190  # bright first rows: the top of the picture
    Image.fromarray(picture).save(inputs / "cells.png")
    server = Server(tiny_2d_bundle(interactive=False), tmp_path / "out", inputs)
    run = Running(create_app(server))
    driver = chromium(tmp_path)
    wait = WebDriverWait(driver, 60)
    status = lambda: driver.find_element(By.ID, "status").text  # noqa: E731
    try:
        driver.get(run.url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cases option"))
        driver.find_element(By.ID, "open").click()
        wait.until(lambda d: "automatic mask" in status() or "failed" in status())
        assert "automatic mask" in status(), status()
        rows = driver.execute_script(
            "const c = document.getElementById('c0'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "const grey = y => { let s = 0; for (let x = 0; x < c.width; x++) s += d[4 * (y * c.width + x) + 1];"
            " return s / c.width; }; return [c.width, c.height, grey(2), grey(c.height - 3)];")
        assert rows[:2] == [48, 40] and rows[2] > rows[3] + 40, rows  # the bright rows are drawn on top
        c0 = driver.find_element(By.ID, "c0")
        width, height = c0.size["width"], c0.size["height"]
        ActionChains(driver).move_to_element_with_offset(c0, int(width * (5.5 / 48 - 0.5)),
                                                         int(height * (3.5 / 40 - 0.5))).click().perform()
        wait.until(lambda d: "click" in status() and d.execute_script("return document.body.dataset.busy") == "0")
        assert "+ click at" in status(), status()
    finally:
        driver.quit()
        run.stop()
    (step,) = server.cases["cells"].steps
    assert step.click["voxel"] == [5, 3]  # column 5, row 3 of the picture


def test_refusals_name_the_upload_and_a_multipage_tiff_on_a_2d_bundle_is_one_line(tmp_path):
    """A refused upload's line names the file as it was sent, not the server's temporary copy; a multi-page TIFF
    under --input-dir of a 2D bundle is refused as a 3D image (it was the chain's 'applying transform <... object
    at 0x...>')."""
    import tifffile

    from tests.engine.test_interactive_own_data import tiny_2d_bundle

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    tifffile.imwrite(inputs / "stack.tif", np.full((5, 40, 48), 100, np.uint8))
    server = Server(tiny_2d_bundle(interactive=False), tmp_path / "out", inputs)
    run = Running(create_app(server))
    try:
        status, body, _ = call(f"{run.url}/api/open", "POST", {"name": "stack"})
        detail = json.loads(body)["detail"]
        assert status == 400 and "3D image" in detail and " at 0x" not in detail, detail
        status, body, _ = call(f"{run.url}/api/upload?name=junk.nii.gz", "POST", b"not an image at all" * 20)
        detail = json.loads(body)["detail"]
        assert status == 400 and detail.startswith("junk.nii.gz: ") and server.uploads.name not in detail, detail
    finally:
        run.stop()
