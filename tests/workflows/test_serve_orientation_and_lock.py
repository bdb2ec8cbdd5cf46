"""medseg.serve: the page lays a 3D case out in the radiological convention whatever its axis order (the server
sends each voxel axis's RAS direction); opening an open case again keeps its clicks; the routes that read or write
an image or a mask wait for the server's lock (ITK is not thread-safe, and a mask is never sent half-updated)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import nibabel as nib
import numpy as np
import pytest

from medseg.workflows.serve import Server, create_app, voxel_axes
from tests.conftest import needs_chromium
from tests.engine.test_interactive import write_case
from tests.workflows.test_serve import Running, call, multipart, opened_page, threshold_bundle

pytestmark = pytest.mark.slow

SHAPE = (30, 40, 36)  # voxel axes: superior, then towards the patient's left, then towards posterior


def permuted_case(path):
    """A CT-like volume whose voxel axis 0 runs to superior, axis 1 to the patient's left and axis 2 to posterior
    (nibabel codes S, L, P), with air (darker than the -100 HU around it) at the right-anterior corner of every slice
along axis 0."""
    image = np.full(SHAPE, -100.0, np.float32)
    image[8:22, 6:20, 6:18] = 110.0  # a liver-bright block: the automatic mask has something
    image[:, :4, :4] = -1000.0  # right (small axis-1 index) and anterior (small axis-2 index)
    affine = np.zeros((4, 4))
    affine[2, 0] = 2.0  # axis 0 -> +z (superior)
    affine[0, 1] = -1.5  # axis 1 -> -x (left)
    affine[1, 2] = -1.5  # axis 2 -> -y (posterior)
    affine[:, 3] = [30.0, 20.0, -10.0, 1.0]
    nib.save(nib.Nifti1Image(image, affine), path)
    assert nib.aff2axcodes(affine) == ("S", "L", "P")
    return path


def test_voxel_axes_give_each_axis_its_ras_direction():
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 2.0, -1.5, -1.5, 1.0
    assert voxel_axes(affine, 3) == [[2, 1], [0, -1], [1, -1]]
    assert voxel_axes(np.diag([-0.8, -0.8, 2.5, 1.0]), 3) == [[0, -1], [1, -1], [2, 1]]  # a DICOM series in RAS
    assert voxel_axes(np.eye(4), 2) is None


@needs_chromium
def test_page_shows_a_permuted_flipped_case_in_the_radiological_convention(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    with opened_page(tmp_path, lambda inputs: permuted_case(inputs / "ct_s_l_p.nii.gz")) as (driver, wait, server):
        driver.find_element(By.ID, "open").click()
        wait.until(lambda d: "automatic mask" in d.find_element(By.ID, "status").text)
        names = [driver.find_element(By.ID, f"n{p}").text for p in range(3)]
        assert names == ["axial (R left, A up)", "coronal (R left, S up)", "sagittal (A left, S up)"]
        # the axial canvas: x across (axis 1, 40 voxels), y down (axis 2, 36), the air corner (black under the
        # page's window, no mask over it) at its top left
        grey = driver.execute_script(
            "const c = document.getElementById('c0'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height);"
            " const g = []; for (let i = 0; i < d.data.length; i += 4) g.push(d.data[i + 1]);"
            " return [c.width, c.height, g];")
        w, h, values = grey
        assert (w, h) == (SHAPE[1], SHAPE[2])
        plane = np.asarray(values, dtype=float).reshape(h, w)
        air = np.argwhere(plane == 0)
        assert len(air) == 16 and air.max(0).tolist() == [3, 3], air  # rows 0-3, columns 0-3: right, anterior
        # the coronal canvas: x across (axis 1), superior (axis 0) up; the sagittal: anterior (axis 2) on the left
        sizes = driver.execute_script("return [1, 2].map(p => { const c = document.getElementById('c' + p);"
                                      " return [c.width, c.height]; })")
        assert sizes == [[SHAPE[1], SHAPE[0]], [SHAPE[2], SHAPE[0]]]
        # a click on the axial view's top-left voxel is sent as that voxel: axis 1 index 0 (right), axis 2 index 0
        driver.execute_script("window.__sent = []; const of = window.fetch; window.fetch = (u, o) => {"
                              " if (String(u).endsWith('/click')) window.__sent.push(JSON.parse(o.body).voxel);"
                              " return of(u, o); };")
        canvas = driver.find_element(By.ID, "c0")
        box = driver.execute_script("return arguments[0].getBoundingClientRect().toJSON()", canvas)
        ActionChains(driver).move_to_element_with_offset(
            canvas, int(-box["width"] / 2 + box["width"] / w * 1.5), int(-box["height"] / 2 + box["height"] / h * 2.5)
        ).click().perform()
        wait.until(lambda d: d.execute_script("return window.__sent.length") == 1
                   and d.execute_script("return document.body.dataset.busy") == "0")
        assert driver.execute_script("return window.__sent[0]") == [SHAPE[0] // 2, 1, 2]


@pytest.fixture
def served(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = write_case(inputs / "ct_001.nii.gz")
    server = Server(threshold_bundle(), tmp_path / "out", inputs)
    running = Running(create_app(server))
    yield running.url, server, src
    running.stop()


def test_opening_an_open_case_again_keeps_its_clicks(served):
    url, server, src = served
    first = json.loads(call(f"{url}/api/open", "POST", {"name": "ct_001"})[1])
    assert first["clicks"] == 0 and first["axes"] == [[0, -1], [1, 1], [2, 1]]  # write_case flips axis 0
    labels = server.cases["ct_001"].labels
    centre = [int(v) for v in np.argwhere(labels == 1).mean(0).round()]
    status, body, _ = call(f"{url}/api/cases/ct_001/click", "POST", {"voxel": centre, "label": 1, "positive": False})
    assert status == 200, body
    clicked = server.cases["ct_001"].labels.copy()
    again = json.loads(call(f"{url}/api/open", "POST", {"name": "ct_001"})[1])  # a reload of the page, a second tab
    assert again["clicks"] == 1 and len(server.cases["ct_001"].steps) == 1 and again["saved"] == []
    _, mask, headers = call(f"{url}/api/cases/ct_001/mask")
    assert np.array_equal(np.frombuffer(mask, np.uint8).reshape(clicked.shape), clicked)
    assert clicked[tuple(centre)] == 0
    assert call(f"{url}/api/cases/ct_001/save", "POST", {})[0] == 200
    (server.output_dir / "ct_001_seg_notes.txt").write_text("the user's own file")
    server.cases.clear()  # a restart of the server: the next open is a new session
    reopened = json.loads(call(f"{url}/api/open", "POST", {"name": "ct_001"})[1])
    assert reopened["clicks"] == 0 and reopened["saved"] == ["ct_001_clicks.json", "ct_001_seg.nii.gz"]


def _later(fn):
    """``fn()`` in a thread; returns (thread, result list)."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_image_mask_and_datastore_routes_wait_for_the_servers_lock(served, tmp_path):
    url, server, src = served
    call(f"{url}/api/open", "POST", {"name": "ct_001"})
    labels = server.cases["ct_001"].labels.copy()
    label_file = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(labels, nib.load(src).affine), label_file)
    body, kind = multipart({"label": label_file.read_bytes(), "params": b"{}"})
    upload, upload_kind = multipart({"file": src.read_bytes()})
    upload = upload.replace(b'name="file"', b'name="file"; filename="other.nii.gz"')

    def put(path, data, content_type):
        request = urllib.request.Request(f"{url}{path}", data=data, method="PUT", headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())

    requests = {
        "image": lambda: call(f"{url}/api/cases/ct_001/image")[:2],
        "mask": lambda: call(f"{url}/api/cases/ct_001/mask")[:2],
        "label PUT": lambda: put("/datastore/label?image=ct_001", body, kind),
        "image PUT": lambda: put("/datastore/?image=other", upload, upload_kind),
    }
    for name, request in requests.items():
        with server.lock:
            thread, out = _later(request)
            thread.join(1.0)
            assert thread.is_alive() and not out, f"{name} answered while another request held the lock"
            assert call(f"{url}/api/info")[0] == 200  # the event loop still answers meanwhile
        thread.join(60)
        assert out and out[0][0] == 200, (name, out)
    image = np.frombuffer(call(f"{url}/api/cases/ct_001/image")[1], np.float32)
    assert np.allclose(image, np.asarray(nib.load(src).dataobj, dtype=np.float32).ravel())
    assert np.array_equal(np.asarray(nib.load(server.output_dir / "ct_001_seg.nii.gz").dataobj), labels)
    assert "other" in server.uploaded
