"""External validation metrics (docs/protocol.md §9): a binary task scored with settings fixed beforehand.

The external set is used for testing only. Everything a decision needs — the operating
thresholds and the temperature — comes from the *training* data's validation predictions
(:func:`settings_from_validation`); this module only applies them.

Binary task: positive class (malignant) against the negative classes (benign) on the images whose
label is one of them; score ``p_<positive>`` of the 3-class model (``p_malignant``). Also reported:
the AUC of the ratio score ``p_m / (p_b + p_m)`` that the study's ``benign_vs_malignant_auc`` uses,
sensitivity and specificity at each fixed threshold (an image is called positive when its score is
``>=`` the threshold; ``argmax`` calls it positive when the positive class has the largest
probability), 3-class log loss and top-label ECE of the same images before and after temperature
scaling. Uncertainty: percentile bootstrap resampling *patients* (or any group id), 95 %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..info import CLASS_INDEX, CLASSES, PROBA_COLUMNS
from ..timing import timed
from .bootstrap import CHUNK, resample_weights
from .calibration import class_mask, class_probabilities, ece_batch, fill_absent, fit_temperature_on, temperature_scale
from .metrics import ECE_BINS, _safe_div, auc_batch, operating_points

PROBA = PROBA_COLUMNS
#: Fewer images of either class than this in a subgroup: its AUC is flagged as unstable.
MIN_PER_CLASS = 5
#: Metric names, in table order.
METRICS = ("auc", "auc_ratio_score", "log_loss", "log_loss_T", "ece", "ece_T")


@dataclass(frozen=True)
class TransferSettings:
    """Temperature and thresholds chosen on the training data's validation predictions only."""

    temperature: float
    thresholds: dict[str, float]   # name -> threshold on p_<positive> (``argmax`` is always added)
    n_validation: int
    rule: str

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "thresholds": dict(self.thresholds),
                "n_validation": self.n_validation, "rule": self.rule}


def settings_from_validation(val: pd.DataFrame, positive: str = "malignant", negatives: Sequence[str] = ("benign",),
                             target: float = 0.9) -> TransferSettings:
    """The documented rule that fixes the final model's temperature and thresholds.

    ``val`` is a run's ``results/<model>/val_predictions.csv``: each CV fold model's predictions on
    that fold's inner validation part (label, p_normal, p_benign, p_malignant). The final model
    (trained on all images) has no validation data of its own, so its settings are taken from the
    fold models' validation predictions pooled over folds:

    - temperature: one T minimising the pooled validation NLL of ``softmax(log p / T)`` (all classes);
    - ``spec90``: the lowest threshold on ``p_<positive>`` with validation specificity >= ``target``
      among the validation images labelled ``positive`` or one of ``negatives`` (benign vs
      malignant: the external task); ``sens90``: the highest with sensitivity >= ``target``
      (ties never split, as in :func:`~busi_study.evaluation.metrics.operating_points`).

    Raises ValueError when the validation table holds no such images.
    """
    y = val["label"].map(CLASS_INDEX).to_numpy()
    if y.size == 0:
        raise ValueError("no validation predictions")
    p = class_probabilities(val[PROBA].to_numpy(dtype=float), PROBA)
    temperature = fit_temperature_on(p, y)
    keep = val["label"].isin([positive, *negatives]).to_numpy()
    if not keep.any():
        raise ValueError(f"no validation images labelled {positive} or {', '.join(negatives)}")
    # operating_points treats class 2 (malignant) as positive; map the chosen positive onto it
    pos = val["label"].to_numpy()[keep] == positive
    yb = np.where(pos, CLASS_INDEX["malignant"], CLASS_INDEX["benign"])
    pb = np.zeros((int(keep.sum()), len(CLASSES)))
    pb[:, CLASS_INDEX["malignant"]] = p[keep, CLASS_INDEX[positive]]
    pb[:, CLASS_INDEX["benign"]] = 1 - pb[:, CLASS_INDEX["malignant"]]
    op = operating_points(yb, pb, yb, pb, target=target)
    rule = (f"pooled validation predictions of the {val['fold'].nunique() if 'fold' in val else 1} CV fold models "
            f"(n = {len(val)}); temperature by validation NLL over all classes; thresholds on p_{positive} among "
            f"{positive} vs {'/'.join(negatives)} validation images (n = {int(keep.sum())}): spec{int(target * 100)} = lowest "
            f"threshold with specificity >= {target:.0%}, sens{int(target * 100)} = highest with sensitivity >= {target:.0%}")
    return TransferSettings(float(temperature), {f"spec{int(target * 100)}": float(op["threshold_spec90"]),
                                                  f"sens{int(target * 100)}": float(op["threshold_sens90"])},
                            int(len(val)), rule)


