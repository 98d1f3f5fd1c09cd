"""External validation: the BrEaST data layer, the binary metrics, and `python -m busi_study evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from busi_study.data.breast import ExternalDataUnavailable, birads_group, locate, scan_external
from busi_study.data.breast_demo import make_demo_external
from busi_study.data.release_check import load_reference
from busi_study.evaluation.external import (
    binary_table,
    busi_cv_table,
    paired_auc_difference,
    settings_from_validation,
    subgroup_auc,
    with_drop,
)

# ---------------------------------------------------------------- data layer


def _png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)


@pytest.fixture()
def crafted_breast(tmp_path):
    """A BrEaST-layout folder (images/ and masks/ sub-folders) with one of each problem."""
    rng = np.random.default_rng(0)
    root = tmp_path / "breast"
    img = lambda: rng.integers(0, 255, (30, 40), dtype=np.uint8)  # noqa: E731
    rows = []
    for k, label in enumerate(["benign", "malignant", "benign", "normal", "malignant"], 1):
        _png(root / "images" / f"case{k:03d}.png", img())
        if label != "normal":
            _png(root / "masks" / f"case{k:03d}_tumor.png", (rng.random((30, 40)) > 0.5).astype(np.uint8) * 255)
        rows.append({"CaseID": k, "Image_filename": f"case{k:03d}.png", "Mask_tumor_filename": "" if label == "normal" else
                     f"case{k:03d}_tumor.png", "Mask_other_filename": "", "BIRADS": ["2", "5", "4a", "1", "4c"][k - 1],
                     "Classification": label})
    # RGBA with a transparent corner, greyscale content
    a = np.dstack([img()] * 3 + [np.full((30, 40), 255, np.uint8)])
    a[:5, :5, 3] = 0
    _png(root / "images" / "case001.png", a, "RGBA")
    # colour overlay on case002
    c = np.dstack([img()] * 3)
    c[3:8, 3:20, 0] = 255
    _png(root / "images" / "case002.png", c)
    (root / "images" / "case006.png").write_bytes(b"")                      # empty image file
    rows.append({"CaseID": 6, "Image_filename": "case006.png", "Classification": "benign"})
    _png(root / "images" / "case007.png", img())                           # unknown label
    rows.append({"CaseID": 7, "Image_filename": "case007.png", "Classification": "suspicious"})
    rows.append({"CaseID": 8, "Image_filename": "case008.png", "Classification": "benign"})  # file missing
    _png(root / "images" / "case009.png", img())                           # no clinical row
    _png(root / "masks" / "case005_tumor.png", np.zeros((10, 10), np.uint8))  # wrong-size mask (replaces the good one)
    (root / "notes.docx").write_text("?")                                  # unexpected file
    pd.DataFrame(rows).fillna("").to_csv(root / "clinical.csv", index=False)
    return root


def test_locate_says_where_to_get_it(tmp_path):
    with pytest.raises(ExternalDataUnavailable, match="cancerimagingarchive.*--external PATH"):
        locate(None)
    with pytest.raises(ExternalDataUnavailable, match="not found"):
        locate(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExternalDataUnavailable, match="no caseNNN.png"):
        locate(tmp_path / "empty")
    # one line: a runner prints it as it is
    with pytest.raises(ExternalDataUnavailable) as exc:
        locate("")
    assert "\n" not in str(exc.value)


def test_scan_lists_every_problem_and_keeps_the_rest(crafted_breast):
    d = scan_external(locate(crafted_breast), progress=False)
    assert list(d.table["image_id"]) == ["case001", "case002", "case003", "case004", "case005"]
    problems = dict(zip(d.issues["path"], d.issues["problem"]))
    assert problems["images/case006.png"].startswith("empty file")
    assert problems["images/case007.png"] == "unknown label 'suspicious'"
    assert problems["case008.png"] == "in the clinical table, file missing"
    assert problems["images/case009.png"].startswith("no row in the clinical table")
    assert problems["masks/case005_tumor.png"].startswith("mask size 10x10 differs")
    assert problems["notes.docx"].startswith("unexpected file type")
    t = d.table.set_index("image_id")
    assert t.loc["case005", "tumour_mask"] == "" and t.loc["case003", "tumour_mask"] == "masks/case003_tumor.png"
    assert bool(t.loc["case001", "has_alpha"]) and not bool(t.loc["case003", "has_alpha"])
    assert t.loc["case001", "image_type"] == "greyscale" and t.loc["case002", "image_type"] == "colour"
    assert t.loc["case001", "patient_id"] == "patient001" and t.loc["case002", "birads_group"] == "5"
    assert list(d.lesions["label"]) == ["benign", "malignant", "benign", "malignant"]
    # not the release: the 8 image files present carry release names but other pixels; the rest is missing
    ref = d.summary["reference"]
    assert not ref["all_match"] and ref["pixel_identical_images"] == 0
    assert ref["counts"]["different"]["image"] == 8 and ref["counts"]["missing"]["image"] == 248
    assert any("benign" in p for p in d.summary["count_problems"])


def test_scan_of_the_demo_layout_and_reference_list(tmp_path):
    root = make_demo_external(tmp_path, {"normal": 1, "benign": 3, "malignant": 2})
    d = scan_external(locate(root), progress=False)
    assert len(d.table) == 6 and d.issues.empty and (d.table["tumour_mask"] != "").sum() == 5
    assert d.table["has_alpha"].any() and (d.table["image_type"] == "colour").any()
    ref = load_reference("breast_reference.csv")
    assert len(ref) == 522 and (ref["kind"] == "image").sum() == 256
    assert ref.loc[ref["kind"] == "image", "label"].value_counts().to_dict() == {"benign": 154, "malignant": 98, "normal": 4}


def test_birads_groups():
    assert [birads_group(v) for v in ["1", "3", "4A", "4c", "5", "", "6"]] == ["1–3", "1–3", "4a", "4c", "5", "", ""]


# ---------------------------------------------------------------- metrics


def _proba(score, rng):
    """3-class probabilities with p_malignant = score and the rest split benign/normal."""
    p = np.zeros((score.size, 3))
    p[:, 2] = score
    p[:, 1] = (1 - score) * rng.uniform(0.6, 1.0, score.size)
    p[:, 0] = 1 - p[:, 1] - p[:, 2]
    return p


def test_binary_table_matches_sklearn_and_counts_calls():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(40, int), np.full(30, 2)]
    score = np.clip(np.r_[rng.normal(0.3, 0.15, 40), rng.normal(0.6, 0.15, 30)], 0.01, 0.98)
    p = _proba(score, rng)
    t = binary_table(y, p, np.arange(70), 1.0, {"t": 0.5}, n_resamples=300, seed=1).set_index("metric")
    assert t.loc["auc", "value"] == pytest.approx(roc_auc_score(y == 2, score))
    assert t.loc["auc_ratio_score", "value"] == pytest.approx(roc_auc_score(y == 2, p[:, 2] / (p[:, 1] + p[:, 2])))
    assert t.loc["sensitivity_t", "value"] == pytest.approx(np.mean(score[y == 2] >= 0.5))
    assert t.loc["specificity_t", "value"] == pytest.approx(np.mean(score[y == 1] < 0.5))
    assert t.loc["sensitivity_argmax", "value"] == pytest.approx(np.mean(p[y == 2].argmax(1) == 2))
    assert t.loc["log_loss", "value"] == pytest.approx(-np.mean(np.log(p[np.arange(70), y])))
    assert t.loc["log_loss_T", "value"] == pytest.approx(t.loc["log_loss", "value"])  # T = 1 changes nothing
    for m in ("auc", "sensitivity_t", "log_loss"):
        assert t.loc[m, "ci_low"] <= t.loc[m, "value"] <= t.loc[m, "ci_high"]
        assert t.loc[m, "ci_high"] - t.loc[m, "ci_low"] > 0.01
    t2 = binary_table(y, p, np.arange(70), 2.0, {"t": 0.5}, n_resamples=50).set_index("metric")
    assert t2.loc["log_loss_T", "value"] != pytest.approx(t2.loc["log_loss", "value"])


def test_settings_come_from_validation_only():
    rng = np.random.default_rng(5)
    labels = np.array(["normal"] * 20 + ["benign"] * 50 + ["malignant"] * 30)
    score = np.r_[rng.uniform(0, 0.2, 20), rng.uniform(0, 0.6, 50), rng.uniform(0.3, 1, 30)]
    val = pd.DataFrame(_proba(score, rng), columns=["p_normal", "p_benign", "p_malignant"]).assign(label=labels, fold=0)
    s = settings_from_validation(val)
    ben, mal = score[labels == "benign"], score[labels == "malignant"]
    assert np.mean(ben < s.thresholds["spec90"]) >= 0.9
    cand = np.r_[ben, mal]
    lower = cand[cand < s.thresholds["spec90"]].max()  # the next lower candidate misses the target: t is the lowest such
    assert np.mean(ben < lower) < 0.9
    assert np.mean(mal >= s.thresholds["sens90"]) >= 0.9
    assert s.temperature > 0 and "pooled validation" in s.rule


def test_busi_cv_table_and_drop_and_paired_and_subgroups():
    rng = np.random.default_rng(7)
    n = 120
    labels = rng.choice(["normal", "benign", "malignant"], n, p=[0.2, 0.5, 0.3])
    score = np.where(labels == "malignant", rng.uniform(0.3, 1, n), rng.uniform(0, 0.6, n))
    pr = _proba(score, rng)
    oof = pd.DataFrame(pr, columns=["p_normal", "p_benign", "p_malignant"]).assign(
        label=labels, fold=np.arange(n) % 3, group_id=[f"g{i // 2}" for i in range(n)], image_id=[f"i{i}" for i in range(n)])
    cv = busi_cv_table(oof, oof, n_resamples=100)
    lesion = labels != "normal"
    assert cv.set_index("metric").loc["auc", "value"] == pytest.approx(roc_auc_score(labels[lesion] == "malignant", score[lesion]))
    # the ratio-score AUC is the study's own benign_vs_malignant_auc on the same predictions
    from busi_study.evaluation.metrics import classification_metrics

    y3 = pd.Series(labels).map({"normal": 0, "benign": 1, "malignant": 2}).to_numpy()
    assert cv.set_index("metric").loc["auc_ratio_score", "value"] == pytest.approx(
        classification_metrics(y3, pr / pr.sum(axis=1, keepdims=True))["benign_vs_malignant_auc"])
    ext = cv.assign(value=cv["value"] - 0.1)
    drop = with_drop(ext, cv).set_index("metric")
    assert drop.loc["auc", "drop"] == pytest.approx(0.1)
    y = np.where(labels[lesion] == "malignant", 2, 1)
    d = paired_auc_difference(y, {"a": score[lesion], "b": score[lesion], "c": rng.random(lesion.sum())},
                              np.arange(lesion.sum()), "a", n_resamples=200)
    assert d.set_index("model_b").loc["b", "diff"] == 0 and d.set_index("model_b").loc["b", "p_two_sided"] == 1
    assert d.set_index("model_b").loc["c", "diff"] > 0.2
    sub = subgroup_auc(y, score[lesion], np.arange(lesion.sum()), np.where(np.arange(lesion.sum()) % 2, "odd", "even"),
                       n_resamples=100)
    assert set(sub["subgroup"]) == {"odd", "even"} and sub["n"].sum() == lesion.sum()
    one_class = subgroup_auc(np.full(5, 1), np.arange(5.0), np.arange(5), ["x"] * 5, n_resamples=10)
    assert np.isnan(one_class["auc"].iloc[0]) and one_class["note"].iloc[0] == "no AUC: one class only"
    few = subgroup_auc(np.r_[np.full(6, 1), 2], np.arange(7.0), np.arange(7), ["x"] * 7, n_resamples=10)
    assert few["note"].iloc[0] == "unstable: only 1 of one class"


# ---------------------------------------------------------------- evaluate command


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A Keras model whose p_malignant grows with image brightness (no training)."""
    keras = pytest.importorskip("keras")
    inp = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inp))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inp, dense(x))
    kernel = np.zeros((3, 3), np.float32)
    kernel[:, 2] = 10 / 3
    dense.set_weights([kernel, np.array([-100.0, 5.0, 0.0], np.float32)])
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    (path.with_suffix(".json")).write_text(json.dumps({"model": "tiny", "title": "tiny test model"}))
    return path


