"""Benign vs malignant under the protocol (docs/protocol.md §4–5), for binary and three-class models.

A binary model's predictions are stored in the study's three-class table with ``p_normal = 0``
(:func:`busi_study.models.lightweight.as_three_class`), so :func:`.evaluate.evaluate` gives every
number with its group-bootstrap CI: its benign-vs-malignant AUC is the binary AUC, its
malignant operating points are the binary sensitivity / specificity at thresholds chosen on each
fold's validation part, its top-label ECE is the binary ECE. This module picks and names the
binary metrics, and puts a three-class model on the same footing: on lesion images only, with
its probabilities renormalised over benign and malignant (score p_m / (p_b + p_m), the study's
benign-vs-malignant score), so two models can be compared on the same images by paired bootstrap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..info import PROBA_COLUMNS
from .bootstrap import paired_bootstrap_difference
from .evaluate import Evaluation, arrays

#: binary name → name in the protocol's metric table. Sensitivity / specificity at 0.5 are the
#: recalls of malignant / benign; the operating points use validation-chosen thresholds.
BINARY_METRICS = {
    "auc": "benign_vs_malignant_auc",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "macro_f1": "macro_f1",
    "f1_malignant": "f1_malignant",
    "sensitivity_at_0.5": "recall_malignant",
    "specificity_at_0.5": "recall_benign",
    "sens_at_spec90": "sens_at_spec90",
    "spec_at_sens90": "spec_at_sens90",
    "log_loss": "log_loss",
    "ece": "ece",
}
PROBA = PROBA_COLUMNS


def binary_table(ev: Evaluation) -> pd.DataFrame:
    """The binary metrics of an evaluation (metric, value, ci_low, ci_high), S4's names first."""
    t = ev.pooled.set_index("metric")
    rows = [{"metric": name, **t.loc[src, ["value", "ci_low", "ci_high"]].to_dict()}
            for name, src in BINARY_METRICS.items() if src in t.index]
    return pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high"])


def lesion_only(pred: pd.DataFrame) -> pd.DataFrame:
    """Benign and malignant rows of a prediction table, probabilities renormalised over the two
    lesion classes (p_normal set to 0; a row with no lesion probability at all gets 1/2 each)."""
    out = pred[pred["label"].isin(("benign", "malignant"))].copy()
    b, m = out["p_benign"].to_numpy(float), out["p_malignant"].to_numpy(float)
    s = b + m
    pm = np.divide(m, s, out=np.full_like(m, 0.5), where=s > 0)
    out["p_normal"], out["p_benign"], out["p_malignant"] = 0.0, 1.0 - pm, pm
    return out.reset_index(drop=True)


def paired_lesion_comparison(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int = 2000, seed: int = 0,
                             metrics: tuple[str, ...] = ("benign_vs_malignant_auc", "accuracy")) -> pd.DataFrame:
    """Model A vs model B on the lesion images both predicted (out of fold), paired group bootstrap.

    Both tables go through :func:`lesion_only`; images are matched on ``image_id``. Returns
    :func:`~busi_study.evaluation.bootstrap.paired_bootstrap_difference`'s table (a, b, diff = a - b,
    CI, p) with ``n`` images.
    """
    la, lb = lesion_only(a), lesion_only(b)
    both = la.merge(lb[["image_id", *PROBA]], on="image_id", suffixes=("", "_b"), validate="1:1")
    if both.empty:
        raise ValueError("the two prediction tables share no lesion image")
    y, pa, g = arrays(both)
    pb = both[[f"{c}_b" for c in PROBA]].to_numpy(dtype=float)
    out = paired_bootstrap_difference(y, pa, pb, g, metrics=metrics, n_resamples=n_resamples, seed=seed)
    out.insert(1, "n", len(both))
    return out
