"""S4: registry C4/C5 layers, the SSDLite head, binary training, S4's protocol and its leak counter,
binary evaluation. Tiny models (random init or the cached 0.35 weights), small crafted data."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from busi_study.data.augmented_split import augmented_pool, leak_counts, random_split, views_needed  # noqa: E402
from busi_study.evaluation.binary import binary_table, lesion_only, paired_lesion_comparison  # noqa: E402
from busi_study.evaluation.evaluate import evaluate  # noqa: E402
from busi_study.models import registry  # noqa: E402
from busi_study.models.lightweight import (  # noqa: E402
    LightweightExperiment,
    LightweightRecipe,
    as_three_class,
    s4_recipe,
    ssdlite_head,
)
from busi_study.models.training import train  # noqa: E402

from .recipe_helpers import aug_cfg, train_cfg  # noqa: E402


# ---------------------------------------------------------------- registry
@pytest.mark.parametrize("name,alpha,channels", [("mobilenet_v2", 0.35, (192, 1280)), ("mobilenet_v3_small", None, (288, 576))])
def test_c4_c5_layers_are_at_stride_16_and_32(name, alpha, channels):
    kw = {"alpha": alpha} if alpha else {}
    m = getattr(keras.applications, registry.get_spec(name).constructor)(include_top=False, weights=None,
                                                                         input_shape=(128, 128, 3), **kw)
    c4, c5 = registry.feature_tensors(m, name)
    assert tuple(c4.shape[1:]) == (128 // 16, 128 // 16, channels[0])
    assert tuple(c5.shape[1:]) == (128 // 32, 128 // 32, channels[1])


def test_feature_layers_missing_is_a_clear_error():
    m = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 1)])
    with pytest.raises(Exception, match="no C4/C5 feature layer"):
        registry.feature_tensors(m, "efficientnet_b0")  # no multi-scale layers in the registry


def test_mobilenet_v3_small_is_skipped_visibly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # empty cache

    def offline(*a, **k):
        raise registry.WeightsUnavailable("mobilenet_v3_small", "f.h5", tmp_path, "download failed: offline")

    monkeypatch.setattr(registry, "build_backbone", offline)
    ok, msg = registry.weights_available("mobilenet_v3_small", "imagenet", 224)
    assert not ok and "mobilenet_v3_small" in msg and "download failed" in msg


# ---------------------------------------------------------------- head
def test_ssdlite_head_structure_and_output():
    head = ssdlite_head((6, 6, 12), (3, 3, 20), channels=8, dropout=0.3)
    kinds = [type(layer).__name__ for layer in head.layers]
    assert kinds.count("DepthwiseConv2D") == 2 and kinds.count("BatchNormalization") == 4
    assert kinds.count("GlobalAveragePooling2D") == 2 and "Concatenate" in kinds and "Dropout" in kinds
    relus = [layer for layer in head.layers if isinstance(layer, keras.layers.ReLU)]
    assert len(relus) == 4 and all(float(r.max_value) == 6.0 for r in relus)
    dw = [layer for layer in head.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert all(d.kernel_size == (3, 3) for d in dw)
    pw = [layer for layer in head.layers if type(layer).__name__ == "Conv2D"]
    assert [p.kernel_size for p in pw] == [(1, 1), (1, 1)] and [p.filters for p in pw] == [8, 8]
    dense = head.get_layer("p_malignant")
    assert dense.units == 1 and dense.activation.__name__ == "sigmoid"
    # params: dw 3*3*c + BN 4c, pw c*8 + BN 4*8, per scale; dense 16 + 1
    expected = sum(9 * c + 4 * c + c * 8 + 32 for c in (12, 20)) + 17
    assert head.count_params() == expected
    rng = np.random.default_rng(0)
    p = head.predict([rng.random((5, 6, 6, 12)), rng.random((5, 3, 3, 20))], verbose=0)
    assert p.shape == (5, 1) and np.all((p >= 0) & (p <= 1))


def test_binary_training_learns_and_faithful_keeps_the_last_epoch():
    # batch 8 here: with batch 1 the head's BatchNorm standardises each image on its own, which
    # removes a per-image channel shift like the one planted below (see the notebook's note on S4)
    rng = np.random.default_rng(1)
    n = 60
    y = np.tile([0, 1], n // 2)
    c4 = rng.normal(size=(2, n, 4, 4, 6)).astype(np.float32)
    c4[:, :, :, :, 0] += 3.0 * y[None, :, None, None]  # one channel separates the classes
    c5 = rng.normal(size=(2, n, 2, 2, 5)).astype(np.float32)
    keras.utils.set_random_seed(0)  # the head's initial weights, independent of earlier tests
    head = ssdlite_head((4, 4, 6), (2, 2, 5), channels=4, dropout=0.0)
    cfg = train_cfg(epochs=12, batch_size=8, learning_rate=0.01, patience=None, restore_best=False, steps_per_execution=2)
    res = train(head, (c4, c5), y, np.arange(40), np.arange(40, 60), cfg, seed=0)
    assert res.best_epoch == 12 and len(res.history) == 12
    p = head.predict([c4[0, 40:], c5[0, 40:]], verbose=0).ravel()
    from sklearn.metrics import roc_auc_score

    # ranking, not the 0.5 threshold: BatchNorm's moving averages lag after only 60 steps
    assert roc_auc_score(y[40:], p) >= 0.95


def test_s4_recipes_from_params():
    from busi_study.cli import REPO
    from busi_study.params import StudyParams

    p = StudyParams.from_profile("reference", REPO / "params")
    f = s4_recipe(p.s4, p.models, p.augment, "mobilenet_v2", "faithful")
    assert (f.train.batch_size, f.train.epochs, f.train.patience, f.train.restore_best) == (1, 20, None, False)
    assert f.train.steps_per_execution == 32 and f.input_size == 224 and f.backbone_kwargs == {"alpha": 0.35}
    e = s4_recipe(p.s4, p.models, p.augment, "mobilenet_v2", "early_stopped")
    assert e.train.patience == 4 and e.train.batch_size == 16 and e.train.restore_best and e.name.endswith("early_stopped")
    assert "alpha 0.35" in f.title and "batch 1, 20 epochs" in f.title
    v3 = s4_recipe(p.s4, p.models, p.augment, "mobilenet_v3_small", "faithful")
    assert v3.backbone_kwargs == {} and v3.name == "s4_c4c5-mobilenet_v3_small-faithful"
    with pytest.raises(ValueError):
        s4_recipe(p.s4, p.models, p.augment, "mobilenet_v2", "other")


# ---------------------------------------------------------------- S4's protocol: pool, split, leak counter
def test_augmented_pool_reaches_s4s_size_and_keeps_originals():
    assert views_needed(647, 9015) == 14
    pool = augmented_pool(647, 14, 9015, seed=0)
    assert len(pool) == 9015
    assert set(pool.loc[pool["view"] == 0, "source"]) == set(range(647))  # every original kept
    assert not pool.duplicated().any()
    assert pool.equals(augmented_pool(647, 14, 9015, seed=0))


def test_random_split_is_70_15_15_and_stratified():
    y = np.array([0] * 700 + [1] * 300)
    role = random_split(y, seed=3)
    share = pd.Series(role).value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.70, abs=0.01) and share["test"] == pytest.approx(0.15, abs=0.01)
    for r in ("train", "val", "test"):
        assert y[role == r].mean() == pytest.approx(0.3, abs=0.02)


def test_leak_counter_counts_copies_and_near_duplicates_separately():
    # images a, b (same group g1), c (g2), d (g3); items are copies of images
    source = np.array(["a", "a", "b", "b", "c", "c", "d", "a"])
    group = np.array(["g1", "g1", "g1", "g1", "g2", "g2", "g3", "g1"])
    role = np.array(["train", "test", "test", "val", "test", "test", "test", "val"])
    out = leak_counts(source, group, role)
    # test items: a (own copy in train), b (no own copy in train; a is in g1 -> near-dup), c x2 (nothing), d (nothing)
    assert out == {"n_test": 5, "copy_in_training": 1, "near_duplicate_in_training": 1, "any_in_training": 2,
                   "share_any": 0.4}
    image_split = leak_counts(np.arange(4), np.array(["g1", "g1", "g2", "g3"]), np.array(["train", "test", "test", "val"]))
    assert image_split["copy_in_training"] == 0 and image_split["near_duplicate_in_training"] == 1


# ---------------------------------------------------------------- binary evaluation
def _binary_frame(p, y, folds=(0, 1)):
    n = len(y)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "fold": np.resize(list(folds), n),
                       "label": np.where(y == 1, "malignant", "benign"), "group_id": [f"g{k // 2}" for k in range(n)]})
    df[["p_normal", "p_benign", "p_malignant"]] = as_three_class(p)
    return df


def test_binary_table_matches_sklearn():
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)
    t = binary_table(evaluate(_binary_frame(p, y), _binary_frame(p, y), n_resamples=50)).set_index("metric")
    assert t.loc["auc", "value"] == pytest.approx(roc_auc_score(y, p))
    assert t.loc["accuracy", "value"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert t.loc["f1_malignant", "value"] == pytest.approx(f1_score(y, p >= 0.5))
    assert t.loc["macro_f1", "value"] == pytest.approx(f1_score(y, p >= 0.5, average="macro"))
    assert t.loc["auc", "ci_low"] <= t.loc["auc", "value"] <= t.loc["auc", "ci_high"]
    assert {"sens_at_spec90", "spec_at_sens90", "ece"} <= set(t.index)


def test_lesion_only_and_paired_comparison():
    three = pd.DataFrame({"image_id": ["n", "b", "m"], "fold": 0, "label": ["normal", "benign", "malignant"],
                          "group_id": ["g0", "g1", "g2"], "p_normal": [0.8, 0.5, 0.2], "p_benign": [0.1, 0.25, 0.2],
                          "p_malignant": [0.1, 0.25, 0.6]})
    les = lesion_only(three)
    assert list(les["image_id"]) == ["b", "m"] and les["p_malignant"].tolist() == pytest.approx([0.5, 0.75])
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    good, bad = _binary_frame(np.clip(0.6 * y + 0.4 * rng.random(60), 0, 1), y), _binary_frame(rng.random(60), y)
    same = paired_lesion_comparison(good, good, n_resamples=100).set_index("metric")
    assert same.loc["benign_vs_malignant_auc", "diff"] == 0 and same.loc["benign_vs_malignant_auc", "n"] == 60
    diff = paired_lesion_comparison(good, bad, n_resamples=200).set_index("metric")
    assert diff.loc["benign_vs_malignant_auc", "diff"] > 0.2 and diff.loc["benign_vs_malignant_auc", "ci_low"] > 0


# ---------------------------------------------------------------- the experiment on demo phantoms
@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    import dataclasses

    from busi_study.cli import REPO
    from busi_study.data.prepare import prepare_data
    from busi_study.params import StudyParams

    p = StudyParams.from_profile("default", REPO / "params")
    data = dataclasses.replace(p.data, data_source="demo")
    return prepare_data(data, p.splits, p.seed, tmp_path_factory.mktemp("data"), progress=False).store


def test_experiment_cv_protocols_and_full_model(demo_store):
    cached = registry.weights_available("mobilenet_v2", "imagenet", 112, alpha=0.35)[0]
    recipe = LightweightRecipe(name="t-s4", backbone="mobilenet_v2", input_size=112 if cached else 32,
                               train=train_cfg(epochs=2, batch_size=4, patience=None, restore_best=False),
                               backbone_kwargs={"alpha": 0.35}, weights="imagenet" if cached else "none",
                               head_channels=4, dropout=0.2, n_views=2, augment=aug_cfg())
    ex = LightweightExperiment(recipe, demo_store, seed=0, progress=False).prepare(augmented_size=100)
    n = len(ex.y)
    assert set(ex.table["label"]) == {"benign", "malignant"} and ex.n_cached_views == views_needed(n, 100)
    splits = demo_store.read("splits")
    cv = ex.cross_validate(splits[splits["seed"] == splits["seed"].iloc[0]])
    assert sorted(cv.oof["image_id"]) == sorted(ex.table["image_id"])  # every lesion image tested once
    assert np.allclose(cv.oof["p_normal"], 0) and np.allclose(cv.oof[["p_benign", "p_malignant"]].sum(axis=1), 1)
    before, pred = ex.augment_before_split(100, seed=0)
    after = ex.augment_after_split(seed=0)
    assert before["n_items"] == 100 and len(pred) == before["n_test"] == 15
    # with ~4 copies per image and 70 % of items in training, most test items have a copy in training
    assert before["copy_in_training"] > 0.5 * before["n_test"]
    assert after["copy_in_training"] == 0  # image-level split: no copy of a test image in training
    full = ex.full_model(cv.heads[0])
    test = ex.fold_indices(splits[splits["seed"] == splits["seed"].iloc[0]], 0)["test"]
    p_full = full.predict(ex.images[test].astype(np.float32), verbose=0).ravel()
    p_cached = cv.oof[cv.oof["fold"] == 0].set_index("image_id").loc[ex.table["image_id"].iloc[test], "p_malignant"]
    assert np.abs(p_full - p_cached.to_numpy()).max() < 0.02  # cache is float16
