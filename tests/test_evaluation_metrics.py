"""Tests of busi_study.evaluation.metrics: known answers, agreement with scikit-learn, NaN rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from busi_study.evaluation.calibration import expected_calibration_error
from busi_study.evaluation.metrics import (
    auc_batch,
    classification_metrics,
    classification_metrics_batch,
    collapse_flags,
    confusion_matrices,
    operating_points,
    per_fold_summary,
)
from busi_study.info import CLASSES


def _random_predictions(rng, n, ties=False):
    """Labels with all classes and informative probabilities; ``ties`` draws rows from a small pool."""
    y = rng.choice(3, size=n, p=[0.2, 0.5, 0.3])
    y[:3] = [0, 1, 2]
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += 1.0
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    if ties:
        pool = rng.dirichlet([1, 1, 1], size=6)
        p = pool[rng.integers(0, 6, size=n)]
    return y, p


def _one_hot(y):
    return np.eye(3)[y]


def test_perfect_classifier():
    y = np.array([0, 1, 2, 1, 2, 0, 1])
    m = classification_metrics(y, _one_hot(y))
    assert m["n"] == 7
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "kappa", "macro_auc", "auc_malignant",
                "benign_vs_malignant_auc", *(f"{k}_{c}" for k in ("precision", "recall", "f1", "auc") for c in CLASSES)):
        assert m[key] == pytest.approx(1.0), key
    assert m["ece"] == pytest.approx(0.0)
    assert m["brier"] == pytest.approx(0.0)
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-12)


def test_keys_and_order():
    y, p = _random_predictions(np.random.default_rng(0), 30)
    keys = list(classification_metrics(y, p))
    assert keys[:5] == ["n", "accuracy", "balanced_accuracy", "macro_f1", "kappa"]
    assert keys[-3:] == ["log_loss", "brier", "ece"]
    for c in CLASSES:
        assert {f"precision_{c}", f"recall_{c}", f"f1_{c}", f"auc_{c}"} <= set(keys)
    assert "macro_auc" in keys and "benign_vs_malignant_auc" in keys


def test_brier_and_log_loss_hand_computed():
    y = np.array([0, 1])
    p = np.array([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2]])
    m = classification_metrics(y, p)
    # (0.25 + 0.09 + 0.04 + 0.04 + 0.16 + 0.04) / 2
    assert m["brier"] == pytest.approx(0.31)
    assert m["log_loss"] == pytest.approx(-(np.log(0.5) + np.log(0.6)) / 2)


def test_kappa_hand_computed():
    # 2 classes used: confusion [[2, 1], [1, 2]] of normal/benign: po = 4/6, pe = 1/2, kappa = 1/3
    y = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 0])
    m = classification_metrics(y, _one_hot(pred) * 0.7 + 0.1)
    assert m["kappa"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_agrees_with_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    y, p = _random_predictions(rng, 200, ties=ties)
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p)
    lesion = y > 0
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "macro_f1": skm.f1_score(y, pred, average="macro"),
        "kappa": skm.cohen_kappa_score(y, pred),
        "macro_auc": skm.roc_auc_score(y, p, multi_class="ovr", average="macro"),
        "benign_vs_malignant_auc": skm.roc_auc_score(y[lesion] == 2, p[lesion, 2] / p[lesion, 1:].sum(axis=1)),
        "log_loss": skm.log_loss(y, p, labels=[0, 1, 2]),
        "brier": skm.brier_score_loss(y, p, labels=[0, 1, 2]),
    }
    prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=np.nan)
    for c, cls in enumerate(CLASSES):
        expected[f"precision_{cls}"] = prec[c]
        expected[f"recall_{cls}"] = rec[c]
        expected[f"f1_{cls}"] = f1[c]
        expected[f"auc_{cls}"] = skm.roc_auc_score(y == c, p[:, c])
    for key, value in expected.items():
        np.testing.assert_allclose(m[key], value, rtol=1e-10, atol=1e-12, err_msg=key)


def test_auc_batch_matches_sklearn_with_weights_and_ties():
    rng = np.random.default_rng(3)
    n = 150
    score = np.round(rng.random(n), 1)  # many ties
    pos = rng.random(n) < 0.4
    w = rng.integers(0, 4, size=(5, n))
    got = auc_batch(score, pos, ~pos, w)
    for b in range(5):
        np.testing.assert_allclose(got[b], skm.roc_auc_score(pos, score, sample_weight=w[b]), rtol=1e-12)


def test_batch_with_counts_equals_repeated_rows():
    rng = np.random.default_rng(4)
    y, p = _random_predictions(rng, 80, ties=True)
    w = rng.integers(0, 3, size=(3, 80))
    batch = classification_metrics_batch(y, p, w)
    for b in range(3):
        idx = np.repeat(np.arange(80), w[b])
        ref = classification_metrics(y[idx], p[idx])
        for key, value in ref.items():
            np.testing.assert_allclose(batch[key][b], value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.filterwarnings("error")
def test_absent_class_gives_nan_not_error():
    rng = np.random.default_rng(5)
    y = rng.choice([1, 2], size=40)
    p = rng.dirichlet([1, 3, 3], size=40)
    p[:, 0] = 0.0  # normal never predicted
    p /= p.sum(axis=1, keepdims=True)
    m = classification_metrics(y, p)
    for key in ("auc_normal", "macro_auc", "recall_normal", "precision_normal", "f1_normal"):
        assert np.isnan(m[key]), key
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "kappa", "auc_malignant", "benign_vs_malignant_auc",
                "log_loss", "brier", "ece"):
        assert np.isfinite(m[key]), key
    # macro averages run over the classes that occur, like scikit-learn's defaults
    pred = p.argmax(axis=1)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


@pytest.mark.filterwarnings("error")
def test_only_normals_and_empty_input():
    m = classification_metrics(np.zeros(5, int), np.tile([0.6, 0.3, 0.1], (5, 1)))
    assert m["accuracy"] == 1.0
    assert np.isnan(m["benign_vs_malignant_auc"]) and np.isnan(m["auc_malignant"]) and np.isnan(m["kappa"])
    empty = classification_metrics(np.zeros(0, int), np.zeros((0, 3)))
    assert empty["n"] == 0 and np.isnan(empty["accuracy"]) and np.isnan(empty["ece"])


def test_ece_matches_calibration_module():
    y, p = _random_predictions(np.random.default_rng(6), 100)
    assert classification_metrics(y, p)["ece"] == pytest.approx(expected_calibration_error(y, p, n_bins=15))


def test_input_validation():
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.array([[2.0, -1.0, 0.5], [0.2, 0.3, 0.5]]))  # logits
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1, 2]), np.full((2, 3), 1 / 3))


def test_confusion_matrices():
    y = np.array([1, 1, 2, 2, 2])
    pred = np.array([1, 2, 2, 2, 1])
    counts, norm = confusion_matrices(y, pred)
    assert list(counts.index) == list(CLASSES) and list(counts.columns) == list(CLASSES)
    np.testing.assert_array_equal(counts.to_numpy(), [[0, 0, 0], [0, 1, 1], [0, 1, 2]])
    np.testing.assert_array_equal(counts.to_numpy(), skm.confusion_matrix(y, pred, labels=[0, 1, 2]))
    assert norm.loc["normal"].isna().all()
    np.testing.assert_allclose(norm.loc["malignant"].to_numpy(), [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(norm.iloc[1:].sum(axis=1).to_numpy(), 1.0)


def test_collapse_flags():
    y = np.array([0] * 10 + [1] * 70 + [2] * 20)
    ok = _one_hot(y) * 0.8 + 0.2 / 3
    assert collapse_flags(y, ok) == []
    collapsed = np.tile([0.1, 0.8, 0.1], (100, 1))
    collapsed[:2] = [0.8, 0.1, 0.1]  # 98 % benign
    flags = collapse_flags(y, collapsed)
    assert any("98.0%" in f and "benign" in f for f in flags)
    assert any("recall of 'malignant' is 0" in f for f in flags)
    assert not any("recall of 'normal'" in f for f in flags)  # two normals were found
    # no single class dominates but one class is never found
    p = ok.copy()
    p[y == 2] = [0.1, 0.8, 0.1]
    flags = collapse_flags(y, p)
    assert len(flags) == 1 and "malignant" in flags[0]
    # a class absent from y_true is not flagged for recall 0
    assert collapse_flags(y[10:], ok[10:]) == []


def _rows(p_malignant):
    s = np.asarray(p_malignant, dtype=float)
    return np.column_stack([(1 - s) / 2, (1 - s) / 2, s])


def test_operating_points_constructed_case():
    neg_v = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    pos_v = [0.15, 0.55, 0.65, 0.75, 0.85, 0.95, 0.96, 0.97, 0.98, 0.99]
    y_val = np.array([0, 1] * 5 + [2] * 10)
    p_val = _rows(neg_v + pos_v)
    neg_t = [0.1, 0.5, 0.84, 0.86, 0.9]
    pos_t = [0.5, 0.55, 0.85, 0.9]  # 0.55 and 0.85 tie with the thresholds: called malignant
    y_test = np.array([1, 0, 1, 0, 1] + [2] * 4)
    p_test = _rows(neg_t + pos_t)
    op = operating_points(y_val, p_val, y_test, p_test)
    # spec >= 0.9 needs 9 of 10 negatives strictly below t: lowest observed score above 0.8 is 0.85
    assert op["threshold_spec90"] == pytest.approx(0.85)
    assert op["sens_at_spec90"] == pytest.approx(2 / 4)
    assert op["spec_at_spec90_threshold"] == pytest.approx(3 / 5)
    # sens >= 0.9 needs 9 of 10 positives at or above t: highest such observed score is 0.55
    assert op["threshold_sens90"] == pytest.approx(0.55)
    assert op["sens_at_sens90_threshold"] == pytest.approx(3 / 4)
    assert op["spec_at_sens90"] == pytest.approx(2 / 5)


def test_operating_points_ties_and_undefined():
    # 2 of 10 negatives tie at the top score 0.9: spec >= 0.9 only above 0.9 -> +inf, nothing called
    y_val = np.array([0] * 10 + [2] * 3)
    p_val = _rows([0.1] * 8 + [0.9, 0.9] + [0.2, 0.5, 0.9])
    y_test = np.array([0, 2])
    p_test = _rows([0.3, 0.95])
    op = operating_points(y_val, p_val, y_test, p_test)
    assert op["threshold_spec90"] == np.inf
    assert op["sens_at_spec90"] == 0.0 and op["spec_at_spec90_threshold"] == 1.0
    # validation without malignant images: the sens90 rule is undefined, the spec90 rule is not
    op = operating_points(y_val[:10], p_val[:10], y_test, p_test)
    assert np.isnan(op["threshold_sens90"]) and np.isnan(op["spec_at_sens90"])
    assert op["threshold_spec90"] == np.inf
    # test without malignant images: sensitivities are NaN
    op = operating_points(y_val, p_val, y_test[:1], p_test[:1])
    assert np.isnan(op["sens_at_spec90"]) and np.isnan(op["sens_at_sens90_threshold"])
    assert op["spec_at_sens90"] == pytest.approx(0.0)  # threshold 0.2 calls the 0.3 negative


def test_per_fold_summary():
    df = pd.DataFrame({"fold": [0, 1, 2], "model": ["m"] * 3, "accuracy": [0.7, 0.8, 0.9], "auc": [0.8, np.nan, 0.9]})
    s = per_fold_summary(df)
    assert list(s.index) == ["mean", "sd"] and list(s.columns) == ["accuracy", "auc"]
    assert s.loc["mean", "accuracy"] == pytest.approx(0.8)
    assert s.loc["sd", "accuracy"] == pytest.approx(0.1)
    assert s.loc["mean", "auc"] == pytest.approx(0.85)