def binary_arrays(labels: Sequence[str], proba: np.ndarray, positive: str = "malignant",
                  negatives: Sequence[str] = ("benign",)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep mask, y class indices, probabilities) of the rows in the binary task; probabilities
    normalised over the classes the model has (an empty class column counts as 0)."""
    lab = np.asarray(labels, dtype=object)
    keep = np.isin(lab, [positive, *negatives])
    y = np.array([CLASS_INDEX[v] for v in lab[keep]], dtype=np.int64)
    return keep, y, class_probabilities(np.asarray(proba, dtype=float)[keep], PROBA)


def _metrics_batch(y: np.ndarray, p: np.ndarray, p_t: np.ndarray, thr: Mapping[str, np.ndarray], w: np.ndarray,
                   positive: int) -> dict[str, np.ndarray]:
    """Every metric for each weighting (rows of ``w``, shape (B, n)); thresholds per image (n,)."""
    pos = y == positive
    neg = ~pos
    score = p[:, positive]
    others = [c for c in range(p.shape[1]) if c != positive and np.any(y == c)]
    den = score + p[:, others].sum(axis=1)
    ratio = np.full(score.shape, 0.5)
    np.divide(score, den, out=ratio, where=den > 0)
    out = {"auc": auc_batch(score, pos, neg, w), "auc_ratio_score": auc_batch(ratio, pos, neg, w)}
    total = w.sum(axis=1)
    eps = np.finfo(float).eps
    for tag, q in (("", p), ("_T", p_t)):
        nll = -np.log(np.clip(q[np.arange(y.size), y], eps, 1 - eps))
        out[f"log_loss{tag}"] = _safe_div(w @ nll, total)
        out[f"ece{tag}"] = ece_batch(y, q, w, ECE_BINS)
    wp, wn = w @ pos.astype(float), w @ neg.astype(float)
    for name, t in thr.items():
        called = score >= t if name != "argmax" else p.argmax(axis=1) == positive
        out[f"sensitivity_{name}"] = _safe_div(w @ (called & pos).astype(float), wp)
        out[f"specificity_{name}"] = _safe_div(w @ (~called & neg).astype(float), wn)
    return out


def _per_image(thresholds: Mapping[str, float | np.ndarray], n: int) -> dict[str, np.ndarray]:
    out = {"argmax": np.zeros(n)}
    for k, v in thresholds.items():
        out[k] = np.broadcast_to(np.asarray(v, dtype=float), (n,))
    return out


@timed("binary metrics, bootstrap ({n_resamples} resamples)")
def binary_table(y: np.ndarray, proba: np.ndarray, groups: np.ndarray, temperature: float | np.ndarray,
                 thresholds: Mapping[str, float | np.ndarray], positive: str = "malignant", n_resamples: int = 2000,
                 seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Point values and percentile bootstrap CIs (resampling ``groups``) of the binary metrics.

    Args:
        y: class indices of the binary-task images (positive or negative class), shape (n,).
        proba: their 3-class probabilities, shape (n, 3).
        groups: patient (or near-duplicate group) id per image, shape (n,).
        temperature: T (or one T per image, shape (n,)) applied for ``log_loss_T`` / ``ece_T``.
        thresholds: name -> threshold on ``p_<positive>`` (a float or one per image, shape (n,));
            ``argmax`` is added.
        positive: the positive class name.
        n_resamples, seed, alpha: bootstrap settings (``np.random.default_rng(seed)``).

    Returns:
        Columns metric, value, ci_low, ci_high, n_valid; ``attrs`` holds n, n_positive, n_negative,
        n_groups, n_resamples, seed.
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(proba, dtype=float)
    if p.shape != (y.size, len(CLASSES)) or np.asarray(groups).shape != y.shape:
        raise ValueError(f"expected y (n,), proba (n, {len(CLASSES)}), groups (n,); got {y.shape}, {p.shape}, "
                         f"{np.asarray(groups).shape}")
    if y.size == 0:
        raise ValueError("no images in the binary task")
    temps = np.broadcast_to(np.asarray(temperature, dtype=float), (y.size,))
    p = fill_absent(p, PROBA)  # a class the model lacks (empty column) is 0
    has = class_mask(p)  # the model's classes: a temperature never gives an absent class probability
    p_t = np.vstack([temperature_scale(p[i : i + 1], float(temps[i]), has) for i in range(y.size)]) \
        if np.unique(temps).size > 1 else temperature_scale(p, float(temps[0]), has)
    thr = _per_image(thresholds, y.size)
    pos = CLASS_INDEX[positive]
    point = _metrics_batch(y, p, p_t, thr, np.ones((1, y.size)), pos)
    w = resample_weights(np.asarray(groups), n_resamples, seed).astype(float)
    parts = [_metrics_batch(y, p, p_t, thr, w[i : i + CHUNK], pos) for i in range(0, n_resamples, CHUNK)]
    rows = []
    for name, value in point.items():
        boot = np.concatenate([part[name] for part in parts])
        ok = boot[~np.isnan(boot)]
        lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2]) if ok.size else (np.nan, np.nan)
        rows.append({"metric": name, "value": float(value[0]), "ci_low": float(lo), "ci_high": float(hi), "n_valid": int(ok.size)})
    df = pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high", "n_valid"])
    df.attrs.update(n=int(y.size), n_positive=int((y == pos).sum()), n_negative=int((y != pos).sum()),
                    n_groups=int(np.unique(np.asarray(groups)).size), n_resamples=n_resamples, seed=seed)
    return df


def busi_cv_table(oof: pd.DataFrame, val: pd.DataFrame, positive: str = "malignant", negatives: Sequence[str] = ("benign",),
                  n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The same metrics on the training data's own out-of-fold predictions (the "BUSI CV value").

    Each fold's temperature and thresholds come from that fold's validation part by the rule of
    :func:`settings_from_validation`; the bootstrap resamples near-duplicate groups (``group_id``).
    """
    keep = oof["label"].isin([positive, *negatives]).to_numpy()
    d = oof[keep]
    temps = np.zeros(len(d))
    thr: dict[str, np.ndarray] = {}
    for fold in sorted(d["fold"].unique()):
        s = settings_from_validation(val[val["fold"] == fold], positive, negatives)
        at = (d["fold"] == fold).to_numpy()
        temps[at] = s.temperature
        for k, v in s.thresholds.items():
            thr.setdefault(k, np.zeros(len(d)))[at] = v
    _, y, p = binary_arrays(d["label"], d[PROBA].to_numpy(), positive, negatives)
    return binary_table(y, p, d["group_id"].astype(str).to_numpy(), temps, thr, positive, n_resamples, seed)


