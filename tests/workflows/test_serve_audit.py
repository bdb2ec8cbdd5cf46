"""medseg.serve as a user drives it (from an audit): no server path in an answer, bad requests are 4xx lines (never a
500), a save is whole or not begun, the listing leaves out saved masks and clashing names, one upload per name, body
limits on every route, and start-up options checked in one line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import MedsegError
from medseg.workflows import serve
from medseg.workflows.serve import Server, create_app
from tests.engine.test_interactive import write_case
from tests.workflows.test_serve import (Running, call, declared_upload, multipart, served,  # noqa: F401
                                       threshold_bundle)

pytestmark = pytest.mark.slow


@pytest.fixture
def running(served):
    """test_serve's server (ct_001 in inputs/, a 0.5 MB upload limit), with its input folder named."""
    return {**served, "inputs": served["tmp"] / "inputs"}


def _send(url: str, method: str, fields: dict[str, bytes]) -> tuple[int, dict]:
    body, kind = multipart(fields)
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}") if "json" in r.headers.get("content-type", "") else {}
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_a_damaged_case_is_named_by_its_listed_name_never_by_its_server_path(running):
    url, inputs = running["url"], running["inputs"]
    (inputs / "Doe John MRN4711.nii.gz").write_bytes(b"\x1f\x8b damaged" * 20)
    assert "Doe_John_MRN4711" in json.loads(call(f"{url}/api/cases")[1])["input"]
    for status, detail in (
            (lambda r: (r[0], json.loads(r[1])["detail"]))(call(f"{url}/api/open", "POST", {"name": "Doe_John_MRN4711"})),
            (lambda r: (r[0], json.loads(r[1])["detail"]))(call(f"{url}/infer/medseg?image=Doe_John_MRN4711", "POST", b""))):
        assert status == 400 and detail.startswith("Doe_John_MRN4711"), detail
        assert "Doe John" not in detail and str(inputs) not in detail
    assert call(f"{url}/api/open", "POST", {"name": "ct_001"})[0] == 200
    status, body, _ = call(f"{url}/api/cases/ct_001/save", "POST")
    assert status == 200 and json.loads(body)["output_dir"] == "out"  # the folder's name, not the server's path


