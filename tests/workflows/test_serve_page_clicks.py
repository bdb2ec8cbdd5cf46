"""medseg.serve's page in headless Chromium: a click sends the voxel under the cursor also where a view sits at a
half pixel (offsetX and clientWidth are whole pixels); the hourglass stays on, and Open/Undo/Save stay disabled,
until a volume has downloaded (one request per double click, no canvas click during it); a failed Undo says so
(no uncaught error) and the console stays clean (no favicon 404)."""

from __future__ import annotations

import math
import time

import nibabel as nib
import pytest

from tests.conftest import needs_chromium
from tests.engine.test_interactive import write_case
from tests.workflows.test_serve import opened_page

pytestmark = [pytest.mark.slow, needs_chromium]

#: the page's fetch, logged: every click's voxel and every request's path
LOG_FETCH = """window.__sent = []; window.__paths = []; const of = window.fetch;
window.fetch = (u, o) => { window.__paths.push(String(u));
  if (String(u).endsWith('/click')) window.__sent.push(JSON.parse(o.body).voxel); return of(u, o); };"""


@pytest.fixture
def page(tmp_path):
    from selenium.webdriver.common.by import By

    with opened_page(tmp_path, lambda inputs: write_case(inputs / "ct_001.nii.gz"), browser_log=True) as (driver, wait,
                                                                                                          server):
        driver.execute_script(LOG_FETCH)
        driver.find_element(By.ID, "open").click()
        wait.until(lambda d: "automatic mask" in d.find_element(By.ID, "status").text)
        yield driver, wait, server


def idle(driver) -> bool:
    return driver.execute_script("return document.body.dataset.busy") == "0"


def test_a_click_sends_the_voxel_under_the_cursor_on_a_view_at_a_half_pixel(page):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    driver, wait, server = page
    planes = [(0, 1), (0, 2), (1, 2)]  # (u, v) of the axial, coronal, sagittal view
    # the radiological convention: the letter each view's index grows towards on the screen's right and top
    codes = nib.aff2axcodes(nib.load(server.cases["ct_001"].path).affine)  # ('L', 'A', 'S'): axis 0 flipped
    right_top = [("L", "A"), ("L", "S"), ("P", "S")]
    checked = 0
    for p, (u, v) in enumerate(planes):
        # the view's canvas at a half pixel (as a centred canvas under a wider slider often is)
        driver.execute_script(f"const c = document.getElementById('c{p}'), l = c.getBoundingClientRect().left;"
                              " c.style.position = 'relative'; c.style.left = (0.5 - l % 1) + 'px';")
        box = driver.execute_script(f"return document.getElementById('c{p}').getBoundingClientRect().toJSON()")
        w, h = driver.execute_script(f"const c = document.getElementById('c{p}'); return [c.width, c.height]")
        assert box["left"] % 1 == 0.5
        for k in range(1, w, max(1, w // 6)):  # the pixel just left of a voxel's right edge: offsetX there rounds
            edge = box["left"] + k * box["width"] / w  # up to the next voxel
            x, y = math.ceil(edge - 0.5), int(box["top"] + box["height"] * 0.4)
            if x >= edge:
                continue
            fx, fy = (x - box["left"]) * w / box["width"], (y - box["top"]) * h / box["height"]
            if min(fx % 1, 1 - fx % 1) < 0.05 or min(fy % 1, 1 - fy % 1) < 0.05:
                continue  # on the line between two voxels: either is under the cursor
            n = len(driver.execute_script("return window.__sent"))
            actions = ActionBuilder(driver)
            actions.pointer_action.move_to_location(x, y)
            actions.pointer_action.click()
            actions.perform()
            wait.until(lambda d: len(d.execute_script("return window.__sent")) > n and idle(d))
            sent = driver.execute_script("return window.__sent")[-1]
            across = math.floor(fx) if codes[u] == right_top[p][0] else w - 1 - math.floor(fx)
            down = h - 1 - math.floor(fy) if codes[v] == right_top[p][1] else math.floor(fy)
            assert (sent[u], sent[v]) == (across, down), (p, x, y, fx, fy, sent)
            checked += 1
    assert checked >= 12
    assert len(server.cases["ct_001"].steps) == checked


def test_hourglass_and_disabled_buttons_until_the_volumes_downloaded_and_a_failed_undo_says_so(page):
    from selenium.webdriver.common.by import By

    driver, wait, server = page
    status = lambda: driver.find_element(By.ID, "status").text  # noqa: E731
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {  # the image (160 kB) downloads for seconds
        "offline": False, "latency": 50, "downloadThroughput": 40_000, "uploadThroughput": 40_000})
    try:
        driver.execute_script("window.__paths = []")
        opened = driver.find_element(By.ID, "open")
        opened.click()
        opened.click()  # a double click: one open
        time.sleep(1.5)  # the image's headers are in, its body is not
        assert driver.execute_script("return document.getElementById('busy').classList.contains('on')")
        assert all(driver.find_element(By.ID, b).get_attribute("disabled") for b in ("open", "undo", "save"))
        driver.find_element(By.ID, "c0").click()  # a click before the volumes are in: not sent
        driver.find_element(By.ID, "save").click()  # disabled: nothing
        wait.until(idle)
        assert "automatic mask" in status()
        paths = driver.execute_script("return window.__paths")
        assert [p.rsplit("/", 1)[-1] for p in paths] == ["open", "image", "mask"], paths
        assert not server.cases["ct_001"].steps
        assert not any(driver.find_element(By.ID, b).get_attribute("disabled") for b in ("open", "undo", "save"))
        # a double click: one save (both clicks in one script, so a slow machine cannot let the first save end
        # between them, as two WebDriver clicks could under load)
        driver.execute_script("const b = document.getElementById('save'); b.click(); b.click();")
        wait.until(lambda d: "saved" in status() and idle(d))
        assert sum(p.endswith("/save") for p in driver.execute_script("return window.__paths")) == 1
    finally:
        driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    server.cases.clear()  # as after a restart of the server while the page stays open
    driver.find_element(By.ID, "undo").click()
    wait.until(lambda d: "undo failed" in status() and idle(d))
    assert "is not open" in status()
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "/undo" not in e["message"]]
    assert not errors, errors  # no uncaught error, no favicon 404
