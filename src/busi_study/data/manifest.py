"""Scan a dataset folder into a file table, an image manifest and a table of problems.

Every file below the root is looked at once. Bad files (empty, truncated, not an image),
unreadable masks, masks of the wrong size, orphan masks, images without masks and unexpected
folders or files are listed with a reason and skipped; the scan goes on.

Same-stem rule: files in one class folder whose names differ only by the extension
(``x.png`` beside ``x.tif``, or ``x_mask.png`` beside ``x_mask.bmp``) cannot be told apart by
the image/mask naming, so *all* of them are left out and each is listed in the issues table
("same name as …"); nothing is picked silently. High-bit-depth images (16-bit, float) are kept,
scaled to 8 bit by their real range (``images.to_uint8``), and listed too so that the scaling
is visible in the data check.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import WRITE_ERRNOS, first_line, from_os_error
from ..info import BUSI, CLASS_INDEX, CLASSES
from .images import file_sha256, is_high_depth, pixel_sha256, scale_to_uint8, to_uint8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_(?P<k>\d+))?$")
BUSI_NAME_RE = re.compile(r"^(?P<cls>[a-z]+) \((?P<n>\d+)\)$")

MANIFEST_COLUMNS = [
    "image_id", "label", "label_idx", "path", "mask_paths", "n_masks", "sha256", "pixel_sha256",
    "bytes", "width", "height", "mode", "is_greyscale",
]
FILE_COLUMNS = ["path", "kind", "label", "sha256", "pixel_sha256", "bytes", "width", "height", "mode", "readable"]
ISSUE_COLUMNS = ["path", "kind", "problem", "action"]


@dataclass
class ScanResult:
    """files: every file seen (readable or not); manifest: one row per usable image;
    issues: one row per problem found (path, kind, problem, action)."""

    files: pd.DataFrame
    manifest: pd.DataFrame
    issues: pd.DataFrame


def image_id_for(label: str, stem: str) -> str:
    """Stable id: ``benign (12)`` → ``benign_0012``; other names → a slug of label and stem."""
    m = BUSI_NAME_RE.match(stem)
    if m and m.group("cls") == label:
        return f"{label}_{int(m.group('n')):04d}"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-").lower() or "image"
    return f"{label}_{slug}"


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _inspect(path: Path) -> dict:
    """Read one file: bytes, hashes, size and mode, or the reason it cannot be read."""
    from PIL import Image

    info = {"bytes": path.stat().st_size, "sha256": "", "pixel_sha256": "", "width": 0,
            "height": 0, "mode": "", "readable": False, "problem": "", "greyscale": False, "note": ""}
    if info["bytes"] == 0:
        info["problem"] = "empty file (0 bytes)"
        return info
    info["sha256"] = file_sha256(path)
    try:
        with Image.open(path) as im:
            info["mode"] = im.mode
            im.load()
            rgb = to_uint8(im, "RGB")
            if is_high_depth(im.mode):
                _, (lo, hi) = scale_to_uint8(np.asarray(im))
                info["note"] = f"{im.mode} image scaled from its range {lo:g}–{hi:g} to 8 bit (not clipped)"
    except Exception as exc:  # PIL raises several types for bad files
        text = first_line(exc, 120)
        kind = "truncated image" if "truncated" in text.lower() else "not a readable image"
        info["problem"] = f"{kind} ({text[:120]})"
        return info
    info.update(
        pixel_sha256=pixel_sha256(rgb), width=int(rgb.shape[1]), height=int(rgb.shape[0]),
        readable=True,
        greyscale=bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()),
    )
    return info


def scan_dataset(root: Path, progress: bool = True) -> ScanResult:
    """Scan ``root`` (the folder holding ``normal/ benign/ malignant/``).

    Returns the file table, the manifest (sorted by class index, then natural file order) and
    the issues table. Paths are relative to ``root`` with forward slashes.
    """
    root = Path(root)
    issues: list[dict] = []
    files: list[dict] = []
    images: dict[tuple[str, str], dict] = {}
    masks: list[tuple[str, str, str, dict]] = []  # (label, stem, relpath, info)

    entries = sorted(root.iterdir(), key=lambda p: _natural_key(p.name))
    class_dirs = []
    for entry in entries:
        rel = entry.name
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name in CLASS_INDEX:
            class_dirs.append(entry)
        elif entry.is_dir():
            issues.append({"path": rel + "/", "kind": "folder", "problem": "unexpected folder", "action": "skipped"})
        else:
            issues.append({"path": rel, "kind": "file", "problem": "unexpected file at the top level", "action": "skipped"})
    missing_classes = [c for c in CLASSES if c not in {d.name for d in class_dirs}]
    for c in missing_classes:
        issues.append({"path": c + "/", "kind": "folder", "problem": "class folder missing", "action": "no images of this class"})

    todo = []
    for d in sorted(class_dirs, key=lambda p: CLASS_INDEX[p.name]):
        for f in sorted(d.iterdir(), key=lambda p: _natural_key(p.name)):
            rel = f"{d.name}/{f.name}"
            if f.name.startswith("."):
                continue
            if f.is_dir():
                issues.append({"path": rel + "/", "kind": "folder", "problem": "unexpected folder", "action": "skipped"})
            elif f.suffix.lower() not in IMAGE_SUFFIXES:
                issues.append({"path": rel, "kind": "file", "problem": f"unexpected file type '{f.suffix or '(none)'}'", "action": "skipped"})
            else:
                todo.append((d.name, f, rel))

    # same-stem rule (module docstring): every file of a colliding stem is left out and listed
    by_stem: dict[tuple[str, str], list[str]] = {}
    for label, f, rel in todo:
        by_stem.setdefault((label, f.stem), []).append(rel)
    clashes = {k: v for k, v in by_stem.items() if len(v) > 1}
    left_out_stems = set()
    for (label, stem), rels in clashes.items():
        m = MASK_RE.match(stem)
        kind = "mask" if m else "image"
        if not m:
            left_out_stems.add((label, stem))
        for rel in rels:
            others = ", ".join(Path(o).name for o in rels if o != rel)
            issues.append({"path": rel, "kind": kind,
                           "problem": f"same name as {others} (only the extension differs)",
                           "action": ("image" if kind == "image" else "mask") + " left out with the others of that "
                                     "name; keep one file per name"})
    todo = [t for t in todo if (t[0], t[1].stem) not in clashes]

    for label, f, rel in tqdm(todo, desc="scanning files", disable=not progress, mininterval=2):
        info = _inspect(f)
        m = MASK_RE.match(f.stem)
        kind = "mask" if m else "image"
        files.append({"path": rel, "kind": kind, "label": label, "sha256": info["sha256"],
                      "pixel_sha256": info["pixel_sha256"], "bytes": info["bytes"], "width": info["width"],
                      "height": info["height"], "mode": info["mode"], "readable": info["readable"]})
        if not info["readable"]:
            issues.append({"path": rel, "kind": kind, "problem": info["problem"],
                           "action": "image skipped" if kind == "image" else "mask ignored"})
            continue
        if info["note"]:
            issues.append({"path": rel, "kind": kind, "problem": info["note"], "action": "kept, scaled to 8 bit"})
        if m:
            masks.append((label, m.group("stem"), rel, info))
        else:
            images[(label, f.stem)] = {"rel": rel, "info": info, "masks": []}

    for label, stem, rel, info in masks:
        img = images.get((label, stem))
        if img is None and (label, stem) in left_out_stems:
            issues.append({"path": rel, "kind": "mask", "problem": "mask of an image left out by the same-name rule",
                           "action": "mask ignored"})
        elif img is None:
            issues.append({"path": rel, "kind": "mask", "problem": "orphan mask (no image of that name)", "action": "mask ignored"})
        elif (info["width"], info["height"]) != (img["info"]["width"], img["info"]["height"]):
            issues.append({"path": rel, "kind": "mask",
                           "problem": f"mask size {info['width']}x{info['height']} differs from image "
                                      f"{img['info']['width']}x{img['info']['height']}",
                           "action": "mask ignored"})
        else:
            img["masks"].append(rel)

    rows, seen_ids = [], set()
    for (label, stem), img in images.items():
        if not img["masks"]:
            issues.append({"path": img["rel"], "kind": "image", "problem": "image without a usable mask",
                           "action": "kept; no lesion region for EDA or explanations"})
        image_id = image_id_for(label, stem)
        base, k = image_id, 1
        while image_id in seen_ids:
            k += 1
            image_id = f"{base}-{k}"
        seen_ids.add(image_id)
        info = img["info"]
        rows.append({
            "image_id": image_id, "label": label, "label_idx": CLASS_INDEX[label], "path": img["rel"],
            "mask_paths": ";".join(sorted(img["masks"], key=_natural_key)), "n_masks": len(img["masks"]),
            "sha256": info["sha256"], "pixel_sha256": info["pixel_sha256"], "bytes": info["bytes"],
            "width": info["width"], "height": info["height"], "mode": info["mode"],
            "is_greyscale": info["greyscale"],
        })
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if len(manifest):
        manifest["_k"] = [_natural_key(p) for p in manifest["path"]]
        manifest = manifest.sort_values(["label_idx", "_k"]).drop(columns="_k").reset_index(drop=True)
    return ScanResult(
        files=pd.DataFrame(files, columns=FILE_COLUMNS),
        manifest=manifest,
        issues=pd.DataFrame(issues, columns=ISSUE_COLUMNS),
    )


def count_check(manifest: pd.DataFrame, n_masks: int, expected: dict | None = None) -> list[str]:
    """Compare class and mask counts with the published BUSI counts.

    Returns a list of human-readable discrepancies (empty when everything matches).
    ``expected`` defaults to BUSI's 133/437/210 images and 798 masks.
    """
    expected = expected or {"images": BUSI["expected_images"], "masks": BUSI["expected_mask_total"]}
    problems = []
    counts = manifest["label"].value_counts().to_dict() if len(manifest) else {}
    for label in CLASSES:
        want, got = expected["images"][label], counts.get(label, 0)
        if got != want:
            problems.append(f"{label}: {got} images, BUSI has {want}")
    total_want = sum(expected["images"].values())
    if len(manifest) != total_want:
        problems.append(f"total: {len(manifest)} usable images, BUSI has {total_want}")
    if n_masks != expected["masks"]:
        problems.append(f"masks: {n_masks} usable masks, BUSI has {expected['masks']}")
    return problems


def csv_sha256(df: pd.DataFrame) -> str:
    """The SHA-256 that :func:`write_csv` would return for ``df``, without writing."""
    return hashlib.sha256(df.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def write_csv(df: pd.DataFrame, path: Path) -> str:
    """Write a CSV deterministically (LF line ends, no index) and return its SHA-256."""
    path = Path(path)
    data = df.to_csv(index=False, lineterminator="\n").encode()
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:  # a full or read-only disk: one line naming the file
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise from_os_error(exc, path) from None
    return hashlib.sha256(data).hexdigest()
