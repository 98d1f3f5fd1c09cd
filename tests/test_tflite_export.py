"""TFLite export of tiny classifiers: four precisions, agreement with Keras, latency, predict with .tflite."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
keras = pytest.importorskip("keras")

from busi_study import cli  # noqa: E402
from busi_study.models import tflite  # noqa: E402
from busi_study.models.builders import BackbonePreprocess  # noqa: E402
from busi_study.predict import load_model, predict_files  # noqa: E402


def tiny_classifier(n_out: int, size: int = 24, seed: int = 0):
    """Image (size, size, 3) in [0, 255] → probabilities, with a custom preprocessing layer like the study's."""
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((size, size, 3), name="image")
    x = BackbonePreprocess("tf", name="preprocess")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(64, activation="relu")(x)  # >= 1024 weights: quantised by dynamic range
    out = keras.layers.Dense(n_out, activation="sigmoid" if n_out == 1 else "softmax")(x)
    return keras.Model(inputs, out)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 24, 24, 3)).astype(np.uint8)
    return base


@pytest.fixture(scope="module")
def exported(tmp_path_factory, images):
    model = tiny_classifier(1)
    out = tmp_path_factory.mktemp("tfl")
    paths = tflite.export_all(model, out / "tiny", images[:20])
    return model, paths


def test_every_precision_converts_and_runs(exported, images):
    model, paths = exported
    assert set(paths) == set(tflite.MODES) and all(p.exists() and p.suffix == ".tflite" for p in paths.values())
    keras_p = model.predict(images[20:].astype(np.float32), verbose=0)
    dp = {}
    for mode, path in paths.items():
        m = tflite.TFLiteModel(path)
        p = m.predict(images[20:].astype(np.float32))
        assert p.shape == keras_p.shape
        dp[mode] = float(np.abs(p - keras_p).max())
    assert dp["float32"] < 1e-5
    assert dp["float16"] < 5e-3 and dp["dynamic_int8"] < 5e-2
    assert dp["full_int8"] < 0.05  # activations int8, output in steps of 1/256
    full = tflite.TFLiteModel(paths["full_int8"])
    assert full.inp["dtype"] == np.uint8 and full.out["dtype"] == np.uint8
    assert tflite.RUNTIME == "ai_edge_litert"


def test_one_export_for_every_precision_gives_the_same_files_byte_for_byte(exported, images):
    """convert_all shares one SavedModel export between the precisions (export_all and the fold
    agreement use it); each flatbuffer must be exactly what a conversion of its own gives."""
    model, paths = exported
    for mode in tflite.MODES:
        alone = tflite.convert(model, mode, images[:20] if mode == "full_int8" else None)
        assert paths[mode].read_bytes() == alone, mode
    assert tflite.convert_all(model, ["float16"]) == {"float16": paths["float16"].read_bytes()}
    with pytest.raises(ValueError, match="mode must be one of"):
        tflite.convert_all(model, ["int4"])


def test_full_int8_needs_training_images():
    with pytest.raises(ValueError, match="representative"):
        tflite.convert(tiny_classifier(1), "full_int8", None)
    with pytest.raises(ValueError, match="mode"):
        tflite.convert(tiny_classifier(1), "int4")


def test_agreement_numbers_on_crafted_predictions():
    y = np.array([0, 0, 1, 1])
    pk = np.array([[0.1], [0.4], [0.6], [0.9]])
    pt = np.array([[0.1], [0.7], [0.6], [0.9]])  # one benign image moved above both malignant ones
    a = tflite.agreement(y == 1, pk, pt)
    assert a["max_abs_dp"] == pytest.approx(0.3) and a["mean_abs_dp"] == pytest.approx(0.075)
    assert a["same_decision"] == 0.75 and a["auc_keras"] == 1.0 and a["auc_tflite"] == 0.75
    assert a["accuracy_keras"] == 1.0 and a["accuracy_tflite"] == 0.75 and a["auc_diff"] == pytest.approx(-0.25)
    labels = np.array([0, 1, 2])
    p3 = np.eye(3) * 0.8 + 0.2 / 3
    b = tflite.agreement_3class(labels, p3, p3[[0, 2, 1]])
    assert b["accuracy_keras"] == 1.0 and b["accuracy_tflite"] == pytest.approx(1 / 3) and b["max_abs_dp"] > 0


def test_latency_includes_decode_and_reports_percentiles(exported, tmp_path, images):
    files = []
    for k in range(3):
        f = tmp_path / f"im{k}.png"
        Image.fromarray(images[k]).save(f)
        files.append(f)
    lat = tflite.latency(exported[1]["full_int8"], files, threads=1, runs=12, warmup=2)
    assert lat["runs"] == 12 and 0 < lat["median_ms"] <= lat["p90_ms"]
    sizes = tflite.size_table(exported[1])
    assert list(sizes["format"]) == list(tflite.MODES) and (sizes["bytes"] > 0).all()
    # int8 weights are smaller than float32 ones
    assert sizes.set_index("format").loc["dynamic_int8", "bytes"] < sizes.set_index("format").loc["float32", "bytes"]


def test_predict_accepts_tflite_three_class_and_binary(tmp_path, images, capsys):
    model3 = tiny_classifier(3, seed=1)
    p3 = tflite.export_all(model3, tmp_path / "three", images[:10], modes=("float32",))["float32"]
    p1 = tflite.export_all(tiny_classifier(1), tmp_path / "bin", images[:10], modes=("full_int8",))["full_int8"]
    files = []
    for k in range(3):
        f = tmp_path / f"x{k}.png"
        Image.fromarray(images[30 + k]).save(f)
        files.append(f)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    m, card = load_model(p3)
    t = predict_files(m, [*files, bad])
    keras_p = model3.predict(images[30:33].astype(np.float32), verbose=0)
    got = t.loc[t["error"] == "", ["p_normal", "p_benign", "p_malignant"]].to_numpy()
    assert np.abs(got - keras_p).max() < 1e-5 and t.loc[3, "error"] != ""
    tb = predict_files(load_model(p1)[0], files)
    assert tb["p_normal"].isna().all() and np.allclose(tb["p_benign"] + tb["p_malignant"], 1)
    assert set(tb["predicted"]) <= {"benign", "malignant"}
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", str(files[0]), "--model", str(p1), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 1
    assert cli.main(["predict", str(files[0]), "--model", str(tmp_path / "missing.tflite")]) == 2
    assert "model file not found" in capsys.readouterr().err
