"""Localisation measures of explanation maps against lesion masks (docs/protocol.md §7).

All functions take maps already upsampled to the image size (``cam`` (H, W), non-negative, any
scale) and boolean lesion masks (H, W) (the OR-merge of an image's masks). Pure numpy / scipy:
importing this module does not import TensorFlow.

Conventions
-----------
* An empty mask (normal images) cannot be localised: every measure returns NaN (``None`` for
  :func:`pointing_game`), and tables and means skip it.
* Distances are in pixels between pixel centres; the pointing-game tolerance is a fraction of
  the image diagonal ``sqrt(H**2 + W**2)``.
* The baseline map is :func:`centred_gaussian`; evaluate it with the same functions (and a
  threshold chosen the same way) to see whether a model beats "look at the middle".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.ndimage import distance_transform_edt

DEFAULT_THRESHOLDS = np.linspace(0.05, 0.95, 19)


def _check_pair(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    if cam.ndim != 2 or cam.shape != mask.shape:
        raise ValueError(f"cam and mask must be 2-D arrays of the same shape, got {cam.shape} and {mask.shape}")
    return cam, mask


def dilate_mask(mask: np.ndarray, tolerance_frac: float = 0.05) -> np.ndarray:
    """Dilate a boolean mask (H, W) by a disk of radius ``tolerance_frac`` × image diagonal.

    A pixel is in the result iff the Euclidean distance between its centre and the centre of
    the nearest mask pixel is <= the radius (scipy's exact distance transform, so the disk is
    exact and no kernel has to be built). ``tolerance_frac=0`` returns the mask itself; an empty mask
    stays empty. Returns a bool array (H, W).
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if tolerance_frac < 0:
        raise ValueError("tolerance_frac must be >= 0")
    if not mask.any() or tolerance_frac == 0:
        return mask.copy()
    radius = tolerance_frac * float(np.hypot(*mask.shape))
    # exact Euclidean distance of every pixel to the nearest mask pixel (the zeros of ~mask), in
    # float64; the 1e-6 px slack keeps pixels lying exactly on the circle (e.g. 7² + 1² = 50 =
    # (0.05 · hypot(100, 100))²) inside despite rounding of the radius
    dist = distance_transform_edt(~mask)
    return dist <= radius + 1e-6


