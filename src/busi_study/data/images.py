"""Reading images and masks the same way everywhere.

Every decoder goes through :func:`to_uint8`, so a 16-bit or floating-point image (PNG, TIFF)
is *scaled* from its real range to 8 bit, never clipped (PIL's own ``convert("L")`` clips a
16-bit image to white). The rule, also in the README's data section:

* 8-bit images (modes 1, L, P, RGB, RGBA, LA, CMYK, …): decoded as they are.
* integer images of more than 8 bit (modes I;16*, I): ``v * 255 / hi`` with ``hi`` the largest
  value present (at least 255, so an image that only uses 0–255 keeps its values); negative
  values shift the range to start at the smallest one.
* floating-point images (mode F): values in [0, 1] are multiplied by 255; any other range is
  scaled from its minimum to its maximum; NaN and infinities become black (0).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

#: How an image becomes a square model input: ``stretch`` resizes it to a square (the source studies'
#: way: the aspect ratio changes), ``pad`` keeps its aspect ratio (black borders, centred, then resize).
FITS = ("stretch", "pad")

HIGH_DEPTH_MODES = ("I", "F")  # PIL mode prefixes of >8-bit images (I, I;16, I;16B, I;16L, F, F;32…)


def is_high_depth(mode: str) -> bool:
    """True for PIL modes holding more than 8 bits per sample (I;16, I, F)."""
    return mode.split(";")[0] in HIGH_DEPTH_MODES


def scale_to_uint8(values: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Scale a single-channel integer or float array to uint8 by its real range (module docstring).

    Returns the uint8 array and the (low, high) values that were mapped to 0 and 255.
    """
    a = np.asarray(values)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        a = np.where(finite, a, lo)  # NaN / inf: black
    else:
        a = a.astype(np.float64)
        lo = min(0.0, float(a.min())) if a.size else 0.0
        hi = max(255.0 + lo, float(a.max())) if a.size else 255.0
    span = hi - lo if hi > lo else 1.0
    out = np.rint((a - lo) * (255.0 / span))
    return np.clip(out, 0, 255).astype(np.uint8), (lo, hi)  # clip only guards rounding: values are in range


def to_uint8(im: Image.Image, mode: str = "RGB") -> np.ndarray:
    """A loaded PIL image as a uint8 array in ``mode`` (``RGB`` or ``L``), high depths scaled."""
    if is_high_depth(im.mode):
        grey, _ = scale_to_uint8(np.asarray(im))
        if grey.ndim == 3:  # a multi-sample high-depth image: keep the first sample
            grey = grey[..., 0]
        return np.repeat(grey[..., None], 3, axis=2) if mode == "RGB" else grey
    return np.asarray(im.convert(mode), dtype=np.uint8)


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to a uint8 RGB array of shape (H, W, 3).

    Raises ``OSError``/``ValueError`` for unreadable or truncated files (PIL's own errors).
    """
    with Image.open(path) as im:
        im.load()
        return to_uint8(im, "RGB")


def read_gray(path: Path) -> np.ndarray:
    """Decode an image file to a uint8 greyscale array of shape (H, W) (ITU-R 601 luma)."""
    with Image.open(path) as im:
        im.load()
        return to_uint8(im, "L")


def read_mask(path: Path) -> np.ndarray:
    """Decode one mask file (mode 1, L, RGB, RGBA or 16 bit) to a boolean array of shape (H, W)."""
    with Image.open(path) as im:
        im.load()
        if is_high_depth(im.mode):
            return np.asarray(im) > 0
        return np.asarray(im.convert("L"), dtype=np.uint8) > 0


def merged_mask(paths: Iterable[Path], shape: tuple[int, int]) -> np.ndarray:
    """Pixelwise OR of all masks of one image (docs/protocol.md §1); empty if there are none.

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


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """(H, W[, C]) → (S, S[, C]) with S = max(H, W): zero borders split evenly on both sides."""
    h, w = image.shape[:2]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    out = np.zeros((s, s, *image.shape[2:]), dtype=image.dtype)
    out[top: top + h, left: left + w] = image
    return out


def fit_square(image: np.ndarray, size: int, fit: str) -> np.ndarray:
    """An image (uint8 or float, (H, W[, C])) as a ``size`` × ``size`` input, area-resized after
    ``fit`` (:data:`FITS`)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    src = pad_to_square(image) if fit == "pad" else image
    return cv2.resize(np.ascontiguousarray(src), (size, size), interpolation=cv2.INTER_AREA)


def unfit_square(square: np.ndarray, shape: tuple[int, int], fit: str) -> np.ndarray:
    """A map made on a fitted square input, back on the original image's (H, W) grid (bilinear):
    the inverse of :func:`fit_square` (the padding cut away for ``pad``)."""
    h, w = shape[:2]
    if fit == "pad":
        s = max(h, w)
        full = cv2.resize(np.asarray(square, np.float32), (s, s), interpolation=cv2.INTER_LINEAR)
        top, left = (s - h) // 2, (s - w) // 2
        return full[top: top + h, left: left + w]
    return cv2.resize(np.asarray(square, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