@pytest.fixture()
def labelled_folder(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "images"
    rows = []
    for k in range(24):
        label = "malignant" if k % 2 else "benign"
        level = rng.uniform(0.45, 0.95) if label == "malignant" else rng.uniform(0.05, 0.55)
        _png(root / ("sub" if k % 3 else "") / f"img{k}.png", np.full((20, 30), int(level * 255), np.uint8))
        rows.append({"file": f"img{k}.png", "diagnosis": label.upper(), "patient": f"p{k // 2}"})
    _png(root / "img_normal.png", np.full((20, 30), 10, np.uint8))
    rows.append({"file": "img_normal.png", "diagnosis": "normal", "patient": "p99"})
    rows.append({"file": "gone.png", "diagnosis": "benign", "patient": "p98"})          # missing file
    _png(root / "odd.png", np.full((20, 30), 100, np.uint8))
    rows.append({"file": "odd.png", "diagnosis": "BI-RADS 3", "patient": "p97"})       # unknown label
    (root / "broken.png").write_text("not a png")
    rows.append({"file": "broken.png", "diagnosis": "malignant", "patient": "p96"})    # unreadable image
    table = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return root, table


def test_evaluate_command(tiny_model, labelled_folder, tmp_path):
    from busi_study.cli import main

    root, table = labelled_folder
    out = tmp_path / "out"
    code = main(["evaluate", str(root), "--labels", str(table), "--model", str(tiny_model), "--out", str(out),
                 "--image-column", "file", "--label-column", "diagnosis", "--group-column", "patient",
                 "--negative", "benign", "--threshold", "half=0.5", "--resamples", "200"])
    assert code == 0
    bad = pd.read_csv(out / "bad_rows.csv")
    reasons = dict(zip(bad["image"], bad["reason"]))
    assert reasons["gone.png"] == "image file not found"
    assert reasons["odd.png"].startswith("unknown label 'BI-RADS 3'")
    assert reasons["broken.png"].startswith("unreadable image")
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 25 and set(pred["label"]) == {"benign", "malignant", "normal"}
    task = pred[pred["in_task"]]
    metrics = pd.read_csv(out / "metrics_table.csv").set_index("metric")
    assert metrics.loc["auc", "value"] == pytest.approx(roc_auc_score(task["label"] == "malignant", task["p_malignant"]))
    assert 0.7 < metrics.loc["auc", "value"] < 1.0  # overlapping brightness: informative, not perfect
    assert metrics.loc["sensitivity_half", "value"] == pytest.approx(np.mean(task.loc[task["label"] == "malignant", "p_malignant"] >= 0.5))
    info = json.loads((out / "metrics.json").read_text())
    assert info["n_bad"] == 3 and info["n_binary"] == 24 and info["n_groups"] == 12 and info["other_classes"] == {"normal": 1}
    assert info["score"] == "p_malignant" and info["not_for_clinical_use"]
    for fig in ("roc.png", "reliability.png"):
        assert Image.open(out / fig).size[0] > 100


def test_evaluate_rejects_bad_options(tiny_model, labelled_folder, tmp_path, capsys):
    from busi_study.cli import main

    root, table = labelled_folder
    assert main(["evaluate", str(root), "--labels", str(table), "--model", str(tiny_model), "--out", str(tmp_path / "o"),
                 "--image-column", "nope"]) == 2
    assert "column 'nope' not in the label table" in capsys.readouterr().err
    assert main(["evaluate", str(root), "--labels", str(table), "--model", str(tiny_model), "--out", str(tmp_path / "o"),
                 "--image-column", "file", "--label-column", "diagnosis", "--positive", "cancer"]) == 2


# ---------------------------------------------------------------- the shared copy, the report


SHARED_BREAST = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "breast").resolve()


