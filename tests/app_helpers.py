"""A tiny exported model (Keras file + card + validation predictions) in a reports-like folder,
and image bytes of every kind the app must handle. Shared by the app's tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CARD_METRICS = {"protocol": "grouped 5-fold CV, seed 42, pooled out-of-fold; 95% group-bootstrap CI (200 resamples)",
                "accuracy": 0.5, "accuracy_ci_low": 0.4, "accuracy_ci_high": 0.6}


def make_tiny_model(path: Path, seed: int = 0, size: int = 48):
    """Input (size, size, 3) pixels 0-255 → Rescaling → Conv2D 'conv' → GAP → Dense(3, softmax)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out, name=f"tiny{seed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def val_predictions(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Over-confident validation predictions: right 70 % of the time, always ~0.95 sure."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    guess = np.where(rng.random(n) < 0.7, y, (y + 1) % 3)
    p = np.full((n, 3), 0.025)
    p[np.arange(n), guess] = 0.95
    p[:, 2] += rng.random(n) * 0.01  # distinct malignant scores
    p /= p.sum(axis=1, keepdims=True)
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "fold": np.arange(n) % 5,
                         "label": np.array(["normal", "benign", "malignant"])[y],
                         "p_normal": p[:, 0], "p_benign": p[:, 1], "p_malignant": p[:, 2]})


def make_run(reports: Path, models: dict[str, float | None], with_decision: bool = True, with_val: bool = True) -> Path:
    """``reports/<run>/models/<name>.keras`` + card (CV macro AUC given, None: no metrics), the
    run's results (validation predictions; standing in for the out-of-fold ones too) and
    ``reports/latest`` → the run."""
    from busi_study.evaluation.deployment import decision_settings
    from busi_study.results import ResultsStore

    run = reports / "20260101T000000Z-test"
    for k, (name, auc) in enumerate(models.items()):
        make_tiny_model(run / "models" / f"{name}.keras", seed=k)
        val = val_predictions(seed=k)
        card = {"model": name, "title": f"tiny test model {name}", "classes": ["normal", "benign", "malignant"],
                "weights": "random init", "trained_on": "nothing (test)", "gradcam_layer": "conv",
                "cv_metrics": {} if auc is None else {**CARD_METRICS, "macro_auc": auc,
                                                       "macro_auc_ci_low": auc - 0.1, "macro_auc_ci_high": auc + 0.05}}
        if with_decision:
            card["decision"] = decision_settings(val)
        (run / "models" / f"{name}.json").write_text(json.dumps(card))
        if with_val:
            ResultsStore(run).write_trained(name, {"oof": val, "val": val}, {"model": name, "pooled": []})
    latest = reports / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run.name)
    return run


def busi_like(h: int = 360, w: int = 480, seed: int = 0) -> np.ndarray:
    """A greyscale speckle image with a dark oval 'lesion', BUSI's size and intensity range."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = 90 + 40 * rng.standard_normal((h, w))
    img[((yy - h / 2) / (h / 5)) ** 2 + ((xx - w / 2) / (w / 6)) ** 2 < 1] -= 60
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def png16(h: int = 64, w: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(h * w, dtype=np.uint16).reshape(h, w) * 7).save(buf, format="PNG")
    return buf.getvalue()


def huge_png(side: int = 10_000) -> bytes:
    """A real 10,000 × 10,000 PNG (all black: about 100 kB compressed, 100 MB decoded)."""
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_tiny_outline_model(path: Path, size: int = 32, seed: int = 0, fit: str = "stretch"):
    """A network shaped like the multi-task U-Net's export (preprocess → nested encoder with stride 2/4/8/16
    skips and a top map → nested decoder head → [probabilities, lesion map at the input size]), tiny and
    untrained, with its card (outline settings, fit)."""
    import keras
    from keras import layers

    from busi_study.models.builders import BackbonePreprocess
    from busi_study.models.multitask import decoder_head

    keras.utils.set_random_seed(seed)
    x0 = keras.Input((size, size, 3))
    x, taps = x0, []
    for k in range(5):
        x = layers.Conv2D(4 + 2 * k, 3, strides=2, padding="same", activation="relu", name=f"enc{k}")(x)
        taps.append(x)
    taps[-1] = layers.ReLU(name="out_relu")(taps[-1])
    encoder = keras.Model(x0, taps, name="encoder")
    shapes = {lv: tuple(t.shape[1:]) for lv, t in zip(("S2", "S4", "S8", "S16"), taps[:4])}
    head = decoder_head(shapes, tuple(taps[-1].shape[1:]), channels=2, dropout=0.0)
    inp = keras.Input((size, size, 3), name="image")
    probs, mask = head(encoder(BackbonePreprocess("tf", name="preprocess")(inp)))
    model = keras.Model(inp, [layers.Identity(name="probs_out")(probs),
                              layers.UpSampling2D(2, interpolation="bilinear", name="mask_out")(mask)], name="tiny_outline")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    card = {"model": path.stem, "title": "tiny outline model", "classes": ["normal", "benign", "malignant"],
            "input": {"size": [size, size, 3], "fit": fit}, "gradcam_layer": "out_relu",
            "outline": {"output": 1, "threshold": 0.5, "min_area": 0.0, "fit": fit}, "cv_metrics": dict(CARD_METRICS)}
    path.with_suffix(".json").write_text(json.dumps(card))
    return model
