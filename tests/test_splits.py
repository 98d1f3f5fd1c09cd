import numpy as np
import pandas as pd
import pytest

from busi_study.data.manifest import write_csv
from busi_study.data.splits import check_split_invariants, make_splits, split_table
from busi_study.errors import ParameterError


@pytest.fixture(scope="module")
def groups():
    rng = np.random.default_rng(0)
    rows = []
    for g in range(300):
        label = rng.choice(["normal", "benign", "malignant"], p=[0.17, 0.56, 0.27])
        for k in range(rng.choice([1, 1, 1, 2, 3])):
            rows.append({"image_id": f"{label}_{g:04d}_{k}", "label": label, "group_id": f"g{g:04d}"})
    rows.append({"image_id": "malignant_9999", "label": "malignant", "group_id": "g0000"})  # a label conflict
    return pd.DataFrame(rows)


def test_invariants(groups):
    s = make_splits(groups, n_splits=5, seed=42)
    assert check_split_invariants(s) == []
    test = s[s["role"] == "test"]
    assert test["image_id"].is_unique and set(test["image_id"]) == set(groups["image_id"])
    assert test.groupby("group_id")["fold"].nunique().max() == 1
    for _, fold in s.groupby("fold"):
        assert fold.groupby("group_id")["role"].nunique().max() == 1  # train/val/test never share a group
        assert len(fold) == len(groups)


def test_stratification_within_tolerance(groups):
    s = make_splits(groups, n_splits=5, seed=42)
    overall = groups["label"].value_counts(normalize=True)
    for _, fold in s[s["role"] == "test"].groupby("fold"):
        share = fold["label"].value_counts(normalize=True)
        assert (share - overall).abs().max() < 0.05
    val_share = (s["role"] == "val").sum() / (s["role"] != "test").sum()
    assert 0.08 < val_share < 0.18


def test_deterministic_bytes(tmp_path, groups):
    a = write_csv(make_splits(groups, seed=42), tmp_path / "a.csv")
    b = write_csv(make_splits(groups.sample(frac=1, random_state=3), seed=42), tmp_path / "b.csv")
    c = write_csv(make_splits(groups, seed=43), tmp_path / "c.csv")
    assert a == b != c
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_repeats_use_consecutive_seeds(groups):
    s = make_splits(groups, repeats=3, seed=42)
    assert sorted(s["seed"].unique()) == [42, 43, 44]
    assert check_split_invariants(s) == []
    t = split_table(s)
    assert set(t["role"]) == {"train", "val", "test"} and (t["images"] > 0).all()


def test_bad_parameters(groups):
    with pytest.raises(ParameterError, match="n_splits"):
        make_splits(groups, n_splits=1)
    with pytest.raises(ParameterError, match="val_fraction"):
        make_splits(groups, val_fraction=0.7)
    with pytest.raises(ParameterError, match="groups"):
        make_splits(groups.head(3), n_splits=5)


def test_invariant_checker_catches_a_leak(groups):
    s = make_splits(groups, seed=42)
    bad = s.copy()
    idx = bad.index[(bad["fold"] == 0) & (bad["role"] == "train")][0]
    gid = bad.loc[bad.index[(bad["fold"] == 0) & (bad["role"] == "test")][0], "group_id"]
    bad.loc[idx, "group_id"] = gid
    assert check_split_invariants(bad)
