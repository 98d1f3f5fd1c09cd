"""The app's logic (decoding, out-of-distribution check, decisions, batch table) and its pages
through Streamlit's AppTest, on a tiny Keras model and card made here."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from busi_study.app import ood
from busi_study.app.inputs import MAX_PIXELS, InputRejected, decode_upload
from busi_study.evaluation.deployment import decision_settings
from busi_study.info import CLASSES

from .app_helpers import busi_like, encode, huge_png, make_run, png16, val_predictions

# ------------------------------------------------------------------ decoding uploads


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_decode_accepts_busi_formats(fmt):
    img = decode_upload("a", encode(busi_like(), fmt))
    assert img.rgb.shape == (360, 480, 3) and img.rgb.dtype == np.uint8 and img.format == fmt


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"this is a text file, not an image", "not a readable image"),
    (encode(busi_like())[:200], "truncated"),
    (encode(busi_like(), "GIF"), "GIF format"),
    (encode(np.zeros((1, 1), np.uint8)), "too small: 1 × 1"),
])
def test_decode_rejects_bad_files_with_a_message(data, words):
    with pytest.raises(InputRejected, match=words):
        decode_upload("bad", data)


def test_decode_rejects_huge_image_from_its_header():
    data = huge_png()
    assert len(data) < 2_000_000
    with pytest.raises(InputRejected, match="too large: 10000 × 10000"):
        decode_upload("huge.png", data)
    assert 10_000 * 10_000 > MAX_PIXELS


def test_decode_16bit_is_scaled_like_predict(tmp_path):
    from busi_study.data.images import read_rgb

    data = png16()
    img = decode_upload("sixteen.png", data)
    assert any("16-bit" in n and "scaled" in n for n in img.notes)
    (tmp_path / "sixteen.png").write_bytes(data)
    assert np.array_equal(img.rgb, read_rgb(tmp_path / "sixteen.png")) and img.rgb.max() == 255


def test_decode_rgba_drops_alpha_like_predict(tmp_path):
    from busi_study.data.images import read_rgb

    rgba = np.dstack([busi_like()] * 3 + [np.full((360, 480), 128, np.uint8)])
    data = encode(rgba)
    img = decode_upload("rgba.png", data)
    assert any("alpha" in n for n in img.notes)
    (tmp_path / "rgba.png").write_bytes(data)
    assert np.array_equal(img.rgb, read_rgb(tmp_path / "rgba.png"))


# ------------------------------------------------------------------ unlike the training data


def test_shipped_profile_is_busi():
    p = ood.load_profile()
    assert p["n_images"] == 780 and set(p["measures"]) == set(ood.MEASURES)
    for m in ood.MEASURES:
        q = p["measures"][m]
        assert q["min"] <= q["p01"] <= q["p50"] <= q["p99"] <= q["max"]


def test_busi_like_image_is_not_flagged_and_odd_ones_are():
    profile = ood.load_profile()
    assert ood.unlike_training(ood.image_measures(np.dstack([busi_like()] * 3)), profile) == []
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)         # a colourful photograph
    assert any("colour fraction" in w for w in ood.unlike_training(ood.image_measures(photo), profile))
    thumb = np.dstack([busi_like(60, 80)] * 3)                          # a thumbnail
    flagged = " ".join(ood.unlike_training(ood.image_measures(thumb), profile))
    assert "height" in flagged and "width" in flagged
    white = np.full((400, 500, 3), 250, np.uint8)                       # a blank, saturated export
    flagged = " ".join(ood.unlike_training(ood.image_measures(white), profile))
    assert "grey mean" in flagged and "grey sd" in flagged


def test_build_profile_and_rule_margins():
    ms = [{"height": 100.0, "width": 200.0, "aspect": 2.0, "grey_mean": 50.0, "grey_sd": 10.0, "colour_fraction": 0.0},
          {"height": 300.0, "width": 400.0, "aspect": 4 / 3, "grey_mean": 150.0, "grey_sd": 30.0, "colour_fraction": 0.01}]
    p = ood.build_profile(ms, "two")
    assert p["measures"]["height"]["min"] == 100 and p["measures"]["height"]["max"] == 300
    assert ood.allowed_range(p, "height") == pytest.approx((100 / 1.5, 450))
    assert ood.allowed_range(p, "grey_mean") == pytest.approx((25, 175))
    assert ood.allowed_range(p, "colour_fraction")[1] == pytest.approx(0.06)


# ------------------------------------------------------------------ temperature and thresholds


def test_decision_settings_soften_overconfidence_and_meet_targets():
    val = val_predictions(n=200)
    d = decision_settings(val)
    assert d["temperature"] > 1.5  # 95 % sure, 70 % right: must soften
    y = (val["label"] == "malignant").to_numpy()
    p = val[["p_normal", "p_benign", "p_malignant"]].to_numpy()
    s = p[:, 2] / p.sum(axis=1)  # the scale the thresholds are chosen on (rows renormalised)
    assert ((s >= d["threshold_spec90"])[~y] == 0).mean() >= 0.9     # specificity on validation
    assert (s >= d["threshold_sens90"])[y].mean() >= 0.9             # sensitivity on validation
    assert d["n_validation"] == 200


# ------------------------------------------------------------------ the engine on a tiny model


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reports")
    make_run(root, {"weaker": 0.70, "better": 0.80, "nometrics": None})
    return root


def test_find_models_best_first_and_decision_sources(reports, tmp_path):
    from busi_study.app import engine

    entries = engine.find_models(reports)
    assert [e.name for e in entries] == ["better", "weaker", "nometrics"]
    assert engine.find_models(tmp_path) == []
    assert engine.decision_for(entries[0])["source"] == "model card"
    # no decision in the card: fitted on the run's validation predictions, the same numbers
    other = make_run(tmp_path / "r", {"m": 0.7}, with_decision=False)
    e = engine.entry_for(other / "models" / "m.keras")
    d = engine.decision_for(e)
    assert d["source"].startswith("fitted on") and d["temperature"] == pytest.approx(decision_settings(val_predictions(seed=0))["temperature"])
    # neither: said to be missing
    bare = make_run(tmp_path / "s", {"m": 0.7}, with_decision=False, with_val=False)
    assert engine.decision_for(engine.entry_for(bare / "models" / "m.keras"))["source"].startswith("missing")


def test_analyse_matches_predict_and_keeps_going_after_bad_files(reports, tmp_path):
    import cv2

    from busi_study.app import engine
    from busi_study.data.images import read_rgb
    from busi_study.predict import load_model, predict_files

    lm = engine.load(engine.find_models(reports)[0])
    good = [encode(busi_like(seed=s)) for s in range(3)]
    uploads = [("a.png", good[0]), ("broken.png", b"junk"), ("b.png", good[1]), ("one.png", encode(np.zeros((1, 1), np.uint8))),
               ("c.bmp", encode(busi_like(seed=2), "BMP"))]
    results = engine.analyse(lm, uploads)
    assert [r.name for r in results] == [n for n, _ in uploads]
    assert [bool(r.error) for r in results] == [False, True, False, True, False]
    # the same probabilities as `predict` on the same files
    for name, data in uploads:
        (tmp_path / name).write_bytes(data)
    model, _ = load_model(lm.entry.path)
    ref = predict_files(model, [tmp_path / n for n, _ in uploads]).set_index("path")
    table = engine.results_table(results, lm.decision["temperature"])
    assert list(table.columns[:6]) == list(ref.reset_index().columns)
    for r in results:
        row = ref.loc[str(tmp_path / r.name)]
        if r.error:  # predict fails on these too, except what the app refuses on purpose (a 1 x 1 image)
            assert bool(row["error"]) or "too small" in r.error
            continue
        assert np.allclose(r.proba, row[[f"p_{c}" for c in CLASSES]].to_numpy(float), atol=1e-5)
        assert r.predicted == row["predicted"]
        # calibrated: same ranking of classes, sums to 1, softer with T > 1
        assert r.proba_calibrated.sum() == pytest.approx(1) and r.proba_calibrated.argmax() == r.proba.argmax()
        assert r.proba_calibrated.max() <= r.proba.max() + 1e-9
        assert r.malignant_spec90 == (r.proba[2] >= lm.decision["threshold_spec90"])
        assert r.overlay.shape == r.display.shape and r.overlay.dtype == np.uint8
        assert not np.array_equal(r.overlay, r.display)
    # the map is explain.gradcam's, for the predicted class, on the input predict would build
    from busi_study.explain.gradcam import gradcam

    ok = [r for r in results if not r.error]
    x = np.stack([cv2.resize(read_rgb(tmp_path / r.name), (lm.input_size,) * 2, interpolation=cv2.INTER_AREA) for r in ok])
    want = gradcam(model, x.astype(np.float32), [CLASSES.index(r.predicted) for r in ok], "conv")
    np.testing.assert_allclose(np.stack([r.cam for r in ok]), want, atol=1e-5)
    assert table["error"].astype(bool).tolist() == [bool(r.error) for r in results]
    assert table.loc[~table["error"].astype(bool), "p_normal_calibrated"].notna().all()


def test_analyse_without_temperature_leaves_calibrated_empty(reports):
    from busi_study.app import engine

    lm = engine.load(engine.find_models(reports)[0])
    lm.decision = {"temperature": None, "threshold_spec90": None, "threshold_sens90": None, "source": "missing"}
    (r,) = engine.analyse(lm, [("a.png", encode(busi_like()))], with_gradcam=False)
    assert r.proba_calibrated is None and r.malignant_spec90 is None and r.overlay is None
    t = engine.results_table([r], None)
    assert np.isnan(t.loc[0, "p_malignant_calibrated"]) and not np.isnan(t.loc[0, "p_malignant"])


# ------------------------------------------------------------------ the pages (AppTest)


def _script(model=None, reports=None):
    from busi_study.app.pages import run_app

    run_app(model=model, reports=reports)


def _app(**kwargs):
    from streamlit.testing.v1 import AppTest

    return AppTest.from_function(_script, kwargs=kwargs, default_timeout=120)


def _texts(at) -> str:
    parts = [e.value for kind in ("markdown", "error", "warning", "info", "caption", "code", "title", "header", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_page_without_model_gives_the_command(tmp_path):
    at = _app(reports=str(tmp_path)).run()
    assert not at.exception
    assert "No exported model found" in at.error[0].value
    assert any("make report" in c.value for c in at.code)
    assert "not a medical device" in at.warning[0].value
    at = _app(model=str(tmp_path / "nope.keras")).run()
    assert not at.exception and "model file not found" in at.error[0].value


def test_classify_page_batch_with_a_bad_file(reports):
    at = _app(reports=str(reports)).run()
    assert not at.exception
    assert at.selectbox(key="model").value.startswith("better")
    assert "not a medical device" in at.warning[0].value
    at.file_uploader(key="uploads").set_value([("lesion.png", encode(busi_like()), "image/png"),
                                               ("corrupt.png", b"\x89PNG\r\n\x1a\n broken", "image/png"),
                                               ("sixteen.png", png16(), "image/png"),
                                               ("huge.png", huge_png(), "image/png")])
    at.run()
    assert not at.exception, at.exception
    text = _texts(at)
    assert "| class | raw | calibrated |" in text
    assert any(e.value.startswith("corrupt.png:") for e in at.error)
    assert any(e.value.startswith("sixteen.png:") and "16-bit" in e.value for e in at.info)  # scaled, with a note
    table = at.dataframe[0].value
    assert any(e.value.startswith("huge.png:") and "too large" in e.value for e in at.error)
    assert list(table["path"]) == ["lesion.png", "corrupt.png", "sixteen.png", "huge.png"]
    assert table["p_malignant"].notna().tolist() == [True, False, True, False]
    assert len(at.get("download_button")) == 1
    # a rerun (e.g. the download button) reuses the session's results instead of recomputing;
    # adding a file analyses only that file; removing files drops their results
    before = dict(at.session_state["_results"]["by_id"])
    at.run()
    assert at.session_state["_results"]["by_id"] == before
    assert all(a is b for a, b in zip(before.values(), at.session_state["_results"]["by_id"].values()))
    at.file_uploader(key="uploads").set_value([("third.png", encode(busi_like(seed=5)), "image/png")]).run()
    assert len(at.session_state["_results"]["by_id"]) == 1
    assert any("1 new file(s) answered" in c.value for c in at.caption)


def test_results_are_kept_per_file_between_reruns():
    from busi_study.app.pages import update_results

    calls = []

    def analyse(uploads):
        calls.append([n for n, _ in uploads])
        return [f"result of {n}" for n, _ in uploads]

    a, b, c = ("id-a", "a.png", b"1"), ("id-b", "b.png", b"2"), ("id-c", "c.png", b"3")
    store, res, n = update_results(None, ("m", True), [a, b], analyse)
    assert res == ["result of a.png", "result of b.png"] and n == 2
    store, res, n = update_results(store, ("m", True), [a, b, c], analyse)      # a file added
    assert calls[-1] == ["c.png"] and n == 1 and res[2] == "result of c.png"
    store, res, n = update_results(store, ("m", True), [c], analyse)            # two removed
    assert n == 0 and res == ["result of c.png"] and list(store["by_id"]) == ["id-c"]
    store, res, n = update_results(store, ("m", False), [c], analyse)           # Grad-CAM switched off
    assert n == 1 and calls[-1] == ["c.png"]


def test_model_card_page_and_model_choice(reports):
    at = _app(reports=str(reports)).run()
    at.sidebar.radio(key="page").set_value("Model card").run()
    assert not at.exception
    heads = [h.value for h in at.header]
    for h in ("Data", "Protocol", "Cross-validated performance", "Calibration and decision thresholds",
              "Localisation (Grad-CAM against the lesion masks)", "External validation", "Weights", "Limitations"):
        assert h in heads
    assert "not a medical device" in at.warning[0].value
    metrics = at.dataframe[0].value
    assert "macro_auc" in set(metrics["metric"]) and "[0.700, 0.850]" in set(metrics["95% CI"])
    at.selectbox(key="model").set_value(at.selectbox(key="model").options[1]).run()
    assert "tiny test model weaker" in at.title[0].value


def test_nothing_written_during_a_session_of_uploads(reports, tmp_path, monkeypatch):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    _app(reports=str(reports)).run()  # warm-up: first imports may write bytecode caches
    monkeypatch.chdir(work)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    at = _app(reports=str(reports)).run()
    for k in range(3):
        at.file_uploader(key="uploads").set_value([(f"img{k}.png", encode(busi_like(seed=k)), "image/png"),
                                                   (f"img{k}.jpg", encode(busi_like(seed=k + 9), "JPEG"), "image/jpeg")])
        at.run()
        assert not at.exception
    at.sidebar.radio(key="page").set_value("Model card").run()
    assert os.listdir(work) == [] and os.listdir(tmp) == []
    assert pd.Series(os.listdir(tmp_path)).isin(["work", "tmp"]).all()


def test_reruns_keep_the_tensorflow_kernel_cache(reports, monkeypatch):
    """Streamlit clears the Keras session after each script run unless the app stops it; that
    would make the first model call of every rerun rebuild TensorFlow's kernels (seconds)."""
    import keras

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(1))
    at = _app(reports=str(reports)).run()
    at.file_uploader(key="uploads").set_value([("a.png", encode(busi_like()), "image/png")]).run()
    at.run()
    assert not at.exception and cleared == []


