"""Registry, builders, the cached-view experiment, skipping, export and prediction.

Models here are tiny (32–64 px, random init) so the tests run offline and fast; the real
ImageNet path is exercised by the end-to-end run and CI on BUSI.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from busi_study.cli import REPO  # noqa: E402
from busi_study.data import arrays  # noqa: E402
from busi_study.data.prepare import prepare_data  # noqa: E402
from busi_study.models import builders, registry  # noqa: E402
from busi_study.models.experiment import Experiment  # noqa: E402
from busi_study.models.recipes import Recipe  # noqa: E402
from busi_study.models.training import balanced_class_weight  # noqa: E402
from busi_study.params import StudyParams  # noqa: E402
from busi_study.results import ModelResults, ResultsStore  # noqa: E402

from .recipe_helpers import aug_cfg, train_cfg  # noqa: E402

DEFAULT = StudyParams.from_profile("default", REPO / "params", {"data_source": "demo"})


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    data = prepare_data(DEFAULT.data, DEFAULT.splits, DEFAULT.seed, tmp_path_factory.mktemp("data"), progress=False)
    return data.store


def imagenet_cached() -> bool:
    """The offline MobileNetV2-0.35 ImageNet weights are in the Keras cache (CI fills it from shared/)."""
    return registry.weights_available("mobilenet_v2", "imagenet", 112, alpha=0.35)[0]


def tiny(kind: str, **kw) -> Recipe:
    # ImageNet weights where cached: random-init MobileNetV2 at tiny sizes gives dead features and no gradient
    weights = "imagenet" if kind != "scratch" and imagenet_cached() else "none"
    size = 112 if weights == "imagenet" else 32
    base = dict(name=f"t-{kind}", kind=kind, input_size=size, train=train_cfg(epochs=2, batch_size=16, patience=1),
                weights=weights, n_views=2, augment=aug_cfg(), preprocessing="none")
    if kind != "scratch":
        base.update(backbone="mobilenet_v2", backbone_kwargs={"alpha": 0.35}, head="gap" if kind == "finetune" else "s3",
                    head_dropout=0.3)
    if kind == "finetune":
        base.update(finetune=train_cfg(epochs=1, learning_rate=1e-4, patience=1), unfreeze_blocks=2)
    base.update(kw)
    return Recipe(**base)


def test_s2_cnn_is_s2s_network():
    m = builders.s2_cnn(180)
    convs = [layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" and c.activation.__name__ == "relu" for c in convs)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in m.layers) == 3
    dense = [layer for layer in m.layers if isinstance(layer, keras.layers.Dense)]
    assert [d.units for d in dense] == [128, 3]
    assert isinstance(m.layers[1], keras.layers.Rescaling) and m.input_shape[1:] == (180, 180, 3)


def test_s3_head_is_s3s_head():
    h = builders.s3_head((7, 7, 64), dropout=0.3)
    kinds = [type(layer).__name__ for layer in h.layers[1:]]
    assert kinds == ["Flatten", "BatchNormalization", "Dense", "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [d.units for d in h.layers if isinstance(d, keras.layers.Dense)] == [256, 128, 64, 3]


@pytest.mark.parametrize("mode", ["tf", "caffe"])
def test_preprocess_layer_matches_keras(mode):
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ref = {"tf": keras.applications.mobilenet_v2.preprocess_input, "caffe": keras.applications.resnet50.preprocess_input}[mode]
    got = np.asarray(builders.BackbonePreprocess(mode)(x))
    np.testing.assert_allclose(got, ref(x.copy()), atol=1e-4)


def test_registry_gradcam_layers_and_blocks_exist():
    for name in ("mobilenet_v2", "resnet50"):
        spec = registry.get_spec(name)
        b = registry.build_backbone(name, 64, "none", **({"alpha": 0.35} if name == "mobilenet_v2" else {}))
        names = {layer.name for layer in b.layers}
        assert spec.gradcam_layer in names
        assert all(first in names for _, first in spec.blocks)
        assert b.name == "backbone"


def test_weights_unavailable_is_reported_with_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://example.invalid/resnet50.h5: None -- [Errno -2] Name or "
                        "service not known")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(registry.WeightsUnavailable) as err:
        registry.build_backbone("resnet50", 224, "imagenet")
    msg = str(err.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg and str(tmp_path) in msg
    assert "(download failed: [Errno -2] Name or service not known)" in msg and "example.invalid" not in msg
    ok, why = registry.weights_available("resnet50", "imagenet")
    assert not ok and "put resnet50" in why
    # a cached file is found without building anything
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"x")
    assert registry.weights_available("resnet50", "imagenet")[0]
    assert registry.get_spec("mobilenet_v2").weights_filename(112, alpha=0.35).endswith("_0.35_224_no_top.h5")
    assert registry.get_spec("mobilenet_v2").weights_filename(96, alpha=0.35).endswith("_0.35_96_no_top.h5")


def test_skipped_model_is_visible_and_strict_fails(monkeypatch, tmp_path, demo_store):
    import dataclasses

    from busi_study.studies import model_run

    monkeypatch.setattr(model_run, "weights_available", lambda *a, **k: (False, "resnet50: ImageNet weights not available"))
    recipe = tiny("frozen_head", backbone="resnet50", backbone_kwargs={}, weights="imagenet", name="s3_head-resnet50")
    store = ResultsStore(tmp_path)
    run = model_run.run_model(recipe, demo_store, store, seed=42, models=DEFAULT.models, bootstrap=DEFAULT.bootstrap)
    assert run.skipped and "not available" in run.skipped
    skip = json.loads((tmp_path / "results" / "s3_head-resnet50" / "SKIPPED.json").read_text())
    assert skip["skipped"] and "not available" in skip["reason"]
    assert store.skipped()["s3_head-resnet50"]["reason"] == skip["reason"] and store.trained_names() == []
    with pytest.raises(registry.WeightsUnavailable):
        model_run.run_model(recipe, demo_store, store, seed=42, models=dataclasses.replace(DEFAULT.models, strict=True),
                            bootstrap=DEFAULT.bootstrap)


def test_class_weights():
    w = balanced_class_weight(np.array([0, 1, 1, 1, 2, 2]))
    assert w[1] == pytest.approx(6 / 9) and w[0] == pytest.approx(2.0)


@pytest.mark.parametrize("kind", ["scratch", "frozen_head", "finetune"])
def test_cross_validation_covers_every_image_once_and_is_deterministic(kind, demo_store):
    splits = demo_store.read("splits")
    a = Experiment(tiny(kind), demo_store, seed=42, progress=False).prepare().cross_validate(splits, tta=True)
    assert a.oof["image_id"].is_unique and len(a.oof) == len(demo_store.read("manifest"))
    np.testing.assert_allclose(a.oof[["p_normal", "p_benign", "p_malignant"]].sum(axis=1), 1, atol=1e-5)
    assert set(a.val["fold"]) == set(range(5)) and len(a.oof_tta) == len(a.oof)
    assert {"loss", "val_loss", "fold", "phase"} <= set(a.history.columns)
    if kind == "finetune":
        assert set(a.history["phase"]) == {1, 2}
    b = Experiment(tiny(kind), demo_store, seed=42, progress=False).prepare().cross_validate(splits, tta=False)
    np.testing.assert_allclose(a.oof["p_malignant"], b.oof["p_malignant"], atol=1e-4)


def test_finetune_restores_imagenet_start_and_fold_snapshots(demo_store):
    if not imagenet_cached():
        pytest.skip("MobileNetV2-0.35 ImageNet weights not in the Keras cache")
    ex = Experiment(tiny("finetune"), demo_store, seed=42, progress=False).prepare()
    idx = np.arange(len(ex.y))
    fm0 = ex.fit(idx[::2], idx[1::4], seed=1)
    p0 = ex.predict(fm0, idx[:5])
    fm1 = ex.fit(idx[1::2], idx[::4], seed=2)
    assert any(not np.allclose(a, b) for a, b in zip(fm0.weights_snapshot, ex.upper_initial))
    np.testing.assert_allclose(ex.predict(fm0, idx[:5]), p0, atol=1e-6)  # fold 0's weights come back
    full = ex.full_model(fm1)
    x = ex.views[0, :3]
    assert full.output_shape[-1] == 3 and x.shape[0] == 3
    # the networks alone (what turns fold models into classifiers, e.g. notebook 05's crop pipeline) are the same
    bare = Experiment(tiny("finetune"), demo_store, seed=42, progress=False).prepare(views=False)
    assert bare.views is None and not hasattr(bare, "top_views")
    images = arrays.load_image_array(demo_store, ex.recipe.input_size, progress=False)[:6].astype(np.float32)
    np.testing.assert_array_equal(bare.full_model(fm1).predict(images, verbose=0), ex.full_model(fm1).predict(images, verbose=0))


def test_export_and_predict_cli(tmp_path, demo_store, capsys):
    from busi_study.cli import main

    ex = Experiment(tiny("frozen_head"), demo_store, seed=42, progress=False).prepare()
    fm = ex.fit(np.arange(len(ex.y)), None, seed=3, epochs=[1])
    model_path = tmp_path / "m.keras"
    ex.full_model(fm).save(model_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    root = demo_store.raw_root()
    for f in sorted((root / "benign").glob("benign (1)*.png")):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(folder), str(tmp_path / "missing.png"), "--model", str(model_path), "--out", str(out)]) == 0
    t = pd.read_csv(out, keep_default_na=False)
    assert len(t) == 3  # benign (1).png, broken.png, missing.png; the mask is skipped
    good = t[t["error"] == ""]
    assert len(good) == 1 and abs(good[["p_normal", "p_benign", "p_malignant"]].astype(float).sum(axis=1).iloc[0] - 1) < 1e-5
    assert set(t.loc[t["error"] != "", "path"].map(lambda p: p.split("/")[-1])) == {"broken.png", "missing.png"}
    # the exported model predicts like the in-memory one
    img = ex.views[0, :2] if ex.recipe.kind == "scratch" else None
    assert img is None or img.shape[0] == 2
    # two models: a fold ensemble, the mean of their probabilities, row by row
    fm2 = ex.fit(np.arange(len(ex.y)), None, seed=4, epochs=[1])
    ex.full_model(fm2).save(tmp_path / "m2.keras")
    out2, out_ens = tmp_path / "pred2.csv", tmp_path / "ens.csv"
    assert main(["predict", str(folder), "--model", str(tmp_path / "m2.keras"), "--out", str(out2)]) == 0
    assert main(["predict", str(folder), "--model", str(model_path), str(tmp_path / "m2.keras"), "--out", str(out_ens)]) == 0
    cols = ["p_normal", "p_benign", "p_malignant"]
    a, b = t[t["error"] == ""], pd.read_csv(out2, keep_default_na=False)
    b = b[b["error"] == ""]
    ens = pd.read_csv(out_ens, keep_default_na=False)
    assert (ens["n_models"] == 2).all() and (ens["error"] != "").sum() == 1
    ens = ens[ens["error"] == ""]
    mean = (a[cols].astype(float).to_numpy() + b[cols].astype(float).to_numpy()) / 2
    assert np.allclose(ens[cols].astype(float).to_numpy(), mean, atol=1e-6)
    assert "fold ensemble: mean of 2 models" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nothing-here"), "--model", str(tmp_path / "nope.keras")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_benchmark_cached_and_in_loop_see_the_same_features(demo_store):
    from busi_study.studies.benchmark import cached_vs_in_loop

    ex = Experiment(tiny("frozen_head"), demo_store, seed=42, progress=False).prepare()
    splits = demo_store.read("splits")
    splits = splits[splits["seed"] == 42]
    b = cached_vs_in_loop(ex, splits, epochs=1)
    assert list(b["way"]) == ["cached features", "frozen base in the loop"]
    assert b["seconds"].gt(0).all() and b["speed_ratio"].iloc[0] > 0
    assert b["max_abs_feature_diff"].iloc[0] < 1e-3  # the head is fed the same numbers both ways
    assert b["max_abs_prob_diff"].iloc[0] < 1e-3     # same inputs, same batch order: same head
    assert b["accuracy"].notna().all()


def test_timing_only_benchmark_uses_random_weights_and_a_subset(demo_store):
    from busi_study.studies.benchmark import timing_only

    splits = demo_store.read("splits")
    r = tiny("frozen_head", weights="none", input_size=32, n_views=2)
    b = timing_only(r, demo_store, splits[splits["seed"] == 42], epochs=1, n_train=12, n_test=6)
    assert (b["weights"] == "random init (timing only)").all()
    assert b["n_train"].iloc[0] == 12 and b["n_test"].iloc[0] == 6 and b["one_time_cache_images"].iloc[0] == 36
    assert b["accuracy"].isna().all() and b["one_time_cache_s"].iloc[0] > 0
    assert b["max_abs_feature_diff"].iloc[0] < 1e-3


def test_tune_s0_scores_candidates_on_validation_only(demo_store, tmp_path):
    import importlib.util

    from busi_study.cli import REPO

    if not imagenet_cached():
        pytest.skip("needs the MobileNetV2-0.35 ImageNet weights in the Keras cache")
    spec = importlib.util.spec_from_file_location("tune_s0", REPO / "scripts" / "tune_s0.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    out = tmp_path / "tune.csv"
    report = tmp_path / "report"  # a run's folder: its data_summary.json names the processed data it used
    report.mkdir()
    (report / "data_summary.json").write_bytes(demo_store.summary.read_bytes())
    args = ["--profile", "smoke", "--report", str(report), "--out", str(out),
            "--grid", "s0_unfreeze_blocks=1,2", "s0_head_epochs=1", "s0_finetune_epochs=1"]
    assert tune.main(args) == 0
    t = pd.read_csv(out)
    assert sorted(t["s0_unfreeze_blocks"]) == [1, 2] and t["val_log_loss"].is_monotonic_increasing
    n_val = (demo_store.read("splits").query("seed == 42 and role == 'val'")).shape[0]
    assert (t["n_val"] == n_val).all()
    assert not any(c.startswith("test") for c in t.columns)  # outer test folds are never scored here
    assert tune.main([*args[:-3], "no_such_key=1"]) == 2


def test_explain_images_covers_normal_images_with_the_held_out_fold_model(demo_store, tmp_path):
    from busi_study.studies.heldout_maps import explain_images

    ex = Experiment(tiny("scratch"), demo_store, seed=42, progress=False).prepare()
    splits = demo_store.read("splits")
    splits = splits[splits["seed"] == 42]
    store = ResultsStore(tmp_path)
    for fold in sorted(splits["fold"].unique()):
        fm = ex.fit(np.arange(len(ex.y)), None, seed=int(fold), epochs=[1])
        ex.full_model(fm).save(store.fold_model_path("t-scratch", int(fold)))
    model = ModelResults("t-scratch", store.model_dir("t-scratch"), {"recipe": ex.recipe.as_dict()}, pd.DataFrame(), pd.DataFrame())
    test = splits[splits["role"] == "test"]
    manifest = demo_store.read("manifest").set_index("image_id")
    # a normal image of fold 0 and a benign one of fold 1: two fold models in one call
    wanted = [test.loc[test["image_id"].str.startswith(c) & (test["fold"] == f), "image_id"].iloc[0]
              for c, f in (("normal", 0), ("benign", 1))]
    maps = explain_images(model, demo_store, splits, [*wanted, "no-such-image"])
    assert sorted(maps) == sorted(wanted)
    for i, m in maps.items():
        assert m.shape == (manifest.loc[i, "height"], manifest.loc[i, "width"])
        assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 + 1e-6
