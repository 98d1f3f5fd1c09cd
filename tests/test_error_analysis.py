import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busi_study.analysis import error_analysis as ea

from .test_evaluate_summary import fake_predictions


def test_error_rate_by_bins_with_cis():
    test, _ = fake_predictions(3, n=400)
    pred = ea.with_predictions(test)
    pred["size"] = np.arange(len(pred))
    t = ea.error_rate_by(pred, "size", n_resamples=200)
    assert len(t) == 4 and t["n"].sum() == len(pred)
    assert ((t["ci_low"] <= t["error_rate"]) & (t["error_rate"] <= t["ci_high"])).all()
    pred["flag"] = pred["label"] == "malignant"
    t2 = ea.error_rate_by(pred, "flag", n_resamples=100)
    assert set(t2["level"]) == {"True", "False"}


def test_kappa_and_hard_cases():
    test, _ = fake_predictions(4)
    a = ea.with_predictions(test)
    b = a.copy()
    assert ea.pairwise_kappa({"a": a, "b": b}).loc["a", "b"] == pytest.approx(1.0)
    hard = ea.hard_cases({"a": a, "b": b})
    assert len(hard) == int((~a["correct"]).sum())
    c = a.copy()
    c["predicted"] = c["label"]
    c["correct"] = True
    assert ea.hard_cases({"a": a, "c": c}).empty


def test_temperature_scaling_is_fitted_on_validation_and_helps_overconfidence():
    rng = np.random.default_rng(0)
    n = 1000
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.0
    p = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)  # over-confident by T = 3
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "fold": np.arange(n) % 5,
                       "label": np.array(["normal", "benign", "malignant"])[y], "group_id": [f"g{k}" for k in range(n)],
                       "p_normal": p[:, 0], "p_benign": p[:, 1], "p_malignant": p[:, 2]})
    val, test = df.iloc[:500], df.iloc[500:].reset_index(drop=True)
    out = ea.calibration_summary("m", test, val, n_resamples=100)
    row = out["row"]
    assert row["ece_after"] < row["ece_before"]
    assert all(2.0 < float(t) < 4.5 for t in row["temperatures"].split(", "))
    assert row["accuracy_after"] == pytest.approx(row["accuracy_before"])  # scaling keeps the argmax


def test_annotation_features_find_colour_and_marks(tmp_path):
    grey = np.full((80, 100), 90, np.uint8)
    plain = np.stack([grey] * 3, axis=2)
    marked = plain.copy()
    marked[40, 20:60] = 255                           # a thin bright caliper line
    coloured = plain.copy()
    coloured[10:30, 10:30] = [200, 40, 40]             # a colour overlay
    for name, arr in (("plain", plain), ("marked", marked), ("coloured", coloured)):
        Image.fromarray(arr).save(tmp_path / f"{name}.png")
    manifest = pd.DataFrame({"image_id": ["plain", "marked", "coloured"], "path": ["plain.png", "marked.png", "coloured.png"]})
    f = ea.annotation_features(manifest, tmp_path, progress=False).set_index("image_id")
    assert not f.loc["plain", "has_colour"] and not f.loc["plain", "has_marks"]
    assert f.loc["marked", "has_marks"] and not f.loc["marked", "has_colour"]
    assert f.loc["coloured", "has_colour"]


def test_localisation_summary_has_cis_and_baseline():
    from busi_study.studies.heldout_maps import summarise

    rng = np.random.default_rng(0)
    n = 120
    loc = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "group_id": [f"g{k // 3}" for k in range(n)],
                        "correct": rng.random(n) > 0.3})
    for m in ("pointing_hit", "energy_inside", "iou"):
        loc[m] = rng.random(n) > 0.2 if m == "pointing_hit" else rng.random(n)
        loc[f"{m}_true"] = loc[m]
        loc[f"baseline_{m}"] = rng.random(n) * 0.5
    loc = loc.astype({c: float for c in loc.columns if c.startswith(("pointing", "energy", "iou", "baseline"))})
    t = summarise(loc, "m", n_resamples=200)
    assert set(t["subset"]) == {"all lesions", "correctly classified lesions"}
    pg = t[(t["measure"] == "pointing_hit") & (t["subset"] == "all lesions")].set_index("map")
    assert pg.loc["Grad-CAM (predicted class)", "value"] == pytest.approx(loc["pointing_hit"].mean())
    assert (t["ci_low"] <= t["value"] + 1e-12).all() and (t["value"] <= t["ci_high"] + 1e-12).all()