def test_an_outlining_model_shows_its_outline_and_area_beside_gradcam(tmp_path):
    """The multi-task model (and its fold ensemble): the page shows the predicted outline and its area,
    the CSV has lesion_found / lesion_area, and Grad-CAM explains its class path."""
    from busi_study.app import engine
    from busi_study.models.ensemble import fold_ensemble
    from busi_study.predict import OutlineModel, load_model

    from .app_helpers import make_tiny_outline_model

    path = tmp_path / "run" / "models" / "mt.keras"
    net = make_tiny_outline_model(path)
    lm = engine.load(engine.entry_for(path))
    assert lm.outline is not None and lm.fit == "stretch"
    (r,) = engine.analyse(lm, [("a.png", encode(busi_like(seed=1)))])
    assert r.error == "" and r.outline is not None and r.outline.shape == r.display.shape
    assert r.lesion_area is not None and 0.0 <= r.lesion_area <= 1.0 and r.overlay is not None
    table = engine.results_table([r], lm.decision.get("temperature"))
    assert {"lesion_found", "lesion_area"} <= set(table.columns) and table["lesion_area"].notna().all()
    # its fold ensemble: the same page, Grad-CAM the mean over the members' class paths
    twin = make_tiny_outline_model(tmp_path / "other.keras", seed=1)
    ens_path = tmp_path / "run" / "models" / "mt.folds.keras"
    fold_ensemble([net, twin], "mt.folds").save(ens_path)
    ens_path.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    model, _ = load_model(ens_path)
    assert isinstance(model, OutlineModel) and len(model.chains) == 2
    (r2,) = engine.analyse(engine.load(engine.entry_for(ens_path)), [("a.png", encode(busi_like(seed=1)))])
    assert r2.outline is not None and r2.overlay is not None


def test_draw_outline_marks_the_contour_only():
    from busi_study.app import engine

    rgb = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = engine.draw_outline(rgb, mask)
    green = (out[..., 1] == 255) & (out[..., 0] == 0)
    assert green[10, 15] and not green[20, 20] and not green[2, 2]
