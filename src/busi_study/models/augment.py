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


# ---------------------------------------------------------------- views with their masks
def lesion_keeping_box(mask: np.ndarray, rng: np.random.Generator, min_side: float) -> tuple[int, int, int, int]:
    """A random crop box (r0, r1, c0, c1) in pixels whose sides are ``min_side``–1 of the image's (drawn
    independently, so the aspect ratio changes too) and which contains the whole lesion (the mask's
    bounding box); any position for an image without a lesion."""
    h, w = mask.shape[:2]
    ch, cw = (max(1, int(round(rng.uniform(min_side, 1.0) * n))) for n in (h, w))
    ys, xs = np.nonzero(mask)
    if len(ys):
        by0, by1, bx0, bx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        ch, cw = max(ch, by1 - by0), max(cw, bx1 - bx0)
        r0 = int(rng.integers(max(0, by1 - ch), min(by0, h - ch) + 1))
        c0 = int(rng.integers(max(0, bx1 - cw), min(bx0, w - cw) + 1))
    else:
        r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return r0, r0 + ch, c0, c0 + cw


def view_with_mask(image: np.ndarray, mask: np.ndarray, index: int, v: int, seed: int, cfg: AugmentConfig,
                   crop_prob: float, crop_min_side: float) -> tuple[np.ndarray, np.ndarray]:
    """View ``v`` of one image (uint8 (H, W, 3)) and of its lesion mask (uint8 0/1 (H, W)), warped alike.

    With probability ``crop_prob`` (its own random stream, so the other transforms stay those of
    :func:`view`) the view starts as a lesion-keeping random crop (:func:`lesion_keeping_box`) resized
    back to (H, W); then the image gets :func:`augment` and the mask the same geometric transform
    (same generator state; the photometric jitter of a 0/255 mask cannot cross 127). View 0 is the
    image and its mask."""
    if v == 0:
        return image, mask
    h, w = image.shape[:2]
    img, m = image, mask
    crop_rng = np.random.default_rng([seed, index, v, 1])
    if crop_prob > 0 and crop_rng.random() < crop_prob:
        r0, r1, c0, c1 = lesion_keeping_box(mask, crop_rng, crop_min_side)
        img = cv2.resize(np.ascontiguousarray(image[r0:r1, c0:c1]), (w, h), interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(np.ascontiguousarray(mask[r0:r1, c0:c1]).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    out = augment(img, np.random.default_rng([seed, index, v]), cfg)
    m3 = np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=2)
    warped = augment(m3, np.random.default_rng([seed, index, v]), cfg)[..., 0] > 127
    return out, warped.astype(np.uint8)
