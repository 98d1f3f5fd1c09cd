"""The results store: one place that writes and reads reports/<run>/results/<model>/."""

import json

import numpy as np
import pandas as pd
import pytest

from busi_study.results import ResultsStore


def oof(n=6, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([1, 1, 1], n)
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)][::-1], "fold": np.arange(n) % 2,
                         "label": ["normal", "benign", "malignant"] * (n // 3), "group_id": [f"g{k}" for k in range(n)],
                         "p_normal": p[:, 0], "p_benign": p[:, 1], "p_malignant": p[:, 2]})


def test_write_load_list(tmp_path):
    store = ResultsStore(tmp_path)
    record = {"model": "a", "pooled": [{"metric": "macro_auc", "value": 0.8, "ci_low": 0.7, "ci_high": 0.9}],
              "recipe": {"input_size": 32, "backbone": None}}
    store.write_trained("a", {"oof": oof(), "val": oof(seed=1), "oof_tta": None}, record)
    store.write_skipped("b", {"reason": "weights not available", "recipe": {}})
    assert store.trained_names() == ["a"]
    assert list(store.skipped()) == ["b"] and store.skipped()["b"]["skipped"] is True
    a = store.load("a")
    assert list(a.oof["image_id"]) == sorted(a.oof["image_id"])  # sorted on load
    assert a.metric("macro_auc") == 0.8 and a.recipe["input_size"] == 32
    assert a.table("oof_tta") is None and a.val is not None
    assert store.records()["a"]["model"] == "a"
    assert set(store.load_trained()) == {"a"}
    assert store.fold_model_path("a", 3) == tmp_path / "results" / "a" / "fold3.keras" == a.fold_model_path(3)
    assert store.exported_model_path("a") == tmp_path / "models" / "a.keras"


def test_training_replaces_an_earlier_skip_and_the_record_is_written_last(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.write_skipped("a", {"reason": "x"})
    store.write_trained("a", {"oof": oof()}, {"model": "a"})
    assert store.skipped() == {} and store.trained_names() == ["a"]
    # a crash while writing the tables leaves no record: the folder is not taken as a trained model
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        store.write_trained("c", {"oof": oof()}, {"model": "c"})
    assert "c" not in store.trained_names() and not (tmp_path / "results" / "c" / "metrics.json").exists()


def test_unknown_table_and_missing_model(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="unknown result table"):
        store.write_trained("a", {"predictions": oof()}, {})
    with pytest.raises(FileNotFoundError, match="no results for model 'zz'"):
        store.load("zz")
    assert json.dumps(store.skipped()) == "{}"


def test_binary_models_live_apart_from_the_three_class_results(tmp_path):
    store = ResultsStore(tmp_path)
    store.binary.write_trained("s4", {"oof": oof(), "binary": pd.DataFrame({"metric": ["auc"], "value": [0.8]})}, {"model": "s4"})
    assert store.trained_names() == [] and store.binary.trained_names() == ["s4"]
    assert (tmp_path / "results_binary" / "s4" / "metrics_binary.csv").exists()
    assert store.binary.load("s4").table("binary")["value"].iloc[0] == 0.8
