"""A report never mixes data or runs: every reader checks what it reads against its run.

Notebook 00 writes ``<report>/data_summary.json`` holding the processed-data folder of this run
and the SHA-256 of its manifest and splits. Every later notebook opens the data with
:func:`open_run_data` (``report_dir``), which

* reads that summary (no summary: run 00 first),
* checks that the manifest and splits files in the folder still have the recorded hashes, that
  the folder's masks are the recorded ones (the processed-data key covers them: two folders with
  the same images but other masks never share a folder) and that every raw image and mask the
  notebooks read (under the folder's ``source.json`` root) still has the bytes the data path saw,
* checks that every model result already in the report (``results/<model>/metrics.json``,
  e.g. carried over from an earlier run by ``--only``) was made from the same manifest and
  splits.

Any mismatch is one :class:`~busi_study.errors.ProvenanceError` line naming both sides and
what to rerun. The runner calls :func:`check_report` once more at the end of a run, so
``--only 00`` with new split parameters cannot leave old model results beside new splits.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ProvenanceError
from .images import file_sha256
from .store import ProcessedData, sha256_of

SUMMARY_NAME = "data_summary.json"


def _short(h: str | None) -> str:
    return (h or "none")[:12]


def read_run_summary(report_dir: Path | str) -> dict:
    """This run's data summary (written by notebook 00); a ProvenanceError when there is none."""
    path = Path(report_dir) / SUMMARY_NAME
    if not path.exists():
        raise ProvenanceError(f"{path} not found: this report has no data yet — run notebooks/00_download first "
                              "(run_all.py --only 00, or the whole study)")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProvenanceError(f"{path} is unreadable ({exc}) — rerun notebooks/00_download (run_all.py --from 00)") from None
    if not summary.get("processed_folder") or not summary.get("splits_sha256") or not summary.get("masks_sha256"):
        raise ProvenanceError(f"{path} was written by an older version without data (or mask) hashes — rerun the study "
                              "from 00 (run_all.py --from 00)")
    return summary


def store_of(summary: dict, data_dir: Path | str | None = None) -> ProcessedData:
    """The processed-data store a summary points to (``data_dir`` only if the folder moved)."""
    folder = Path(summary["processed_folder"])
    if not folder.exists() and data_dir is not None:
        folder = Path(data_dir) / "processed" / summary["dataset"] / folder.name
    return ProcessedData(folder, folder.parent / "cache")


def check_store(store: ProcessedData, summary: dict) -> None:
    """The manifest and splits in ``store`` are the ones the summary recorded."""
    for name in ("manifest", "splits"):
        path = getattr(store, name)
        want = summary[f"{name}_sha256"]
        if not path.exists():
            raise ProvenanceError(f"this run's {name} {path} is missing (recorded sha256 {_short(want)}) — rerun "
                                  "notebooks/00_download (run_all.py --from 00)")
        got = sha256_of(path)
        if got != want:
            raise ProvenanceError(f"{path} has sha256 {_short(got)} but this run recorded {name} {_short(want)}: the "
                                  "processed data changed after 00 ran — rerun the study from 00 (run_all.py --from 00)")
    got = store.masks_sha256()
    if got != summary["masks_sha256"]:
        raise ProvenanceError(f"the masks of {store.folder} have hash {_short(got)} but this run recorded masks "
                              f"{_short(summary['masks_sha256'])}: another folder's masks — rerun the study from 00 "
                              "(run_all.py --from 00)")
    check_raw_inputs(store)


def check_raw_inputs(store: ProcessedData) -> None:
    """Every image and mask of the manifest, under the raw root the data path read, still has the
    bytes recorded then (``manifest.csv`` / ``files.csv``): a file replaced, edited or removed after 00
    is a ProvenanceError naming it."""
    try:
        root = store.raw_root()
    except (OSError, ValueError, KeyError):
        raise ProvenanceError(f"{store.source} is missing or unreadable — rerun the study from 00 (run_all.py --from 00)") from None
    files = store.read("files")
    recorded = dict(zip(files["path"].astype(str), files["sha256"].astype(str)))
    manifest = store.read("manifest")
    for image, sha, masks in zip(manifest["path"], manifest["sha256"], manifest["mask_paths"]):
        wanted = [(image, sha)] + [(m, recorded.get(m, "")) for m in (masks.split(";") if isinstance(masks, str) and masks else [])]
        for rel, want in wanted:
            f = root / rel
            if not f.is_file():
                raise ProvenanceError(f"{f} is missing: the raw data this run was made from changed after 00 ran — put it "
                                      "back or rerun the study from 00 (run_all.py --from 00)")
            got = file_sha256(f)
            if got != want:
                raise ProvenanceError(f"{f} changed after 00 ran (sha256 {_short(got)}, recorded {_short(want)}): this run's "
                                      "results were made from other data — rerun the study from 00 (run_all.py --from 00)")


def check_results(report_dir: Path | str, summary: dict) -> list[str]:
    """Every model result in the report was made from this run's manifest and splits.

    Returns the names checked; raises a ProvenanceError on the first mismatch.
    """
    checked = []
    for metrics in sorted((Path(report_dir) / "results").glob("*/metrics.json")):
        name = metrics.parent.name
        try:
            rec = json.loads(metrics.read_text())
        except (OSError, ValueError):
            raise ProvenanceError(f"{metrics} is unreadable — rerun the model notebooks (run_all.py --from 02)") from None
        got = (rec.get("data_manifest_sha256"), rec.get("data_splits_sha256"))
        want = (summary["manifest_sha256"], summary["splits_sha256"])
        if got != want:
            raise ProvenanceError(
                f"results/{name} were made from manifest {_short(got[0])} / splits {_short(got[1])} but this run's data "
                f"are manifest {_short(want[0])} / splits {_short(want[1])} — rerun the models on this data "
                "(run_all.py --from 02) instead of mixing two data versions in one report")
        checked.append(name)
    return checked


def open_run_data(report_dir: Path | str, data_dir: Path | str | None = None) -> ProcessedData:
    """The checked store of this run (module docstring)."""
    summary = read_run_summary(report_dir)
    store = store_of(summary, data_dir)
    check_store(store, summary)
    check_results(report_dir, summary)
    return store


def check_report(report_dir: Path | str) -> dict | None:
    """For the runner: the run's data hashes after checking store and results; None without data."""
    if not (Path(report_dir) / SUMMARY_NAME).exists():
        return None
    summary = read_run_summary(report_dir)
    check_store(store_of(summary), summary)
    check_results(report_dir, summary)
    return {"manifest_sha256": summary["manifest_sha256"], "masks_sha256": summary["masks_sha256"],
            "splits_sha256": summary["splits_sha256"], "processed_folder": summary["processed_folder"]}
