"""The 780 images as one in-memory array per input size, decoded once and cached on disk.

``data/processed/<dataset>/cache/arrays/images_<size>_<preprocessing>_<manifest-hash>.npy`` holds
uint8 RGB images of shape (n, size, size, 3) in manifest order. Resizing is a plain resize to
a square (as the source studies do); ``preprocessing="clahe"`` applies contrast-limited
histogram equalisation to the grey values first (S1's enhancement step, as an option).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from .images import read_rgb
from .store import ProcessedData, sha256_of

PREPROCESSING = ("none", "clahe")


def _prepare(rgb: np.ndarray, size: int, preprocessing: str) -> np.ndarray:
    if preprocessing == "clahe":
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def load_image_array(store: ProcessedData, size: int, preprocessing: str = "none", progress: bool = True) -> np.ndarray:
    """All manifest images resized to ``size``×``size``: uint8 array (n, size, size, 3), cached."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"preprocessing must be one of {PREPROCESSING}")
    manifest = store.read("manifest")
    key = sha256_of(store.manifest)[:12]
    path = store.cache_dir / "arrays" / f"images_{size}_{preprocessing}_{key}.npy"
    if path.exists():
        arr = np.load(path)
        if arr.shape[0] == len(manifest):
            return arr
    root = store.raw_root()
    arr = np.zeros((len(manifest), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(tqdm(list(manifest["path"]), desc=f"decoding images at {size}px", disable=not progress, mininterval=2)):
        arr[i] = _prepare(read_rgb(Path(root) / rel), size, preprocessing)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr


def labels_and_groups(store: ProcessedData) -> pd.DataFrame:
    """Manifest order: image_id, label, label_idx, group_id, label_conflict."""
    manifest = store.read("manifest")
    groups = store.read("groups")[["image_id", "group_id", "label_conflict"]]
    out = manifest[["image_id", "label", "label_idx"]].merge(groups, on="image_id", how="left", validate="1:1")
    return out
