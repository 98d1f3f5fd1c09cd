"""BrEaST-Lesions_USG, the external test set (docs/protocol.md §9): locate, scan, check, tabulate.

The TCIA release is one flat folder (``caseNNN.png`` images, ``caseNNN_tumor.png`` lesion masks,
``caseNNN_otherK.png`` masks of other findings) plus a clinical table (xlsx; a CSV copy of its
first sheet is accepted too). Local copies may sort the files into sub-folders (``images/``,
``masks/``): files are found anywhere below the root and matched by name.

As for BUSI, every file is looked at once; bad files (empty, truncated, not an image), masks of
the wrong size, images without a clinical row or with an unknown label, rows without an image
and unexpected files are listed with a reason and skipped. Each image and mask is compared with
the packaged reference list (``resources/breast_reference.csv``, built from the release's
``SHA256SUMS.txt`` by ``scripts/build_breast_reference.py``): identical bytes / identical pixels /
different / missing / unexpected. Images are decoded exactly like BUSI's (``convert("RGB")``: an
alpha channel is dropped, not composited).

The set is used for testing only: nothing here is ever trained, tuned or thresholded on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import DataSourceError, StudyError
from ..info import BREAST, CLASS_INDEX
from .manifest import IMAGE_SUFFIXES, _inspect, _natural_key
from .release_check import check_against_reference, load_reference, summarise_reference_check
from .tables import read_table

CASE_RE = re.compile(r"^case(?P<num>\d+)(?:_(?P<suffix>tumor|other\d+))?\.(?:png|jpe?g|bmp|tiff?)$", re.I)
#: Files a copy may hold besides images and masks (tables, checksums, notes): not reported.
DOCUMENT_SUFFIXES = {".csv", ".xlsx", ".xls", ".txt", ".md", ".pdf", ".json"}
REFERENCE_FILE = "breast_reference.csv"
#: SHA-256 of the release's clinical table (from its SHA256SUMS.txt).
CLINICAL_XLSX_SHA256 = "ac7c1d61c2d76fed7dcec57d6be6f04248c087c0ae700f5cf9c3f1aff76720fd"
BIRADS_GROUPS = ("1–3", "4a", "4b", "4c", "5")
TABLE_COLUMNS = [
    "image_id", "patient_id", "path", "label", "label_idx", "birads", "birads_group", "image_type", "has_alpha",
    "tumour_mask", "other_masks", "width", "height", "mode", "pixel_size", "diagnosis", "verification",
    "sha256", "pixel_sha256",
]
ISSUE_COLUMNS = ["path", "kind", "problem", "action"]


class ExternalDataUnavailable(DataSourceError):
    """No usable copy of the external set: the message says where to get it and how to point at it."""


def unavailable_message(reason: str) -> str:
    """One line: what is wrong, where to get BrEaST-Lesions_USG, how to point the study at it."""
    return (f"{reason}. Get {BREAST['name']} from TCIA ({BREAST['url']}: {BREAST['files']}), unzip it into one "
            "folder with the xlsx, and run `run_all.py --external PATH` (or set `external_data: PATH` in a profile); "
            "the rest of the study runs without it")


@dataclass
class ExternalData:
    """table: one row per usable labelled image; files: every image/mask file seen; issues: problems
    (path, kind, problem, action); reference: per-file reference check; summary: counts."""

    root: Path
    table: pd.DataFrame
    files: pd.DataFrame
    issues: pd.DataFrame
    reference: pd.DataFrame
    summary: dict = field(default_factory=dict)

    @property
    def lesions(self) -> pd.DataFrame:
        """Benign and malignant images (the benign-vs-malignant test set)."""
        return self.table[self.table["label"].isin(["benign", "malignant"])].reset_index(drop=True)


def locate(path: str | Path | None) -> Path:
    """The folder of the copy; raises :class:`ExternalDataUnavailable` with a one-line message."""
    if path is None or str(path).strip() in ("", "None", "null"):
        raise ExternalDataUnavailable(unavailable_message("no external data given"))
    root = Path(str(path)).expanduser()
    if not root.exists():
        raise ExternalDataUnavailable(unavailable_message(f"external data not found at {root}"))
    if not root.is_dir():
        raise ExternalDataUnavailable(unavailable_message(f"{root} is not a folder (unzip the TCIA archive first)"))
    if not any(CASE_RE.match(f.name) for f in root.rglob("case*")):
        raise ExternalDataUnavailable(unavailable_message(f"no caseNNN.png images under {root}"))
    return root.resolve()


def external_digest(root: Path) -> str:
    """SHA-256 over what notebook 08 reads from a copy: every ``caseNNN`` image and mask and every
    table (CSV, xlsx) below ``root``, by relative path and bytes. Recorded in the scan's summary
    (``files_sha256``); the runner compares it before carrying an earlier external validation over."""
    from .images import file_sha256

    root = Path(root)
    lines = []
    for f in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        rel = f.relative_to(root)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts) and (
                CASE_RE.match(f.name) or f.suffix.lower() in (".csv", ".xlsx", ".xls")):
            lines.append(f"{rel.as_posix()}\t{file_sha256(f)}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def read_clinical(root: Path) -> pd.DataFrame:
    """The clinical table: ``clinical.csv`` or another CSV with the label column, else the release's
    xlsx (first sheet). Column names are the release's (``Image_filename``, ``Classification``, …)."""
    root = Path(root)
    need = {BREAST["image_column"], BREAST["label_column"]}
    csvs = sorted(root.rglob("*.csv"), key=lambda p: (p.name != "clinical.csv", len(p.parts), str(p)))
    problems = []
    for f in [*csvs, *sorted(root.rglob("*.xlsx"))]:
        try:  # any encoding / delimiter; a damaged file is noted and the next candidate tried
            t = read_table(f, "clinical table")
        except StudyError as exc:
            problems.append(f"{f.relative_to(root)}: {str(exc).split(' — ')[0]}")
            continue
        if need <= set(t.columns):  # malformed rows stay (empty) in attrs["bad_lines"]: scan_external lists them
            t.attrs["source"] = str(f.relative_to(root))
            return t
    why = f" ({'; '.join(problems)[:200]})" if problems else ""
    raise DataSourceError(f"no clinical table in {root}{why}: need the release's xlsx or a CSV with columns "
                          f"{', '.join(sorted(need))} — copy the release's BrEaST-Lesions-USG-clinical-data xlsx beside the images")


