"""Screenshot of the ``medseg.serve`` page (README, click and correct): serve a bundle on one image, open it in
headless Chromium (Debian's chromium + chromium-driver, through Selenium), wait for the automatic mask, click once
on the axial view (left: positive, the chosen class), save a PNG.

    .venv/bin/python docs/serve_screenshot.py --bundle bundles/liver_ct_interactive \
        --image data/lits_sample/imagesTr/lits_sample_val.nii.gz --out docs/serve_page.png [--engine openvino]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--engine", default="torch")
    p.add_argument("--click", type=float, nargs=2, default=[0.5, 0.5], metavar=("X", "Y"),
                   help="where to click on the axial view, as fractions of its width and height")
    args = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        shutil.copy(args.image, inputs / args.image.name)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "medseg.serve", "--bundle", args.bundle, "--port", str(port),
                                   "--input-dir", str(inputs), "--output-dir", str(Path(tmp) / "out"),
                                   "--engine", args.engine])
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(url + "/api/info", timeout=5).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("medseg.serve did not start") from None
                    time.sleep(0.5)
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
            for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         f"--user-data-dir={Path(tmp) / 'chromium'}", "--window-size=1200,600"):
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                      options=options)
            try:
                wait = WebDriverWait(driver, 120)
                status = lambda: driver.find_element(By.ID, "status").text  # noqa: E731
                driver.get(url + "/")
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#cases option"))
                driver.find_element(By.ID, "open").click()
                wait.until(lambda d: "automatic mask" in status())
                c0 = driver.find_element(By.ID, "c0")
                dx = int((args.click[0] - 0.5) * c0.size["width"])
                dy = int((args.click[1] - 0.5) * c0.size["height"])
                ActionChains(driver).move_to_element_with_offset(c0, dx, dy).click().perform()
                wait.until(lambda d: "click at" in status() and d.execute_script("return document.body.dataset.busy") == "0")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
                print(f"{args.out}: {status()}")
            finally:
                driver.quit()
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
