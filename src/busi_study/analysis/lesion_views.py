"""Figures of notebook 05: segmentations drawn over the images (best, worst, false positives)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.images import unfit_square
from .error_analysis import GalleryImages


def segmentation_picks(per_image: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """(image_id, caption) of the ``n`` best and ``n`` worst out-of-fold lesion segmentations (Dice)
    and the ``n`` normal images with the largest predicted area (false positives)."""
    lesion = per_image[per_image["label"] != "normal"].sort_values("dice", ascending=False)
    normal = per_image[per_image["label"] == "normal"].sort_values("pred_area", ascending=False)
    out = [(r.image_id, f"best: {r.image_id}\nDice {r.dice:.2f}") for r in lesion.head(n).itertuples()]
    out += [(r.image_id, f"worst: {r.image_id}\nDice {r.dice:.2f}") for r in lesion.tail(n).itertuples()]
    out += [(r.image_id, f"normal: {r.image_id}\npredicted area {r.pred_area:.3f}") for r in normal.head(n).itertuples()]
    return out


def segmentation_items(picks: list[tuple[str, str]], oof: np.ndarray, table: pd.DataFrame, images: GalleryImages,
                       fit: str = "stretch") -> list[dict]:
    """Gallery items: the image, its reference lesion contour and the predicted lesion probability as the
    overlay (maps of padded inputs, ``fit="pad"``, are mapped back onto the image first)."""
    pos = {k: i for i, k in enumerate(table["image_id"])}
    items = []
    for image_id, caption in picks:
        item = images.item(image_id, caption)
        h, w = item["image"].shape[:2]
        item["cam"] = unfit_square(np.asarray(oof[pos[image_id]], np.float32), (h, w), fit)
        items.append(item)
    return items
