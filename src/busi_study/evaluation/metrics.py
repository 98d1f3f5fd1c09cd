"""Classification metrics of docs/protocol.md §4, computed fast enough to bootstrap.

Every metric is computed from per-image quantities combined with image *weights*: the plain
metric uses weight 1 for every image, and a bootstrap resample uses the number of times each
image was drawn (repeating an image k times is the same as giving it weight k for all metrics
here). :func:`classification_metrics_batch` evaluates many weightings at once with matrix
products (confusion matrices, losses, ECE) and one sort per score (rank-based AUC), which makes
2,000 group-bootstrap resamples take seconds instead of minutes with scikit-learn.

Conventions: classes are ``busi_study.info.CLASSES`` (normal=0, benign=1, malignant=2);
``y_true`` is an int array of shape (n,), ``proba`` a float array of shape (n, 3) with rows
summing to 1; the predicted class is the argmax (ties go to the lower class index, as in
``np.argmax``). Undefined metrics are NaN, never an exception.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..info import CLASSES
from .calibration import ece_batch

K = len(CLASSES)
MALIGNANT = CLASSES.index("malignant")
BENIGN = CLASSES.index("benign")
#: Number of equal-width bins for the ECE (docs/protocol.md §4).
ECE_BINS = 15


def check_predictions(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels and probabilities.

    Args:
        y_true: class indices in ``range(3)``, shape (n,).
        proba: probabilities, shape (n, 3), finite, rows summing to 1 (within 1e-3, which
            tolerates float32 softmax output but catches logits passed by mistake).

    Returns:
        ``(y_true as int64 (n,), proba as float64 (n, 3))``.

    Raises:
        ValueError: on wrong shapes, labels outside ``range(3)`` or rows not summing to 1.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[1] != K or y.shape != (p.shape[0],):
        raise ValueError(f"expected y_true shape (n,) and proba shape (n, {K}); got {y.shape} and {p.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0)):
        raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"y_true must hold class indices 0..{K - 1}")
    if not np.all(np.isfinite(p)) or (p.size and not np.allclose(p.sum(axis=1), 1.0, atol=1e-3)):
        raise ValueError("proba must be finite with rows summing to 1 (pass probabilities, not logits)")
    return y, p


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=float), np.asarray(den, dtype=float))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Mean over axis 1 ignoring NaN, NaN (without a warning) where a row is all NaN."""
    ok = ~np.isnan(x)
    return _safe_div(np.where(ok, x, 0.0).sum(axis=1), ok.sum(axis=1))


