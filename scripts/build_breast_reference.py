#!/usr/bin/env python3
"""Build src/busi_study/resources/breast_reference.csv from a verified copy of BrEaST-Lesions_USG.

    python scripts/build_breast_reference.py ../shared/data/breast

Reads the copy's SHA256SUMS.txt (the checksums of the TCIA release's own bytes), checks every
listed file against it, and writes one row per image and mask keyed by file name (the release is
flat; local copies may sort files into images/ and masks/): name, kind, label, sha256, bytes,
width, height, mode, pixel_sha256 (SHA-256 of the decoded RGB pixels, as for BUSI).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from busi_study.data.breast import CASE_RE, read_clinical  # noqa: E402
from busi_study.data.images import file_sha256  # noqa: E402
from busi_study.data.manifest import _inspect  # noqa: E402


def main(src: Path) -> int:
    sums = {}
    for line in (src / "SHA256SUMS.txt").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        sums[rel.lstrip("*")] = digest
    labels = read_clinical(src).set_index("Image_filename")["Classification"].to_dict()
    rows = []
    for rel, digest in sorted(sums.items()):
        m = CASE_RE.match(Path(rel).name)
        if not m:
            continue  # the clinical xlsx: checked by its own SHA-256 below
        if file_sha256(src / rel) != digest:
            raise SystemExit(f"{rel}: SHA-256 differs from SHA256SUMS.txt; not a verified copy")
        info = _inspect(src / rel)
        kind = "image" if m.group("suffix") is None else "mask"
        rows.append({"path": Path(rel).name, "kind": kind, "label": labels.get(f"case{m.group('num')}.png", ""),
                     "sha256": digest, "bytes": info["bytes"], "width": info["width"], "height": info["height"],
                     "mode": info["mode"], "pixel_sha256": info["pixel_sha256"]})
    out = ROOT / "src" / "busi_study" / "resources" / "breast_reference.csv"
    pd.DataFrame(rows).to_csv(out, index=False, lineterminator="\n")
    xlsx = [rel for rel in sums if rel.endswith(".xlsx")]
    print(f"{len(rows)} rows written to {out}; clinical table {xlsx}: {[sums[x] for x in xlsx]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/breast")))
