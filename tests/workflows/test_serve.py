"""medseg.serve on a real uvicorn server on 127.0.0.1: open, automatic mask, click, undo, save, token, limits; the
page in headless Chromium (Debian's chromium + chromium-driver)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.bundle.load import LoadedBundle
from medseg.config import load_config
from medseg.inference import build_chain
from medseg.transforms import input_channels
from medseg.workflows.serve import Server, create_app
from tests.conftest import CHROMEDRIVER, CHROMIUM, FAST, needs_chromium
from tests.engine.test_interactive import write_case

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


class ThresholdNet(torch.nn.Module):
    """A tiny fixed network: liver where the windowed CT is above 0.4 (the synthetic liver, ~0.6), background
    elsewhere (~0.15), tumour never: the automatic mask is the liver ellipsoid, so clicks change it predictably."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([0.0, -4.0, -1.0]))
            self.conv.weight[1, 0] = 10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def threshold_bundle() -> LoadedBundle:
    cfg = load_config(str(REPO / "pipelines" / "liver_interactive.yaml"),
                      FAST + ["interactive.enabled=false", "training.device=cpu"])
    return LoadedBundle("threshold", cfg, ThresholdNet(input_channels(cfg)).eval(),
                        {0: "background", 1: "liver", 2: "tumour"}, build_chain(cfg))


