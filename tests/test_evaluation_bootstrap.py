"""Tests of busi_study.evaluation.bootstrap: group resampling, determinism, paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from busi_study.evaluation.bootstrap import group_bootstrap, paired_bootstrap_difference, resample_weights
from busi_study.evaluation.metrics import classification_metrics


def _data(seed=0, n=200, signal=1.2):
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.2, 0.5, 0.3])
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += signal
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    groups = rng.integers(0, int(n * 0.8), size=n)  # some multi-image groups
    return y, p, groups


def test_resample_weights_draw_whole_groups():
    groups = np.array(["a", "a", "b", "c", "c", "c", "d"])
    w = resample_weights(groups, 300, seed=1)
    assert w.shape == (300, 7)
    # images of one group share their count; each resample draws 4 groups in all
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3, 6]].sum(axis=1) == 4).all()
    np.testing.assert_array_equal(w, resample_weights(groups, 300, seed=1))
    # every group is sometimes left out and sometimes drawn more than once
    assert (w == 0).any(axis=0).all() and (w >= 2).any(axis=0).all()


def test_columns_point_values_and_determinism():
    y, p, g = _data()
    a = group_bootstrap(y, p, g, n_resamples=200, seed=3)
    assert list(a.columns) == ["metric", "value", "ci_low", "ci_high", "n_valid"]
    point = classification_metrics(y, p)
    assert list(a["metric"]) == list(point)
    np.testing.assert_allclose(a["value"].to_numpy(), np.array(list(point.values()), dtype=float))
    assert a.attrs["n_resamples"] == 200 and a.attrs["n_groups"] == len(np.unique(g))
    b = group_bootstrap(y, p, g, n_resamples=200, seed=3)
    np.testing.assert_array_equal(a[["ci_low", "ci_high"]].to_numpy(), b[["ci_low", "ci_high"]].to_numpy())
    c = group_bootstrap(y, p, g, n_resamples=200, seed=4)
    assert not np.array_equal(a[["ci_low", "ci_high"]].to_numpy(), c[["ci_low", "ci_high"]].to_numpy())


def test_ci_contains_point_estimate():
    y, p, g = _data(seed=1, n=300)
    df = group_bootstrap(y, p, g, n_resamples=200, seed=0).set_index("metric")
    # ECE is left out: resampling noise inflates it, so its percentile interval can sit above
    # the point estimate
    df = df.drop(index="ece")
    assert (df["n_valid"] == 200).all()
    assert ((df["ci_low"] <= df["value"]) & (df["value"] <= df["ci_high"])).all()
    assert (df["ci_high"] - df["ci_low"]).loc["accuracy"] < 0.2


def test_generic_metric_fn_gives_same_result_as_batched_path():
    y, p, g = _data(seed=2, n=80)
    fast = group_bootstrap(y, p, g, n_resamples=40, seed=5)
    slow = group_bootstrap(y, p, g, metric_fn=lambda yy, pp: classification_metrics(yy, pp), n_resamples=40, seed=5)
    np.testing.assert_allclose(fast[["value", "ci_low", "ci_high"]].to_numpy(),
                               slow[["value", "ci_low", "ci_high"]].to_numpy(), rtol=1e-10)
    np.testing.assert_array_equal(fast["n_valid"], slow["n_valid"])


def test_custom_metric_fn():
    y, p, g = _data(seed=2, n=80)
    df = group_bootstrap(y, p, g, metric_fn=lambda yy, pp: {"mean_p_malignant": float(pp[:, 2].mean())},
                         n_resamples=50)
    assert list(df["metric"]) == ["mean_p_malignant"]
    assert df["ci_low"].iloc[0] < df["value"].iloc[0] < df["ci_high"].iloc[0]


def test_duplicate_group_widens_interval():
    # 100 independent images (about 60 % right) plus 50 identical copies of one correctly
    # classified image: as one group the copies enter a resample all together or not at all
    rng = np.random.default_rng(6)
    y = np.r_[rng.integers(0, 3, 100), np.full(50, 1)]
    right = np.r_[rng.random(100) < 0.6, np.ones(50, bool)]
    pred = np.where(right, y, (y + 1) % 3)
    p = np.eye(3)[pred] * 0.7 + 0.1
    independent = np.arange(150)
    grouped = np.r_[np.arange(100), np.full(50, 100)]
    width = {}
    for name, groups in (("independent", independent), ("grouped", grouped)):
        df = group_bootstrap(y, p, groups, n_resamples=300, seed=0).set_index("metric")
        width[name] = df.loc["accuracy", "ci_high"] - df.loc["accuracy", "ci_low"]
    assert width["grouped"] > 1.5 * width["independent"]


def test_rare_class_counts_valid_resamples():
    y, p, _ = _data(seed=3, n=60)
    y[:] = np.where(y == 0, 1, y)
    y[0] = 0  # a single normal image in its own group: absent from about 1/e of the resamples
    g = np.arange(60)
    df = group_bootstrap(y, p, g, n_resamples=300, seed=0).set_index("metric")
    n_valid = df.loc["auc_normal", "n_valid"]
    assert 50 < n_valid < 250
    assert np.isfinite(df.loc["auc_normal", ["ci_low", "ci_high"]].astype(float)).all()
    assert df.loc["accuracy", "n_valid"] == 300


def test_paired_difference_with_itself_is_zero():
    y, p, g = _data(seed=4)
    df = paired_bootstrap_difference(y, p, p, g, n_resamples=200)
    assert list(df["metric"]) == ["accuracy", "macro_auc", "auc_malignant"]
    assert (df["diff"] == 0).all() and (df["ci_low"] == 0).all() and (df["ci_high"] == 0).all()
    assert (df["p_two_sided"] == 1).all()


def test_paired_difference_detects_better_model_and_is_antisymmetric():
    y, p_good, g = _data(seed=5, n=300, signal=2.0)
    rng = np.random.default_rng(0)
    p_bad = 0.5 * p_good + 0.5 * rng.dirichlet([1, 1, 1], size=len(y))
    ab = paired_bootstrap_difference(y, p_good, p_bad, g, n_resamples=300, seed=1).set_index("metric")
    ba = paired_bootstrap_difference(y, p_bad, p_good, g, n_resamples=300, seed=1).set_index("metric")
    point_a, point_b = classification_metrics(y, p_good), classification_metrics(y, p_bad)
    for m in ab.index:
        assert ab.loc[m, "a"] == pytest.approx(point_a[m]) and ab.loc[m, "b"] == pytest.approx(point_b[m])
        assert ab.loc[m, "diff"] == pytest.approx(point_a[m] - point_b[m])
    assert (ab["diff"] > 0).all() and (ab["ci_low"] > 0).all() and (ab["p_two_sided"] < 0.01).all()
    np.testing.assert_allclose(ba["diff"], -ab["diff"])
    np.testing.assert_allclose(ba["ci_low"], -ab["ci_high"], atol=1e-12)
    np.testing.assert_allclose(ba["p_two_sided"], ab["p_two_sided"])


def test_paired_difference_p_value_for_similar_models():
    y, p, g = _data(seed=6, n=200)
    rng = np.random.default_rng(1)
    q = 0.9 * p + 0.1 * rng.dirichlet([1, 1, 1], size=len(y))
    df = paired_bootstrap_difference(y, p, q, g, metrics=("log_loss",), n_resamples=200)
    row = df.iloc[0]
    assert 0 <= row["p_two_sided"] <= 1
    assert row["ci_low"] <= row["diff"] <= row["ci_high"]


def test_errors():
    y, p, g = _data(n=20)
    with pytest.raises(ValueError):
        paired_bootstrap_difference(y, p, p, g, metrics=("nope",), n_resamples=10)
    with pytest.raises(ValueError):
        group_bootstrap(y, p, g[:-1], n_resamples=10)
