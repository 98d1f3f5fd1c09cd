"""Tests of busi_study.evaluation.calibration: ECE known answers, reliability table, temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from busi_study.evaluation.calibration import (
    apply_temperature,
    ece_batch,
    expected_calibration_error,
    fit_temperature,
    logits_from_proba,
    reliability_table,
)


def _naive_ece(y, p, n_bins=15):
    """Textbook loop: right-closed bins (lo, hi], first bin also holds 0."""
    conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        inside = (conf > lo) & (conf <= hi) if i else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


def _synthetic(rng, n, t0=2.0, scale=3.0):
    """Logits z and labels drawn from softmax(z / t0): softmax(z) is over-confident for t0 > 1."""
    z = rng.normal(scale=scale, size=(n, 3))
    q = softmax(z / t0, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(q, axis=1)).sum(axis=1)
    return z, y


def test_ece_hand_computed_four_samples():
    p = np.array([[0.05, 0.05, 0.9], [0.9, 0.05, 0.05], [0.15, 0.7, 0.15], [0.7, 0.2, 0.1]])
    y = np.array([2, 1, 1, 0])
    # bin of 0.9: accuracy 1/2, confidence 0.9 -> 0.4; bin of 0.7: accuracy 1, confidence 0.7 -> 0.3
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.4 + 0.5 * 0.3)


def test_ece_perfect_and_constant():
    y = np.array([0, 1, 2, 2])
    assert expected_calibration_error(y, np.eye(3)[y]) == pytest.approx(0.0)
    # always 1/3 confidence, argmax = class 0, right 1/4 of the time
    assert expected_calibration_error(y, np.full((4, 3), 1 / 3)) == pytest.approx(abs(0.25 - 1 / 3))


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_naive_loop(n_bins):
    rng = np.random.default_rng(0)
    p = rng.dirichlet([0.5, 0.5, 0.5], size=300)
    y = rng.integers(0, 3, size=300)
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(_naive_ece(y, p, n_bins), abs=1e-12)


def test_ece_batch_weights_equal_repeats():
    rng = np.random.default_rng(1)
    p = rng.dirichlet([1, 1, 1], size=50)
    y = rng.integers(0, 3, size=50)
    w = rng.integers(0, 3, size=(4, 50))
    got = ece_batch(y, p, w)
    for b in range(4):
        idx = np.repeat(np.arange(50), w[b])
        assert got[b] == pytest.approx(expected_calibration_error(y[idx], p[idx]))


def test_reliability_table():
    rng = np.random.default_rng(2)
    p = rng.dirichlet([1, 1, 1], size=200)
    y = rng.integers(0, 3, size=200)
    t = reliability_table(y, p)
    assert list(t.columns) == ["bin_low", "bin_high", "count", "confidence", "accuracy"]
    assert len(t) == 15 and t["count"].sum() == 200
    assert t["bin_low"].iloc[0] == 0.0 and t["bin_high"].iloc[-1] == 1.0
    assert t.loc[t["count"] == 0, "confidence"].isna().all()  # e.g. bins below 1/3
    full = t[t["count"] > 0]
    ece = (full["count"] / 200 * (full["accuracy"] - full["confidence"]).abs()).sum()
    assert ece == pytest.approx(expected_calibration_error(y, p))
    # every mean confidence lies in its bin
    assert ((full["confidence"] > full["bin_low"]) & (full["confidence"] <= full["bin_high"])).all()


def test_temperature_recovers_known_value():
    z, y = _synthetic(np.random.default_rng(3), 4000, t0=2.0)
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.0, rel=0.15)


def test_temperature_reduces_ece_on_held_out_data():
    z, y = _synthetic(np.random.default_rng(4), 4000, t0=2.0)
    val, test = slice(0, 2000), slice(2000, None)
    t = fit_temperature(z[val], y[val])
    before = expected_calibration_error(y[test], softmax(z[test], axis=1))
    after = expected_calibration_error(y[test], apply_temperature(z[test], t))
    assert after < 0.5 * before


def test_pseudo_logits_from_proba():
    z, y = _synthetic(np.random.default_rng(5), 2000, t0=2.0, scale=2.0)
    p = softmax(z, axis=1)
    lp = logits_from_proba(p)
    np.testing.assert_allclose(apply_temperature(lp, 1.0), p, atol=1e-6)
    # log p differs from z by a per-row constant, so the fitted temperature is the same
    assert fit_temperature(lp, y) == pytest.approx(fit_temperature(z, y), rel=1e-3)
    assert np.isfinite(logits_from_proba(np.array([[1.0, 0.0, 0.0]]))).all()


def test_apply_temperature_basics():
    z = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(apply_temperature(z, 1.0), softmax(z, axis=1))
    np.testing.assert_allclose(apply_temperature(z, 1e6), 1 / 3, atol=1e-5)
    assert apply_temperature(z, 0.5)[0, 2] > apply_temperature(z, 1.0)[0, 2]
    with pytest.raises(ValueError):
        apply_temperature(z, 0.0)
