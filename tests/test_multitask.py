"""The multi-task U-Net (models/multitask.py, studies/multitask_run.py) on the demo phantoms: it learns
the masks, is deterministic given its seed, its exported network gives what the cached path gives, and
``predict`` (and the fold ensemble) outline the lesion."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("keras")

from busi_study.cli import REPO  # noqa: E402
from busi_study.data.images import fit_square, pad_to_square, unfit_square  # noqa: E402
from busi_study.data.prepare import prepare_data  # noqa: E402
from busi_study.models import registry  # noqa: E402
from busi_study.models.augment import lesion_keeping_box, view_with_mask  # noqa: E402
from busi_study.models.ensemble import classifier_chain, fold_ensemble, is_multitask, members  # noqa: E402
from busi_study.models.multitask import MultitaskExperiment, MultitaskRecipe, decoder_head  # noqa: E402
from busi_study.models.segmentation import hd95  # noqa: E402
from busi_study.models.training import mask_loss, mask_loss_np  # noqa: E402
from busi_study.params import StudyParams  # noqa: E402

from .recipe_helpers import aug_cfg, train_cfg  # noqa: E402

DEFAULT = StudyParams.from_profile("default", REPO / "params", {"data_source": "demo"})
WEIGHTS_OK, WHY = registry.weights_available("mobilenet_v2", "imagenet", 64, alpha=0.35)
needs_weights = pytest.mark.skipif(not WEIGHTS_OK, reason=f"needs the ImageNet MobileNetV2 alpha 0.35 weights ({WHY})")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    return prepare_data(DEFAULT.data, DEFAULT.splits, DEFAULT.seed, tmp_path_factory.mktemp("data"), progress=False).store


def recipe(**kw) -> MultitaskRecipe:
    base = dict(name="t-mt", backbone="mobilenet_v2", backbone_kwargs={"alpha": 0.35}, weights="imagenet", input_size=64,
                unfreeze_blocks=2, head_dropout=0.2, decoder_channels=8, mask_weight=1.0, fit="stretch", crop_prob=0.0,
                crop_min_side=0.6, threshold=0.5, min_area=0.002, gate="none", n_views=2, augment=aug_cfg(),
                train=train_cfg(epochs=15, batch_size=8, learning_rate=5e-3, patience=None, class_weight=False),
                finetune=train_cfg(epochs=2, batch_size=8, learning_rate=1e-4, patience=None, class_weight=False),
                preprocessing="none")
    base.update(kw)
    return MultitaskRecipe(**base)


# ---------------------------------------------------------------- pieces without a backbone
def test_fit_square_pads_and_unfit_inverts_it():
    img = np.zeros((40, 100), np.float32)
    img[10:20, 30:50] = 1
    sq = pad_to_square(img)
    assert sq.shape == (100, 100) and sq[30:70].sum() == img.sum() and sq[:30].sum() == 0  # centred, black borders
    back = unfit_square(fit_square(img, 50, "pad"), img.shape, "pad")
    assert back.shape == img.shape and np.abs(back - img).mean() < 0.05
    assert unfit_square(fit_square(img, 50, "stretch"), img.shape, "stretch").shape == img.shape
    with pytest.raises(ValueError, match="fit must be one of"):
        fit_square(img, 50, "crop")


def test_lesion_keeping_crops_keep_the_lesion_and_move_mask_and_image_together():
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 40:50] = 1
    for _ in range(50):
        r0, r1, c0, c1 = lesion_keeping_box(mask, rng, 0.5)
        assert r0 <= 20 and r1 >= 30 and c0 <= 40 and c1 >= 50 and r1 - r0 >= 10 and 0 <= r0 and r1 <= 64
    image = np.repeat((mask * 200 + 20)[..., None], 3, axis=2).astype(np.uint8)  # the image is its mask
    for v in range(1, 6):
        iv, mv = view_with_mask(image, mask, 3, v, 7, aug_cfg(brightness=0.0, contrast=0.0), 1.0, 0.5)
        assert iv.shape == image.shape and mv.shape == mask.shape and mv.any()
        agree = ((iv[..., 0] > 110) == mv.astype(bool)).mean()
        assert agree > 0.97, f"view {v}: the mask does not follow its image ({agree:.3f})"
    same_i, same_m = view_with_mask(image, mask, 3, 0, 7, aug_cfg(), 1.0, 0.5)
    assert same_i is image and same_m is mask  # view 0 is the image itself


def test_mask_loss_asks_for_the_mask_and_for_nothing_on_normal_images():
    t = np.zeros((2, 8, 8, 1), np.float32)
    t[0, 2:6, 2:6] = 1
    good, bad = np.where(t > 0, 0.99, 1e-4).astype(np.float32), np.clip(1 - t, 0.01, 0.99)
    assert mask_loss_np(t, good).max() < 0.1 < mask_loss_np(t, bad).min()
    np.testing.assert_allclose(np.asarray(mask_loss(t, good)), mask_loss_np(t, good), rtol=1e-4, atol=1e-5)


def test_hd95_is_zero_for_the_same_mask_and_grows_with_the_shift():
    a = np.zeros((50, 50), bool)
    a[10:30, 10:30] = True
    assert hd95(a, a) == 0.0 and np.isnan(hd95(a, np.zeros_like(a)))
    assert 0 < hd95(a, np.roll(a, 2, axis=1)) < hd95(a, np.roll(a, 8, axis=1))


def test_decoder_head_outputs_probabilities_and_a_half_resolution_map():
    shapes = {"S2": (16, 16, 4), "S4": (8, 8, 4), "S8": (4, 4, 6), "S16": (2, 2, 6)}
    head = decoder_head(shapes, (1, 1, 10), channels=4, dropout=0.0)
    x = [np.random.rand(3, *shapes[k]).astype("float32") for k in ("S2", "S4", "S8", "S16")] + [np.random.rand(3, 1, 1, 10)]
    p, m = head.predict(x, verbose=0)
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1, atol=1e-5) and m.shape == (3, 16, 16, 1)


def test_the_fold_ensemble_averages_its_members_and_the_chain_gives_the_probabilities():
    import keras

    def net(seed):
        keras.utils.set_random_seed(seed)
        inp = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(2, 3, padding="same")(inp)
        return keras.Model(inp, [keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)),
                                 keras.layers.Conv2D(1, 1, activation="sigmoid")(x)])

    a, b = net(0), net(1)
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    pa, ma = a.predict(x, verbose=0)
    pb, mb = b.predict(x, verbose=0)
    ens = fold_ensemble([a, b], "e.folds")
    p, m = ens.predict(x, verbose=0)
    np.testing.assert_allclose(p, (pa + pb) / 2, atol=1e-6)
    np.testing.assert_allclose(m, (ma + mb) / 2, atol=1e-6)
    assert is_multitask(ens) and len(members(ens)) == 2


# ---------------------------------------------------------------- the network on the phantoms
@pytest.fixture(scope="module")
def trained(demo_store):
    if not WEIGHTS_OK:
        pytest.skip(f"needs the ImageNet MobileNetV2 alpha 0.35 weights ({WHY})")
    ex = MultitaskExperiment(recipe(), demo_store, seed=42, progress=False).prepare()
    idx = ex.fold_indices(demo_store.splits_of(42), 0)
    fm = ex.fit(idx["train"], idx["val"], 7)
    return ex, idx, fm


@needs_weights
def test_it_learns_the_masks_from_the_warped_views(trained):
    ex, idx, fm = trained
    hist = fm.phases[0].history
    assert hist["val_dice"].iloc[-1] > 0.3 and hist["val_dice"].iloc[-1] > hist["val_dice"].iloc[0] + 0.1, hist
    assert {"loss", "accuracy", "val_loss", "val_ce", "val_accuracy", "val_dice"} <= set(hist.columns)
    assert ex.mask_views.shape[:2] == (2, len(ex.table)) and ex.mask_views.shape[2] == ex.recipe.output_size


@needs_weights
def test_training_is_deterministic_given_the_seed(trained, demo_store):
    ex, idx, fm = trained
    again = ex.fit(idx["train"], idx["val"], 7)
    np.testing.assert_array_equal(ex.predict(fm, idx["test"]), ex.predict(again, idx["test"]))
    np.testing.assert_array_equal(ex.predict_masks(fm, idx["test"]), ex.predict_masks(again, idx["test"]))


@needs_weights
def test_the_exported_network_outlines_as_the_cached_path_does(trained, demo_store, tmp_path):
    import cv2

    from busi_study.data.arrays import load_image_array
    from busi_study.predict import OutlineModel, load_model, predict_files

    ex, idx, fm = trained
    net = ex.full_model(fm)
    images = load_image_array(demo_store, ex.recipe.input_size, progress=False)[idx["test"]].astype(np.float32)
    p, m = net.predict(images, verbose=0)
    # the cached path reads the lower blocks' outputs stored in float16: equal to about 1e-4
    np.testing.assert_allclose(p, ex.predict(fm, idx["test"]), atol=2e-3)
    cached = ex.predict_masks(fm, idx["test"])
    o = ex.recipe.output_size
    down = np.stack([cv2.resize(x[..., 0], (o, o), interpolation=cv2.INTER_AREA) for x in m])
    assert np.abs(down - cached).mean() < 0.05 and m.shape[1:3] == (ex.recipe.input_size, ex.recipe.input_size)
    chain = classifier_chain(net)  # the class path alone, as Grad-CAM and TFLite take it
    np.testing.assert_allclose(chain.predict(images, verbose=0), p, atol=1e-5)
    # predict on image files: the outline, its area and the mask file
    path = tmp_path / "m.keras"
    net.save(path)
    path.with_suffix(".json").write_text(json.dumps({"model": "m", "input": {"fit": "stretch"},
                                                     "outline": {"threshold": 0.5, "min_area": 0.0}}))
    model, _ = load_model(path)
    assert isinstance(model, OutlineModel)
    files = [demo_store.raw_root() / r for r in demo_store.read("manifest")["path"].iloc[idx["test"][:4]]]
    out = predict_files(model, files + [tmp_path / "missing.png"], masks_dir=tmp_path)
    assert list(out["error"][:4]) == [""] * 4 and out["error"].iloc[4] != ""
    assert {"lesion_found", "lesion_area", "lesion_mask"} <= set(out.columns)
    np.testing.assert_allclose(out[["p_normal", "p_benign", "p_malignant"]].iloc[:4].to_numpy(dtype=float),
                               model.predict_batch(np.stack([model.prepare(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB))
                                                             for f in files]))[0], atol=1e-5)
    written = [f for f in out["lesion_mask"].iloc[:4] if f]
    assert len(written) == 4 and all(cv2.imread(f, cv2.IMREAD_GRAYSCALE).shape == cv2.imread(str(s)).shape[:2]
                                     for f, s in zip(written, files))


def test_an_input_size_the_decoder_cannot_take_fails_when_the_recipe_is_made():
    from busi_study.errors import ParameterError
    from busi_study.studies.multitask_run import multitask_recipe

    with pytest.raises(ParameterError, match="'mt_input_size' must be a multiple of 32"):
        StudyParams.from_profile("smoke", REPO / "params", {"data_source": "demo", "mt_input_size": 112})
    p = StudyParams.from_profile("smoke", REPO / "params", {"data_source": "demo"})
    with pytest.raises(ParameterError, match="mt_input_size must be a multiple of 32"):  # and in the recipe itself
        multitask_recipe(dataclasses.replace(p.mt, input_size=112), p.s0, p.models, p.augment)
    for key, bad in (("mt_thresholds", [0.5, 1.0]), ("mt_min_areas", [-0.1]), ("mt_crop_prob", 1.5), ("mt_crop_min_side", 0)):
        with pytest.raises(ParameterError, match=f"'{key}' must be"):
            StudyParams.from_profile("smoke", REPO / "params", {"data_source": "demo", key: bad})


@needs_weights
def test_seed_comparison_pairs_the_multitask_model_with_s0_per_seed(demo_store):
    from busi_study.studies.multitask_run import seed_comparison

    p = StudyParams.from_profile("smoke", REPO / "params", {"data_source": "demo", "mt_seeds": [42], "s0_head_epochs": 1,
                                                            "s0_finetune_epochs": 1, "s0_input_size": 64})
    per_seed, summary = seed_comparison(p.mt, p.s0, p.models, p.augment, demo_store, split_seed=42, bootstrap=p.bootstrap,
                                        progress=False)
    assert set(per_seed["metric"]) == {"accuracy", "macro_auc", "benign_vs_malignant_auc"} and set(per_seed["seed"]) == {42}
    assert (per_seed["ci_low"] <= per_seed["diff"]).all() and (per_seed["diff"] <= per_seed["ci_high"]).all()
    assert np.allclose(per_seed["diff"], per_seed["multitask"] - per_seed["s0"])
    assert set(summary["n_seeds"]) == {1} and {"seeds_better_ci_excludes_0"} <= set(summary.columns)


def test_seed_comparison_script_takes_set_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("seed_comparison_script", REPO / "scripts" / "seed_comparison.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    assert script.main(["--profile", "reference", "--set", "no_such_key=1", "--out", str(out)]) == 2
    assert "unknown parameter 'no_such_key'" in capsys.readouterr().err
    assert script.main(["--profile", "reference", "--set", "mt_seeds=[42]", "--report", str(tmp_path / "none"),
                        "--out", str(out)]) == 2  # the override is taken; the missing run is what fails
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_key" not in err and "mt_seeds" not in err
    assert script.main(["--profile", "reference", "--report", str(tmp_path), "--out", str(out)]) == 2
    assert not out.exists()


def test_the_outline_gate_is_chosen_on_validation_and_hides_outlines_of_images_called_normal():
    """A gate that hides the outline where the model calls the image normal: chosen only when it scores
    better on validation; the per-image table then counts those images as showing no outline."""
    from busi_study.studies.multitask_run import called_normal, gate_per_image, outline_choice_table

    refs = np.zeros((4, 8, 8), bool)
    refs[0, 2:6, 2:6] = refs[1, 1:5, 1:5] = True          # two lesion images, two normal ones
    probs = refs.astype(np.float32)
    probs[2, 0:3, 0:3] = probs[3, 5:8, 5:8] = 0.9           # spurious regions on both normal images
    called = np.array([False, False, True, True])           # the classifier calls both normal images normal
    t = outline_choice_table(probs, refs, called, [0.5], [0.0], ["none", "classifier"]).set_index("gate")
    assert t.loc["none", "val_normal_with_region"] == 1.0 and t.loc["classifier", "val_normal_with_region"] == 0.0
    assert t.loc["classifier", "chosen"] and not t.loc["none", "chosen"]
    assert t.loc["classifier", "val_dice_lesion"] == pytest.approx(1.0)
    # a classifier that calls a lesion image normal costs that image its outline: no gate is then better
    called_badly = np.array([True, True, False, False])
    t2 = outline_choice_table(probs, refs, called_badly, [0.5], [0.0], ["none", "classifier"]).set_index("gate")
    assert t2.loc["none", "chosen"] and t2.loc["classifier", "val_lesion_nothing_found"] == 1.0
    # the per-image table as deployed
    per_image = pd.DataFrame({"image_id": ["a", "b"], "label": ["normal", "benign"], "found": [True, True]})
    oof = pd.DataFrame({"image_id": ["b", "a"], "p_normal": [0.1, 0.8], "p_benign": [0.8, 0.1], "p_malignant": [0.1, 0.1]})
    gated = gate_per_image(per_image, oof, "classifier")
    assert list(gated["found"]) == [False, True] and list(gated["called_normal"]) == [True, False]
    assert list(gate_per_image(per_image, oof, "none")["found"]) == [True, True]
    with pytest.raises(ValueError, match="no class prediction for \\['c'\\]"):
        called_normal(pd.Series(["a", "c"]), oof)


def test_the_shown_outline_is_the_largest_region_and_scores_0_where_none_is_shown():
    from busi_study.models.segmentation import summary_table
    from busi_study.studies.multitask_run import shown_outline_dice

    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, 1:5, 1:5] = masks[1, 1:5, 1:5] = 1
    probs = np.zeros((3, 10, 10), np.float32)
    probs[0, 1:5, 1:5] = 0.9
    probs[0, 8:10, 8:10] = 0.9                              # a small second blob: not part of the shown outline
    probs[1, 1:5, 1:5] = 0.9
    d = shown_outline_dice(probs, masks, 0.5, np.array([True, False, True]))
    assert d[0] == pytest.approx(1.0) and d[1] == 0.0 and np.isnan(d[2])  # image 1: nothing shown; image 2: no lesion
    per_image = pd.DataFrame({"image_id": list("abc"), "label": ["benign", "malignant", "normal"], "group_id": list("abc"),
                              "dice": [0.9, 1.0, np.nan], "iou": [0.8, 1.0, np.nan], "pred_area": [0.2, 0.16, 0.0],
                              "true_area": [0.16, 0.16, 0.0], "found": [True, False, False], "dice_shown": d})
    s = summary_table(per_image, 50, 0).set_index(["measure", "images"])
    assert s.loc[("dice (outline as shown)", "benign + malignant"), "value"] == pytest.approx(0.5)


def test_predict_hides_the_outline_of_an_image_its_model_calls_normal_when_the_card_says_so(tmp_path):
    from busi_study.errors import ModelFileError
    from busi_study.predict import OutlineModel, load_model

    from .app_helpers import make_tiny_outline_model

    path = tmp_path / "mt.keras"
    make_tiny_outline_model(path)
    card = json.loads(path.with_suffix(".json").read_text())
    prob = np.zeros((32, 32), np.float32)
    prob[8:20, 8:20] = 0.9
    normal, benign = np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.8, 0.1])
    model, _ = load_model(path)  # a card without a gate (written before it existed): the outline always shows
    assert isinstance(model, OutlineModel) and model.gate == "none"
    assert model.outline(prob, (64, 64), normal)[2]
    path.with_suffix(".json").write_text(json.dumps({**card, "outline": {**card["outline"], "gate": "classifier"}}))
    model, _ = load_model(path)
    mask, area, found = model.outline(prob, (64, 64), normal)
    assert not found and area == 0.0 and not mask.any()
    mask, area, found = model.outline(prob, (64, 64), benign)
    assert found and mask.any() and 0 < area < 1
    path.with_suffix(".json").write_text(json.dumps({**card, "outline": {**card["outline"], "gate": "classifer"}}))
    with pytest.raises(ModelFileError, match="outline gate 'classifer' is not one of none, classifier"):
        load_model(path)
