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

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..timing import step, timed
from .enhance import ENHANCEMENTS, enhance
from .images import fit_square, mask_paths, merged_mask, read_rgb
from .store import ProcessedData, atomic_path, sha256_of

PREPROCESSING = tuple(ENHANCEMENTS)


def _prepare(rgb: np.ndarray, size: int, preprocessing: str, fit: str = "stretch") -> np.ndarray:
    return fit_square(enhance(rgb, preprocessing), size, fit)


def resize_mask(mask: np.ndarray, size: int, fit: str = "stretch") -> np.ndarray:
    """A boolean (H, W) mask as uint8 0/1 (size, size): fitted as its image is (area-resized), then at
    least half covered."""
    return (fit_square(mask.astype(np.float32), size, fit) >= 0.5).astype(np.uint8)


def _fit_tag(fit: str) -> str:
    """File-name tag of a fit: none for the plain resize (the arrays cached before fits existed)."""
    return "" if fit == "stretch" else f"_{fit}"


@timed("image array {size}px ({preprocessing})")
def load_image_array(store: ProcessedData, size: int, preprocessing: str = "none", progress: bool = True,
                     fit: str = "stretch") -> np.ndarray:
    """All manifest images as ``size``×``size`` inputs (``fit``: ``stretch`` or ``pad``, see
    :func:`busi_study.data.images.fit_square`): uint8 array (n, size, size, 3), cached."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {', '.join(PREPROCESSING)}")
    manifest = store.read("manifest")
    key = sha256_of(store.manifest)[:12]
    path = store.cache_dir / "arrays" / f"images_{size}_{preprocessing}{_fit_tag(fit)}_{key}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape[0] == len(manifest):
            return arr
    root = store.raw_root()
    arr = np.zeros((len(manifest), size, size, 3), dtype=np.uint8)
    with step(f"decode images {size}px ({preprocessing})"):
        for i, rel in enumerate(tqdm(list(manifest["path"]), desc=f"decoding images at {size}px", disable=not progress,
                                     mininterval=2)):
            arr[i] = _prepare(read_rgb(Path(root) / rel), size, preprocessing, fit)
    with atomic_path(path) as tmp:  # a full disk: one line naming the cache file
        np.save(tmp, arr)
    return arr


@timed("mask array {size}px")
def load_mask_array(store: ProcessedData, size: int, progress: bool = True, fit: str = "stretch") -> np.ndarray:
    """OR-merged lesion masks of all manifest images at ``size``, fitted as their images are: uint8 0/1
    (n, size, size), cached. Normal images (and any image without a usable mask) get an empty mask."""
    manifest = store.read("manifest")
    # keyed by the masks' bytes too: two folders with the same images but other masks never share it
    key = f"{sha256_of(store.manifest)[:12]}-{store.masks_sha256()[:12]}"
    path = store.cache_dir / "arrays" / f"masks_{size}{_fit_tag(fit)}_{key}.npy"
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
                arr[i] = resize_mask(merged_mask(paths, (h, w)), size, fit)
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
