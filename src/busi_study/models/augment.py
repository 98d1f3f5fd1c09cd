"""Deterministic image augmentation in NumPy/OpenCV (backend-agnostic).

A *view* is one augmented copy of an image. View ``v`` of image ``i`` depends only on
(seed, i, v), never on the order images are processed in, so cached views are reproducible.
View 0 is always the unaugmented image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Ranges of the random transforms (all symmetric around no change); the study's values come
    from the profile (``aug_*``, ``recipes.augment_config``)."""

    flip: bool
    rotation_deg: float
    zoom: float
    shift: float
    brightness: float
    contrast: float

    def key(self) -> str:
        return "-".join(f"{k}{v}" for k, v in asdict(self).items())


def augment(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One random view of a uint8 image (H, W, 3): flip, rotate, zoom, shift, brightness, contrast."""
    h, w = image.shape[:2]
    out = image[:, ::-1] if (cfg.flip and rng.random() < 0.5) else image
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    scale = 1.0 + rng.uniform(-cfg.zoom, cfg.zoom)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += rng.uniform(-cfg.shift, cfg.shift) * w
    m[1, 2] += rng.uniform(-cfg.shift, cfg.shift) * h
    out = cv2.warpAffine(np.ascontiguousarray(out), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    x = out.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    x = x * (1.0 + rng.uniform(-cfg.brightness, cfg.brightness))
    return np.clip(x, 0, 255).astype(np.uint8)


def view(images: np.ndarray, index: int, v: int, seed: int, cfg: AugmentConfig) -> np.ndarray:
    """View ``v`` of ``images[index]`` (v = 0: the image itself)."""
    if v == 0:
        return images[index]
    return augment(images[index], np.random.default_rng([seed, index, v]), cfg)


def views_batch(images: np.ndarray, indices: np.ndarray, v: int, seed: int, cfg: AugmentConfig) -> np.ndarray:
    """View ``v`` of several images: uint8 (len(indices), H, W, 3)."""
    return np.stack([view(images, int(i), v, seed, cfg) for i in indices])
