"""S1's pipeline under the study's protocol: segment → crop the *predicted* lesion → classify the crop.

For outer fold ``k`` the segmenter of fold ``k`` (trained on that fold's training part only)
predicts a lesion map for every image; the box around its largest region, widened by a margin
on each side, is cut from the original-resolution image (whole image when nothing is found) and
resized to the classifier's input. The classifier of fold ``k`` trains on the crops of the
training part (maps of images the segmenter was trained on, as a deployed model's would be) and
is tested on the crops of the test part (maps of images neither network saw). The crops are a
function of the image alone: masks are never an input at test time (PROTOCOL §1).

The margin is chosen on the inner validation parts only (pooled validation log loss of a cheap
frozen-feature head on one view), never on the outer test folds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ..data.enhance import enhance
from ..data.images import read_rgb
from ..data.store import ProcessedData
from ..evaluation.metrics import classification_metrics
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


def load_originals(store: ProcessedData, preprocessing: str = "none") -> list[np.ndarray]:
    """Every manifest image at its own resolution (enhanced as ``preprocessing`` says), in manifest order."""
    root = Path(store.raw_root())
    return [enhance(read_rgb(root / p), preprocessing) for p in store.read("manifest")["path"]]


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


def crop_cv(recipe: Recipe, source: CropSource, splits: pd.DataFrame, margin: float, *, seed: int, tta: bool,
            progress: bool = True, cache: bool = False) -> CVResult:
    """Grouped CV of ``recipe`` on each fold's crops (one :class:`Experiment` per fold)."""

    def experiment(fold: int) -> Experiment:
        images = source.images(fold, margin, recipe.input_size)
        return Experiment(recipe, source.seg.store, seed=seed, progress=progress, images=images,
                          images_key=source.key(fold, margin) if cache else None).prepare()

    return run_folds(experiment, splits, seed, tta)


def val_scores(cv: CVResult) -> tuple[float, float]:
    """Pooled log loss and accuracy of the folds' inner-validation predictions (what choices are made on)."""
    from ..info import CLASS_INDEX, PROBA_COLUMNS

    y = cv.val["label"].map(CLASS_INDEX).to_numpy()
    p = np.clip(cv.val[list(PROBA_COLUMNS)].to_numpy(), 1e-7, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y]))), float((p.argmax(1) == y).mean())


def choose_margin(proxy: Recipe, source: CropSource, splits: pd.DataFrame, margins: list[float], *, seed: int,
                  progress: bool = True) -> tuple[float, pd.DataFrame]:
    """The margin with the lowest pooled inner-validation log loss of ``proxy`` (a frozen-feature
    head on one view); the table lists every candidate's validation scores (test folds unused)."""
    rows = []
    for m in margins:
        t0 = time.perf_counter()
        cv = crop_cv(replace(proxy, n_views=1), source, splits, m, seed=seed, tta=False, progress=False)
        loss, acc = val_scores(cv)
        rows.append({"margin": m, "val_log_loss": loss, "val_accuracy": acc, "n_val": len(cv.val),
                     "seconds": round(time.perf_counter() - t0, 1)})
        if progress:
            print(f"  margin {m}: validation log loss {rows[-1]['val_log_loss']:.4f}, accuracy {acc:.3f}", flush=True)
    table = pd.DataFrame(rows)
    best = float(table.loc[table["val_log_loss"].idxmin(), "margin"])
    table["chosen"] = table["margin"] == best
    return best, table


def s1_protocol(seg: SegmentationExperiment, recipe: Recipe, originals: list[np.ndarray], margin: float, *,
                test_fraction: float, val_fraction: float, repeats: int, epochs: list[int], seed: int) -> pd.DataFrame:
    """S1's own protocol: a random *image-level* split (repeated), segmenter and classifier trained
    on the training part, the classifier for a fixed number of epochs per phase (S1: 3), tested on
    the random test part; the test images with a near-duplicate in training are counted."""
    y = seg.table["label_idx"].to_numpy()
    g = seg.table["group_id"].to_numpy()
    idx = np.arange(len(y))
    rows = []
    for r in range(repeats):
        s = seed + r
        t0 = time.perf_counter()
        train_val, test = train_test_split(idx, test_size=test_fraction, random_state=s, stratify=y)
        train, val = train_test_split(train_val, test_size=val_fraction, random_state=s, stratify=y[train_val])
        dec, _, _, _ = seg.fit(np.sort(train), np.sort(val), s + 300)
        maps = seg.predict(dec)
        boxes, _ = boxes_of(maps, seg.recipe.threshold, seg.recipe.min_area, margin)
        crops = np.stack([crop(im, b, recipe.input_size) for im, b in zip(originals, boxes)])
        ex = Experiment(recipe, seg.store, seed=s, progress=False, images=crops).prepare()
        fm = ex.fit(np.sort(train_val), None, s + 500, epochs=epochs)
        p = ex.predict(fm, np.sort(test))
        m = classification_metrics(y[np.sort(test)], p)
        rows.append({"repeat": r, "seed": s, "n_test": len(test), "epochs_per_phase": str(epochs),
                     "test_images_with_duplicate_in_training": int(np.isin(g[test], g[train_val]).sum()),
                     "seconds": round(time.perf_counter() - t0, 1), **m})
    return pd.DataFrame(rows).rename(columns={"auc_malignant": "malignant_auc"})
