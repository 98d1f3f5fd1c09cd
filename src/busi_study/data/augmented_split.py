"""S4's data protocol, and what it leaks (docs/protocol.md §6).

S4 trained and tested on a Kaggle set of 9,015 *augmented* BUSI images, split at random
70 / 15 / 15 after augmentation. Every augmented copy of a scan is a separate item of that set,
so a random item-level split puts copies of one scan in training and in test. This module
builds such a pool from the study's cached views (view 0 = the original image, views 1.. =
augmented copies), splits it the way S4 did, and counts the test items that have

* an augmented copy of the *same* image in training (``copy_in_training``), or
* a near-duplicate — another image of the same duplicate group (docs/protocol.md §2) — or a copy of
  it in training (``near_duplicate_in_training``).

Nothing here trains a model; :mod:`busi_study.models.lightweight` does, on the same split.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

#: Size of S4's augmented Kaggle set (benign + malignant).
S4_AUGMENTED_SET_SIZE = 9015
ROLES = ("train", "val", "test")


def views_needed(n_images: int, target_size: int = S4_AUGMENTED_SET_SIZE) -> int:
    """Views per image (original included) needed to reach ``target_size`` items."""
    if n_images < 1 or target_size < n_images:
        raise ValueError(f"need 1 <= n_images <= target_size, got {n_images} and {target_size}")
    return math.ceil(target_size / n_images)


def augmented_pool(n_images: int, n_views: int, target_size: int, seed: int) -> pd.DataFrame:
    """Items of an augmented set: every original (view 0) and augmented copies (views 1..n_views-1),
    dropped at random to exactly ``target_size`` items (``min(target_size, n_images * n_views)``).

    Returns a frame with columns ``source`` (image position, 0..n_images-1) and ``view``, sorted.
    """
    source = np.repeat(np.arange(n_images), n_views)
    view = np.tile(np.arange(n_views), n_images)
    keep = np.ones(source.size, dtype=bool)
    extra = source.size - min(target_size, source.size)
    if extra > 0:
        augmented = np.flatnonzero(view > 0)
        if extra > augmented.size:
            raise ValueError("target_size is smaller than the number of original images")
        keep[np.random.default_rng(seed).choice(augmented, size=extra, replace=False)] = False
    return pd.DataFrame({"source": source[keep], "view": view[keep]}).reset_index(drop=True)


def random_split(labels: np.ndarray, seed: int, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)) -> np.ndarray:
    """A random stratified item-level split (S4: 70 / 15 / 15): role per item ('train'/'val'/'test')."""
    labels = np.asarray(labels)
    if not math.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions}")
    idx = np.arange(labels.size)
    train, rest = train_test_split(idx, train_size=fractions[0], random_state=seed, stratify=labels)
    val, test = train_test_split(rest, test_size=fractions[2] / (fractions[1] + fractions[2]), random_state=seed,
                                 stratify=labels[rest])
    role = np.empty(labels.size, dtype=object)
    role[train], role[val], role[test] = "train", "val", "test"
    return role


def leak_counts(source: np.ndarray, group: np.ndarray, role: np.ndarray) -> dict[str, int | float]:
    """How many test items have a copy of their own image, or of a near-duplicate, in training.

    Args:
        source: image id (or position) each item was made from, shape (n_items,).
        group: near-duplicate group of each item's source image, shape (n_items,).
        role: 'train' / 'val' / 'test' per item, shape (n_items,).

    Returns:
        ``n_test``; ``copy_in_training`` (test items whose own image has an item in training);
        ``near_duplicate_in_training`` (test items with no copy of their own image in training
        but an item of another image of the same group there); ``any_in_training`` (either),
        and ``share_any`` = any_in_training / n_test. Both counts are exclusive, so they add up.
    """
    source, group, role = np.asarray(source), np.asarray(group), np.asarray(role)
    if not (source.shape == group.shape == role.shape):
        raise ValueError("source, group and role must have the same shape")
    train, test = role == "train", role == "test"
    own = np.isin(source[test], source[train])
    near = np.isin(group[test], group[train]) & ~own
    n_test = int(test.sum())
    any_ = int(own.sum() + near.sum())
    return {"n_test": n_test, "copy_in_training": int(own.sum()), "near_duplicate_in_training": int(near.sum()),
            "any_in_training": any_, "share_any": any_ / n_test if n_test else float("nan")}
