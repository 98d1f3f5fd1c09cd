"""Grouped, stratified cross-validation splits (docs/protocol.md §3).

Outer loop: ``StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)`` on (label,
group_id); each image is tested exactly once per repeat. Inner validation: about
``val_fraction`` of the groups of each outer training part, again grouped and stratified.
Repeats use seeds ``seed, seed + 1, …``. Same input + seed ⇒ byte-identical CSV.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import ParameterError
from ..info import CLASSES

ROLE_ORDER = {"train": 0, "val": 1, "test": 2}
SPLIT_COLUMNS = ["seed", "fold", "role", "image_id", "label", "group_id"]


def _inner_validation(labels: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation part inside one outer training part."""
    k = max(2, round(1 / val_fraction))
    n_groups = len(np.unique(groups))
    k = min(k, n_groups)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    _, val_idx = next(splitter.split(np.zeros(len(labels)), labels, groups))
    mask = np.zeros(len(labels), dtype=bool)
    mask[val_idx] = True
    return mask


def make_splits(
    groups: pd.DataFrame,
    n_splits: int = 5,
    seed: int = 42,
    val_fraction: float = 0.125,
    repeats: int = 1,
) -> pd.DataFrame:
    """Split images into outer folds with inner validation parts.

    groups: one row per image with ``image_id``, ``label``, ``group_id``.
    Returns long format, one row per (seed, fold, image): seed, fold (0…n_splits-1), role
    (train / val / test), image_id, label, group_id; sorted by seed, fold, role, image_id.
    """
    if n_splits < 2:
        raise ParameterError(f"n_splits must be at least 2, got {n_splits} — e.g. --set n_splits=5")
    if not 0 < val_fraction < 0.5:
        raise ParameterError(f"val_fraction must be in (0, 0.5), got {val_fraction} — e.g. --set val_fraction=0.125")
    n_groups = groups["group_id"].nunique()
    if n_groups < n_splits:
        raise ParameterError(f"only {n_groups} near-duplicate groups: cannot make {n_splits} grouped folds — use a "
                             f"larger dataset or fewer folds (--set n_splits=2)")
    df = groups[["image_id", "label", "group_id"]].sort_values("image_id").reset_index(drop=True)
    y = df["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    g = df["group_id"].to_numpy()
    parts = []
    for r in range(repeats):
        s = seed + r
        outer = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=s)
        for fold, (train_idx, test_idx) in enumerate(outer.split(np.zeros(len(df)), y, g)):
            role = np.full(len(df), "", dtype=object)
            role[test_idx] = "test"
            val_mask = _inner_validation(y[train_idx], g[train_idx], val_fraction, s)
            role[train_idx[val_mask]] = "val"
            role[train_idx[~val_mask]] = "train"
            part = df.assign(seed=s, fold=fold, role=role)
            parts.append(part)
    out = pd.concat(parts, ignore_index=True)[SPLIT_COLUMNS]
    out["_r"] = out["role"].map(ROLE_ORDER)
    return out.sort_values(["seed", "fold", "_r", "image_id"]).drop(columns="_r").reset_index(drop=True)


def split_table(splits: pd.DataFrame) -> pd.DataFrame:
    """Per seed, fold and role: images per class, total images and number of groups."""
    counts = splits.pivot_table(index=["seed", "fold", "role"], columns="label", values="image_id",
                                aggfunc="count", fill_value=0)
    counts = counts.reindex(columns=[c for c in CLASSES if c in counts.columns])
    counts["images"] = counts.sum(axis=1)
    counts["groups"] = splits.groupby(["seed", "fold", "role"])["group_id"].nunique()
    counts = counts.reset_index()
    counts["_r"] = counts["role"].map(ROLE_ORDER)
    return counts.sort_values(["seed", "fold", "_r"]).drop(columns="_r").reset_index(drop=True)


def check_split_invariants(splits: pd.DataFrame) -> list[str]:
    """Problems with a split file (empty list when sound).

    Checks, per seed: every image tested exactly once; no group in two test folds; within a
    fold, no group in two roles.
    """
    problems = []
    for s, d in splits.groupby("seed"):
        test = d[d["role"] == "test"]
        times = test["image_id"].value_counts()
        if (times != 1).any() or set(times.index) != set(d["image_id"]):
            problems.append(f"seed {s}: some image is not tested exactly once")
        if (test.groupby("group_id")["fold"].nunique() > 1).any():
            problems.append(f"seed {s}: a group appears in two test folds")
        for f, df in d.groupby("fold"):
            if (df.groupby("group_id")["role"].nunique() > 1).any():
                problems.append(f"seed {s} fold {f}: a group is split across train/val/test")
    return problems