def birads_group(value: str) -> str:
    """BI-RADS category → one of :data:`BIRADS_GROUPS` (1, 2 and 3 pooled: few malignancies); '' if unknown."""
    v = str(value).strip().lower()
    if v in ("1", "2", "3"):
        return "1–3"
    return v if v in ("4a", "4b", "4c", "5") else ""


def _alpha_not_opaque(path: Path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("RGBA", "LA", "PA") and "transparency" not in im.info:
            return False
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
    return bool((alpha < 255).any())


def scan_external(root: Path, progress: bool = True) -> ExternalData:
    """Scan a copy of BrEaST-Lesions_USG (see the module docstring); never raises for bad files."""
    root = Path(root)
    issues: list[dict] = []
    seen: dict[str, Path] = {}
    files: list[dict] = []
    infos: dict[str, dict] = {}
    candidates = []
    for f in sorted(root.rglob("*"), key=lambda p: _natural_key(str(p))):
        rel = f.relative_to(root).as_posix()
        if any(part.startswith(".") for part in f.relative_to(root).parts) or f.is_dir():
            continue
        if CASE_RE.match(f.name):
            if f.name.lower() in seen:
                issues.append({"path": rel, "kind": "file", "problem": f"duplicate file name (also {seen[f.name.lower()]})",
                               "action": "skipped"})
                continue
            seen[f.name.lower()] = f.relative_to(root)
            candidates.append(f)
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            issues.append({"path": rel, "kind": "file", "problem": "image name not caseNNN[_tumor|_otherK]", "action": "skipped"})
        elif f.suffix.lower() not in DOCUMENT_SUFFIXES and f.name != "LICENSE":
            issues.append({"path": rel, "kind": "file", "problem": f"unexpected file type '{f.suffix or '(none)'}'",
                           "action": "skipped"})
    for f in tqdm(candidates, desc="scanning BrEaST", disable=not progress, mininterval=2):
        m = CASE_RE.match(f.name)
        kind = "image" if m.group("suffix") is None else "mask"
        info = _inspect(f)
        info["rel"] = f.relative_to(root).as_posix()
        infos[f.name.lower()] = info
        files.append({"path": f.name, "rel": info["rel"], "kind": kind, "label": "", "sha256": info["sha256"],
                      "pixel_sha256": info["pixel_sha256"], "bytes": info["bytes"], "width": info["width"],
                      "height": info["height"], "mode": info["mode"], "readable": info["readable"]})
        if not info["readable"]:
            issues.append({"path": info["rel"], "kind": kind, "problem": info["problem"],
                           "action": "image skipped" if kind == "image" else "mask ignored"})

    clinical = read_clinical(root)
    rows, listed = [], set()
    malformed = clinical.attrs.get("bad_lines", {})
    for k, (_, c) in enumerate(clinical.iterrows()):
        if k in malformed:
            issues.append({"path": clinical.attrs.get("source", "clinical table"), "kind": "table", "problem": malformed[k],
                           "action": "row skipped"})
            continue
        name = str(c[BREAST["image_column"]]).strip()
        listed.add(name.lower())
        info = infos.get(name.lower())
        label = str(c[BREAST["label_column"]]).strip().lower()
        if info is None:
            issues.append({"path": name, "kind": "image", "problem": "in the clinical table, file missing", "action": "row skipped"})
            continue
        if not info["readable"]:
            continue
        if label not in CLASS_INDEX:
            issues.append({"path": info["rel"], "kind": "image", "problem": f"unknown label '{label}'", "action": "image skipped"})
            continue
        stem = Path(name).stem
        tumour = str(c.get("Mask_tumor_filename", "") or f"{stem}_tumor.png").strip()
        mask_rel = ""
        if tumour:
            mi = infos.get(tumour.lower())
            if mi is None:
                if label != "normal":
                    issues.append({"path": tumour, "kind": "mask", "problem": "tumour mask missing",
                                   "action": "no lesion region for explanations"})
            elif not mi["readable"]:
                pass  # already listed as unreadable
            elif (mi["width"], mi["height"]) != (info["width"], info["height"]):
                issues.append({"path": mi["rel"], "kind": "mask", "problem": f"mask size {mi['width']}x{mi['height']} differs "
                               f"from image {info['width']}x{info['height']}", "action": "mask ignored"})
            else:
                mask_rel = mi["rel"]
        others = [infos[o.strip().lower()]["rel"] for o in str(c.get("Mask_other_filename", "")).split("&")
                  if o.strip() and o.strip().lower() in infos and infos[o.strip().lower()]["readable"]]
        case_id = str(c.get("CaseID", "")).strip()
        rows.append({
            # one image per patient in the release: the patient is the unit the bootstrap resamples
            "image_id": stem, "patient_id": f"patient{int(case_id):03d}" if case_id.isdigit() else stem,
            "path": info["rel"], "label": label, "label_idx": CLASS_INDEX[label],
            "birads": str(c.get("BIRADS", "")).strip(), "birads_group": birads_group(c.get("BIRADS", "")),
            "image_type": "greyscale" if info["greyscale"] else "colour",
            "has_alpha": _alpha_not_opaque(root / info["rel"]), "tumour_mask": mask_rel, "other_masks": ";".join(others),
            "width": info["width"], "height": info["height"], "mode": info["mode"],
            "pixel_size": pd.to_numeric(c.get("Pixel_size", ""), errors="coerce"),
            "diagnosis": str(c.get("Diagnosis", "")).strip(), "verification": str(c.get("Verification", "")).strip(),
            "sha256": info["sha256"], "pixel_sha256": info["pixel_sha256"],
        })
    for f in files:
        if f["kind"] == "image" and f["path"].lower() not in listed and f["readable"]:
            issues.append({"path": f["rel"], "kind": "image", "problem": "no row in the clinical table (label unknown)",
                           "action": "image skipped"})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    label_of = dict(zip(table["image_id"].str.lower() + ".png", table["label"]))
    files_df = pd.DataFrame(files, columns=["path", "rel", "kind", "label", "sha256", "pixel_sha256", "bytes", "width",
                                            "height", "mode", "readable"])
    files_df["label"] = [label_of.get(p.lower(), label_of.get(re.sub(r"_(tumor|other\d+)", "", p.lower()), ""))
                         for p in files_df["path"]]
    check = check_against_reference(files_df, load_reference(REFERENCE_FILE))
    issue_df = pd.DataFrame(issues, columns=ISSUE_COLUMNS)
    return ExternalData(root, table, files_df, issue_df, check, _summary(root, table, files_df, issue_df, check, clinical))


def _summary(root: Path, table: pd.DataFrame, files: pd.DataFrame, issues: pd.DataFrame, check: pd.DataFrame,
             clinical: pd.DataFrame) -> dict:
    per_class = {c: int((table["label"] == c).sum()) for c in BREAST["expected_images"]}
    n_tumour = int((table["tumour_mask"] != "").sum())
    n_other = int(sum(len([o for o in s.split(";") if o]) for s in table["other_masks"]))
    problems = [f"{c}: {per_class[c]} images, the release has {n}" for c, n in BREAST["expected_images"].items()
                if per_class[c] != n]
    if n_tumour != BREAST["expected_tumour_masks"]:
        problems.append(f"tumour masks: {n_tumour} usable, the release has {BREAST['expected_tumour_masks']}")
    source = clinical.attrs.get("source", "")
    xlsx = sorted(root.rglob("*.xlsx"))
    from .images import file_sha256

    return {
        "dataset": BREAST["name"], "root": str(root), "n_images": int(len(table)), "images_per_class": per_class,
        "n_lesion_images": int(table["label"].isin(["benign", "malignant"]).sum()), "n_tumour_masks": n_tumour,
        "n_other_masks": n_other, "n_patients": int(table["patient_id"].nunique()),
        "n_greyscale": int((table["image_type"] == "greyscale").sum()), "n_colour": int((table["image_type"] == "colour").sum()),
        "n_alpha_not_opaque": int(table["has_alpha"].sum()), "n_issues": int(len(issues)),
        "clinical_table": source,
        "clinical_xlsx_identical": bool(xlsx) and any(file_sha256(x) == CLINICAL_XLSX_SHA256 for x in xlsx),
        "reference": summarise_reference_check(check), "count_problems": problems,
        "files_sha256": external_digest(root),
    }


def summary_lines(summary: dict) -> list[str]:
    """A few human-readable lines about a scanned copy."""
    ref = summary["reference"]
    c = ref["counts"]
    per = summary["images_per_class"]
    return [
        f"{summary['dataset']} at {summary['root']}: {summary['n_images']} usable images "
        f"({', '.join(f'{k} {v}' for k, v in per.items())}) from {summary['n_patients']} patients; "
        f"{summary['n_tumour_masks']} tumour masks, {summary['n_other_masks']} masks of other findings",
        f"reference check: {ref['pixel_identical_images']} images / {ref['pixel_identical_masks']} masks pixel-identical to "
        f"the release; different {c['different']['image'] + c['different']['mask']}, missing "
        f"{c['missing']['image'] + c['missing']['mask']}, unexpected {c['unexpected']['image'] + c['unexpected']['mask']}; "
        f"clinical table {summary['clinical_table']} (release xlsx byte-identical: {summary['clinical_xlsx_identical']})",
        f"{summary['n_greyscale']} greyscale, {summary['n_colour']} with colour (overlays/marks); "
        f"{summary['n_alpha_not_opaque']} with a non-opaque alpha channel (dropped, as for BUSI); {summary['n_issues']} problems listed",
    ] + [f"WARNING: {p}" for p in summary["count_problems"]]