def test_clicks_and_labels_that_crashed_the_server_are_400_lines(running, tmp_path):
    url, src = running["url"], running["src"]
    shape = nib.load(src).shape
    # a background click at the far edge of the last slice: rounds to an index past the image (was an IndexError)
    status, detail = _send(f"{url}/infer/medseg?image=ct_001&output=json", "POST",
                           {"params": json.dumps({"background": [[shape[0] - 0.4, 1, 1]]}).encode()})
    assert status == 200, detail
    assert call(f"{url}/api/open", "POST", {"name": "ct_001"})[0] == 200
    status, body, _ = call(f"{url}/api/cases/ct_001/click", "POST",  # a positive one there: on the last voxel
                           {"voxel": [shape[0] - 0.4, shape[1] // 2, shape[2] // 2], "label": 1})
    assert status == 200, body
    for params, message in (([1, 2], "a JSON object"), ({"Liver": [[1, 1, 1]]}, "'Liver': not a label of this bundle"),
                            ({"liver": 5}, "'liver': a list of")):
        status, detail = _send(f"{url}/infer/medseg?image=ct_001", "POST", {"params": json.dumps(params).encode()})
        assert status == 400 and message in detail["detail"], (params, detail)
    image = nib.load(src)
    for name, values, message in (("nan", np.nan, "NaN or infinite"), ("inf", np.inf, "NaN or infinite"),
                                  ("half", 1.5, "not whole numbers (e.g. 1.5)")):
        array = np.zeros(image.shape, np.float32)
        array[1, 1, 1] = values
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, image.affine), path)
        status, detail = _send(f"{url}/datastore/label?image=ct_001", "PUT", {"label": path.read_bytes()})
        assert status == 400 and message in detail["detail"], detail
    assert not running["out"].exists()


def test_a_folder_where_a_save_writes_is_refused_before_any_file(running):
    url, out = running["url"], running["out"]
    assert call(f"{url}/api/open", "POST", {"name": "ct_001"})[0] == 200
    (out / "ct_001_clicks.json").mkdir(parents=True)
    status, body, _ = call(f"{url}/api/cases/ct_001/save", "POST")
    assert status == 400 and "ct_001_clicks.json: a folder" in json.loads(body)["detail"]
    assert sorted(p.name for p in out.iterdir()) == ["ct_001_clicks.json"]  # the mask was not written either
    (out / "ct_001_clicks.json").rmdir()
    assert call(f"{url}/api/cases/ct_001/save", "POST")[0] == 200


def test_saved_masks_in_the_input_folder_are_not_cases_and_clashing_names_are_left_out(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_case(inputs / "ct_001.nii.gz")
    server = Server(threshold_bundle(), inputs, inputs)  # --output-dir is the input folder
    run = Running(create_app(server))
    try:
        assert call(f"{run.url}/api/open", "POST", {"name": "ct_001"})[0] == 200
        assert call(f"{run.url}/api/cases/ct_001/save", "POST")[0] == 200
        assert (inputs / "ct_001_seg.nii.gz").is_file()
        assert json.loads(call(f"{run.url}/api/cases")[1])["input"] == ["ct_001"]
        assert list(json.loads(call(f"{run.url}/datastore/?output=all")[1])["objects"]) == ["ct_001"]
        write_case(inputs / "ct 2.nii.gz", seed=1)
        write_case(inputs / "ct_2.nii.gz", seed=2)  # both would be case ct_2: whose mask would ct_2_seg be?
        assert json.loads(call(f"{run.url}/api/cases")[1])["input"] == ["ct_001"]
        assert sorted(p.name for p in server.clashes()["ct_2"]) == ["ct 2.nii.gz", "ct_2.nii.gz"]
        status, body, _ = call(f"{run.url}/api/upload?name=ct_2.nii.gz", "POST", (inputs / "ct_001.nii.gz").read_bytes())
        assert status == 409
        server.pending.add("busy")  # an upload of that name still being received
        status, body, _ = call(f"{run.url}/api/upload?name=busy.nii.gz", "POST", (inputs / "ct_001.nii.gz").read_bytes())
        assert status == 409 and "being uploaded" in json.loads(body)["detail"]
        boundary = "b0undary"  # MONAI Label's upload of the same name: refused as well
        form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"busy.nii.gz\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + (inputs / "ct_001.nii.gz").read_bytes() \
            + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{run.url}/datastore/?image=busy", data=form, method="PUT",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == 409 and "being uploaded" in json.loads(err.value.read())["detail"]
    finally:
        run.stop()


def test_every_body_is_size_limited_and_open_cases_are_not_replaced(running):
    url, src = running["url"], running["src"]
    for route in ("/infer/medseg?image=ct_001", "/auth/token"):  # the fixture's limit is 0.5 MB
        status, body = declared_upload(f"{url}{route}", 600_000)
        assert status == 413 and "over the limit" in json.loads(body)["detail"], route
    status, body, _ = call(f"{url}/api/upload?name=scan_b.nii.gz", "POST", src.read_bytes())
    assert status == 200  # open in the page
    boundary = "b0undary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"scan_b.nii.gz\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + src.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/datastore/?image=scan_b", data=form, method="PUT",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 409 and "open in the medseg.serve page" in json.loads(err.value.read())["detail"]
    request = urllib.request.Request(f"{url}/api/upload?name=form.nii.gz", data=form, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 400 and "not a form" in json.loads(err.value.read())["detail"]


def test_a_label_upload_replaces_the_click_log_of_an_earlier_save(running):
    url, out = running["url"], running["out"]
    assert call(f"{url}/api/open", "POST", {"name": "ct_001"})[0] == 200
    status, body, _ = call(f"{url}/api/cases/ct_001/click", "POST", {"voxel": [11.8, 10, 10], "label": 1})
    assert status == 200 and json.loads(body)["voxel"] == [11.8, 10, 10]  # as sent, not cut to 11
    assert call(f"{url}/api/cases/ct_001/save", "POST")[0] == 200
    assert len(json.loads((out / "ct_001_clicks.json").read_text())["events"]) == 1
    label = out / "ct_001_seg.nii.gz"
    status, detail = _send(f"{url}/datastore/label?image=ct_001", "PUT", {"label": label.read_bytes()})
    assert status == 200, detail
    log = json.loads((out / "ct_001_clicks.json").read_text())
    assert log["mode"] == "label upload" and log["events"] == []


def test_start_up_options_are_one_line_before_the_bundle_loads(tmp_path):
    for kwargs, message in (({"port": 99999}, "--port 99999: give a port number from 1 to 65535"),
                            ({"port": -5}, "--port -5: give a port number"),
                            ({"max_upload_mb": float("nan")}, "--max-upload-mb nan: give a positive number"),
                            ({"max_upload_mb": -1.0}, "--max-upload-mb -1.0: give a positive number"),
                            ({"host": "192.0.2.1", "token": "t"}, "--host 192.0.2.1: not an address of this machine")):
        with pytest.raises(MedsegError, match=message.replace(".", r"\.").replace("(", r"\(")):
            serve.run(tmp_path / "no_bundle", output_dir=tmp_path / "out", **kwargs)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(MedsegError, match="--input-dir .*a_file: a file, not a folder"):
        serve.run(tmp_path / "no_bundle", input_dir=tmp_path / "a_file", output_dir=tmp_path / "out")


def test_serve_help_imports_neither_torch_nor_fastapi_and_keeps_the_workflow_defaults():
    import subprocess
    import sys

    from medseg.cli import serve as cli
    from medseg.inference.runtimes import ENGINES

    assert cli.DEFAULT_MAX_UPLOAD_MB == serve.DEFAULT_MAX_UPLOAD_MB and cli.ENGINES == ENGINES
    code = ("import sys, medseg.cli.serve as c; c.build_parser();"
            " print(sorted({'torch', 'monai', 'fastapi'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_misnamed_picture_is_one_line_before_any_reader(running):
    """check_input (the check of predict, serve and rank) names a PNG with a .tif name; through MONAI's LoadImage
    alone (serve, rank) it was a 'cannot find a suitable reader' line."""
    from PIL import Image

    from medseg.workflows.predict import check_input

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(running["tmp"] / "scan.png")
    misnamed = running["tmp"] / "scan.tif"
    misnamed.write_bytes((running["tmp"] / "scan.png").read_bytes())
    with pytest.raises(MedsegError, match=r"scan\.tif: a PNG file with a \.tif name; rename it"):
        check_input(running["server"].bundle, misnamed)
