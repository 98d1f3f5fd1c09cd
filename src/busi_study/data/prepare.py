"""The whole data path in one call: acquire → scan/validate → reference check → hashes →
near-duplicate groups → splits, each written to ``data/processed/<dataset>/<key>/`` (``store``).

``notebooks/00_download.ipynb`` calls :func:`prepare_data` and shows its tables; the CLI's
``check-data`` and the tests call it too, so there is one code path.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import DataSourceError
from ..info import BUSI, CLASSES
from ..params import DataParams, SplitParams
from . import acquire as acq
from .demo import demo_expected_counts
from .duplicates import candidate_pairs, compute_hashes, distance_histogram, group_images, label_conflicts
from .manifest import count_check, csv_sha256, scan_dataset, write_csv
from .release_check import check_against_reference, summarise_reference_check
from .splits import check_split_invariants, make_splits, split_table
from .store import ProcessedData, data_key, masks_sha256, sha256_of, write_json


@dataclass
class PreparedData:
    """Everything the data path produced (also on disk under ``store.folder``)."""

    acquired: acq.AcquiredData
    store: ProcessedData
    summary: dict
    manifest: pd.DataFrame
    issues: pd.DataFrame
    reference_check: pd.DataFrame | None
    pairs: pd.DataFrame
    groups: pd.DataFrame
    conflicts: pd.DataFrame
    splits: pd.DataFrame
    split_table: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def prepare_data(data: DataParams, splits_params: SplitParams, seed: int, data_dir: Path, *,
                 progress: bool = True) -> PreparedData:
    """Run the data path and write every file; return the tables and the summary.

    data.data_source: ``kaggle``, ``demo``, or a folder / ``.zip`` path; data's hash thresholds link
    near-duplicates (docs/protocol.md §2); splits_params and seed: the grouped CV (docs/protocol.md §3). data_dir: the
    project's ``data/`` folder (raw files are linked or unpacked under ``data/raw``, results go to
    ``data/processed/<busi|demo>/<manifest-sha12>-<key-sha8>/``, the key covering the masks' bytes and
    the parameters, see ``store``).
    """
    data_source, demo_seed = data.data_source, data.demo_seed
    phash_threshold, dhash_threshold, hash_margin, ssim_min = (data.phash_threshold, data.dhash_threshold,
                                                               data.hash_margin, data.ssim_min)
    n_splits = splits_params.n_splits
    val_fraction, repeats = splits_params.val_fraction, splits_params.repeats
    acquired = acq.acquire(data_source, Path(data_dir), demo_seed=demo_seed)
    scan = scan_dataset(acquired.root, progress=progress)
    # the folder is keyed by what produced it (store.py): manifest hash + masks hash + grouping/split parameters
    masks_sha = masks_sha256(scan.manifest, scan.files)
    key = data_key(csv_sha256(scan.manifest), {
        "masks_sha256": masks_sha, "phash_threshold": phash_threshold, "dhash_threshold": dhash_threshold, "hash_margin": hash_margin,
        "ssim_min": ssim_min, "seed": seed, "n_splits": n_splits, "val_fraction": val_fraction, "repeats": repeats})
    final = ProcessedData.keyed(Path(data_dir), acquired.dataset, key)
    # everything is written to a staging folder first and published at the end: a failed 00 never
    # leaves a half-written folder where an earlier run's data are
    store = ProcessedData(final.folder.parent / f".{key}.partial-{os.getpid()}", final.cache)
    if store.folder.exists():
        shutil.rmtree(store.folder)
    store.folder.mkdir(parents=True)
    try:
        summary, tables = _write_all(store, acquired, scan, key, final, phash_threshold, dhash_threshold, hash_margin,
                                     ssim_min, seed, n_splits, val_fraction, repeats, progress)
    except BaseException:  # no half-written staging folder stays behind (full disk, bad data, Ctrl-C)
        shutil.rmtree(store.folder, ignore_errors=True)
        raise
    ref_check, pairs, groups, conflicts, splits, table, warnings = tables
    store = _publish(store, final)
    return PreparedData(acquired, store, summary, scan.manifest, scan.issues, ref_check, pairs, groups,
                        conflicts, splits, table, warnings)


def _write_all(store, acquired, scan, key, final, phash_threshold, dhash_threshold, hash_margin, ssim_min, seed,
               n_splits, val_fraction, repeats, progress):
    """The data path's files in ``store`` (the staging folder); returns the summary and the tables."""
    write_json({"root": str(acquired.root.resolve()), "source": acquired.source, "how": acquired.how}, store.source)

    write_csv(scan.files, store.files)
    manifest_sha = write_csv(scan.manifest, store.manifest)
    write_csv(scan.issues, store.issues)
    n_masks = int(scan.manifest["n_masks"].sum()) if len(scan.manifest) else 0

    warnings: list[str] = []
    if acquired.dataset == "busi":
        expected = {"images": BUSI["expected_images"], "masks": BUSI["expected_mask_total"]}
        ref_check = check_against_reference(scan.files)
        write_csv(ref_check, store.reference_check)
        ref_summary = summarise_reference_check(ref_check)
        if not ref_summary["all_match"]:
            c = ref_summary["counts"]
            warnings.append(
                "data differ from the BUSI reference: "
                + ", ".join(f"{sum(c[o].values())} {o}" for o in ("different", "missing", "unexpected") if sum(c[o].values()))
            )
    else:
        expected = demo_expected_counts()
        ref_check, ref_summary = None, None
    count_problems = count_check(scan.manifest, n_masks, expected)
    if count_problems:
        warnings.append("unexpected counts: " + "; ".join(count_problems))
    if len(scan.issues):
        kept = int(scan.issues["action"].str.startswith("kept").sum())
        warnings.append(f"{len(scan.issues)} file problem(s) found: {len(scan.issues) - kept} left out or ignored, "
                        f"{kept} kept (see validation_issues.csv)")
    check_usable(scan.manifest, acquired.root, n_splits)

    hashes, thumbs = compute_hashes(scan.manifest, acquired.root, progress=progress)
    write_csv(hashes, store.hashes)
    write_csv(distance_histogram(hashes), store.hash_histogram)
    pairs = candidate_pairs(hashes, thumbs, phash_threshold, dhash_threshold, hash_margin, ssim_min)
    write_csv(pairs, store.pairs)
    groups = group_images(scan.manifest, pairs)
    write_csv(groups, store.groups)
    conflicts = label_conflicts(groups)

    splits = make_splits(groups, n_splits=n_splits, seed=seed, val_fraction=val_fraction, repeats=repeats)
    problems = check_split_invariants(splits)
    if problems:  # a bug, not a data problem: stop loudly
        raise AssertionError("; ".join(problems))
    splits_sha = write_csv(splits, store.splits)
    table = split_table(splits)

    counts = scan.manifest["label"].value_counts().to_dict() if len(scan.manifest) else {}
    summary = {
        "dataset": acquired.dataset,
        "source": acquired.source,
        "how": acquired.how,
        "root": str(acquired.root),
        "n_images": int(len(scan.manifest)),
        "images_per_class": {c: int(counts.get(c, 0)) for c in CLASSES},
        "n_masks": n_masks,
        "expected": expected,
        "count_problems": count_problems,
        "n_issues": int(len(scan.issues)),
        "reference": ref_summary,
        "manifest_sha256": manifest_sha,
        "masks_sha256": masks_sha256(scan.manifest, scan.files),
        "splits_sha256": splits_sha,
        "data_key": key,
        "processed_folder": str(final.folder.resolve()),
        "duplicates": {
            "phash_threshold": phash_threshold, "dhash_threshold": dhash_threshold, "ssim_min": ssim_min,
            "linked_pairs": int(pairs["linked"].sum()) if len(pairs) else 0,
            "n_groups": int(groups["group_id"].nunique()),
            "n_multi_image_groups": int((groups.groupby("group_id").size() > 1).sum()),
            "images_in_multi_image_groups": int((groups["group_size"] > 1).sum()),
            "n_label_conflict_groups": int(len(conflicts)),
            "images_in_label_conflict_groups": int(groups["label_conflict"].sum()),
        },
        "splits": {"seed": seed, "n_splits": n_splits, "val_fraction": val_fraction, "repeats": repeats},
        "warnings": warnings,
    }
    write_json(summary, store.summary)
    assert sha256_of(store.manifest) == manifest_sha
    return summary, (ref_check, pairs, groups, conflicts, splits, table, warnings)


