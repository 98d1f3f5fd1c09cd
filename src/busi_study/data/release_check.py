"""Check a copy of BUSI against the reference list of the public release, file by file.

Outcomes: ``identical bytes`` (same SHA-256 as published), ``identical pixels`` (re-encoded,
same decoded RGB pixels), ``different``, ``missing`` (in the reference, not in the copy) and
``unexpected`` (in the copy, not in the reference).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

OUTCOMES = ("identical bytes", "identical pixels", "different", "missing", "unexpected")


def load_reference(filename: str = "busi_reference.csv") -> pd.DataFrame:
    """A packaged reference list (path, kind, label, sha256, bytes, width, height, mode, pixel_sha256):
    BUSI's by default, ``breast_reference.csv`` for the external set."""
    with resources.files("busi_study.resources").joinpath(filename).open("r") as f:
        return pd.read_csv(f, dtype={"sha256": str, "pixel_sha256": str})


def check_against_reference(files: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per path in the copy or the reference: path, kind, label, outcome.

    ``files`` is ``ScanResult.files`` (path, kind, sha256, pixel_sha256, …).
    """
    reference = load_reference() if reference is None else reference
    ref = reference.set_index("path")
    have = files.set_index("path")
    rows = []
    for path in sorted(set(ref.index) | set(have.index)):
        if path not in have.index:
            r = ref.loc[path]
            rows.append({"path": path, "kind": r["kind"], "label": r["label"], "outcome": "missing"})
            continue
        f = have.loc[path]
        if path not in ref.index:
            rows.append({"path": path, "kind": f["kind"], "label": f["label"], "outcome": "unexpected"})
            continue
        r = ref.loc[path]
        if f["sha256"] == r["sha256"]:
            outcome = "identical bytes"
        elif f["pixel_sha256"] and f["pixel_sha256"] == r["pixel_sha256"]:
            outcome = "identical pixels"
        else:
            outcome = "different"
        rows.append({"path": path, "kind": r["kind"], "label": r["label"], "outcome": outcome})
    return pd.DataFrame(rows, columns=["path", "kind", "label", "outcome"])


def summarise_reference_check(check: pd.DataFrame) -> dict:
    """Counts per outcome and kind, plus ``pixel_identical`` (bytes or pixels) and ``all_match``."""
    counts = {o: {"image": 0, "mask": 0} for o in OUTCOMES}
    for (outcome, kind), n in check.groupby(["outcome", "kind"]).size().items():
        counts[outcome][kind] = int(n)
    same = check["outcome"].isin(["identical bytes", "identical pixels"])
    return {
        "counts": counts,
        "pixel_identical_images": int((same & (check["kind"] == "image")).sum()),
        "pixel_identical_masks": int((same & (check["kind"] == "mask")).sum()),
        "n_reference": int((check["outcome"] != "unexpected").sum()),
        "all_match": bool(same.all()),
    }
