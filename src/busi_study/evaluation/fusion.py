"""Late fusion of two models' saved predictions, no training: p = w·p_base + (1 − w)·p_other.

The weight is chosen on the folds' inner-*validation* predictions only (lowest pooled log loss;
``w = 1`` is the base model alone); the out-of-fold test predictions are fused with that one weight
and compared with the base model by a paired group bootstrap. Both models must have been evaluated
on the same splits (same images in the same folds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..info import CLASS_INDEX, PROBA_COLUMNS
from .bootstrap import paired_bootstrap_difference
from .evaluate import arrays

DEFAULT_WEIGHTS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


@dataclass
class Fusion:
    validation: pd.DataFrame   # one row per weight: val log loss / accuracy, chosen
    weight: float              # the chosen weight of the base model
    oof: pd.DataFrame          # fused out-of-fold predictions (the prediction-table columns)
    paired: pd.DataFrame       # fused − base, paired group-bootstrap CI per metric


def _aligned(a: pd.DataFrame, b: pd.DataFrame, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    key = ["image_id", "fold"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    if len(a) != len(b) or not (a[key].to_numpy() == b[key].to_numpy()).all():
        raise ValueError(f"the two models' {what} predictions are not on the same images and folds — "
                         "fuse only models evaluated on the same splits")
    return a, b


def _proba(t: pd.DataFrame) -> np.ndarray:
    return arrays(t)[1]  # normalised float64 probabilities, as every evaluation reads them


def _fuse(a: pd.DataFrame, b: pd.DataFrame, w: float) -> pd.DataFrame:
    out = a.copy()
    out[list(PROBA_COLUMNS)] = w * _proba(a) + (1 - w) * _proba(b)
    return out


def late_fusion(base_val: pd.DataFrame, base_oof: pd.DataFrame, other_val: pd.DataFrame, other_oof: pd.DataFrame,
                weights: tuple[float, ...] = DEFAULT_WEIGHTS, *, n_resamples: int = 2000, seed: int = 0) -> Fusion:
    """Choose the fusion weight on validation, apply it to the test folds, compare with the base model."""
    bv, ov = _aligned(base_val, other_val, "validation")
    bo, oo = _aligned(base_oof, other_oof, "out-of-fold")
    y_val = bv["label"].map(CLASS_INDEX).to_numpy()
    rows = []
    for w in weights:
        p = np.clip(_proba(_fuse(bv, ov, w)), 1e-7, 1.0)
        rows.append({"w_base": w, "val_log_loss": float(-np.mean(np.log(p[np.arange(len(y_val)), y_val]))),
                     "val_accuracy": float((p.argmax(1) == y_val).mean()), "n_val": len(y_val)})
    table = pd.DataFrame(rows)
    best = float(table.loc[table["val_log_loss"].idxmin(), "w_base"])
    table["chosen"] = table["w_base"] == best
    fused = _fuse(bo, oo, best)
    y = bo["label"].map(CLASS_INDEX).to_numpy()
    paired = paired_bootstrap_difference(y, _proba(fused), _proba(bo), bo["group_id"].astype(str).to_numpy(),
                                         metrics=("accuracy", "macro_auc", "benign_vs_malignant_auc"),
                                         n_resamples=n_resamples, seed=seed)
    return Fusion(validation=table, weight=best, oof=fused, paired=paired)
