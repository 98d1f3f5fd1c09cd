"""The app in a real browser: start the Streamlit server on 127.0.0.1 (a free port), drive
Debian's Chromium headless through Playwright, upload a BUSI image (a BUSI-like phantom when the
shared copy is absent), read the probabilities off the page, save a screenshot, stop the server.

Also checks the promise "nothing retained": the server runs in an empty working folder with an
empty temp folder, both still empty after the uploads, and its log never names the uploaded file.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from busi_study.report.browser import find_chromium

from .app_helpers import busi_like, encode, make_run
from .conftest import REPO, SHARED_BUSI

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]
STARTUP_S, ANSWER_S = 90, 120


def probabilities_on_page(page, timeout_s: float = ANSWER_S) -> list[list[str]]:
    """Rows (class, raw, calibrated) of the first probability table on the page, once it shows."""
    header = page.locator("th", has_text="calibrated").first
    header.wait_for(timeout=timeout_s * 1000)
    table = header.locator("xpath=ancestor::table[1]")
    return [r.inner_text().split("\t") for r in table.locator("tbody tr").all()]


@pytest.mark.browser
def test_app_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    exe = find_chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed (.ci/run installs it)")
        pytest.skip("chromium not found (Debian: apt-get install chromium)")
    from busi_study.app.server import running_server

    run = make_run(tmp_path / "reports", {"tiny": 0.8})
    busi = SHARED_BUSI / "benign" / "benign (1).png"
    upload = tmp_path / "inputs" / "lesion_upload.png"
    upload.parent.mkdir()
    if busi.exists():
        shutil.copy(busi, upload)
    else:
        upload.write_bytes(encode(busi_like()))
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    log = tmp_path / "server.log"
    shot = tmp_path / "app_screenshot.png"
    with running_server(model=str(run / "models" / "tiny.keras"), cwd=work, env={"TMPDIR": str(tmp)}, log=log,
                        startup_s=STARTUP_S) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=LAUNCH_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, timeout=STARTUP_S * 1000)
            page.get_by_text("not a medical device").first.wait_for(timeout=STARTUP_S * 1000)
            page.get_by_text("No image uploaded yet").wait_for(timeout=STARTUP_S * 1000)
            t0 = time.monotonic()
            page.locator("input[type=file]").set_input_files(str(upload))
            rows = probabilities_on_page(page)
            answer_s = time.monotonic() - t0
            page.locator("img").last.wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert [r[0].strip() for r in rows] == ["normal", "benign", "malignant"], rows
    raw = np.array([float(r[1]) for r in rows])
    cal = np.array([float(r[2]) for r in rows])
    assert raw.sum() == pytest.approx(1, abs=0.005) and cal.sum() == pytest.approx(1, abs=0.005)
    assert raw.argmax() == cal.argmax()
    assert shot.stat().st_size > 10_000
    latest = REPO / "reports" / "latest"
    if latest.is_dir():  # a copy beside the newest report, for a person to look at
        shutil.copy(shot, latest / "app_screenshot_test.png")
    print(f"upload to answer in the browser: {answer_s:.1f} s; screenshot {shot}")
    assert os.listdir(work) == [] and os.listdir(tmp) == []
    text = log.read_text(errors="replace")
    assert "lesion_upload" not in text and "Traceback" not in text, text[-2000:]
