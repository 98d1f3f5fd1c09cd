"""Time the app's answer per image (decode, range check, probabilities, calibration, decision,
Grad-CAM, overlay) on this machine, with the models of a report — a benchmark, not a test.

    .venv/bin/python scripts/benchmark_app.py --images /path/to/Dataset_BUSI_with_GT --n 20
    .venv/bin/python scripts/benchmark_app.py --model reports/latest/models/NAME.keras --images DIR

Per model: the load time (once per server thanks to st.cache_resource), then n single-image
calls of ``engine.analyse`` (one upload → one answer, as on the page), after one warm-up call.
Prints a Markdown table (median, 90th percentile and max seconds per image, with and without
Grad-CAM). Images are read into memory first, so disk time is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from busi_study.app import engine
    from busi_study.predict import list_images

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="*", help=".keras files (default: every exported model of reports/latest)")
    p.add_argument("--reports", default=str(Path(__file__).resolve().parents[1] / "reports"))
    p.add_argument("--images", required=True, help="an image folder (searched recursively, masks skipped)")
    p.add_argument("--n", type=int, default=20, help="images timed per model")
    args = p.parse_args(argv)
    entries = [engine.entry_for(Path(m)) for m in args.model] if args.model else engine.find_models(Path(args.reports))
    if not entries:
        sys.exit("no model found")
    files = list_images([args.images])[:: max(1, len(list_images([args.images])) // args.n)][: args.n]
    uploads = [(f.name, f.read_bytes()) for f in files]
    print(f"{len(uploads)} images from {args.images}; CPU cores: {os.cpu_count()}")
    print("| model | input px | load s | per image s, Grad-CAM: median | p90 | max | without Grad-CAM: median |")
    print("|---|---|---|---|---|---|---|")
    for e in entries:
        lm = engine.load(e)
        engine.analyse(lm, uploads[:1])  # warm-up (graph tracing, first allocation)
        times = {}
        for cam in (True, False):
            t = []
            for u in uploads:
                t0 = time.perf_counter()
                (r,) = engine.analyse(lm, [u], with_gradcam=cam)
                t.append(time.perf_counter() - t0)
                assert not r.error, r.error
            times[cam] = sorted(t)
        w = times[True]
        p90 = w[min(len(w) - 1, int(round(0.9 * (len(w) - 1))))]
        print(f"| {e.name} | {lm.input_size} | {lm.load_seconds:.1f} | {statistics.median(w):.2f} | {p90:.2f} | {max(w):.2f} | "
              f"{statistics.median(times[False]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