@timed("paired AUC bootstrap ({n_resamples} resamples)")
def paired_auc_difference(y: np.ndarray, scores: Mapping[str, np.ndarray], groups: np.ndarray, reference: str,
                          positive: str = "malignant", n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """AUC of ``reference`` minus each other model's, on the same images and the same resamples.

    ``scores``: model -> p_<positive> per image (n,). Returns model_a, model_b, auc_a, auc_b, diff,
    ci_low, ci_high, p_two_sided (twice the share of resampled differences on the other side of 0
    or at 0, capped at 1), n_valid.
    """
    y = np.asarray(y)
    pos = y == CLASS_INDEX[positive]
    w = resample_weights(np.asarray(groups), n_resamples, seed).astype(float)
    ones = np.ones((1, y.size))
    ref_point = float(auc_batch(np.asarray(scores[reference], float), pos, ~pos, ones)[0])
    ref_boot = auc_batch(np.asarray(scores[reference], float), pos, ~pos, w)
    rows = []
    for name, s in scores.items():
        if name == reference:
            continue
        b_point = float(auc_batch(np.asarray(s, float), pos, ~pos, ones)[0])
        d = ref_boot - auc_batch(np.asarray(s, float), pos, ~pos, w)
        d = d[~np.isnan(d)]
        diff = ref_point - b_point
        lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2]) if d.size else (np.nan, np.nan)
        p = 1.0 if diff == 0 else min(1.0, 2.0 * float(np.mean(d * np.sign(diff) <= 0))) if d.size else np.nan
        rows.append({"model_a": reference, "model_b": name, "auc_a": ref_point, "auc_b": b_point, "diff": diff,
                     "ci_low": float(lo), "ci_high": float(hi), "p_two_sided": p, "n_valid": int(d.size)})
    return pd.DataFrame(rows, columns=["model_a", "model_b", "auc_a", "auc_b", "diff", "ci_low", "ci_high", "p_two_sided", "n_valid"])


