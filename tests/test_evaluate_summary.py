"""Study-level evaluation of prediction tables and the comparison written for index.html."""

import json

import numpy as np
import pandas as pd

from busi_study.evaluation.evaluate import HEADLINE, evaluate, wide_row
from busi_study.report.summary import build_summary, comparison_table


def fake_predictions(seed: int, n: int = 300, skill: float = 2.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    labels = rng.choice(["normal", "benign", "malignant"], size=n, p=[0.2, 0.5, 0.3])
    y = pd.Series(labels).map({"normal": 0, "benign": 1, "malignant": 2}).to_numpy()
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += skill
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    df = pd.DataFrame({"image_id": [f"i{k:04d}" for k in range(n)], "fold": np.arange(n) % 5, "label": labels,
                       "group_id": [f"g{k // 2:04d}" for k in range(n)], "p_normal": p[:, 0], "p_benign": p[:, 1],
                       "p_malignant": p[:, 2]})
    return df.iloc[: int(n * 0.8)].reset_index(drop=True), df.iloc[int(n * 0.8):].reset_index(drop=True)


def test_evaluate_reports_every_protocol_number():
    test, val = fake_predictions(0)
    ev = evaluate(test, val, tta=test, conflict_ids={"i0000", "i0001"}, n_resamples=200, seed=0)
    metrics = set(ev.pooled["metric"])
    assert set(HEADLINE) <= metrics
    row = ev.pooled.set_index("metric")
    assert (row["ci_low"] <= row["value"] + 1e-9).loc[["accuracy", "macro_auc", "sens_at_spec90"]].all()
    assert len(ev.per_fold) == 5 and "malignant_auc" in ev.per_fold
    assert ev.extra["n_without_conflicts"] == len(test) - 2
    assert ev.collapse == []
    assert ev.confusion_counts.to_numpy().sum() == len(test)
    w = wide_row(ev.pooled)
    assert {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "malignant_auc_ci_high"} <= set(w)


def test_collapse_is_flagged():
    test, val = fake_predictions(1)
    test[["p_normal", "p_benign", "p_malignant"]] = [0.1, 0.8, 0.1]
    ev = evaluate(test, val, n_resamples=50)
    assert ev.collapse


def test_summary_writes_comparison_roc_and_paired_differences(tmp_path):
    for name, skill in (("good", 3.0), ("weak", 0.5)):
        test, val = fake_predictions(2, skill=skill)
        ev = evaluate(test, val, n_resamples=100)
        d = tmp_path / "results" / name
        d.mkdir(parents=True)
        test.to_csv(d / "oof.csv", index=False)
        (d / "metrics.json").write_text(json.dumps({
            "pooled": ev.pooled.to_dict(orient="records"), "backbone": "b", "weights": "imagenet",
            "recipe": {"source_study": "S3", "input_size": 32}, "protocol": "grouped CV", "n": len(test),
            "collapse_flags": []}))
    skipped = tmp_path / "results" / "s3_head-resnet50"
    skipped.mkdir()
    (skipped / "SKIPPED.json").write_text(json.dumps({"reason": "no weights", "recipe": {"backbone": "resnet50"}}))
    out = build_summary(tmp_path, n_resamples=100, dpi=50)
    assert out["best"] == "good" and out["skipped"] == [["s3_head-resnet50", "no weights"]]
    table = pd.read_csv(tmp_path / "tables" / "comparison_models.csv")
    assert list(table["model"]) == ["good", "weak", "s3_head-resnet50"]
    assert {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "macro_auc", "malignant_auc", "ece"} <= set(table.columns)
    paired = pd.read_csv(tmp_path / "tables" / "comparison_paired_differences.csv")
    auc = paired.set_index("metric").loc["macro_auc"]
    assert auc["model_b"] == "weak" and auc["diff"] > 0 and auc["ci_low"] > 0
    assert (tmp_path / "figures" / "comparison_roc_malignant.png").exists()
    md = (tmp_path / "tables" / "comparison_models.md").read_text()
    assert "skipped: no weights" in md and "| good |" in md
    assert len(comparison_table(tmp_path)) == 3
