"""Calibration: expected calibration error, reliability tables and temperature scaling.

docs/protocol.md §4 asks for the expected calibration error (ECE) with 15 equal-width bins on the
top-label confidence. This module computes it (also in a batched, weighted form that the group
bootstrap uses), builds the per-bin table behind a reliability diagram, and fits a single
temperature on validation logits (Guo et al., 2017) so over-confident models can be rescaled.

Probability tables may lack a class: a binary (benign vs malignant) model leaves ``p_normal`` empty.
:func:`class_probabilities` normalises over the classes a table has (an empty column counts as 0,
a column empty in some rows only is refused), :func:`temperature_scale` and
:func:`fit_temperature_on` scale and fit over those classes only, so an absent class never gets
probability from a temperature and never turns a metric into NaN.

Bins are right-closed, ``(low, high]``, with the first bin also holding a confidence of exactly
0; the edges are ``np.linspace(0, 1, n_bins + 1)``. Top-label confidence of a 3-class model is
always at least 1/3, so the lowest bins of a 15-bin table are always empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from ..errors import StudyError
from ..info import PROBA_COLUMNS

#: Temperatures searched by :func:`fit_temperature` (bounds on T, searched on log T).
T_BOUNDS: tuple[float, float] = (0.05, 20.0)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence, right-closed bins ``(edges[i], edges[i+1]]``; shape (n,) int."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted 'left' on the inner edges counts edges strictly below x, which is the
    # right-closed bin number; clipping keeps values at or outside [0, 1] in the end bins.
    idx = np.searchsorted(edges[1:-1], confidence, side="left")
    return np.clip(idx, 0, n_bins - 1)


def _top_label(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence (max probability) and correctness (argmax == y), both shape (n,)."""
    proba = np.asarray(proba, dtype=float)
    y_true = np.asarray(y_true)
    if proba.ndim != 2 or y_true.shape != (proba.shape[0],):
        raise ValueError(f"expected y_true shape (n,) and proba shape (n, k); got {y_true.shape} and {proba.shape}")
    conf = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(float)
    return conf, correct


