"""Screenshots of the app with a real exported model, in headless Chromium (Playwright).

    .venv/bin/python scripts/app_screenshot.py IMAGE [IMAGE ...] [--model PATH] [--out reports/latest]

Starts the app on a free 127.0.0.1 port (the best model of reports/latest unless --model),
uploads the images, waits for the answer, and saves ``app_screenshot.png`` (classify page) and
``app_model_card.png`` in --out; prints the upload-to-answer time seen in the browser.
``--readme PATH`` also writes a small palette PNG of the classify page (for the README).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from busi_study.app.server import running_server
    from busi_study.report.browser import find_chromium

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "latest")
    p.add_argument("--readme", type=Path, help="also write a small palette PNG of the classify page here")
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--then", nargs="*", type=Path, default=[], help="images uploaded after the first answer (timed too)")
    args = p.parse_args(argv)
    exe = find_chromium()
    if exe is None:
        sys.exit("chromium not found (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with running_server(model=args.model) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=LAUNCH_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": args.height})
        page.goto(url, timeout=120_000)
        page.get_by_text("No image uploaded yet").wait_for(timeout=120_000)
        t0 = time.monotonic()
        page.locator("input[type=file]").set_input_files([str(i) for i in args.images])
        page.locator("th", has_text="calibrated").nth(len(args.images) - 1).wait_for(timeout=300_000)
        answer = time.monotonic() - t0
        print("page says:", page.get_by_text("answered in").first.inner_text())
        # Streamlit serves the pictures under /media/: wait until both of each image are painted
        page.wait_for_function(
            "n => { const m = Array.from(document.images).filter(i => i.src.includes('/media/'));"
            " return m.length >= n && m.every(i => i.complete && i.naturalWidth > 0); }",
            arg=2 * len(args.images), timeout=60_000)
        page.wait_for_timeout(500)
        shot = args.out / "app_screenshot.png"
        page.screenshot(path=str(shot))
        if args.then:
            t0 = time.monotonic()
            page.locator("input[type=file]").set_input_files([str(i) for i in args.then])
            page.locator("th", has_text="calibrated").nth(len(args.images) + len(args.then) - 1).wait_for(timeout=300_000)
            print(f"then {len(args.then)} more image(s): upload to answer {time.monotonic() - t0:.2f} s "
                  f"(the page redraws all {len(args.images) + len(args.then)} results)")
            print("page says:", page.get_by_text("answered in").first.inner_text())
        page.get_by_text("Model card", exact=True).click()
        page.get_by_text("Limitations").wait_for(timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(args.out / "app_model_card.png"))
        browser.close()
    print(f"{len(args.images)} image(s): upload to answer in the browser {answer:.2f} s (first answer after a server start)")
    print(f"screenshots: {shot}, {args.out / 'app_model_card.png'}")
    if args.readme:
        im = Image.open(shot).convert("RGB")
        im = im.resize((1050, round(im.height * 1050 / im.width)), Image.LANCZOS).quantize(colors=128)
        im.save(args.readme, optimize=True)
        print(f"README copy: {args.readme} ({args.readme.stat().st_size / 1024:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