def _publish(staging: ProcessedData, final: ProcessedData) -> ProcessedData:
    """Move the staging folder to its keyed place; an existing folder of the same key gets the
    new files one by one (each replaced atomically; same key = same manifest and parameters)."""
    try:
        os.rename(staging.folder, final.folder)
    except OSError:
        final.folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(staging.folder.iterdir()):
            os.replace(f, final.folder / f.name)
        staging.folder.rmdir()
    return final


def check_usable(manifest: pd.DataFrame, root: Path, n_splits: int) -> None:
    """Stop with one line when the data cannot give a study: a class without images, too few images."""
    counts = manifest["label"].value_counts().to_dict() if len(manifest) else {}
    empty = [c for c in CLASSES if counts.get(c, 0) == 0]
    if empty:
        missing = [c for c in empty if not (Path(root) / c).is_dir()]
        what = (f"no {'/, '.join(missing)}/ folder" if missing else f"no usable {', '.join(empty)} image")
        raise DataSourceError(
            f"{what} in {root}: the study needs images of all three classes ({', '.join(CLASSES)}) — point --data at "
            f"a complete copy of {BUSI['folder_name']} (see validation_issues.csv for skipped files)")
    small = {c: n for c, n in counts.items() if n < n_splits}
    if small:
        raise DataSourceError(
            f"too few images to split: {', '.join(f'{n} {c}' for c, n in small.items())} for {n_splits} grouped folds "
            f"— use a larger dataset or fewer folds (--set n_splits=2)")


def summary_lines(summary: dict) -> list[str]:
    """Short human-readable lines for the notebook, the CLI and the index page."""
    per = summary["images_per_class"]
    lines = [
        f"{summary['n_images']} images ({', '.join(f'{per[c]} {c}' for c in CLASSES)}), {summary['n_masks']} masks",
    ]
    ref = summary.get("reference")
    if ref:
        c = ref["counts"]
        lines.append(
            f"reference check: {ref['pixel_identical_images']} images and {ref['pixel_identical_masks']} masks "
            f"pixel-identical to the public release ({sum(c['identical bytes'].values())} identical bytes, "
            f"{sum(c['identical pixels'].values())} identical pixels re-encoded, {sum(c['different'].values())} different, "
            f"{sum(c['missing'].values())} missing, {sum(c['unexpected'].values())} unexpected)"
        )
    d = summary["duplicates"]
    lines.append(
        f"near-duplicates (pHash <= {d['phash_threshold']} or dHash <= {d['dhash_threshold']}): "
        f"{d['linked_pairs']} linked pairs, {d['n_groups']} groups ({d['n_multi_image_groups']} with more than one image, "
        f"holding {d['images_in_multi_image_groups']} images), {d['n_label_conflict_groups']} label-conflict groups"
    )
    lines.append(f"manifest sha256 {summary['manifest_sha256'][:16]}…")
    return lines