def ece_batch(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Weighted top-label ECE for many weightings of the same images at once.

    Args:
        y_true: true class indices, shape (n,).
        proba: class probabilities, shape (n, k), rows summing to 1.
        weights: non-negative image weights, shape (B, n); integer counts reproduce the ECE of
            the data set in which each image is repeated that many times (a bootstrap resample).
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        ECE per weighting, shape (B,), in probability units [0, 1]; NaN where all weights are 0.
    """
    conf, correct = _top_label(y_true, proba)
    onehot = np.zeros((conf.size, n_bins))
    onehot[np.arange(conf.size), _bin_index(conf, n_bins)] = 1.0
    # sum_b n_b/n * |acc_b - conf_b| == sum_b |sum_{i in b} (correct_i - conf_i)| / n, so one
    # matrix product per batch gives every bin's signed gap for every weighting.
    gap = np.asarray(weights, dtype=float) @ (onehot * (correct - conf)[:, None])
    total = np.asarray(weights, dtype=float).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.abs(gap).sum(axis=1) / total, np.nan)


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width bins.

    Args:
        y_true: true class indices, shape (n,).
        proba: class probabilities, shape (n, k), rows summing to 1.
        n_bins: number of equal-width, right-closed bins on [0, 1] (15 in the protocol).

    Returns:
        ``sum_b (n_b / n) * |accuracy_b - mean confidence_b|``, in [0, 1]; NaN when n == 0.
    """
    n = np.asarray(y_true).shape[0]
    return float(ece_batch(y_true, proba, np.ones((1, n)), n_bins)[0])


def reliability_table(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Per-bin counts, mean confidence and accuracy for a reliability diagram.

    Args:
        y_true: true class indices, shape (n,).
        proba: class probabilities, shape (n, k), rows summing to 1.
        n_bins: number of equal-width, right-closed bins on [0, 1].

    Returns:
        One row per bin (all ``n_bins`` rows, empty ones included) with columns ``bin_low``,
        ``bin_high``, ``count`` (images), ``confidence`` (mean top-label probability) and
        ``accuracy`` (share of argmax predictions that are correct); the last two are NaN for
        empty bins.
    """
    conf, correct = _top_label(y_true, proba)
    idx = _bin_index(conf, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return pd.DataFrame(
        {"bin_low": edges[:-1], "bin_high": edges[1:], "count": count, "confidence": mean_conf, "accuracy": acc}
    )


def logits_from_proba(proba: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Log of clipped probabilities, usable as logits when the model's logits were not kept.

    softmax(log p) == p, so temperature scaling of these pseudo-logits is equivalent to
    scaling the original logits (they differ only by a per-row constant). Clipping at ``eps``
    keeps zero probabilities finite.

    Args:
        proba: probabilities, shape (n, k).
        eps: lower clip applied before the log.

    Returns:
        Pseudo-logits, shape (n, k).
    """
    return np.log(np.clip(np.asarray(proba, dtype=float), eps, 1.0))


def apply_temperature(logits: np.ndarray, T: float) -> np.ndarray:
    """Temperature-scaled probabilities ``softmax(logits / T)``.

    Args:
        logits: logits, shape (n, k).
        T: temperature, > 0 (T > 1 softens, T < 1 sharpens).

    Returns:
        Probabilities, shape (n, k), rows summing to 1.
    """
    if not T > 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    return softmax(np.asarray(logits, dtype=float) / T, axis=1)


def _nll(logits: np.ndarray, y: np.ndarray, T: float) -> float:
    """Mean negative log-likelihood (nats per image) of softmax(logits / T)."""
    return float(-log_softmax(logits / T, axis=1)[np.arange(y.size), y].mean())


def fit_temperature(logits_val: np.ndarray, y_val: np.ndarray) -> float:
    """Fit the temperature that minimises validation NLL of ``softmax(logits / T)``.

    The search is a bounded scalar minimisation on log T (the NLL is smooth and unimodal
    enough in log T, and the log keeps T > 0), within :data:`T_BOUNDS`.

    Args:
        logits_val: validation logits, shape (n, k) (or :func:`logits_from_proba` output).
        y_val: validation class indices, shape (n,).

    Returns:
        The fitted temperature T > 0 (dimensionless).
    """
    logits = np.asarray(logits_val, dtype=float)
    y = np.asarray(y_val, dtype=int)
    if logits.ndim != 2 or y.shape != (logits.shape[0],) or y.size == 0:
        raise ValueError(f"expected logits shape (n, k) and y shape (n,) with n > 0; got {logits.shape} and {y.shape}")
    lo, hi = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    res = minimize_scalar(lambda log_t: _nll(logits, y, float(np.exp(log_t))), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


def _names(k: int, columns=None) -> list[str]:
    if columns is not None:
        return [str(c) for c in columns]
    return list(PROBA_COLUMNS) if k == len(PROBA_COLUMNS) else [f"column {i}" for i in range(k)]


def fill_absent(proba: np.ndarray, columns=None) -> np.ndarray:
    """A copy of ``proba`` (n, k) whose columns empty (NaN) in every row — classes the model does not
    output, such as a binary model's ``p_normal`` — are 0. A column empty in some rows only, or a
    row with no probability at all, is not one model's output: :class:`StudyError` (one line)."""
    p = np.array(proba, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"expected probabilities of shape (n, k), got {p.shape}")
    empty = np.isnan(p)
    absent = empty.all(axis=0) if len(p) else np.zeros(p.shape[1], bool)
    partial = empty.any(axis=0) & ~absent
    names = _names(p.shape[1], columns)
    if partial.any():
        k = int(np.flatnonzero(partial)[0])
        raise StudyError(f"{names[k]} is empty in {int(empty[:, k].sum())} of {len(p)} rows but not in the others: not the "
                         "probabilities of one model (a class a model has is in every row, one it lacks in none) — "
                         "predict again with one model and score that table")
    if len(p) and absent.all():
        raise StudyError(f"no probabilities: {', '.join(names)} are empty in every row — predict again (the rows with an "
                         "error have no probabilities; leave them out)")
    p[:, absent] = 0.0
    return p


def class_mask(proba: np.ndarray) -> np.ndarray:
    """(k,) bool: the classes a model gives probability to — columns neither empty nor 0 in every row."""
    p = np.asarray(proba, dtype=np.float64)
    if len(p) == 0:
        return np.ones(p.shape[1], bool)
    return ~((np.isnan(p)) | (p == 0)).all(axis=0)


def class_probabilities(proba: np.ndarray, columns=None) -> np.ndarray:
    """Rows of ``proba`` (n, k) normalised over the classes the model has (:func:`fill_absent`); a
    three-class table without empty columns gives exactly ``p / p.sum(axis=1)``."""
    p = fill_absent(proba, columns)
    total = p.sum(axis=1, keepdims=True)
    if len(p) and not (np.isfinite(total).all() and (total > 0).all()):
        bad = int((~(np.isfinite(total[:, 0]) & (total[:, 0] > 0))).sum())
        raise StudyError(f"{bad} of {len(p)} rows have no positive probability ({', '.join(_names(p.shape[1], columns))}) "
                         "— predict again; probabilities must be finite and sum to more than 0")
    return p / total


def temperature_scale(proba: np.ndarray, T: float, has: np.ndarray | None = None) -> np.ndarray:
    """``softmax(log p / T)`` over the classes the model has (``has``, default :func:`class_mask`);
    the other columns stay 0. With every class present this is ``apply_temperature(logits_from_proba(p), T)``."""
    p = fill_absent(proba)
    has = class_mask(p) if has is None else np.asarray(has, bool)
    if has.all():
        return apply_temperature(logits_from_proba(p), T)
    out = np.zeros_like(p)
    out[:, has] = apply_temperature(logits_from_proba(p[:, has]), T)
    return out


def fit_temperature_on(proba: np.ndarray, y: np.ndarray) -> float:
    """:func:`fit_temperature` on probabilities, over the classes the model has (labels must be among them)."""
    p = fill_absent(proba)
    y = np.asarray(y, dtype=int)
    has = class_mask(p)
    if has.all():
        return fit_temperature(logits_from_proba(p), y)
    if not has[y].all():
        lacking = sorted({int(c) for c in y[~has[y]]})
        raise StudyError(f"labels of class(es) {', '.join(_names(p.shape[1])[c] for c in lacking)} that the model does not "
                         "have: a temperature cannot be fitted on them — fit it on images of the model's classes only")
    position = np.cumsum(has) - 1
    return fit_temperature(logits_from_proba(p[:, has]), position[y])
