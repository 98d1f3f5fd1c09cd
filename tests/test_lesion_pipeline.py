"""S1's pipeline (notebook 05): enhancement options, masks as targets, segmenter, crops, predict.

Networks are tiny (64 px) so the tests run offline; ImageNet weights are used where the Keras
cache holds them (CI fills it from shared/), random weights otherwise.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from busi_study.cli import REPO, main  # noqa: E402
from busi_study.data import arrays  # noqa: E402
from busi_study.data.enhance import ENHANCEMENTS, enhance  # noqa: E402
from busi_study.data.prepare import prepare_data  # noqa: E402
from busi_study.models import crops as lp  # noqa: E402
from busi_study.models import registry  # noqa: E402
from busi_study.models import segmentation as sg  # noqa: E402
from busi_study.models.experiment import Experiment, run_folds  # noqa: E402
from busi_study.models.recipes import Recipe  # noqa: E402
from busi_study.params import StudyParams  # noqa: E402
from busi_study.predict import CropPipelineModel, load_model, predict_files  # noqa: E402
from busi_study.results import ModelResults  # noqa: E402
from busi_study.studies import s1_pipeline  # noqa: E402
from busi_study.studies.heldout_maps import ModelInputs  # noqa: E402

from .recipe_helpers import aug_cfg, train_cfg  # noqa: E402

DEFAULT = StudyParams.from_profile("default", REPO / "params", {"data_source": "demo"})


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    return prepare_data(DEFAULT.data, DEFAULT.splits, DEFAULT.seed, tmp_path_factory.mktemp("data"), progress=False).store


def weights() -> str:
    return "imagenet" if registry.weights_available("mobilenet_v2", "imagenet", 64, alpha=0.35)[0] else "none"


def needs_imagenet() -> None:
    """Skip (saying why) a test whose claim only holds with the pretrained encoder: random weights find no
    lesion (every crop is the whole image) and learn no attention map in a few epochs. Offline without the
    Keras cache (a fresh machine) the weights cannot be downloaded."""
    if weights() != "imagenet":
        pytest.skip("needs the MobileNetV2-0.35 ImageNet weights in the Keras cache ($KERAS_HOME/models; offline here)")


def seg_recipe(**kw) -> sg.SegmenterRecipe:
    base = dict(name="t-seg", backbone="mobilenet_v2", input_size=64, backbone_kwargs={"alpha": 0.35}, weights=weights(),
                train=train_cfg(epochs=3, batch_size=8, learning_rate=1e-3, patience=2, class_weight=False),
                decoder_channels=8, n_views=2, threshold=0.5, min_area=0.0, preprocessing="none")
    base.update(kw)
    return sg.SegmenterRecipe(**base)


# ---------------------------------------------------------------- enhancement and masks
@pytest.mark.parametrize("option", list(ENHANCEMENTS))
def test_every_enhancement_keeps_shape_and_type_and_none_is_identity(option):
    rng = np.random.default_rng(0)
    base = np.linspace(40, 160, 50)[None, :] + rng.normal(0, 12, (40, 50))  # a ramp with speckle-like noise
    rgb = np.repeat(np.clip(base, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    out = enhance(rgb, option)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if option == "none":
        assert out is rgb
    elif option in ("histeq", "clahe"):
        assert out.max() > rgb.max()  # contrast stretched
    else:
        noise = lambda a: np.abs(np.diff(a[..., 0].astype(float), axis=0)).mean()  # noqa: E731
        assert noise(out) < 0.8 * noise(rgb)  # speckle filters smooth the noise


def test_unknown_enhancement_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown enhancement 'sharpen' — use one of: none, histeq"):
        enhance(np.zeros((4, 4, 3), np.uint8), "sharpen")


def test_clahe_array_is_unchanged_by_the_refactor(demo_store):
    """The CLAHE option existed before; its arrays must stay byte-identical (cached runs stay valid)."""
    import cv2

    from busi_study.data.images import read_rgb

    arr = arrays.load_image_array(demo_store, 32, "clahe", progress=False)
    first = read_rgb(demo_store.raw_root() / demo_store.read("manifest")["path"].iloc[0])
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(cv2.cvtColor(first, cv2.COLOR_RGB2GRAY))
    ref = cv2.resize(np.repeat(grey[..., None], 3, axis=2), (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(arr[0], ref)


def test_mask_array_is_empty_for_normal_images_and_cached(demo_store):
    masks = arrays.load_mask_array(demo_store, 32, progress=False)
    labels = demo_store.read("manifest")["label"].to_numpy()
    assert masks.shape == (len(labels), 32, 32) and set(np.unique(masks)) <= {0, 1}
    assert masks[labels == "normal"].sum() == 0
    assert all(m.sum() > 0 for m in masks[labels != "normal"])
    assert (arrays.load_mask_array(demo_store, 32, progress=False) == masks).all()


# ---------------------------------------------------------------- measures and boxes
def test_dice_and_iou():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:5], b[:, :5] = True, True  # 25 of 50 / 50
    assert sg.mask_scores(a, b) == pytest.approx((0.5, 25 / 75))
    assert sg.mask_scores(a, a) == (1.0, 1.0)
    assert all(np.isnan(sg.mask_scores(np.zeros((3, 3)), np.zeros((3, 3)))))
    assert sg.mask_scores(np.zeros((3, 3)), np.ones((3, 3))) == (0.0, 0.0)


def test_box_is_around_the_largest_region_widened_and_whole_image_when_nothing_found():
    m = np.zeros((100, 100), np.float32)
    m[40:60, 20:40] = 0.9       # the lesion: rows 40-59, columns 20-39
    m[5:7, 90:92] = 0.9         # a speck, smaller
    box, found = lp.box_of(m, 0.5, 0.001, 0.5)
    assert found and box == pytest.approx([0.30, 0.70, 0.10, 0.50])
    box, found = lp.box_of(m, 0.5, 0.5, 0.5)  # min_area above the predicted area
    assert not found and list(box) == [0, 1, 0, 1]
    box, _ = lp.box_of(np.pad(np.ones((10, 10)), ((0, 90), (0, 90))), 0.5, 0.0, 1.0)
    assert box[0] == 0 and box[2] == 0  # clipped at the border
    img = np.arange(100 * 80 * 3, dtype=np.uint8).reshape(100, 80, 3)
    c = lp.crop(img, np.array([0.3, 0.7, 0.1, 0.5]), 16)
    assert c.shape == (16, 16, 3)
    np.testing.assert_array_equal(lp.crop(img, np.array([0, 1, 0, 1.0]), 80)[:, :], __import__("cv2").resize(img, (80, 80), interpolation=3))


def test_summary_and_shortcut_tables():
    rng = np.random.default_rng(0)
    per = pd.DataFrame({"image_id": [f"i{k}" for k in range(40)], "label": ["benign"] * 20 + ["malignant"] * 10 + ["normal"] * 10,
                        "group_id": [f"g{k // 2}" for k in range(40)], "dice": list(rng.uniform(0.5, 0.9, 30)) + [np.nan] * 10,
                        "iou": list(rng.uniform(0.3, 0.8, 30)) + [np.nan] * 10,
                        "pred_area": list(rng.uniform(0.05, 0.2, 30)) + [0.0] * 8 + [0.1, 0.2],
                        "true_area": list(rng.uniform(0.05, 0.2, 30)) + [0.0] * 10})
    per["found"] = per["pred_area"] >= 0.01
    s = sg.summary_table(per, 200, 0).set_index(["measure", "images"])
    assert s.loc[("dice", "benign + malignant"), "value"] == pytest.approx(per["dice"].iloc[:30].mean())
    assert s.loc[("dice", "benign + malignant"), "ci_low"] < s.loc[("dice", "benign + malignant"), "value"]
    assert s.loc[("region found (false positive)", "normal"), "value"] == pytest.approx(0.2)
    assert 0 < s.loc[("pooled dice", "benign + malignant"), "value"] < 1
    sc = sg.shortcut_table(per)
    assert sc.attrs["rule_accuracy"] == pytest.approx(38 / 40)


# ---------------------------------------------------------------- segmenter and pipeline
@pytest.fixture(scope="module")
def seg_cv(demo_store):
    ex = sg.SegmentationExperiment(seg_recipe(), demo_store, seed=42, progress=False).prepare()
    splits = demo_store.read("splits")
    return ex, ex.cross_validate(splits[splits["seed"] == 42])


def test_segmenter_cv_keeps_every_fold_map_and_is_deterministic(seg_cv, demo_store):
    ex, cv = seg_cv
    n = len(ex.table)
    assert cv.oof.shape == (n, 16, 16) and cv.fold_maps.shape == (5, n, 16, 16)
    assert set(cv.test_fold) == set(range(5))
    for k in range(5):  # each image's out-of-fold map is its test fold's map
        idx = np.flatnonzero(cv.test_fold == k)
        np.testing.assert_allclose(cv.oof[idx], cv.fold_maps[k, idx].astype(np.float32), atol=1e-3)
    assert ((cv.oof >= 0) & (cv.oof <= 1)).all()
    splits = demo_store.read("splits")
    again = sg.SegmentationExperiment(seg_recipe(), demo_store, seed=42, progress=False).prepare()
    assert again.timing["encoder_outputs_cached"]
    idx = ex.fold_indices(splits[splits["seed"] == 42], 0)
    d1 = ex.fit(idx["train"], idx["val"], 7)[0]
    d2 = again.fit(idx["train"], idx["val"], 7)[0]
    np.testing.assert_allclose(ex.predict(d1, idx["test"]), again.predict(d2, idx["test"]), atol=1e-5)


def test_segmenter_learns_the_phantom_lesions(demo_store):
    """On the demo phantoms (bright blobs) a few epochs must beat an empty prediction clearly."""
    needs_imagenet()
    r = seg_recipe(train=train_cfg(epochs=15, batch_size=8, learning_rate=3e-3, patience=15, class_weight=False))
    ex = sg.SegmentationExperiment(r, demo_store, seed=42, progress=False).prepare()
    idx = np.arange(len(ex.table))
    dec, hist, _, _ = ex.fit(idx[::2], idx[1::2], 1)
    assert hist["loss"].iloc[-1] < hist["loss"].iloc[0]
    maps = sg.upsample(ex.predict(dec, idx[1::2]), 64)
    per = sg.per_image_table(maps, ex.masks_full[idx[1::2]], ex.table.iloc[idx[1::2]].reset_index(drop=True), 0.5, 0.0)
    assert per.loc[per["label"] != "normal", "dice"].mean() > 0.3


def test_exported_segmenter_matches_the_cached_path(seg_cv):
    ex, cv = seg_cv
    full = ex.full_segmenter(cv.decoders[0])
    x = ex.images[:4].astype(np.float32)
    out = np.asarray(full.predict(x, verbose=0))[..., 0]
    assert out.shape == (4, 64, 64)
    ref = sg.upsample(cv.fold_maps[0, :4].astype(np.float32), 64)
    np.testing.assert_allclose(out, ref, atol=0.02)


def test_crop_cv_uses_each_folds_own_crops(seg_cv, demo_store):
    needs_imagenet()  # with random encoder weights no fold finds a lesion: every fold's crops are the whole image
    ex, cv = seg_cv
    source = lp.CropSource(ex, cv, arrays.load_originals(demo_store), list(range(5)))
    a, b = source.images(0, 0.25, 32), source.images(1, 0.25, 32)
    assert a.shape == (len(ex.table), 32, 32, 3) and not np.array_equal(a, b)
    boxes = source.box_table(0.25)
    assert len(boxes) == 5 * len(ex.table) and set(boxes["fold"]) == set(range(5))
    recipe = Recipe(name="t-crop", kind="frozen_head", input_size=32, backbone="mobilenet_v2", backbone_kwargs={"alpha": 0.35},
                    weights="none", head="gap", head_dropout=0.2, n_views=1, train=train_cfg(epochs=1, batch_size=16, patience=1),
                    augment=aug_cfg(), preprocessing="none")
    seen = []
    orig = lp.Experiment

    class Spy(orig):
        def prepare(self):
            seen.append(self.images)
            return super().prepare()

    lp.Experiment = Spy
    try:
        res = lp.crop_cv(recipe, source, demo_store.read("splits").query("seed == 42"), 0.25, seed=42, tta=False,
                         progress=False)
    finally:
        lp.Experiment = orig
    assert len(seen) == 5 and all(np.array_equal(s, source.images(k, 0.25, 32)) for k, s in enumerate(seen))
    assert res.oof["image_id"].is_unique and len(res.oof) == len(ex.table)
    margin, table = s1_pipeline.choose_margin(recipe, source, demo_store.read("splits").query("seed == 42"), [0.1, 0.5], seed=42,
                                     progress=False)
    assert margin in (0.1, 0.5) and table["chosen"].sum() == 1 and (table["n_val"] > 0).all()
    assert table.loc[table["chosen"], "val_log_loss"].iloc[0] == table["val_log_loss"].min()


def test_run_folds_with_one_experiment_equals_cross_validate(demo_store):
    recipe = Recipe(name="t", kind="frozen_head", input_size=32, backbone="mobilenet_v2", backbone_kwargs={"alpha": 0.35},
                    weights="none", head="gap", head_dropout=0.2, n_views=1, train=train_cfg(epochs=1, batch_size=16, patience=1),
                    augment=aug_cfg(), preprocessing="none")
    splits = demo_store.read("splits").query("seed == 42")
    ex = Experiment(recipe, demo_store, seed=42, progress=False).prepare()
    a = ex.cross_validate(splits, tta=False)
    b = run_folds(lambda fold: ex, splits, None, tta=False)
    np.testing.assert_allclose(a.oof["p_benign"], b.oof["p_benign"], atol=1e-6)


# ---------------------------------------------------------------- predict and explanations
def _pipeline_files(tmp_path, seg_cv, demo_store):
    ex, cv = seg_cv
    models = tmp_path / "models"
    models.mkdir()
    ex.full_segmenter(cv.decoders[0]).save(models / "p.segmenter.keras")
    recipe = Recipe(name="p", kind="frozen_head", input_size=32, backbone="mobilenet_v2", backbone_kwargs={"alpha": 0.35},
                    weights="none", head="gap", head_dropout=0.2, n_views=1, train=train_cfg(epochs=1, batch_size=16, patience=1),
                    augment=aug_cfg(), preprocessing="none")
    cex = Experiment(recipe, demo_store, seed=1, progress=False).prepare()
    fm = cex.fit(np.arange(10), None, 1, epochs=[1])
    cex.full_model(fm).save(models / "p.keras")
    card = {"title": "test pipeline", "pipeline": {"segmenter_file": "p.segmenter.keras", "threshold": 0.5, "min_area": 0.0,
                                                   "margin": 0.25}}
    (models / "p.json").write_text(json.dumps(card))
    return models / "p.keras"


def test_predict_runs_a_crop_pipeline_and_writes_masks_and_boxes(tmp_path, seg_cv, demo_store):
    path = _pipeline_files(tmp_path, seg_cv, demo_store)
    model, card = load_model(path)
    assert isinstance(model, CropPipelineModel)
    root = demo_store.raw_root()
    files = [root / p for p in demo_store.read("manifest")["path"].head(3)] + [tmp_path / "missing.png"]
    table = predict_files(model, files, masks_dir=tmp_path)
    ok = table["error"] == ""
    assert ok.sum() == 3 and table.loc[~ok, "error"].str.contains("FileNotFoundError").all()
    np.testing.assert_allclose(table.loc[ok, ["p_normal", "p_benign", "p_malignant"]].sum(axis=1), 1, atol=1e-5)
    for _, r in table[ok].iterrows():
        assert os.path.exists(r["lesion_mask"])
        if r["lesion_found"]:
            assert 0 <= r["box_y0"] < r["box_y1"] and 0 <= r["box_x0"] < r["box_x1"]
    out = tmp_path / "p.csv"
    assert main(["predict", str(files[0]), "--model", str(path), "--out", str(out), "--masks", str(tmp_path / "m")]) == 0
    assert "lesion_found" in pd.read_csv(out).columns and len(list((tmp_path / "m").glob("*.png"))) == 1
    (path.parent / "p.segmenter.keras").unlink()
    with pytest.raises(Exception, match="segmenter p.segmenter.keras is not beside it"):
        load_model(path)


def test_explanations_of_a_crop_model_are_pasted_into_the_box(tmp_path, demo_store):
    ids = demo_store.read("manifest")["image_id"].tolist()
    boxes = pd.DataFrame({"fold": 0, "image_id": ids, "y0": 0.5, "y1": 1.0, "x0": 0.0, "x1": 0.5, "found": True})
    folder = tmp_path / "r"
    folder.mkdir()
    boxes.to_csv(folder / "crop_boxes.csv", index=False)
    trained = ModelResults(name="c", folder=folder, record={"recipe": {"input_size": 16}, "pipeline": {"margin": 0.1}},
                           oof=pd.DataFrame(), val=None)
    inputs = ModelInputs(trained, demo_store)
    assert inputs.images(0).shape == (len(ids), 16, 16, 3)
    out = inputs.to_image(np.ones((1, 4, 4), np.float32), 0, ids[:1], [(10, 20)])[0]
    assert out.shape == (10, 20) and out[5:, :10].min() == 1 and out[:5].max() == 0 and out[:, 10:].max() == 0


# ---------------------------------------------------------------- lesion-aware candidates
def cand(kind, **kw):
    from busi_study.models.lesion_models import CandidateRecipe

    base = dict(name=f"t-{kind}", kind=kind, backbone="mobilenet_v2", input_size=64, crop_size=64,
                train=train_cfg(epochs=3, batch_size=16, patience=2), backbone_kwargs={"alpha": 0.35}, weights=weights(),
                dropout=0.2, attention_weight=1.0, preprocessing="none")
    base.update(kw)
    return CandidateRecipe(**base)


def test_attention_candidate_learns_its_map_from_the_masks(demo_store):
    needs_imagenet()  # random frozen features carry no lesion information to point with
    from busi_study.models.lesion_models import CandidateExperiment, frozen_top, masks_at

    whole, _, _ = frozen_top(demo_store, "mobilenet_v2", {"alpha": 0.35}, weights(), 256, seed=42)  # an 8 x 8 feature grid
    masks = masks_at(demo_store, 256, whole.shape[1])
    table = arrays.labels_and_groups(demo_store)
    idx = np.arange(len(table))
    strong = CandidateExperiment(cand("attention", input_size=256, attention_weight=5.0,
                                      train=train_cfg(epochs=30, batch_size=8, patience=None, learning_rate=1e-2)),
                                 table, whole, masks, None, progress=False)
    fm = strong.fit(idx, None, 1, epochs=[30])
    att = np.asarray(fm.model.predict(whole, verbose=0)[1])
    lesion = masks.sum(1) > 0
    inside = (att * masks).sum(1) / np.maximum(masks.sum(1), 1e-6)
    outside = (att * (1 - masks)).sum(1) / (1 - masks).sum(1)
    assert inside[lesion].mean() > outside[lesion].mean() + 0.1  # the map points at the lesion


def test_candidates_are_chosen_on_validation_and_only_the_chosen_one_is_written(seg_cv, demo_store, tmp_path):
    from busi_study.results import ResultsStore
    from busi_study.studies import lesion_aware
    from busi_study.studies.s1_pipeline import CropRun

    ex, cv = seg_cv
    source = lp.CropSource(ex, cv, arrays.load_originals(demo_store), list(range(5)))
    crop = CropRun(run=None, margin=0.25, source=source)
    p = StudyParams.from_profile("smoke", REPO / "params", {"data_source": "demo", "s0_input_size": 64,
                                                            "s1_hires_size": 256, "mobilenet_alpha": 0.35,
                                                            "weights": weights(), "s1_seeds": [42, 43]})
    results = ResultsStore(tmp_path / "run")
    search = lesion_aware.run_candidates(p.s1, p.s0, p.models, p.augment, crop, demo_store, results, seed=42, bootstrap=p.bootstrap)
    t = search.table
    assert set(t["kind"]) == {"attention", "two_stream", "two_stream_hires", "attention_ft"} and t["chosen"].sum() == 1
    assert t.loc[t["chosen"], "val_log_loss"].iloc[0] == t["val_log_loss"].min()
    assert results.trained_names() == [search.chosen.name]
    rec = results.load(search.chosen.name).record
    assert len(rec["candidate_search"]) == 4 and "inner-validation" in rec["choice"]
    per_seed, summary = lesion_aware.seed_comparison(search, p.s1, p.s0, p.models, p.augment, crop, demo_store, split_seed=42,
                                                 bootstrap=p.bootstrap, progress=False)
    assert sorted(per_seed["seed"].unique()) == [42, 43] and set(summary["n_seeds"]) == {2}
    assert {"accuracy", "macro_auc", "benign_vs_malignant_auc"} == set(summary["metric"])
    assert (per_seed["lesion_aware_s"] > 0).all() and (per_seed["s0_s"] > 0).all()  # each step's wall time
    # seed 42 is the split seed and the search's own: its CV is the search's (not run again), and running it
    # again gives exactly the same predictions, so the table is what recomputing it would give
    from busi_study.evaluation.evaluate import arrays as prediction_arrays
    from busi_study.evaluation.metrics import classification_metrics
    from busi_study.models.lesion_models import candidate_cv

    again = candidate_cv(search.chosen, demo_store, demo_store.splits_of(42), seed=42, view_seed=42, progress=False,
                         source=crop.source, margin=crop.margin).oof
    pd.testing.assert_frame_equal(again, search.run.cv.oof, check_exact=True)
    row = per_seed[(per_seed["seed"] == 42) & (per_seed["metric"] == "accuracy")].iloc[0]
    assert row["lesion_aware"] == classification_metrics(*prediction_arrays(again)[:2])["accuracy"]
    assert row["lesion_aware_s"] == search.run.timing["cv_s"]


def test_exported_attention_model_predicts_and_explains(demo_store, tmp_path):
    from busi_study.explain.gradcam import gradcam
    from busi_study.models.lesion_models import CandidateExperiment, export_classifier, frozen_top, masks_at

    r = cand("attention")
    whole, pre, bb = frozen_top(demo_store, "mobilenet_v2", {"alpha": 0.35}, weights(), 64, seed=42)
    ex = CandidateExperiment(r, arrays.labels_and_groups(demo_store), whole, masks_at(demo_store, 64, whole.shape[1]), None,
                             progress=False)
    fm = ex.fit(np.arange(20), None, 1, epochs=[1])
    model = export_classifier(r, fm.head, pre, bb)
    model.save(tmp_path / "a.keras")
    loaded, _ = load_model(tmp_path / "a.keras")
    x = arrays.load_image_array(demo_store, 64, progress=False)[:3].astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), ex.predict(fm, np.arange(3)), atol=1e-4)
    maps = gradcam(loaded, x, np.array([0, 1, 2]), r.gradcam_layer())
    assert np.asarray(maps).shape[0] == 3


def test_two_stream_pipeline_exports_and_predicts(tmp_path, seg_cv, demo_store):
    from busi_study.models.lesion_models import CandidateExperiment, export_two_stream, frozen_top

    ex, cv = seg_cv
    r = cand("two_stream", crop_size=64)
    whole, pre, bb = frozen_top(demo_store, "mobilenet_v2", {"alpha": 0.35}, weights(), 64, seed=42)
    crops = lp.CropSource(ex, cv, arrays.load_originals(demo_store), list(range(5))).images(0, 0.25, 64)
    cfeat, pre_c, bb_c = frozen_top(demo_store, "mobilenet_v2", {"alpha": 0.35}, weights(), 64, seed=42, images=crops)
    cex = CandidateExperiment(r, arrays.labels_and_groups(demo_store), whole, None, cfeat.mean(axis=(1, 2)), progress=False)
    fm = cex.fit(np.arange(20), None, 1, epochs=[1])
    model = export_two_stream(r, fm.head, pre, bb, pre_c, bb_c)
    x = arrays.load_image_array(demo_store, 64, progress=False)[:3].astype(np.float32)
    np.testing.assert_allclose(model.predict([x, crops[:3].astype(np.float32)], verbose=0), cex.predict(fm, np.arange(3)),
                               atol=1e-4)
    models = tmp_path / "models"
    models.mkdir()
    model.save(models / "ts.keras")
    ex.full_segmenter(cv.decoders[0]).save(models / "seg.segmenter.keras")
    (models / "ts.json").write_text(json.dumps({"pipeline": {"segmenter_file": "seg.segmenter.keras", "threshold": 0.5,
                                                             "min_area": 0.0, "margin": 0.25, "inputs": ["image", "crop"]}}))
    loaded, _ = load_model(models / "ts.keras")
    assert isinstance(loaded, CropPipelineModel)
    files = [demo_store.raw_root() / p for p in demo_store.read("manifest")["path"].head(2)]
    table = predict_files(loaded, files)
    assert (table["error"] == "").all()
    np.testing.assert_allclose(table[["p_normal", "p_benign", "p_malignant"]].sum(axis=1), 1, atol=1e-5)


def test_best_weights_keeps_the_lowest_validation_loss_and_stops_after_patience():
    from busi_study.models.training import BestWeights

    class Model:
        w = [np.zeros(1)]

        def get_weights(self):
            return [a.copy() for a in self.w]

        def set_weights(self, ws):
            self.w = ws

    m, stop = Model(), BestWeights(patience=2)
    for epoch, loss in enumerate([1.0, 0.5, 0.7, 0.6], start=1):
        m.w = [np.array([float(epoch)])]
        if stop.stop_after(m, epoch, loss):
            break
    assert epoch == 4 and stop.restore(m, epoch) == 2 and m.w[0][0] == 2.0
    assert BestWeights(None).restore(m, 7) == 7  # nothing recorded: the last epoch is kept


# ---------------------------------------------------------------- attention_ft (fine-tuned, mask-supervised)
def test_augmented_masks_follow_their_images_geometry(demo_store):
    """mask_views warps each mask with its image's view transform: an image made of the mask itself,
    augmented as the S0 recipe augments images, gives back the same mask view."""
    from busi_study.models.augment import views_batch
    from busi_study.models.lesion_models import mask_views

    r = Recipe(name="t", kind="finetune", input_size=64, train=train_cfg(), finetune=train_cfg(), unfreeze_blocks=2,
               backbone="mobilenet_v2", head="gap", head_dropout=0.2, weights="none", n_views=4, preprocessing="none",
               augment=aug_cfg(rotation_deg=20, zoom=0.2, shift=0.1))
    grid = 8
    mv = mask_views(demo_store, r, 7, grid)
    m = arrays.load_mask_array(demo_store, 64, progress=False)
    assert mv.shape == (4, len(m), grid * grid) and 0 <= mv.min() and mv.max() <= 1
    as_image = np.repeat((m * 255)[..., None], 3, axis=3)
    lesion = np.flatnonzero(m.reshape(len(m), -1).max(1))
    for v in range(4):
        img_v = views_batch(as_image, lesion, v, 7, r.augment)[..., 0] > 127
        want = np.stack([cv2_area(x, grid) for x in img_v])
        np.testing.assert_allclose(mv[v, lesion], want, atol=1e-6)
    assert not np.allclose(mv[1, lesion], mv[0, lesion])  # the views really are transformed
    assert (mv[:, m.reshape(len(m), -1).max(1) == 0] == 0).all()  # normal images: empty targets in every view


def cv2_area(x, grid):
    import cv2

    return cv2.resize(x.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA).reshape(-1)


def test_finetuned_attention_candidate_is_chosen_exported_and_its_models_match_its_predictions(demo_store, tmp_path):
    from busi_study.models.lesion_models import CandidateRecipe
    from busi_study.results import ResultsStore
    from busi_study.studies import lesion_aware

    p = StudyParams.from_profile("smoke", REPO / "params", {"data_source": "demo", "s0_input_size": 64, "mobilenet_alpha": 0.35,
                                                            "weights": weights(), "s1_candidates": ["attention_ft"]})
    (recipe,) = lesion_aware.candidate_recipes(p.s1, p.s0, p.models, p.augment)
    assert recipe.kind == "attention_ft" and recipe.finetune_from.unfreeze_blocks == p.s0.unfreeze_blocks
    assert "fine-tuned" in recipe.title
    with pytest.raises(ValueError, match="finetune_from"):
        CandidateRecipe(name="x", kind="attention_ft", backbone="mobilenet_v2", input_size=64, crop_size=64, train=train_cfg(),
                        dropout=0.2, attention_weight=1.0, weights="none", preprocessing="none")
    results = ResultsStore(tmp_path / "run")
    search = lesion_aware.run_candidates(p.s1, p.s0, p.models, p.augment, None, demo_store, results, seed=42, bootstrap=p.bootstrap)
    assert search.chosen is not None and search.chosen.kind == "attention_ft"
    res = results.load(search.chosen.name)
    oof = res.oof
    assert np.allclose(oof[["p_normal", "p_benign", "p_malignant"]].sum(1), 1, atol=1e-4)
    assert len(res.record["timing"]["per_fold_s"]) == oof["fold"].nunique()
    # learning curves as every model's (the notebook plots accuracy and loss per epoch, train and validation)
    hist = res.table("history")
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(hist.columns) and hist["accuracy"].between(0, 1).all()
    from busi_study.report.notebook_views import StudyNotebook

    nb = StudyNotebook(report_dir=tmp_path / "run", store=demo_store, params=StudyParams.from_flat({"figure_dpi": 40}, partial=True),
                       demo=True)
    nb.show_model_run(search.run, p.bootstrap.resamples)  # what notebook 05 shows for the chosen candidate
    assert (tmp_path / "run" / "figures" / f"{res.name}_learning_curves.png").exists()
    # the saved fold-0 model (image → probabilities) gives the experiment's out-of-fold predictions
    fold0 = keras.models.load_model(results.fold_model_path(search.chosen.name, 0))
    test0 = oof[oof["fold"] == 0].sort_values("image_id")
    table = arrays.labels_and_groups(demo_store)
    pos = {k: i for i, k in enumerate(table["image_id"])}
    imgs = arrays.load_image_array(demo_store, 64, progress=False)[[pos[i] for i in test0["image_id"]]].astype(np.float32)
    got = np.asarray(fold0.predict(imgs, verbose=0))
    np.testing.assert_allclose(got, test0[["p_normal", "p_benign", "p_malignant"]].to_numpy(), atol=2e-3)
    exported = results.exported_model_path(search.chosen.name)
    assert exported.exists() and json.loads(exported.with_suffix(".json").read_text())
