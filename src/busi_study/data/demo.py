"""Synthetic ultrasound-like phantoms in the BUSI folder layout, for tests and offline runs.

Not clinical data. Each image is speckled layered "tissue" with depth attenuation; benign
phantoms carry a smooth oval hypoechoic lesion with posterior enhancement, malignant ones an
irregular spiculated lesion with posterior shadowing, normal ones no lesion (empty mask, as in
BUSI). A few near-duplicates are planted (resized, cropped, caliper-marked copies) and one label
conflict (the same pixels filed as benign and as malignant), so the duplicate detector and the
grouped splits have something to find.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import from_os_error
from .store import write_text

DEFAULT_COUNTS = {"normal": 12, "benign": 16, "malignant": 14}
GENERATOR_VERSION = 1


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Layered, attenuated, speckled background in [0, 1], shape (h, w)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(-0.35, 0.35)
    t = (y + np.tan(angle) * (x - w / 2)) / h
    layers = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(3, 7)):
        f, ph, a = rng.uniform(2, 9), rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.25)
        layers += a * np.sin(2 * np.pi * f * t + ph + 0.8 * np.sin(x / w * rng.uniform(1, 5)))
    blobs = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), rng.uniform(6, 16))
    blobs /= blobs.std() + 1e-6
    base = 0.45 + 0.5 * layers + 0.12 * blobs
    skin = rng.uniform(0.04, 0.1)
    base = np.where(t < skin, 0.85, base)
    attenuation = np.exp(-rng.uniform(0.6, 1.6) * np.clip(t, 0, None))
    speckle = rng.rayleigh(0.6, (h, w)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (3, 3), 0.8)
    return np.clip(base * attenuation * speckle, 0, 1)


def _lesion_mask(rng: np.random.Generator, h: int, w: int, malignant: bool) -> np.ndarray:
    """Boolean lesion region: a smooth oval (benign) or an irregular spiculated shape."""
    cy, cx = rng.uniform(0.35, 0.6) * h, rng.uniform(0.3, 0.7) * w
    ry = rng.uniform(0.08, 0.16) * h
    rx = ry * (rng.uniform(0.7, 1.0) if malignant else rng.uniform(1.3, 2.0))  # malignant: taller than wide
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.arctan2((y - cy) / ry, (x - cx) / rx)
    r = np.hypot((y - cy) / ry, (x - cx) / rx)
    edge = np.ones_like(theta)
    if malignant:
        for k in range(2, 7):
            edge += rng.uniform(0.04, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
        n_spikes = rng.integers(6, 12)
        for a in rng.uniform(-np.pi, np.pi, n_spikes):
            edge += rng.uniform(0.3, 0.7) * np.exp(-((np.angle(np.exp(1j * (theta - a)))) ** 2) / 0.004)
    else:
        edge += 0.04 * np.sin(2 * theta + rng.uniform(0, 2 * np.pi))
    return r <= edge


def _add_lesion(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, malignant: bool) -> np.ndarray:
    """Darken the lesion; brighten (benign) or shadow (malignant) the region below it."""
    h, w = img.shape
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0 if malignant else 2.5)
    inside = rng.uniform(0.08, 0.2) if malignant else rng.uniform(0.15, 0.3)
    out = img * (1 - soft) + img * inside * soft
    cols = mask.any(axis=0)
    bottom = np.where(mask.any(axis=1))[0].max()
    below = np.zeros_like(img)
    below[bottom:, cols] = 1.0
    below = cv2.GaussianBlur(below, (0, 0), 4)
    factor = rng.uniform(0.35, 0.55) if malignant else rng.uniform(1.25, 1.5)
    return np.clip(out * (1 + (factor - 1) * below * (1 - soft)), 0, 1)


def _frame(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Pad with a black frame of random width, as scanner exports often have."""
    top, left = int(rng.integers(0, 20)), int(rng.integers(0, 25))
    return cv2.copyMakeBorder(img, top, int(rng.integers(0, 12)), left, int(rng.integers(0, 25)),
                              cv2.BORDER_CONSTANT, value=0)