class Running:
    """A uvicorn server in a thread on a free loopback port (bounded start and stop)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start in 30 s"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def call(url: str, method: str = "GET", body: bytes | dict | None = None, token: str | None = None,
         timeout: float = 60) -> tuple[int, bytes, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def declared_upload(url: str, size: int) -> tuple[int, bytes]:
    """POST headers that declare ``size`` bytes and wait for the answer before sending any: the server must refuse
    on the declared size alone. (Sending the body first races the refusal: the server closes the connection and the
    client's write fails with a broken pipe before it reads the 413.)"""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.putrequest("POST", f"{parts.path}?{parts.query}")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def chromium(tmp_path: Path, browser_log: bool = False):
    """Headless Debian Chromium through its chromedriver, a profile in ``tmp_path`` (``browser_log``: keep the
    console's messages for ``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1200,560"):
        options.add_argument(flag)
    if browser_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@contextlib.contextmanager
def opened_page(tmp_path: Path, write_input, browser_log: bool = False):
    """The page in headless Chromium on a real server whose input folder holds the one case ``write_input(folder)``
    writes, opened (its automatic mask shown): yields ``(driver, wait, server)``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_input(inputs)
    server = Server(threshold_bundle(), tmp_path / "out", inputs)
    running = Running(create_app(server))
    driver = chromium(tmp_path, browser_log=browser_log)
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(running.url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cases option"))
        yield driver, wait, server
    finally:
        driver.quit()
        running.stop()


@pytest.fixture
def served(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = write_case(inputs / "ct_001.nii.gz")
    server = Server(threshold_bundle(), tmp_path / "out", inputs, max_upload_mb=0.5)
    running = Running(create_app(server))
    yield {"url": running.url, "src": src, "out": tmp_path / "out", "server": server, "tmp": tmp_path}
    running.stop()


def test_open_infer_click_undo_save(served):
    url, src = served["url"], served["src"]
    status, body, _ = call(f"{url}/api/cases")
    assert status == 200 and json.loads(body)["input"] == ["ct_001"]
    status, body, _ = call(f"{url}/api/open", "POST", {"name": "ct_001"})
    assert status == 200, body
    summary = json.loads(body)
    original = nib.load(src)
    assert summary["shape"] == list(original.shape)
    assert summary["spacing"] == pytest.approx(list(original.header.get_zooms()))
    status, raw, headers = call(f"{url}/api/cases/ct_001/mask")
    auto = np.frombuffer(raw, np.uint8).reshape(original.shape)
    assert headers["x-shape"] == ",".join(map(str, original.shape))
    assert 500 < int((auto == 1).sum()) < auto.size // 2  # the liver ellipsoid, not everything
    status, raw, _ = call(f"{url}/api/cases/ct_001/image")
    assert np.allclose(np.frombuffer(raw, np.float32).reshape(original.shape), original.get_fdata(), atol=1e-3)
    centre = [int(v) for v in np.argwhere(auto == 1).mean(0).round()]
    status, body, _ = call(f"{url}/api/cases/ct_001/click", "POST", {"voxel": centre, "label": 1, "positive": False})
    assert status == 200, body
    entry = json.loads(body)
    assert entry["mode"] == "local correction" and entry["clicks"] == 1
    _, raw, _ = call(f"{url}/api/cases/ct_001/mask")
    after = np.frombuffer(raw, np.uint8).reshape(original.shape)
    assert after[tuple(centre)] != 1 and entry["changed_voxels"] == int((after != auto).sum()) > 0
    status, body, _ = call(f"{url}/api/cases/ct_001/undo", "POST")
    assert json.loads(body) == {"undone": True, "clicks": 0}
    _, raw, _ = call(f"{url}/api/cases/ct_001/mask")
    assert np.array_equal(np.frombuffer(raw, np.uint8).reshape(original.shape), auto)
    call(f"{url}/api/cases/ct_001/click", "POST", {"voxel": centre, "label": 1, "positive": False})
    status, body, _ = call(f"{url}/api/cases/ct_001/save", "POST")
    assert status == 200 and json.loads(body)["files"] == ["ct_001_seg.nii.gz", "ct_001_clicks.json"]
    saved = nib.load(served["out"] / "ct_001_seg.nii.gz")
    assert saved.shape == original.shape and np.array_equal(saved.affine, original.affine)
    assert np.array_equal(np.asarray(saved.dataobj), after)
    log = json.loads((served["out"] / "ct_001_clicks.json").read_text())
    assert [e.get("positive") for e in log["events"]] == [False, None, False]
    assert sorted(p.name for p in served["out"].iterdir()) == ["ct_001_clicks.json", "ct_001_seg.nii.gz"]  # no temp
    status, body, _ = call(f"{url}/api/cases/ct_001/click", "POST", {"voxel": [0, 0], "label": 1})
    assert status == 400 and "outside the image" in json.loads(body)["detail"]


def test_upload_limits_and_case_names(served):
    url, src = served["url"], served["src"]
    small = src.read_bytes()
    status, body, _ = call(f"{url}/api/upload?name=up_001.nii.gz", "POST", small)
    assert status == 200 and json.loads(body)["case"] == "up_001"
    status, body = declared_upload(f"{url}/api/upload?name=big.nii.gz", len(small) + 600_000)
    assert status == 413 and "limit" in json.loads(body)["detail"]
    for name in ("../evil.nii.gz", "..%2Fevil.nii.gz", "a%2Fb.nii.gz", ".hidden.nii.gz"):
        status, body, _ = call(f"{url}/api/upload?name={name}", "POST", small)
        assert status == 400 and "case name" in json.loads(body)["detail"], name
    status, body, _ = call(f"{url}/api/upload?name=notes.txt", "POST", b"hello")
    assert status == 400
    status, _, _ = call(f"{url}/api/open", "POST", {"name": "../inputs/ct_001"})
    assert status == 404
    assert not (served["tmp"] / "evil.nii.gz").exists() and not served["out"].exists()


def test_token_is_required_on_every_request(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_case(inputs / "ct_001.nii.gz")
    running = Running(create_app(Server(threshold_bundle(), tmp_path / "out", inputs), token="s3cret"))
    try:
        assert call(f"{running.url}/api/info")[0] == 401
        assert call(f"{running.url}/api/info", token="wrong")[0] == 401
        assert call(f"{running.url}/api/open", "POST", {"name": "ct_001"})[0] == 401
        status, body, _ = call(f"{running.url}/api/info", token="s3cret")
        assert status == 200 and json.loads(body)["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
        status, page, _ = call(f"{running.url}/")  # the page itself holds no data; it sends the token itself
        assert status == 200 and b"<canvas" in page
    finally:
        running.stop()


def test_non_loopback_host_without_token_is_refused():
    result = subprocess.run([sys.executable, "-m", "medseg.serve", "--bundle", "none", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--token" in result.stderr and "0.0.0.0" in result.stderr




@needs_chromium
def test_page_in_headless_chromium(served, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path)
    wait = WebDriverWait(driver, 60)
    status = lambda: driver.find_element(By.ID, "status").text  # noqa: E731
    canvas = lambda: driver.execute_script("return document.getElementById('c0').toDataURL()")  # noqa: E731
    try:
        driver.get(served["url"] + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cases option"))
        driver.find_element(By.ID, "open").click()
        wait.until(lambda d: "automatic mask" in status())
        before = canvas()
        overlay = driver.execute_script(
            "const c = document.getElementById('c0'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 1]) n++; return n;")
        assert overlay > 50  # the liver overlay (coloured, not grey) is on the axial view
        c0 = driver.find_element(By.ID, "c0")
        ActionChains(driver).move_to_element(c0).context_click().perform()  # right click: negative at the centre
        wait.until(lambda d: "click at" in status() and d.execute_script("return document.body.dataset.busy") == "0")
        assert "- click at" in status() and canvas() != before
        if os.environ.get("MEDSEG_SCREENSHOT"):
            driver.find_element(By.ID, "undo").click()
            wait.until(lambda d: "undone" in status())
            driver.save_screenshot(os.environ["MEDSEG_SCREENSHOT"])
        driver.find_element(By.ID, "save").click()
        wait.until(lambda d: "saved" in status())
    finally:
        driver.quit()
    saved = nib.load(served["out"] / "ct_001_seg.nii.gz")
    assert saved.shape == nib.load(served["src"]).shape


def multipart(fields: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = "medsegboundary42"
    body = b""
    for name, value in fields.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_monai_label_shapes_for_slicer(served):
    url, src = served["url"], served["src"]
    status, body, _ = call(f"{url}/info/")
    info = json.loads(body)
    assert status == 200 and info["labels"] == ["liver", "tumour"]
    assert info["models"]["medseg"] == {"type": "segmentation", "labels": {"liver": 1, "tumour": 2}, "dimension": 3,
                                        "description": "medseg bundle threshold"}
    listing = json.loads(call(f"{url}/datastore/?output=all")[1])
    assert listing["objects"] == {"ct_001": {"image": {"ext": ".nii.gz", "info": {}}, "labels": {}}}
    assert json.loads(call(f"{url}/activelearning/random", "POST", {})[1])["id"] == "ct_001"
    assert call(f"{url}/datastore/image?image=ct_001")[1] == src.read_bytes()
    assert call(f"{url}/datastore/image?image=../inputs/ct_001")[0] == 404
    status, auto, _ = call(f"{url}/infer/medseg?image=ct_001&output=image", "POST", b"")
    assert status == 200
    status, result, _ = call(f"{url}/infer/medseg?image=ct_001&output=json", "POST", b"")
    assert json.loads(result)["label_names"] == {"liver": 1, "tumour": 2}
    auto_path = served["tmp"] / "auto.nii.gz"
    auto_path.write_bytes(auto)
    auto_labels = np.asarray(nib.load(auto_path).dataobj)
    assert auto_labels.shape == nib.load(src).shape and int((auto_labels == 1).sum()) > 500
    centre = [int(v) for v in np.argwhere(auto_labels == 1).mean(0).round()]
    body, kind = multipart({"params": json.dumps({"background": [centre]}).encode()})
    request = urllib.request.Request(f"{url}/infer/medseg?image=ct_001&output=image", data=body, method="POST",
                                     headers={"Content-Type": kind})
    with urllib.request.urlopen(request, timeout=60) as r:
        (served["tmp"] / "clicked.nii.gz").write_bytes(r.read())
    clicked = np.asarray(nib.load(served["tmp"] / "clicked.nii.gz").dataobj)
    assert clicked[tuple(centre)] == 0 and auto_labels[tuple(centre)] == 1  # the background click removed the liver
    body, kind = multipart({"label": auto, "params": b"{}"})
    request = urllib.request.Request(f"{url}/datastore/label?image=ct_001&tag=final", data=body, method="PUT",
                                     headers={"Content-Type": kind})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert json.loads(r.read())["label"] == "ct_001_seg.nii.gz"
    stored = nib.load(served["out"] / "ct_001_seg.nii.gz")
    assert np.array_equal(np.asarray(stored.dataobj), auto_labels) and np.array_equal(stored.affine, nib.load(src).affine)
    listing = json.loads(call(f"{url}/datastore/?output=all")[1])
    assert listing["objects"]["ct_001"]["labels"] == {"final": {"ext": ".nii.gz", "info": {}}}
    assert json.loads(call(f"{url}/activelearning/random", "POST", {})[1]) == {}


MONAILABEL = "monailabel==0.8.5"


@pytest.fixture(scope="session")
def monailabel_client():
    """MONAI Label 0.8.5's own client class (what 3D Slicer's module calls), imported from its PyPI wheel (fetched
    once into data/downloads, no dependencies; the server side of monailabel is never imported)."""
    import importlib.util
    import zipimport

    pytest.importorskip("cgi", reason="MONAI Label 0.8.5's client parses multipart bodies with cgi (Python < 3.13)")
    from medseg.data.wheels import fetch_wheel

    wheel = fetch_wheel(REPO / "data" / "downloads", MONAILABEL, "monailabel-0.8.5-*.whl", "MONAI Label client")
    spec = zipimport.zipimporter(str(wheel / "monailabel" / "client")).find_spec("client")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MONAILabelClient


def test_real_monai_label_client_uploads_infers_with_clicks_and_saves(served, monailabel_client):
    url, src, tmp = served["url"], served["src"], served["tmp"]
    client = monailabel_client(url, tmpdir=str(tmp / "client"))
    (tmp / "client").mkdir()
    assert client.auth_enabled() is False
    info = client.info()
    assert info["labels"] == ["liver", "tumour"] and info["models"]["medseg"]["type"] == "segmentation"
    assert list(client.datastore()["objects"]) == ["ct_001"]
    assert client.next_sample("uncertainty", {})["id"] == "ct_001"
    # an image Slicer has loaded locally: uploaded under its own id, then listed beside the --input-dir case
    local = tmp / "local_scan.nii.gz"
    local.write_bytes(src.read_bytes())
    assert client.upload_image(str(local), "scan_b") == {"image": "scan_b"}
    assert list(client.datastore()["objects"]) == ["ct_001", "scan_b"]
    result_file, params = client.infer("medseg", "scan_b", {})
    auto = nib.load(result_file)
    assert params["label_names"] == {"liver": 1, "tumour": 2} and params["clicks"] == 0
    assert auto.shape == nib.load(src).shape and np.allclose(auto.affine, nib.load(src).affine)
    labels = np.asarray(auto.dataobj)
    centre = [int(v) for v in np.argwhere(labels == 1).mean(0).round()]
    result_file, params = client.infer("medseg", "scan_b", {"background": [centre], "label_info": []})
    clicked = np.asarray(nib.load(result_file).dataobj)
    assert params["clicks"] == 1 and labels[tuple(centre)] == 1 and clicked[tuple(centre)] == 0
    assert 0 < int((labels != clicked).sum()) < int((labels == 1).sum())  # a local change, not the whole liver
    assert client.save_label("scan_b", result_file, tag="final")["label"] == "scan_b_seg.nii.gz"
    stored = nib.load(served["out"] / "scan_b_seg.nii.gz")
    assert np.array_equal(np.asarray(stored.dataobj), clicked)
    assert client.datastore()["objects"]["scan_b"]["labels"] == {"final": {"ext": ".nii.gz", "info": {}}}
    assert client.next_sample("uncertainty", {})["id"] == "ct_001"  # scan_b now has its label
    notes = tmp / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(Exception, match="400"):
        client.upload_image(str(notes), "notes")
    with pytest.raises(Exception, match="400"):
        client.upload_image(str(local), "../escape")
    assert list(client.datastore()["objects"]) == ["ct_001", "scan_b"]


def test_real_monai_label_client_logs_in_with_the_token(tmp_path, monailabel_client):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_case(inputs / "ct_001.nii.gz")
    running = Running(create_app(Server(threshold_bundle(), tmp_path / "out", inputs), token="s3cret"))
    try:
        client = monailabel_client(running.url, tmpdir=str(tmp_path))
        assert client.auth_enabled() is True
        with pytest.raises(Exception, match="401"):
            client.info()  # no bearer token yet
        with pytest.raises(Exception, match="401"):
            client.auth_token("radiologist", "wrong")
        client.update_auth(client.auth_token("radiologist", "s3cret"))
        assert client.info()["labels"] == ["liver", "tumour"]
        result_file, _ = client.infer("medseg", "ct_001", {})
        assert nib.load(result_file).shape == nib.load(inputs / "ct_001.nii.gz").shape
    finally:
        running.stop()


def test_dicom_series_case_saves_nifti_and_dicom_seg_on_the_series_grid(tmp_path):
    import pydicom

    from medseg.data.dicom import write_series
    from medseg.workflows.interact import CaseSession
    from tests.conftest import synthetic_case

    image, _, _ = synthetic_case()
    lps = np.diag([1.5, 1.5, 2.0, 1.0])
    lps[:3, 3] = [10.0, -20.0, 5.0]
    write_series(tmp_path / "series", image.astype(np.float64), lps, series_uid="1.2.3.4", prefix="s")
    session = CaseSession(threshold_bundle(), "dcm_001", tmp_path / "series")
    assert session.shape == image.shape and session.image_array().shape == image.shape
    from medseg.data.check import read_header

    assert tuple(read_header(tmp_path / "series").shape) == session.shape  # what PUT /datastore/label checks
    centre = [int(v) for v in np.argwhere(session.labels == 1).mean(0).round()]
    session.click(centre, 2, positive=True)
    assert session.labels[tuple(centre)] == 2
    files = session.save(tmp_path / "out")
    assert [f.name for f in files] == ["dcm_001_seg.nii.gz", "dcm_001_seg.dcm", "dcm_001_clicks.json"]
    saved = nib.load(files[0])
    assert saved.shape == image.shape
    np.testing.assert_allclose(saved.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-5)  # LPS -> RAS
    assert np.array_equal(np.asarray(saved.dataobj), session.labels)
    seg = pydicom.dcmread(files[1])
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "tumour"]
    log = files[2].read_text()
    assert "1.2.3.4" not in log and "PatientName" not in log  # no identifiers from the series in the log


def test_dicom_series_uploaded_as_a_zip(served, monkeypatch):
    import io
    import zipfile

    import pydicom

    from medseg.data.dicom import write_series
    from medseg.workflows import serve
    from tests.conftest import synthetic_case

    url, tmp, server = served["url"], served["tmp"], served["server"]
    image, _, _ = synthetic_case()
    lps = np.diag([1.5, 1.5, 2.0, 1.0])
    write_series(tmp / "series", image.astype(np.float64), lps, series_uid="1.2.3.9", prefix="s")

    def zipped(first: str = "scan/", extra: dict[str, bytes] | None = None) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for i, f in enumerate(sorted((tmp / "series").iterdir())):
                archive.write(f, first + f.name if i == 0 else f"scan/{f.name}")
            archive.writestr("__MACOSX/scan/._s0001.dcm", b"not dicom")  # left out, as are the export's extras
            archive.writestr("scan/DICOMDIR", b"an index, not an image")
            for name, data in (extra or {}).items():
                archive.writestr(name, data)
        return buffer.getvalue()

    def leftovers() -> list[str]:
        return sorted(p.name for p in Path(server.uploads.name).iterdir())

    status, body, _ = call(f"{url}/api/upload?name=dcm_002.zip", "POST", zipped("../../escape/"))
    assert status == 400 and "points outside the archive" in json.loads(body)["detail"]
    status, body, _ = call(f"{url}/api/upload?name=dcm_002.zip", "POST", zipped())
    assert status == 200, body
    assert json.loads(body)["shape"] == list(image.shape)  # every slice, none of the extras
    kept = leftovers()
    assert len(kept) == 1 and kept[0].startswith("series_")
    status, body, _ = call(f"{url}/api/cases/dcm_002/save", "POST")
    assert status == 200 and json.loads(body)["files"] == ["dcm_002_seg.nii.gz", "dcm_002_seg.dcm", "dcm_002_clicks.json"]
    seg = pydicom.dcmread(served["out"] / "dcm_002_seg.dcm")
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.9"
    assert nib.load(served["out"] / "dcm_002_seg.nii.gz").shape == image.shape

    bomb = io.BytesIO()  # 0.5 MB allowed: a few kilobytes that unpack to 2 MB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.dcm", bytes(2_000_000))
    assert len(bomb.getvalue()) < 50_000
    status, body, _ = call(f"{url}/api/upload?name=bomb.zip", "POST", bomb.getvalue())
    assert status == 413 and "unpacks to over the limit" in json.loads(body)["detail"]
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()  # stays 5 kB deflated
    damaged = bytearray(zipped(extra={"scan/z.dcm": noise}))
    at = damaged.find(b"scan/z.dcm") + len("scan/z.dcm")  # inside the first copy's compressed data
    damaged[at + 100: at + 400] = bytes(300)
    status, body, _ = call(f"{url}/api/upload?name=damaged.zip", "POST", bytes(damaged))
    assert status == 400 and "cannot unpack" in json.loads(body)["detail"]
    monkeypatch.setattr(serve, "MAX_ZIP_FILES", 3)
    status, body, _ = call(f"{url}/api/upload?name=many.zip", "POST", zipped())
    assert status == 413 and "more than 3" in json.loads(body)["detail"]
    status, body, _ = call(f"{url}/api/upload?name=fake.zip", "POST", b"PK not really")
    assert status == 400 and "not a readable zip" in json.loads(body)["detail"]
    assert leftovers() == kept  # nothing left behind by the refused uploads; the open case keeps its files


def test_bad_uploads_clicks_labels_and_names_are_4xx_and_leave_nothing_behind(served, tmp_path):
    url, src, server = served["url"], served["src"], served["server"]
    uploads = Path(server.uploads.name)
    status, body, _ = call(f"{url}/api/upload?name=junk.nii.gz", "POST", b"\x1f\x8b not really gzip" * 50)
    assert status == 400 and "junk" in json.loads(body)["detail"] and list(uploads.iterdir()) == []
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((30, 28), np.float32), np.eye(4)), flat)
    status, body, _ = call(f"{url}/api/upload?name=flat.nii.gz", "POST", flat.read_bytes())
    assert status == 400 and "a 2D image (30, 28)" in json.loads(body)["detail"] and list(uploads.iterdir()) == []
    status, body, _ = call(f"{url}/api/upload?name=ct_001.nii.gz", "POST", src.read_bytes())
    assert status == 409  # the input folder's case keeps its name and its clicks
    assert call(f"{url}/api/upload?name=scan_c.nii.gz", "POST", src.read_bytes())[0] == 200
    assert list(json.loads(call(f"{url}/datastore/?output=all")[1])["objects"]) == ["ct_001", "scan_c"]
    assert call(f"{url}/api/upload?name=scan_c.nii.gz", "POST", src.read_bytes())[0] == 409
    assert call(f"{url}/api/open", "POST", {"name": "ct_001"})[0] == 200
    for bad in ({"voxel": [5, 5, 5], "label": 1, "positive": "false"}, {"voxel": "123", "label": 1},
                {"voxel": [5, 5, 5], "label": 1.7}, {"voxel": [5, 5, 5], "label": True}):
        assert call(f"{url}/api/cases/ct_001/click", "POST", bad)[0] == 400, bad
    for params in ({"liver": [5]}, {"background": [[-1, -1, -1]]}, {"liver": [[1, 2]]}):
        body, kind = multipart({"params": json.dumps(params).encode()})
        request = urllib.request.Request(f"{url}/infer/medseg?image=ct_001", data=body, method="POST",
                                         headers={"Content-Type": kind})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 400 and "params" in json.loads(err.value.read())["detail"], params
    image = nib.load(src)
    wrong = [("affine", nib.Nifti1Image(np.zeros(image.shape, np.uint8), np.diag([3.0, 3.0, 3.0, 1.0])), "affine"),
             ("values", nib.Nifti1Image(np.full(image.shape, 300, np.uint16), image.affine), "values [300]")]
    for name, label, message in wrong:
        path = tmp_path / f"label_{name}.nii.gz"
        nib.save(label, path)
        body, kind = multipart({"label": path.read_bytes()})
        request = urllib.request.Request(f"{url}/datastore/label?image=ct_001", data=body, method="PUT",
                                         headers={"Content-Type": kind})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 400 and message in json.loads(err.value.read())["detail"]
    assert not (served["out"] / "ct_001_seg.nii.gz").exists()


def test_input_names_that_are_no_case_names_are_listed_safely_and_open(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_case(inputs / "Patient 1 (CT).nii.gz")
    write_case(inputs / "_under.nii.gz", seed=1)
    running = Running(create_app(Server(threshold_bundle(), tmp_path / "out", inputs), token="s3cret"))
    try:
        request = urllib.request.Request(f"{running.url}/api/cases", headers={"Authorization": "bearer s3cret"})
        with urllib.request.urlopen(request, timeout=60) as r:  # the scheme's case does not matter (RFC 9110)
            assert json.loads(r.read())["input"] == ["Patient_1_CT", "under"]
        status, body, _ = call(f"{running.url}/api/open", "POST", {"name": "Patient_1_CT"}, token="s3cret")
        assert status == 200 and json.loads(body)["case"] == "Patient_1_CT"
    finally:
        running.stop()


def test_serve_refuses_an_output_file_and_a_busy_port_in_one_line(tmp_path):
    from medseg.errors import MedsegError
    from medseg.workflows.serve import run

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MedsegError, match="--output-dir .*a file, not a folder"):
        run(tmp_path / "no_bundle", output_dir=tmp_path / "a_file")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(MedsegError, match=f"--port {busy.getsockname()[1]}: cannot listen"):
            run(tmp_path / "no_bundle", port=busy.getsockname()[1], output_dir=tmp_path / "out")


def test_dicom_series_without_what_a_seg_needs_still_saves_the_nifti_mask(tmp_path):
    import pydicom

    from medseg.data.dicom import write_series
    from medseg.workflows.interact import CaseSession
    from tests.conftest import synthetic_case

    image, _, _ = synthetic_case()
    write_series(tmp_path / "series", image.astype(np.float64), np.diag([1.5, 1.5, 2.0, 1.0]), series_uid="1.2.3.5",
                 prefix="s")
    for path in (tmp_path / "series").iterdir():
        ds = pydicom.dcmread(path)
        del ds.StudyTime
        ds.save_as(path)
    session = CaseSession(threshold_bundle(), "dcm_002", tmp_path / "series")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dcm_002_seg.dcm").write_bytes(b"a SEG of an earlier save")
    files = session.save(tmp_path / "out")
    assert [f.name for f in files] == ["dcm_002_seg.nii.gz", "dcm_002_clicks.json"]
    assert "StudyTime" in session.save_warning and "--format" not in session.save_warning
    assert str(tmp_path) not in session.save_warning and "dcm_002" in session.save_warning  # the case, not its folder
    assert not (tmp_path / "out" / "dcm_002_seg.dcm").exists()
    assert json.loads(files[1].read_text())["dicom_seg_not_written"] == session.save_warning


def test_monai_label_routes_on_a_2d_bundle_and_names_that_could_identify_a_patient(tmp_path):
    """A 2D (microscopy) bundle: /info/ says dimension 2, clicks are [i, j] (or [i, j, 0], as Slicer sends),
    a 2D label is stored on the picture's grid. /activelearning and a refused upload name the listed case and the
    sent file, never the input file's own name nor the server's temporary copy."""
    from tests.engine.test_interactive_own_data import tiny_2d_bundle, write_png

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_png(inputs / "Smith John 1990.png")
    server = Server(tiny_2d_bundle(), tmp_path / "out", inputs)
    running = Running(create_app(server))
    url = running.url
    try:
        info = json.loads(call(f"{url}/info/")[1])
        assert info["models"]["medseg"]["dimension"] == 2 and info["models"]["medseg"]["type"] == "deepedit"
        assert json.loads(call(f"{url}/activelearning/random", "POST", {})[1]) == {
            "id": "Smith_John_1990", "name": "Smith_John_1990", "path": "Smith_John_1990.png"}
        answers = []
        for params, expected in (({}, 200), ({"membrane": [[5, 7]]}, 200), ({"membrane": [[6, 7, 0]]}, 200),
                                 ({"membrane": [[6, 7, 2]]}, 400), ({"membrane": [[5]]}, 400)):
            body, kind = multipart({"params": json.dumps(params).encode()})
            request = urllib.request.Request(f"{url}/infer/medseg?image=Smith_John_1990&output=image", data=body,
                                             method="POST", headers={"Content-Type": kind})
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    status, answer = r.status, r.read()
            except urllib.error.HTTPError as err:
                status, answer = err.code, err.read()
            assert status == expected, (params, answer)
            answers.append(answer)
        assert "[i, j]" in json.loads(answers[-1])["detail"] and "k must be 0" in json.loads(answers[-2])["detail"]
        (tmp_path / "auto.nii.gz").write_bytes(answers[0])
        auto = nib.load(tmp_path / "auto.nii.gz")
        assert auto.shape == (48, 40)  # (x, y) of the 40x48 picture, as the session holds it
        body, kind = multipart({"label": answers[0]})
        request = urllib.request.Request(f"{url}/datastore/label?image=Smith_John_1990", data=body, method="PUT",
                                         headers={"Content-Type": kind})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert json.loads(r.read())["label"] == "Smith_John_1990_seg.nii.gz"
        stored = np.asarray(nib.load(tmp_path / "out" / "Smith_John_1990_seg.nii.gz").dataobj)
        assert np.array_equal(stored, np.asarray(auto.dataobj))
        assert json.loads(call(f"{url}/activelearning/random", "POST", {})[1]) == {}
        junk, kind = multipart({"file": b"not an image at all" * 20})
        body = junk.replace(b'filename="file"', b'filename="Doe Jane.nii.gz"')
        request = urllib.request.Request(f"{url}/datastore/?image=scan", data=body, method="PUT",
                                         headers={"Content-Type": kind})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        detail = json.loads(err.value.read())["detail"]
        assert err.value.code == 400 and "Doe Jane.nii.gz" in detail
        assert server.uploads.name not in detail and "datastore_" not in detail
    finally:
        running.stop()


def test_a_label_put_for_a_dicom_case_writes_its_seg_too(tmp_path):
    """PUT /datastore/label on a DICOM series wrote only the NIfTI: a SEG of an earlier save stayed beside it,
    holding another mask. Now the SEG is rewritten from the label (each PUT: the newest label)."""
    import pydicom

    from medseg.data.dicom import write_series
    from tests.conftest import synthetic_case

    image, _, _ = synthetic_case()
    lps = np.diag([1.5, 1.5, 2.0, 1.0])
    inputs = tmp_path / "inputs"
    write_series(inputs / "series_a", image.astype(np.float64), lps, series_uid="1.2.3.4", prefix="s")
    running = Running(create_app(Server(threshold_bundle(), tmp_path / "out", inputs)))
    try:
        for size in (4, 6):
            label = np.zeros(image.shape, np.uint8)
            label[4:4 + size, 5:5 + size, 3:3 + size] = 1
            path = tmp_path / f"label_{size}.nii.gz"
            nib.save(nib.Nifti1Image(label, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), path)
            body, kind = multipart({"label": path.read_bytes()})
            request = urllib.request.Request(f"{running.url}/datastore/label?image=series_a", data=body,
                                             method="PUT", headers={"Content-Type": kind})
            with urllib.request.urlopen(request, timeout=60) as r:
                assert json.loads(r.read())["dicom_seg"] == "series_a_seg.dcm"
            seg = pydicom.dcmread(tmp_path / "out" / "series_a_seg.dcm")
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4"
            frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
            liver = [i for i, f in enumerate(seg.PerFrameFunctionalGroupsSequence)
                     if f.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1]
            assert int(frames[liver].sum()) == size ** 3  # this PUT's label, not the earlier one
    finally:
        running.stop()


def test_an_enhanced_multiframe_file_case_saves_its_dicom_seg(tmp_path):
    """A case that is one enhanced multi-frame file (pydicom-data's enhanced CT) saved only the NIfTI mask from the
    page: the SEG was written for series folders alone."""
    import pydicom
    from pydicom.data import get_testdata_file

    from medseg.workflows.interact import CaseSession

    session = CaseSession(threshold_bundle(), "ect", Path(get_testdata_file("eCT_Supplemental.dcm")))
    files = session.save(tmp_path / "out")
    assert [f.name for f in files] == ["ect_seg.nii.gz", "ect_seg.dcm", "ect_clicks.json"], session.save_warning
    seg = pydicom.dcmread(files[1])
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(
        get_testdata_file("eCT_Supplemental.dcm"), stop_before_pixels=True).SeriesInstanceUID
