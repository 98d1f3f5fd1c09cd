"""Crops around a predicted lesion: boxes from lesion-probability maps, crops, and maps pasted back.

A box is relative, (y0, y1, x0, x1) in [0, 1]: the bounding box of the largest predicted region,
widened by a margin on each side, or the whole image when nothing is found. :class:`CropSource`
holds each outer fold's segmenter maps, so that fold ``k``'s classifier trains and tests on the
crops that fold ``k``'s segmenter (trained on that fold's training part only) predicts; the crops
are a function of the image alone, never of a test image's mask (docs/protocol.md §1).
``crop_cv`` runs a recipe's grouped CV on those per-fold crops.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from ..timing import timed
from .experiment import CVResult, Experiment, run_folds
from .features import cache_key
from .recipes import Recipe
from .segmentation import SegCV, SegmentationExperiment, largest_region

BOX_COLUMNS = ("y0", "y1", "x0", "x1")


def box_of(prob: np.ndarray, threshold: float, min_area: float, margin: float) -> tuple[np.ndarray, bool]:
    """Relative box (y0, y1, x0, x1) in [0, 1] around the largest predicted region of one map,
    widened by ``margin`` × its height / width on each side; the whole image when the predicted
    area is below ``min_area``. Returns (box, found)."""
    pred = np.asarray(prob) >= threshold
    if not pred.any() or pred.mean() < min_area:
        return np.array([0.0, 1.0, 0.0, 1.0]), False
    ys, xs = np.nonzero(largest_region(pred))
    h, w = pred.shape
    y0, y1, x0, x1 = ys.min() / h, (ys.max() + 1) / h, xs.min() / w, (xs.max() + 1) / w
    dy, dx = (y1 - y0) * margin, (x1 - x0) * margin
    return np.clip([y0 - dy, y1 + dy, x0 - dx, x1 + dx], 0.0, 1.0), True


def boxes_of(maps: np.ndarray, threshold: float, min_area: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (n, 4) and found flags (n,) of a stack of maps."""
    out = [box_of(m, threshold, min_area, margin) for m in maps]
    return np.array([b for b, _ in out]), np.array([f for _, f in out])


def crop(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """The relative ``box`` of an (H, W, 3) image, resized to size × size (INTER_AREA), uint8."""
    y0, y1, x0, x1 = box_pixels(box, image.shape)
    return cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (size, size), interpolation=cv2.INTER_AREA)


def box_pixels(box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A relative box as pixel rows / columns (r0, r1, c0, c1) of an image of ``shape``, as :func:`crop` cuts it."""
    h, w = shape[:2]
    r0, c0 = int(np.floor(box[0] * h)), int(np.floor(box[2] * w))
    return r0, max(int(np.ceil(box[1] * h)), r0 + 1), c0, max(int(np.ceil(box[3] * w)), c0 + 1)


def paste(crop_map: np.ndarray, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map computed on a crop, resized into the crop's box of a zero map of ``shape`` (H, W)."""
    r0, r1, c0, c1 = box_pixels(box, shape)
    out = np.zeros(shape[:2], np.float32)
    out[r0:r1, c0:c1] = cv2.resize(np.asarray(crop_map, np.float32), (c1 - c0, r1 - r0), interpolation=cv2.INTER_LINEAR)
    return out


@dataclass
class CropSource:
    """Crops around each fold's predicted lesions (see the module docstring)."""

    seg: SegmentationExperiment
    cv: SegCV
    originals: list[np.ndarray]
    folds: list[int]

    @property
    def threshold(self) -> float:
        return self.seg.recipe.threshold

    def boxes(self, fold: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and found flags of every image from fold ``fold``'s segmenter."""
        r = self.seg.recipe
        return boxes_of(self.cv.fold_maps[self.folds.index(fold)].astype(np.float32), r.threshold, r.min_area, margin)

    def images(self, fold: int, margin: float, size: int) -> np.ndarray:
        """uint8 (n, size, size, 3) crops of every image from fold ``fold``'s segmenter (recomputed on
        each call, a few seconds: keeping every fold × margin × size would cost gigabytes)."""
        boxes, _ = self.boxes(fold, margin)
        return np.stack([crop(im, b, size) for im, b in zip(self.originals, boxes)])

    def key(self, fold: int, margin: float) -> str:
        """What the crops of (fold, margin) were made from (for feature caches)."""
        m = self.cv.fold_maps[self.folds.index(fold)]
        return cache_key("crops", self.seg.recipe.as_dict(), fold, margin, self.seg.seed, m.shape, float(np.asarray(m, np.float64).sum()))

    def box_table(self, margin: float) -> pd.DataFrame:
        """Per fold and image: the box its crop was cut from (for the explanations and the report)."""
        t = self.seg.table
        rows = []
        for fold in self.folds:
            boxes, found = self.boxes(fold, margin)
            rows.append(pd.DataFrame({"fold": fold, "image_id": t["image_id"], **{c: boxes[:, j] for j, c in enumerate(BOX_COLUMNS)},
                                      "found": found}))
        return pd.concat(rows, ignore_index=True)


@timed("cross-validation {recipe.name} on crops (margin {margin})")
def crop_cv(recipe: Recipe, source: CropSource, splits: pd.DataFrame, margin: float, *, seed: int, tta: bool,
            progress: bool = True, cache: bool = False) -> CVResult:
    """Grouped CV of ``recipe`` on each fold's crops (one :class:`Experiment` per fold)."""

    def experiment(fold: int) -> Experiment:
        images = source.images(fold, margin, recipe.input_size)
        return Experiment(recipe, source.seg.store, seed=seed, progress=progress, images=images,
                          images_key=source.key(fold, margin) if cache else None).prepare()

    return run_folds(experiment, splits, seed, tta)