def pointing_game(cam: np.ndarray, mask: np.ndarray, tolerance_frac: float = 0.05) -> bool | None:
    """Whether the map's maximum falls inside the mask dilated by ``tolerance_frac`` × diagonal.

    cam : (H, W) map at image size. mask : (H, W) boolean lesion mask.
    Returns True/False, or None when the mask is empty (nothing to point at). A constant map
    (e.g. all zero: no evidence anywhere) points nowhere and counts as a miss. Ties between
    several maximal pixels are broken by ``np.argmax`` (first in row-major order).
    """
    cam, mask = _check_pair(cam, mask)
    if not mask.any():
        return None
    if not np.isfinite(cam).all() or cam.max() <= cam.min():
        return False
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(dilate_mask(mask, tolerance_frac)[r, c])


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total inside the mask: sum(cam+ · mask) / sum(cam+), in [0, 1].

    Negative values are clipped to 0 first (the measure is defined for non-negative maps).
    NaN when the map sums to 0 or the mask is empty.
    """
    cam, mask = _check_pair(cam, mask)
    pos = np.clip(cam, 0.0, None)
    total = float(pos.sum())
    if not mask.any() or total <= 0:
        return float("nan")
    return float(pos[mask].sum() / total)


def iou_at_threshold(cam: np.ndarray, mask: np.ndarray, threshold: float) -> float:
    """IoU between ``cam >= threshold * cam.max()`` and the mask.

    threshold : fraction of the map's maximum, in (0, 1]. A map with no positive value selects
    nothing (IoU 0). NaN when the mask is empty.
    """
    cam, mask = _check_pair(cam, mask)
    if not mask.any():
        return float("nan")
    peak = float(cam.max())
    if peak <= 0:
        return 0.0
    pred = cam >= threshold * peak
    union = np.logical_or(pred, mask).sum()
    return float(np.logical_and(pred, mask).sum() / union)


def iou_by_threshold(cams: Sequence[np.ndarray], masks: Sequence[np.ndarray], candidates: Sequence[float] = DEFAULT_THRESHOLDS) -> pd.Series:
    """Mean IoU over images (empty masks skipped) for each candidate threshold; index = threshold."""
    if len(cams) != len(masks):
        raise ValueError(f"got {len(cams)} maps and {len(masks)} masks")
    cand = np.asarray(candidates, dtype=float)
    means = []
    for t in cand:
        vals = np.array([iou_at_threshold(c, m, t) for c, m in zip(cams, masks)], dtype=float)
        means.append(float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan"))
    return pd.Series(means, index=pd.Index(cand, name="threshold"), name="mean_iou")


def choose_iou_threshold(cams: Sequence[np.ndarray], masks: Sequence[np.ndarray], candidates: Sequence[float] = DEFAULT_THRESHOLDS) -> float:
    """The candidate threshold with the highest mean IoU on (validation) maps and masks.

    Ties (within 1e-12) go to the lowest threshold. Raises ValueError when no image has a
    non-empty mask.
    """
    scores = iou_by_threshold(cams, masks, candidates).sort_index()
    if not np.isfinite(scores.to_numpy()).any():
        raise ValueError("no image with a non-empty mask to choose a threshold on")
    best = np.nanmax(scores.to_numpy())
    return float(scores.index[np.flatnonzero(scores.to_numpy() >= best - 1e-12)[0]])


def centred_gaussian(shape_hw: tuple[int, int], sigma_frac: float = 0.25) -> np.ndarray:
    """The "look at the middle" baseline: a Gaussian centred on the image, max 1.

    shape_hw : (H, W). The standard deviation is ``sigma_frac`` × each side (H for rows, W for
    columns). Centre at ((H-1)/2, (W-1)/2) in pixel coordinates; the map is divided by its
    maximum so it is exactly 1 at the central pixel(s). Returns float64 (H, W).
    """
    h, w = (int(v) for v in shape_hw)
    if h <= 0 or w <= 0 or sigma_frac <= 0:
        raise ValueError("shape and sigma_frac must be positive")
    y = (np.arange(h) - (h - 1) / 2.0) / (sigma_frac * h)
    x = (np.arange(w) - (w - 1) / 2.0) / (sigma_frac * w)
    g = np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
    return g / g.max()


def localisation_table(
    cams: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    threshold: float,
    tolerance_frac: float = 0.05,
    ids: Sequence[object] | None = None,
) -> pd.DataFrame:
    """Per-image pointing game, energy inside the mask and IoU at ``threshold``.

    cams, masks : sequences of (H_i, W_i) maps at image size and boolean masks (sizes may differ
    between images). ids : optional image identifiers (default 0..n-1).
    Columns: ``image``, ``pointing_hit`` (1.0 / 0.0, NaN for an empty mask, so that ``.mean()``
    is the hit rate), ``energy_inside``, ``iou``.
    """
    if len(cams) != len(masks):
        raise ValueError(f"got {len(cams)} maps and {len(masks)} masks")
    ids = list(range(len(cams))) if ids is None else list(ids)
    rows = []
    for i, cam, mask in zip(ids, cams, masks):
        hit = pointing_game(cam, mask, tolerance_frac)
        rows.append({
            "image": i,
            "pointing_hit": float("nan") if hit is None else float(hit),
            "energy_inside": energy_inside(cam, mask),
            "iou": iou_at_threshold(cam, mask, threshold),
        })
    return pd.DataFrame(rows, columns=["image", "pointing_hit", "energy_inside", "iou"])


def baseline_table(
    masks: Sequence[np.ndarray],
    threshold: float,
    tolerance_frac: float = 0.05,
    sigma_frac: float = 0.25,
    ids: Sequence[object] | None = None,
) -> pd.DataFrame:
    """:func:`localisation_table` of the centred Gaussian baseline for each mask's image size."""
    gauss = [centred_gaussian(np.asarray(m).shape, sigma_frac) for m in masks]
    return localisation_table(gauss, masks, threshold, tolerance_frac, ids)
