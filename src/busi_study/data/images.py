"""Reading images and masks the same way everywhere."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to a uint8 RGB array of shape (H, W, 3).

    Raises ``OSError``/``ValueError`` for unreadable or truncated files (PIL's own errors).
    """
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_gray(path: Path) -> np.ndarray:
    """Decode an image file to a uint8 greyscale array of shape (H, W) (ITU-R 601 luma)."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("L"), dtype=np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Decode one mask file (mode 1, L, RGB or RGBA) to a boolean array of shape (H, W)."""
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("L"), dtype=np.uint8) > 0


def merged_mask(paths: Iterable[Path], shape: tuple[int, int]) -> np.ndarray:
    """Pixelwise OR of all masks of one image (PROTOCOL.md §1); empty if there are none.

    ``shape`` is the image's (H, W); masks of another size are skipped (validation lists them).
    """
    out = np.zeros(shape, dtype=bool)
    for p in paths:
        m = read_mask(Path(p))
        if m.shape == tuple(shape):
            out |= m
    return out


def pixel_sha256(rgb: np.ndarray) -> str:
    """SHA-256 of decoded RGB pixels in C order, as in the dataset's REFERENCE.csv."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()).hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def mask_paths(row, root: Path) -> list[Path]:
    """Absolute mask paths of a manifest row (its ``mask_paths`` column: relative paths joined by ";")."""
    text = row["mask_paths"] if isinstance(row["mask_paths"], str) else ""
    return [Path(root) / p for p in text.split(";") if p]