@pytest.mark.skipif(not SHARED_BREAST.is_dir(), reason="shared BrEaST copy not present")
def test_shared_copy_is_the_release():
    d = scan_external(locate(SHARED_BREAST), progress=False)
    s = d.summary
    assert s["reference"]["all_match"] and s["reference"]["pixel_identical_images"] == 256
    assert s["images_per_class"] == {"normal": 4, "benign": 154, "malignant": 98} and s["n_tumour_masks"] == 252
    assert s["n_patients"] == 256 and s["n_alpha_not_opaque"] == 31 and s["n_colour"] == 163 and d.issues.empty


def _external_run(tmp_path, auc=0.8):
    run = tmp_path / "run"
    (run / "tables").mkdir(parents=True)
    rows = [{"model": "m1", "metric": m, "label": m, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n_valid": 100,
             "cv_value": v + 0.1, "cv_ci_low": v + 0.05, "cv_ci_high": v + 0.15, "drop": 0.1}
            for m, v in (("auc", auc), ("sensitivity_spec90", 0.5), ("specificity_spec90", 0.9), ("ece", 0.1),
                         ("log_loss", 0.7), ("log_loss_T", 0.6), ("ece_T", 0.08))]
    pd.DataFrame(rows).to_csv(run / "tables" / "external_validation_metrics.csv", index=False)
    (run / "external_summary.json").write_text(json.dumps({"best": "m1", "n_lesions": 252, "n_malignant": 98,
                                                           "data": {"dataset": "BrEaST-Lesions_USG", "n_images": 256}}))
    return run