def phantom(rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: (uint8 greyscale image (H, W), uint8 mask (H, W) with 0/255)."""
    h, w = int(rng.integers(170, 230)), int(rng.integers(200, 280))
    img = _tissue(rng, h, w)
    mask = np.zeros((h, w), bool)
    if label != "normal":
        mask = _lesion_mask(rng, h, w, malignant=label == "malignant")
        img = _add_lesion(rng, img, mask, malignant=label == "malignant")
    u8 = (img * 255).astype(np.uint8)
    m8 = mask.astype(np.uint8) * 255
    state = rng.bit_generator.state
    framed = _frame(rng, u8)
    rng.bit_generator.state = state
    return framed, _frame(rng, m8)


def _caliper(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw two '+' caliper marks and a dotted line, as on annotated BUSI images."""
    out = img.copy()
    h, w = out.shape
    p1 = (int(w * rng.uniform(0.25, 0.4)), int(h * rng.uniform(0.35, 0.6)))
    p2 = (int(w * rng.uniform(0.6, 0.75)), int(h * rng.uniform(0.35, 0.6)))
    for x, y in (p1, p2):
        cv2.line(out, (x - 5, y), (x + 5, y), 255, 1)
        cv2.line(out, (x, y - 5), (x, y + 5), 255, 1)
    for k in range(0, 20, 2):
        a = (p1[0] + (p2[0] - p1[0]) * k // 20, p1[1] + (p2[1] - p1[1]) * k // 20)
        cv2.circle(out, a, 1, 230, -1)
    return out


def _save(path: Path, arr: np.ndarray) -> None:
    try:
        Image.fromarray(arr).save(path, format="PNG", optimize=False)
    except OSError as exc:  # a full or read-only data folder: one line naming the file (PIL names none)
        converted = from_os_error(exc, path)
        if converted is None:
            raise
        raise converted from None


def make_demo_dataset(out_dir: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ``out_dir/Dataset_BUSI_with_GT/{normal,benign,malignant}/`` and return that root.

    Deterministic for a given ``counts`` and ``seed``; a folder already holding the same demo
    set (same generator version, counts and seed) is reused as is.
    Planted: ``benign`` copies resized ×0.85 and cropped, a ``malignant`` copy with calipers, a
    second mask file for one benign image, and one benign image duplicated into ``malignant``.
    """
    counts = dict(counts or DEFAULT_COUNTS)
    out_dir = Path(out_dir)
    root = out_dir / "Dataset_BUSI_with_GT"
    stamp = {"generator_version": GENERATOR_VERSION, "counts": counts, "seed": seed}
    stamp_file = out_dir / "demo.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp and root.is_dir():
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(seed)
    made: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for label in ("normal", "benign", "malignant"):
        (root / label).mkdir(parents=True, exist_ok=True)
        made[label] = [phantom(rng, label) for _ in range(counts[label])]

    # planted near-duplicates, appended after the originals
    b0_img, b0_mask = made["benign"][0]
    h, w = b0_img.shape
    size = (int(w * 0.85), int(h * 0.85))
    made["benign"].append((cv2.resize(b0_img, size, interpolation=cv2.INTER_AREA),
                           cv2.resize(b0_mask, size, interpolation=cv2.INTER_NEAREST)))
    b1_img, b1_mask = made["benign"][1]
    h, w = b1_img.shape
    dy, dx = h // 20, w // 20
    made["benign"].append((b1_img[dy : h - dy, dx : w - dx].copy(), b1_mask[dy : h - dy, dx : w - dx].copy()))
    m0_img, m0_mask = made["malignant"][0]
    made["malignant"].append((_caliper(m0_img, rng), m0_mask.copy()))
    # label conflict: the same pixels filed under malignant too (as BUSI's benign 433 / malignant 145)
    made["malignant"].append(made["benign"][2])

    for label, items in made.items():
        for n, (img, mask) in enumerate(items, start=1):
            stem = f"{label} ({n})"
            _save(root / label / f"{stem}.png", img)
            if label == "benign" and n == 4:
                # a second mask file: the lesion split in two halves, OR-merged on use
                ys = np.where(mask.any(axis=1))[0]
                mid = (ys.min() + ys.max()) // 2 if ys.size else mask.shape[0] // 2
                upper, lower = mask.copy(), mask.copy()
                upper[mid:] = 0
                lower[:mid] = 0
                _save(root / label / f"{stem}_mask.png", upper)
                _save(root / label / f"{stem}_mask_1.png", lower)
            else:
                _save(root / label / f"{stem}_mask.png", mask)
    write_text(json.dumps(stamp, indent=2) + "\n", stamp_file)
    return root


def demo_expected_counts(counts: dict[str, int] | None = None) -> dict:
    """Image and mask counts that ``make_demo_dataset`` writes (planted copies included)."""
    counts = dict(counts or DEFAULT_COUNTS)
    images = {"normal": counts["normal"], "benign": counts["benign"] + 2, "malignant": counts["malignant"] + 2}
    return {"images": images, "masks": sum(images.values()) + 1}
