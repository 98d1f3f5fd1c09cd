"""Group bootstrap confidence intervals and paired model comparisons (docs/protocol.md §5).

Near-duplicate images share a group id, and they are not independent: the bootstrap therefore
resamples *groups* with replacement (as many draws as there are groups) and takes every image
of each drawn group, a group drawn twice contributing its images twice. Intervals are percentile
intervals over the resamples where the metric is defined.

A resample is represented by per-image draw counts (a weight matrix of shape (B, n)); for a
metric function that exposes a vectorised ``batched(y_true, proba, weights)`` attribute (as
:func:`~busi_study.evaluation.metrics.classification_metrics` does) all resamples are evaluated
at once. Any other ``metric_fn(y_true, proba) -> dict[str, float]`` is called once per resample
on the repeated images, with the same resamples for the same seed, so both paths agree exactly.

Percentile intervals inherit the bootstrap's bias: for a metric that resampling noise pushes one
way (the ECE grows with noise) the interval can sit beside the point estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..timing import timed
from .metrics import classification_metrics

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
#: Resamples evaluated per vectorised call, which bounds memory to a few (CHUNK, n) arrays.
CHUNK = 250


def resample_weights(groups: np.ndarray, n_resamples: int, seed: int = 0) -> np.ndarray:
    """Per-image draw counts of a group bootstrap.

    Each resample draws ``G`` groups (``G`` = number of distinct ids) uniformly with
    replacement from ``np.random.default_rng(seed)``; every image gets the number of times its
    group was drawn.

    Args:
        groups: group id per image (any hashable dtype), shape (n,).
        n_resamples: number of resamples B.
        seed: seed of the generator.

    Returns:
        Integer draw counts, shape (B, n); row sums vary because groups differ in size.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    _, code = np.unique(np.asarray(groups), return_inverse=True)
    code = code.ravel()
    n_groups = int(code.max()) + 1 if code.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    # count draws per group for all resamples with one bincount, offsetting each row
    offset = (np.arange(n_resamples) * n_groups)[:, None]
    counts = np.bincount((draws + offset).ravel(), minlength=n_resamples * n_groups).reshape(n_resamples, n_groups)
    return counts[:, code]


def _evaluate(y: np.ndarray, proba: np.ndarray, weights: np.ndarray, metric_fn: MetricFn) -> dict[str, np.ndarray]:
    """Metric values for every row of ``weights`` (B, n): name -> array (B,)."""
    batched = getattr(metric_fn, "batched", None)
    if batched is not None:
        parts = [batched(y, proba, weights[i : i + CHUNK]) for i in range(0, weights.shape[0], CHUNK)]
        return {k: np.concatenate([part[k] for part in parts]).astype(float) for k in parts[0]}
    idx_all = np.arange(y.size)
    rows = []
    for w in weights:
        idx = np.repeat(idx_all, w)
        rows.append(metric_fn(y[idx], proba[idx]))
    return {k: np.array([r.get(k, np.nan) for r in rows], dtype=float) for k in rows[0]}


def _check(y_true: np.ndarray, groups: np.ndarray, *probas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape checks; returns ``(y_true, groups)`` as arrays."""
    y = np.asarray(y_true)
    g = np.asarray(groups)
    if g.shape != y.shape or y.ndim != 1:
        raise ValueError(f"y_true and groups must both have shape (n,); got {y.shape} and {g.shape}")
    for p in probas:
        if np.asarray(p).shape[0] != y.size:
            raise ValueError(f"proba has {np.asarray(p).shape[0]} rows but y_true has {y.size}")
    if y.size == 0:
        raise ValueError("cannot bootstrap an empty set of predictions")
    return y, g


def _percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Percentile interval of the finite values (NaN resamples ignored) and their count."""
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return np.nan, np.nan, 0
    lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), int(ok.size)


@timed("group bootstrap ({n_resamples} resamples)")
def group_bootstrap(y_true: np.ndarray, proba: np.ndarray, groups: np.ndarray,
                    metric_fn: MetricFn = classification_metrics, n_resamples: int = 2000, seed: int = 0,
                    alpha: float = 0.05) -> pd.DataFrame:
    """Percentile confidence intervals of every metric by group bootstrap.

    Args:
        y_true: class indices, shape (n,).
        proba: probabilities, shape (n, 3).
        groups: near-duplicate group id per image, shape (n,).
        metric_fn: ``(y_true, proba) -> dict[str, float]``; if it has a ``batched`` attribute
            ``(y_true, proba, weights (B, n)) -> dict[str, array (B,)]`` that is used instead.
        n_resamples: number of bootstrap resamples (2,000 in the protocol).
        seed: seed of ``np.random.default_rng``; the same seed gives the same intervals.
        alpha: 1 - confidence level (0.05 for 95 % intervals).

    Returns:
        One row per metric with columns ``metric``, ``value`` (on the full data), ``ci_low``,
        ``ci_high`` (percentile interval over resamples where the metric is defined) and
        ``n_valid`` (number of such resamples). ``df.attrs`` records ``n_resamples``, ``seed``,
        ``alpha``, ``n_images``, ``n_groups`` and ``method``.
    """
    y, g = _check(y_true, groups, proba)
    proba = np.asarray(proba, dtype=float)
    point = metric_fn(y, proba)
    weights = resample_weights(g, n_resamples, seed)
    boot = _evaluate(y, proba, weights, metric_fn)
    rows = []
    for name, value in point.items():
        lo, hi, n_valid = _percentile_ci(boot.get(name, np.full(n_resamples, np.nan)), alpha)
        rows.append({"metric": name, "value": float(value), "ci_low": lo, "ci_high": hi, "n_valid": n_valid})
    df = pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high", "n_valid"])
    df.attrs.update(n_resamples=n_resamples, seed=seed, alpha=alpha, n_images=int(y.size),
                    n_groups=int(np.unique(g).size), method="group bootstrap, percentile interval")
    return df


