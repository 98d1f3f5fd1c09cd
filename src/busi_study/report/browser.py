"""Open a report page in headless Chromium: screenshot it and count the images that loaded.

Used by the end-to-end test and by anyone checking a report on a machine without a screen:

    python -m busi_study.report.browser reports/latest/index.html
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Flags for a root user on a machine with no network and no screen.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(page: Path, screenshot: Path | None = None, width: int = 1280, height: int = 2400,
           timeout: int = 120) -> tuple[int, int]:
    """Load ``page`` in headless Chromium; return (images loaded, images on the page).

    The count comes from the page's own ``data-images-loaded`` attribute, set by its load
    handler (see ``report.index``). Writes a PNG screenshot when ``screenshot`` is given.
    """
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install chromium)")
    url = Path(page).resolve().as_uri()
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                              "--dump-dom", url], capture_output=True, text=True, timeout=timeout).stdout
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    if not m:
        raise RuntimeError("the page did not report its images (load handler did not run)")
    if screenshot is not None:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                            f"--screenshot={Path(screenshot).resolve()}", url],
                           capture_output=True, timeout=timeout, check=True)
    return int(m.group(1)), int(m.group(2))


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "reports/latest/index.html")
    shot = target.with_name("screenshot.png")
    ok, total = render(target, shot)
    print(f"{ok}/{total} images loaded; screenshot: {shot}")
    sys.exit(0 if total and ok == total else 1)