def auc_batch(score: np.ndarray, pos: np.ndarray, neg: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted binary ROC AUC (Mann–Whitney U with ties counted 1/2) for many weightings.

    AUC = P(score of a positive > score of a negative) + 1/2 P(equal), with each image counted
    with its weight; with integer weights this equals ``sklearn.metrics.roc_auc_score`` on the
    data with each image repeated that many times. One sort of ``score`` is shared by all
    weightings.

    Args:
        score: scores, shape (n,); larger means more likely positive.
        pos: boolean mask of positives, shape (n,).
        neg: boolean mask of negatives, shape (n,); images in neither mask are ignored.
        weights: non-negative image weights, shape (B, n).

    Returns:
        AUC per weighting, shape (B,); NaN where the positive or negative weight is 0.
    """
    keep = np.flatnonzero(np.asarray(pos) | np.asarray(neg))
    w = np.asarray(weights, dtype=float)
    if keep.size == 0:
        return np.full(w.shape[0], np.nan)
    order = keep[np.argsort(score[keep], kind="stable")]
    s = score[order]
    # first index of each run of tied scores: ties are pooled into one level
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ws = w[:, order]
    wp = np.add.reduceat(ws * pos[order], starts, axis=1)  # (B, levels) positive weight per level
    wn = np.add.reduceat(ws * neg[order], starts, axis=1)  # (B, levels) negative weight per level
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each level
    u = (wp * (below + 0.5 * wn)).sum(axis=1)
    return _safe_div(u, wp.sum(axis=1) * wn.sum(axis=1))


def classification_metrics_batch(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics of :func:`classification_metrics` for many weightings of the same images.

    Args:
        y_true: class indices, shape (n,).
        proba: probabilities, shape (n, 3), rows summing to 1.
        weights: non-negative image weights, shape (B, n) (e.g. bootstrap draw counts).

    Returns:
        Metric name -> values, each shape (B,), same keys and order as
        :func:`classification_metrics`.
    """
    y, p = check_predictions(y_true, proba)
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape[1] != y.size:
        raise ValueError(f"weights must have shape (B, {y.size}); got {w.shape}")
    n = y.size
    pred = p.argmax(axis=1)

    # weighted confusion matrices for all weightings in one product: (B, n) @ (n, K*K)
    cell = np.zeros((n, K * K))
    cell[np.arange(n), y * K + pred] = 1.0
    cm = (w @ cell).reshape(-1, K, K)  # [b, true, pred]
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    row = cm.sum(axis=2)  # true counts
    col = cm.sum(axis=1)  # predicted counts
    precision = _safe_div(tp, col)
    recall = _safe_div(tp, row)
    # 2TP / (2TP + FP + FN): defined whenever the class is true or predicted at least once
    f1 = _safe_div(2 * tp, row + col)
    chance = (row * col).sum(axis=1)
    out: dict[str, np.ndarray] = {
        "n": total,
        "accuracy": _safe_div(tp.sum(axis=1), total),
        # mean recall over classes present in y_true (sklearn's balanced_accuracy_score)
        "balanced_accuracy": _nanmean_rows(recall),
        # mean F1 over classes present in y_true or y_pred (sklearn's default labels)
        "macro_f1": _nanmean_rows(f1),
        # Cohen's kappa written with counts: (n*agree - chance) / (n^2 - chance)
        "kappa": _safe_div(total * tp.sum(axis=1) - chance, total**2 - chance),
    }
    for name, arr in (("precision", precision), ("recall", recall), ("f1", f1)):
        for c, cls in enumerate(CLASSES):
            out[f"{name}_{cls}"] = arr[:, c]

    aucs = np.stack([auc_batch(p[:, c], y == c, y != c, w) for c in range(K)], axis=1)
    # like sklearn's multi_class="ovr" macro: undefined unless every class's AUC is defined
    out["macro_auc"] = np.where(np.isnan(aucs).any(axis=1), np.nan, aucs.mean(axis=1))
    for c, cls in enumerate(CLASSES):
        out[f"auc_{cls}"] = aucs[:, c]
    lesion = p[:, BENIGN] + p[:, MALIGNANT]
    # a lesion image with no lesion probability at all carries no ranking information: 1/2
    bvm = np.full(n, 0.5)
    np.divide(p[:, MALIGNANT], lesion, out=bvm, where=lesion > 0)
    out["benign_vs_malignant_auc"] = auc_batch(bvm, y == MALIGNANT, y == BENIGN, w)

    # clip like sklearn.metrics.log_loss so a zero probability gives a large finite loss
    eps = np.finfo(float).eps
    nll = -np.log(np.clip(p[np.arange(n), y], eps, 1 - eps))
    onehot = np.eye(K)[y]
    brier = ((p - onehot) ** 2).sum(axis=1)
    out["log_loss"] = _safe_div(w @ nll, total)
    out["brier"] = _safe_div(w @ brier, total)
    out["ece"] = ece_batch(y, p, w, ECE_BINS)
    return out


def classification_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Pooled classification metrics of docs/protocol.md §4.

    Args:
        y_true: class indices (normal=0, benign=1, malignant=2), shape (n,).
        proba: class probabilities, shape (n, 3), rows summing to 1.

    Returns:
        ``n`` (images, int); ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``kappa``
        (Cohen's); ``precision_<cls>``, ``recall_<cls>``, ``f1_<cls>`` per class; ``macro_auc``
        (one-vs-rest macro ROC AUC) and ``auc_<cls>`` (one-vs-rest) per class;
        ``benign_vs_malignant_auc`` (lesion images only, score p_m / (p_b + p_m));
        ``log_loss`` (nats per image), ``brier`` (sum over classes of squared error vs one-hot,
        mean over images, range [0, 2]) and ``ece`` (15 bins, top-label). All are fractions in
        [0, 1] unless stated; undefined values (e.g. AUC of an absent class, precision of a
        never-predicted class) are NaN.
    """
    y, p = check_predictions(y_true, proba)
    batch = classification_metrics_batch(y, p, np.ones((1, y.size)))
    out = {k: float(v[0]) for k, v in batch.items()}
    out["n"] = int(y.size)
    return out


#: Lets the group bootstrap evaluate all resamples at once instead of one call per resample.
classification_metrics.batched = classification_metrics_batch  # type: ignore[attr-defined]


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Confusion matrix as counts and row-normalised, with all three classes always present.

    Args:
        y_true: true class indices, shape (n,).
        y_pred: predicted class indices, shape (n,).

    Returns:
        ``(counts, row_normalised)``: DataFrames indexed by true class (index name ``true``)
        with predicted classes as columns (name ``predicted``), labelled by class name. Each
        row of the normalised matrix sums to 1 (the per-class recall is on the diagonal); rows
        of classes absent from ``y_true`` are NaN.
    """
    y = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    if y.shape != yp.shape or y.ndim != 1:
        raise ValueError(f"y_true and y_pred must both have shape (n,); got {y.shape} and {yp.shape}")
    counts = np.bincount(y * K + yp, minlength=K * K).reshape(K, K)
    norm = _safe_div(counts, counts.sum(axis=1, keepdims=True))
    index = pd.Index(CLASSES, name="true")
    columns = pd.Index(CLASSES, name="predicted")
    return pd.DataFrame(counts, index=index, columns=columns), pd.DataFrame(norm, index=index, columns=columns)


def collapse_flags(y_true: np.ndarray, proba: np.ndarray, max_share: float = 0.9) -> list[str]:
    """Flags for a collapsed model (docs/protocol.md §4 collapse check).

    Args:
        y_true: class indices, shape (n,).
        proba: probabilities, shape (n, 3).
        max_share: largest acceptable share of argmax predictions in one class (0.9).

    Returns:
        Human-readable flags: one if more than ``max_share`` of the predictions fall in one
        class, and one per class present in ``y_true`` whose recall is 0. Empty when fine.
    """
    y, p = check_predictions(y_true, proba)
    flags: list[str] = []
    if y.size == 0:
        return flags
    pred = p.argmax(axis=1)
    share = np.bincount(pred, minlength=K) / y.size
    top = int(share.argmax())
    if share[top] > max_share:
        flags.append(f"collapse: {share[top]:.1%} of predictions are '{CLASSES[top]}' (> {max_share:.0%})")
    for c, cls in enumerate(CLASSES):
        n_true = int((y == c).sum())
        if n_true and not np.any(pred[y == c] == c):
            flags.append(f"collapse: recall of '{cls}' is 0 ({n_true} true '{cls}' images, none predicted as such)")
    return flags


def _binary_rates(score: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule ``score >= threshold``; NaN where undefined."""
    called = score >= threshold
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    sens = float((called & positive).sum() / n_pos) if n_pos else np.nan
    spec = float((~called & ~positive).sum() / n_neg) if n_neg else np.nan
    return sens, spec


def operating_points(y_val: np.ndarray, p_val: np.ndarray, y_test: np.ndarray, p_test: np.ndarray,
                     target: float = 0.9) -> dict[str, float]:
    """Malignant-vs-rest operating points: thresholds chosen on validation, applied to test.

    The binary problem is malignant (class 2) vs the rest, scored by p_malignant, and an image
    is called malignant when ``p_malignant >= threshold``. Candidate thresholds are the distinct
    validation scores (plus +inf, "call nothing malignant"). Because the rule is ``>=`` and the
    thresholds are observed scores, images with tied scores are always called together: ties
    are never split, so the achieved validation rate can exceed the target.

    - spec90: the *lowest* candidate with validation specificity >= ``target`` (the most
      sensitive such rule). If only +inf qualifies (>= 1 - target of the negatives tie at the
      top score), the threshold is +inf and test sensitivity is 0.
    - sens90: the *highest* candidate with validation sensitivity >= ``target`` (the most
      specific such rule); the lowest validation score always qualifies.

    Args:
        y_val: validation class indices, shape (n_val,).
        p_val: validation probabilities, shape (n_val, 3).
        y_test: test class indices, shape (n_test,).
        p_test: test probabilities, shape (n_test, 3).
        target: required validation specificity / sensitivity (fraction, 0.9).

    Returns:
        ``threshold_spec90``, ``sens_at_spec90`` and ``spec_at_spec90_threshold`` (achieved on
        test), ``threshold_sens90``, ``spec_at_sens90`` and ``sens_at_sens90_threshold`` (on
        test). Thresholds are NaN when validation lacks negatives (spec90) or positives
        (sens90); test rates are NaN when test lacks the class they are computed on.
    """
    yv, pv = check_predictions(y_val, p_val)
    yt, pt = check_predictions(y_test, p_test)
    sv, st = pv[:, MALIGNANT], pt[:, MALIGNANT]
    pos_v, pos_t = yv == MALIGNANT, yt == MALIGNANT
    out = dict.fromkeys(("sens_at_spec90", "spec_at_spec90_threshold", "threshold_spec90",
                         "spec_at_sens90", "sens_at_sens90_threshold", "threshold_sens90"), np.nan)
    cand = np.r_[np.unique(sv), np.inf]  # ascending
    neg_scores, pos_scores = np.sort(sv[~pos_v]), np.sort(sv[pos_v])
    if neg_scores.size:
        # specificity(t) = share of negatives with score < t, non-decreasing in t
        spec = np.searchsorted(neg_scores, cand, side="left") / neg_scores.size
        t = float(cand[np.flatnonzero(spec >= target - 1e-12)[0]])
        sens, spec_t = _binary_rates(st, pos_t, t)
        out.update(threshold_spec90=t, sens_at_spec90=sens, spec_at_spec90_threshold=spec_t)
    if pos_scores.size:
        # sensitivity(t) = share of positives with score >= t, non-increasing in t
        sens_v = 1.0 - np.searchsorted(pos_scores, cand, side="left") / pos_scores.size
        t = float(cand[np.flatnonzero(sens_v >= target - 1e-12)[-1]])
        sens, spec_t = _binary_rates(st, pos_t, t)
        out.update(threshold_sens90=t, spec_at_sens90=spec_t, sens_at_sens90_threshold=sens)
    return out


def per_fold_summary(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation across folds.

    Args:
        per_fold: one row per fold, one column per metric; non-numeric columns and a column
            named ``fold`` are ignored.

    Returns:
        DataFrame with rows ``mean`` and ``sd`` (sample sd, ddof=1) and the metric columns;
        NaN fold values are skipped (pandas default), so a metric undefined in one fold is
        summarised over the others.
    """
    num = per_fold.select_dtypes(include="number").drop(columns=["fold"], errors="ignore")
    return pd.DataFrame({"mean": num.mean(), "sd": num.std(ddof=1)}).T