@timed("paired bootstrap ({n_resamples} resamples)")
def paired_bootstrap_difference(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray, groups: np.ndarray,
                                metrics: Sequence[str] = ("accuracy", "macro_auc", "auc_malignant"),
                                n_resamples: int = 2000, seed: int = 0, alpha: float = 0.05,
                                metric_fn: MetricFn = classification_metrics) -> pd.DataFrame:
    """Paired group-bootstrap comparison of two models on the same images.

    Both models are evaluated on the *same* resampled groups, so the interval of the
    difference accounts for the correlation between them.

    Args:
        y_true: class indices, shape (n,).
        proba_a: model A probabilities, shape (n, 3).
        proba_b: model B probabilities, shape (n, 3).
        groups: near-duplicate group id per image, shape (n,).
        metrics: metric names (keys of ``metric_fn``'s result) to compare.
        n_resamples: number of bootstrap resamples.
        seed: seed of ``np.random.default_rng``.
        alpha: 1 - confidence level.
        metric_fn: metric function, as in :func:`group_bootstrap`.

    Returns:
        One row per metric with columns ``metric``, ``a``, ``b``, ``diff`` (a - b on the full
        data), ``ci_low``, ``ci_high`` (percentile interval of the resampled differences, NaN
        resamples ignored) and ``p_two_sided``: twice the share of valid resamples whose
        difference is on the other side of zero from the observed one *or exactly zero*
        (counting zeros keeps it conservative for discrete metrics), capped at 1; it is 1 when
        the observed difference is 0 and NaN when undefined; ``n_valid`` counts the resamples
        where the difference is defined.
    """
    y, g = _check(y_true, groups, proba_a, proba_b)
    pa, pb = np.asarray(proba_a, dtype=float), np.asarray(proba_b, dtype=float)
    point_a, point_b = metric_fn(y, pa), metric_fn(y, pb)
    missing = [m for m in metrics if m not in point_a]
    if missing:
        raise ValueError(f"unknown metrics {missing}; available: {list(point_a)}")
    weights = resample_weights(g, n_resamples, seed)
    boot_a = _evaluate(y, pa, weights, metric_fn)
    boot_b = _evaluate(y, pb, weights, metric_fn)
    rows = []
    for m in metrics:
        a, b = float(point_a[m]), float(point_b[m])
        diff = a - b
        d = boot_a[m] - boot_b[m]
        lo, hi, n_valid = _percentile_ci(d, alpha)
        d = d[~np.isnan(d)]
        if np.isnan(diff) or n_valid == 0:
            p = np.nan
        elif diff == 0:
            p = 1.0
        else:
            p = min(1.0, 2.0 * float(np.mean(d * np.sign(diff) <= 0)))
        rows.append({"metric": m, "a": a, "b": b, "diff": diff, "ci_low": lo, "ci_high": hi, "p_two_sided": p,
                     "n_valid": n_valid})
    df = pd.DataFrame(rows, columns=["metric", "a", "b", "diff", "ci_low", "ci_high", "p_two_sided", "n_valid"])
    df.attrs.update(n_resamples=n_resamples, seed=seed, alpha=alpha, n_images=int(y.size),
                    n_groups=int(np.unique(g).size), method="paired group bootstrap, percentile interval")
    return df


def bootstrap_mean_ci(weights: np.ndarray, values: np.ndarray) -> tuple[int, float, float, float]:
    """Mean of ``values`` (non-finite entries left out) with a 95 % percentile CI from resample
    ``weights`` (n_resamples, n) of :func:`resample_weights`. Returns (n used, mean, ci_low, ci_high)."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (weights[:, ok] * v[ok]).sum(axis=1) / weights[:, ok].sum(axis=1)
    boot = boot[np.isfinite(boot)]
    lo, hi = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
    return int(ok.sum()), float(v[ok].mean()) if ok.any() else np.nan, float(lo), float(hi)
