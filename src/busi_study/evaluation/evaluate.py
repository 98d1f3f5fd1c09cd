"""Evaluate one model's out-of-fold predictions under the protocol (docs/protocol.md §4–5).

Takes the prediction tables the experiments write (``image_id, fold, label, group_id,
p_normal, p_benign, p_malignant``) and returns every number the study reports, each with its
group-bootstrap 95 % CI: pooled metrics, per-fold mean ± sd, malignant operating points
(thresholds from each fold's validation part, applied to its test fold), the collapse check,
confusion matrices, the secondary analysis without label-conflict groups, and TTA separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..info import CLASS_INDEX, PROBA_COLUMNS
from ..timing import timed
from .bootstrap import group_bootstrap, resample_weights
from .calibration import class_probabilities
from .metrics import classification_metrics, collapse_flags, confusion_matrices, operating_points, per_fold_summary

#: Columns of the comparison table, in order (``auc_malignant`` is reported as ``malignant_auc``).
HEADLINE = ["accuracy", "balanced_accuracy", "macro_f1", "kappa", "macro_auc", "malignant_auc",
            "benign_vs_malignant_auc", "log_loss", "brier", "ece", "sens_at_spec90", "spec_at_sens90"]


def arrays(pred: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, proba, groups) from a prediction table; probabilities normalised over the classes the
    model has (a binary model's empty ``p_normal`` is 0: :func:`~.calibration.class_probabilities`)."""
    y = pred["label"].map(CLASS_INDEX).to_numpy()
    proba = class_probabilities(pred[PROBA_COLUMNS].to_numpy(dtype=np.float64), PROBA_COLUMNS)
    return y, proba, pred["group_id"].astype(str).to_numpy()


def _ci_table(boot: pd.DataFrame) -> pd.DataFrame:
    out = boot[["metric", "value", "ci_low", "ci_high"]].copy()
    out["metric"] = out["metric"].replace({"auc_malignant": "malignant_auc"})
    return out


def fold_operating_points(test: pd.DataFrame, val: pd.DataFrame):
    """Per outer fold: (fold, its test rows, the malignant operating points whose thresholds were
    chosen on that fold's validation predictions — ``threshold_spec90``, ``threshold_sens90``, …)."""
    for fold, t in test.groupby("fold"):
        v = val[val["fold"] == fold]
        yv, pv, _ = arrays(v)
        yt, pt, _ = arrays(t)
        yield fold, t, operating_points(yv, pv, yt, pt)


def missed_malignancies(test: pd.DataFrame, val: pd.DataFrame, at: str = "threshold_spec90") -> pd.DataFrame:
    """Malignant test images whose ``p_malignant`` falls below their fold's validation-chosen
    threshold (default: the 90 %-specificity one); the threshold is added as a column."""
    missed = [t[(t["label"] == "malignant") & (t["p_malignant"] < op[at])].assign(threshold=op[at])
              for _fold, t, op in fold_operating_points(test, val)]
    return pd.concat(missed) if missed else test.iloc[:0].assign(threshold=[])


