"""The 780 images as one in-memory array per input size, decoded once and cached on disk.

``data/processed/<dataset>/cache/arrays/images_<size>_<preprocessing>_<manifest-hash>.npy`` holds
uint8 RGB images of shape (n, size, size, 3) in manifest order. Resizing is a plain resize to
a square (as the source studies do); ``preprocessing`` names one of S1's enhancement steps
(:mod:`busi_study.data.enhance`), applied at the original resolution before the resize.
``cache/arrays/masks_<size>_<manifest-hash>-<masks-hash>.npy`` holds the OR-merged lesion masks (docs/protocol.md §1;
empty for normal images) resized the same way, as uint8 0/1 (n, size, size): training targets and
evaluation references only, never a model input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..timing import step, timed
from .enhance import ENHANCEMENTS, enhance
from .images import mask_paths, merged_mask, read_rgb
from .store import ProcessedData, atomic_path, sha256_of

PREPROCESSING = tuple(ENHANCEMENTS)


def _prepare(rgb: np.ndarray, size: int, preprocessing: str) -> np.ndarray:
    return cv2.resize(enhance(rgb, preprocessing), (size, size), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A boolean (H, W) mask as uint8 0/1 (size, size): area-resized, then at least half covered."""
    return (cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) >= 0.5).astype(np.uint8)


@timed("image array {size}px ({preprocessing})")
def load_image_array(store: ProcessedData, size: int, preprocessing: str = "none", progress: bool = True) -> np.ndarray:
    """All manifest images resized to ``size``×``size``: uint8 array (n, size, size, 3), cached."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {', '.join(PREPROCESSING)}")
    manifest = store.read("manifest")
    key = sha256_of(store.manifest)[:12]
    path = store.cache_dir / "arrays" / f"images_{size}_{preprocessing}_{key}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape[0] == len(manifest):
            return arr
    root = store.raw_root()
    arr = np.zeros((len(manifest), size, size, 3), dtype=np.uint8)
    with step(f"decode images {size}px ({preprocessing})"):
        for i, rel in enumerate(tqdm(list(manifest["path"]), desc=f"decoding images at {size}px", disable=not progress,
                                     mininterval=2)):
            arr[i] = _prepare(read_rgb(Path(root) / rel), size, preprocessing)
    with atomic_path(path) as tmp:  # a full disk: one line naming the cache file
        np.save(tmp, arr)
    return arr


@timed("mask array {size}px")
def load_mask_array(store: ProcessedData, size: int, progress: bool = True) -> np.ndarray:
    """OR-merged lesion masks of all manifest images at ``size``: uint8 0/1 (n, size, size), cached.

    Normal images (and any image without a usable mask) get an empty mask."""
    manifest = store.read("manifest")
    # keyed by the masks' bytes too: two folders with the same images but other masks never share it
    key = f"{sha256_of(store.manifest)[:12]}-{store.masks_sha256()[:12]}"
    path = store.cache_dir / "arrays" / f"masks_{size}_{key}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape == (len(manifest), size, size):
            return arr
    root = Path(store.raw_root())
    arr = np.zeros((len(manifest), size, size), dtype=np.uint8)
    rows = list(manifest.itertuples(index=False))
    with step(f"decode masks {size}px"):
        for i, row in enumerate(tqdm(rows, desc=f"decoding masks at {size}px", disable=not progress, mininterval=2)):
            paths = mask_paths(row._asdict(), root)
            if paths:
                h, w = read_rgb(root / row.path).shape[:2]
                arr[i] = resize_mask(merged_mask(paths, (h, w)), size)
    with atomic_path(path) as tmp:
        np.save(tmp, arr)
    return arr


def labels_and_groups(store: ProcessedData) -> pd.DataFrame:
    """Manifest order: image_id, label, label_idx, group_id, label_conflict."""
    manifest = store.read("manifest")
    groups = store.read("groups")[["image_id", "group_id", "label_conflict"]]
    out = manifest[["image_id", "label", "label_idx"]].merge(groups, on="image_id", how="left", validate="1:1")
    return out


@timed("decode originals ({preprocessing})")
def load_originals(store: ProcessedData, preprocessing: str = "none") -> list[np.ndarray]:
    """Every manifest image at its own resolution (enhanced as ``preprocessing`` says), in manifest order."""
    root = Path(store.raw_root())
    return [enhance(read_rgb(root / p), preprocessing) for p in store.read("manifest")["path"]]
