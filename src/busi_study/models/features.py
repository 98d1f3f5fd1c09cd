"""Run a frozen network once per image and view, and cache its outputs.

Frozen parts never run once per epoch: their outputs for every image and every augmented view
(a fixed number of views) are computed once, saved under ``data/processed/<dataset>/cache/features/``
and reused by every fold and every epoch. This covers the frozen backbone under a new head and
the frozen lower blocks during fine-tuning.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.store import atomic_path
from ..timing import step, timed
from .augment import AugmentConfig, views_batch


def cache_key(*parts: object) -> str:
    """A short stable hash of everything that determines the cached outputs."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def frozen_outputs(
    extractor,
    images: np.ndarray,
    n_views: int,
    seed: int,
    augment: AugmentConfig,
    cache_path: Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Outputs of ``extractor`` (a Keras model, run in inference mode) for every view.

    images: uint8 (n, H, W, 3). Returns (array float32 of shape (n_views, n, *output_shape),
    info dict with ``seconds`` spent computing (0 when loaded from cache) and ``cached``).
    """
    what = f"frozen outputs {Path(cache_path).stem if cache_path is not None else '(not cached)'}"
    if cache_path is not None and Path(cache_path).exists():
        with step(f"{what} (from the cache)"):
            arr = np.load(cache_path, mmap_mode="r")
            if arr.shape[:2] == (n_views, len(images)):
                return np.asarray(arr), {"seconds": 0.0, "cached": True, "path": str(cache_path)}
    n = len(images)
    out_shape = tuple(int(d) for d in extractor.output.shape[1:])
    out = np.zeros((n_views, n, *out_shape), dtype=np.float32)
    t0 = time.perf_counter()
    steps = [(v, s) for v in range(n_views) for s in range(0, n, batch_size)]
    with step(f"{what} ({n_views} views × {n} images)"):
        for v, s in tqdm(steps, desc=f"frozen outputs ({n_views} views)", disable=not progress, mininterval=5):
            idx = np.arange(s, min(s + batch_size, n))
            x = views_batch(images, idx, v, seed, augment).astype(np.float32)
            out[v, idx] = np.asarray(extractor(x, training=False))
    seconds = time.perf_counter() - t0
    if cache_path is not None:
        with atomic_path(Path(cache_path)) as tmp:  # a full disk: one line naming the cache file
            np.save(tmp, out)
    return out, {"seconds": round(seconds, 1), "cached": False, "path": str(cache_path) if cache_path else None}


@timed("augmented views ({n_views} per image)")
def image_views(images: np.ndarray, n_views: int, seed: int, augment: AugmentConfig) -> np.ndarray:
    """All views of all images as uint8 (n_views, n, H, W, 3) (for models trained end to end)."""
    out = np.zeros((n_views, *images.shape), dtype=np.uint8)
    for v in range(n_views):
        out[v] = views_batch(images, np.arange(len(images)), v, seed, augment)
    return out