def pooled_operating_points(test: pd.DataFrame, val: pd.DataFrame, n_resamples: int, seed: int) -> pd.DataFrame:
    """Sensitivity at 90 % specificity and specificity at 90 % sensitivity (malignant vs rest).

    Each fold's thresholds are chosen on its validation predictions and applied to its test
    fold; decisions are pooled over folds; CIs by group bootstrap of the pooled decisions.
    """
    parts = []
    for _fold, t, op in fold_operating_points(test, val):
        yt, pt, gt = arrays(t)
        parts.append(pd.DataFrame({
            "group": gt, "positive": yt == CLASS_INDEX["malignant"],
            "call_spec90": pt[:, 2] >= op["threshold_spec90"], "call_sens90": pt[:, 2] >= op["threshold_sens90"],
        }))
    d = pd.concat(parts, ignore_index=True)
    pos, neg = d["positive"].to_numpy(), ~d["positive"].to_numpy()
    w = resample_weights(d["group"].to_numpy(), n_resamples, seed).astype(float)
    rows = []
    for name, call, on in (("sens_at_spec90", d["call_spec90"].to_numpy(), pos),
                           ("spec_at_sens90", ~d["call_sens90"].to_numpy(), neg)):
        value = float(call[on].mean()) if on.any() else np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (w[:, on] * call[on]).sum(axis=1) / w[:, on].sum(axis=1)
        boot = boot[np.isfinite(boot)]
        lo, hi = (np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan))
        rows.append({"metric": name, "value": value, "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows)


@dataclass
class Evaluation:
    pooled: pd.DataFrame                  # metric, value, ci_low, ci_high
    per_fold: pd.DataFrame                # one row per fold
    per_fold_summary: pd.DataFrame        # mean / sd rows
    confusion_counts: pd.DataFrame
    confusion_normalised: pd.DataFrame
    collapse: list[str]
    without_conflicts: pd.DataFrame | None = None
    tta: pd.DataFrame | None = None
    extra: dict = field(default_factory=dict)

    def value(self, metric: str) -> float:
        return float(self.pooled.set_index("metric").loc[metric, "value"])


@timed("evaluate (metrics with bootstrap CIs)")
def evaluate(test: pd.DataFrame, val: pd.DataFrame | None = None, *, tta: pd.DataFrame | None = None,
             conflict_ids: set[str] | None = None, n_resamples: int = 2000, seed: int = 0) -> Evaluation:
    """Every protocol number for one model's out-of-fold predictions ``test``.

    val: validation predictions per fold (for the operating points); tta: TTA predictions of
    the same images; conflict_ids: image ids in label-conflict groups (secondary analysis).
    """
    y, p, g = arrays(test)
    pooled = _ci_table(group_bootstrap(y, p, g, n_resamples=n_resamples, seed=seed))
    if val is not None:
        pooled = pd.concat([pooled, pooled_operating_points(test, val, n_resamples, seed)], ignore_index=True)
    folds = []
    for fold, t in test.groupby("fold"):
        yf, pf, _ = arrays(t)
        folds.append({"fold": int(fold), **classification_metrics(yf, pf)})
    per_fold = pd.DataFrame(folds).rename(columns={"auc_malignant": "malignant_auc"})
    counts, norm = confusion_matrices(y, p.argmax(axis=1))
    ev = Evaluation(pooled, per_fold, per_fold_summary(per_fold), counts, norm, collapse_flags(y, p))
    if conflict_ids:
        keep = ~test["image_id"].isin(conflict_ids)
        yk, pk, gk = arrays(test[keep])
        ev.without_conflicts = _ci_table(group_bootstrap(yk, pk, gk, n_resamples=n_resamples, seed=seed))
        ev.extra["n_without_conflicts"] = int(keep.sum())
    if tta is not None:
        yt, pt, gt = arrays(tta)
        ev.tta = _ci_table(group_bootstrap(yt, pt, gt, n_resamples=n_resamples, seed=seed))
    return ev


def wide_row(table: pd.DataFrame, metrics: list[str] = HEADLINE) -> dict[str, float]:
    """``metric, metric_ci_low, metric_ci_high`` columns from a metric/value/ci table."""
    t = table.set_index("metric")
    row = {}
    for m in metrics:
        if m in t.index:
            row[m] = float(t.loc[m, "value"])
            row[f"{m}_ci_low"] = float(t.loc[m, "ci_low"])
            row[f"{m}_ci_high"] = float(t.loc[m, "ci_high"])
    return row


def validation_scores(val: pd.DataFrame) -> tuple[float, float]:
    """Pooled log loss and accuracy of the folds' inner-validation predictions (the frame a CV run
    keeps as ``val``): what every choice of the study (margins, candidates, weights) is made on."""
    y = val["label"].map(CLASS_INDEX).to_numpy()
    p = np.clip(val[list(PROBA_COLUMNS)].to_numpy(dtype=float), 1e-7, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y]))), float((p.argmax(1) == y).mean())
