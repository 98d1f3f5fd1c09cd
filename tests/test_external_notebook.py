"""Notebook 08 end to end on a crafted run (a tiny CNN exported as a final model, no training) and a
tiny BrEaST-layout folder; and its skip path without external data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import papermill as pm
import pytest

from busi_study.cli import REPO
from busi_study.data.breast_demo import make_demo_external

NB = REPO / "notebooks" / "08_external_validation.ipynb"
PROBA = ["p_normal", "p_benign", "p_malignant"]


def _kernel() -> str:
    from busi_study.report.runner import _kernel as pick

    return pick(None)


def _fake_predictions(rng, n, fold_col=True):
    labels = rng.choice(["normal", "benign", "malignant"], n, p=[0.2, 0.5, 0.3])
    s = np.where(labels == "malignant", rng.uniform(0.3, 0.95, n), rng.uniform(0.02, 0.6, n))
    p = np.c_[(1 - s) * 0.3, (1 - s) * 0.7, s]
    d = pd.DataFrame(p, columns=PROBA).assign(label=labels, image_id=[f"i{k}" for k in range(n)],
                                              group_id=[f"g{k // 2}" for k in range(n)])
    return d.assign(fold=np.arange(n) % 3) if fold_col else d


@pytest.fixture(scope="module")
def crafted_run(tmp_path_factory):
    """reports/<run>/ with two final models (tiny CNNs, their layer named conv3 like S2's) and BUSI CV predictions."""
    keras = pytest.importorskip("keras")
    run = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("tiny_a", "tiny_b")):
        keras.utils.set_random_seed(k)
        inp = keras.Input((32, 32, 3))
        x = keras.layers.Rescaling(1 / 255)(inp)
        x = keras.layers.Conv2D(4, 3, activation="relu", name="conv3")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
        (run / "models").mkdir(exist_ok=True)
        model.save(run / "models" / f"{name}.keras")
        (run / "models" / f"{name}.json").write_text(json.dumps({"model": name, "title": name, "weights": "random init"}))
        res = run / "results" / name
        res.mkdir(parents=True)
        _fake_predictions(rng, 90).to_csv(res / "oof.csv", index=False)
        _fake_predictions(rng, 60).to_csv(res / "val_predictions.csv", index=False)
        (res / "metrics.json").write_text(json.dumps({"model": name, "recipe": {"backbone": None, "input_size": 32}}))
    return run


def _execute(run, tmp_path, external):
    out = tmp_path / "08.ipynb"
    pm.execute_notebook(str(NB), str(out), kernel_name=_kernel(), cwd=str(NB.parent), progress_bar=False,
                        parameters={"report_dir": str(run), "external_data": external, "bootstrap_resamples": 50,
                                    "figure_dpi": 60, "demo": True})
    nb = json.loads(out.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def test_notebook_skips_without_external_data(crafted_run, tmp_path):
    text = _execute(crafted_run, tmp_path, None)
    assert "skipped: no external data given" in text and "cancerimagingarchive" in text
    assert json.loads((crafted_run / "external_summary.json").read_text())["skipped"].startswith("no external data given")


def test_notebook_full_path_on_demo_layout(crafted_run, tmp_path):
    root = make_demo_external(tmp_path)
    text = _execute(crafted_run, tmp_path, str(root))
    assert "skipped" not in text
    tables = crafted_run / "tables"
    metrics = pd.read_csv(tables / "external_validation_metrics.csv")
    assert set(metrics["model"]) == {"tiny_a", "tiny_b"}
    auc = metrics[metrics["metric"] == "auc"]
    assert auc["value"].between(0, 1).all() and auc["cv_value"].notna().all()
    assert len(pd.read_csv(tables / "external_normal_images.csv")) == 2 * 2  # 2 normals × 2 models
    called = pd.read_csv(tables / "external_predicted_classes.csv")
    assert called[["normal", "benign", "malignant"]].to_numpy().sum() == 2 * 20  # every image of both models
    assert set(pd.read_csv(tables / "external_auc_by_subgroup.csv")["by"]) == {"birads_group", "image_type"}
    assert len(pd.read_csv(tables / "external_paired_differences.csv")) == 1
    loc = pd.read_csv(tables / "external_localisation_summary.csv")
    assert set(loc["measure"]) == {"pointing_hit", "energy_inside"} and loc["n"].max() == 18  # the 18 demo lesions
    summary = json.loads((crafted_run / "external_summary.json").read_text())
    assert summary["n_lesions"] == 18 and summary["best"] in {"tiny_a", "tiny_b"}
    for fig in ("external_roc_reliability", "external_missed_malignancies", "external_gradcam_overlays"):
        assert (crafted_run / "figures" / f"{fig}.png").exists()