@timed("subgroup AUC bootstrap ({n_resamples} resamples)")
def subgroup_auc(y: np.ndarray, score: np.ndarray, groups: np.ndarray, subgroup: Sequence[str], positive: str = "malignant",
                 n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """AUC with a bootstrap CI within each subgroup (e.g. BI-RADS group, image type).

    Returns subgroup, n, n_positive, n_negative, auc, ci_low, ci_high (NaN where a subgroup lacks
    positives or negatives).
    """
    y, score, groups, sub = np.asarray(y), np.asarray(score, float), np.asarray(groups), np.asarray(subgroup, dtype=object)
    rows = []
    for name in pd.unique(sub):
        at = sub == name
        pos = y[at] == CLASS_INDEX[positive]
        w = resample_weights(groups[at], n_resamples, seed).astype(float)
        value = float(auc_batch(score[at], pos, ~pos, np.ones((1, int(at.sum()))))[0])
        boot = auc_batch(score[at], pos, ~pos, w)
        boot = boot[~np.isnan(boot)]
        lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2]) if boot.size and not np.isnan(value) else (np.nan, np.nan)
        small = min(int(pos.sum()), int((~pos).sum()))
        rows.append({"subgroup": name, "n": int(at.sum()), "n_positive": int(pos.sum()), "n_negative": int((~pos).sum()),
                     "auc": value, "ci_low": float(lo), "ci_high": float(hi),
                     "note": "no AUC: one class only" if small == 0 else
                     f"unstable: only {small} of one class" if small < MIN_PER_CLASS else ""})
    return pd.DataFrame(rows)


def with_drop(external: pd.DataFrame, internal: pd.DataFrame) -> pd.DataFrame:
    """Side by side: external value [CI], internal (CV) value [CI] and the drop (internal − external)."""
    e = external.set_index("metric")[["value", "ci_low", "ci_high"]]
    i = internal.set_index("metric")[["value", "ci_low", "ci_high"]].add_prefix("cv_")
    out = e.join(i, how="left")
    out["drop"] = out["cv_value"] - out["value"]
    return out.reset_index()