def test_front_page_readme_and_reference_check(tmp_path):
    from busi_study.report.index import _external_section
    from busi_study.report.reference_results import _check_external, _external_markdown

    run = _external_run(tmp_path)
    page = _external_section(run)
    assert "m1" in page and "0.800" in page and "BUSI CV 0.900" in page and "best by BUSI CV" in page
    ref = tmp_path / "ref"
    ref.mkdir()
    for f in ("external_summary.json",):
        (ref / f).write_text((run / f).read_text())
    (ref / "external_validation_metrics.csv").write_text((run / "tables" / "external_validation_metrics.csv").read_text())
    md = "\n".join(_external_markdown(ref))
    assert "| m1 (best by BUSI CV) | 0.800 [0.750, 0.850]<br>BUSI 0.900, drop +0.100" in md
    same = pd.DataFrame(_check_external(run, ref))
    assert same["inside"].all() and set(same["metric"]) == {"external_auc", "external_sensitivity_spec90",
                                                            "external_specificity_spec90", "external_ece"}
    worse = pd.DataFrame(_check_external(_external_run(tmp_path / "b", auc=0.6), ref)).set_index("metric")
    assert not worse.loc["external_auc", "inside"]
    (run / "external_summary.json").write_text(json.dumps({"skipped": "no external data given. Get it from TCIA"}))
    assert "skipped" in _external_section(run) and "TCIA" in _external_section(run)


def test_clinical_table_from_the_release_xlsx(tmp_path):
    pytest.importorskip("openpyxl")
    from busi_study.data.breast import read_clinical

    root = make_demo_external(tmp_path, {"normal": 1, "benign": 2, "malignant": 2})
    table = pd.read_csv(root / "clinical.csv")
    (root / "clinical.csv").unlink()
    with pd.ExcelWriter(root / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx") as xl:
        table.to_excel(xl, sheet_name="BrEaST-Lesions-USG clinical dat", index=False)
        pd.DataFrame({"Column": ["CaseID"], "Description": ["id"]}).to_excel(xl, sheet_name="Data Dictionary", index=False)
    t = read_clinical(root)
    assert t.attrs["source"].endswith(".xlsx") and list(t["Classification"]) == list(table["Classification"])
    d = scan_external(locate(root), progress=False)
    assert len(d.table) == 5 and d.issues.empty and not d.summary["clinical_xlsx_identical"]
    (root / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx").unlink()
    from busi_study.errors import DataSourceError

    with pytest.raises(DataSourceError, match="no clinical table"):
        read_clinical(root)
