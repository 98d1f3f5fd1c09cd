"""The study-level summary on ``index.html``: model comparison, ROC overlay, paired differences.

Built by the runner after the notebooks, from the results the model notebooks wrote under
``results/<model>/`` (``metrics.json`` / ``SKIPPED.json`` and ``oof.csv``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..data.store import write_text  # noqa: E402
from ..evaluation.bootstrap import paired_bootstrap_difference  # noqa: E402
from ..evaluation.evaluate import HEADLINE, arrays, wide_row  # noqa: E402
from ..info import DEMO_BANNER  # noqa: E402
from ..plots import roc_overlay  # noqa: E402
from ..results import ResultsStore  # noqa: E402
from .export import save_figure, save_table  # noqa: E402

PAIRED_METRICS = ("accuracy", "macro_auc", "auc_malignant", "benign_vs_malignant_auc")


def comparison_table(run_dir: Path) -> pd.DataFrame:
    """One row per model (trained or skipped): name, backbone, weights, protocol, n, flags, and
    every headline metric with ``_ci_low`` / ``_ci_high`` beside it."""
    store = ResultsStore(run_dir)
    trained, skipped = store.records(), store.skipped()
    rows = []
    for name, m in trained.items():
        pooled = pd.DataFrame(m["pooled"])
        rows.append({"model": name, "source_study": m["recipe"].get("source_study", ""), "backbone": m["backbone"],
                     "weights": m["weights"], "input_size": m["recipe"]["input_size"], "protocol": m["protocol"],
                     "n": m["n"], "status": "trained", "flags": "; ".join(m.get("collapse_flags") or []),
                     **wide_row(pooled, HEADLINE),
                     "cv_seconds": m.get("timing", {}).get("cv_s"),
                     "fold_seconds": " ".join(f"{x:.0f}" for x in m.get("timing", {}).get("per_fold_s", []))})
    for name, s in skipped.items():
        rec = s.get("recipe", {})
        rows.append({"model": name, "source_study": rec.get("source_study", ""), "backbone": rec.get("backbone"),
                     "weights": rec.get("weights_label", ""), "input_size": rec.get("input_size"), "protocol": "",
                     "n": 0, "status": "skipped", "flags": s["reason"]})
    return pd.DataFrame(rows)


def build_summary(run_dir: Path, demo: bool = False, n_resamples: int = 2000, seed: int = 0, dpi: int = 300) -> dict:
    """Write the comparison table, the ROC overlay and the paired differences; return a summary
    dict for the index page (empty when no model ran)."""
    run_dir = Path(run_dir)
    table = comparison_table(run_dir)
    if table.empty:
        return {}
    save_table(table, "comparison_models", run_dir)
    trained = table[table["status"] == "trained"]
    out = {"table": table, "skipped": table[table["status"] == "skipped"][["model", "flags"]].values.tolist()}
    write_text(markdown_table(table), run_dir / "tables" / "comparison_models.md")
    if trained.empty:
        return out
    store = ResultsStore(run_dir)
    preds = {m: store.load(m).oof for m in trained["model"]}
    title = f"Malignant vs rest, pooled out-of-fold predictions (grouped CV, n = {int(trained['n'].iloc[0])})"
    if demo:
        title += f"\n[{DEMO_BANNER}]"
    fig = roc_overlay(preds, title)
    save_figure(fig, "comparison_roc_malignant", run_dir, dpi=dpi)
    plt.close(fig)
    best = trained.sort_values("macro_auc", ascending=False)["model"].iloc[0]
    out["best"] = best
    diffs = []
    base = preds[best].sort_values("image_id").reset_index(drop=True)
    for other in trained["model"]:
        if other == best:
            continue
        o = preds[other].sort_values("image_id").reset_index(drop=True)
        if not (o["image_id"].to_numpy() == base["image_id"].to_numpy()).all():
            continue
        y, pa, g = arrays(base)
        _, pb, _ = arrays(o)
        d = paired_bootstrap_difference(y, pa, pb, g, metrics=PAIRED_METRICS, n_resamples=n_resamples, seed=seed)
        diffs.append(d.assign(model_a=best, model_b=other))
    if diffs:
        paired = pd.concat(diffs, ignore_index=True)
        paired["metric"] = paired["metric"].replace({"auc_malignant": "malignant_auc"})
        paired = paired[["model_a", "model_b", "metric", "a", "b", "diff", "ci_low", "ci_high", "p_two_sided"]]
        save_table(paired, "comparison_paired_differences", run_dir)
        out["paired"] = paired
    return out


def markdown_table(table: pd.DataFrame, metrics: tuple[str, ...] = ("accuracy", "macro_auc", "malignant_auc",
                                                                     "benign_vs_malignant_auc", "ece")) -> str:
    """The comparison as Markdown: value [CI] per metric (the README's results section)."""
    head = ["model", "backbone", "weights", "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        if r["status"] != "trained":
            lines.append(f"| {r['model']} | {r['backbone']} | {r['weights']} | – | skipped: {r['flags']} |" + " |" * (len(metrics) - 1))
            continue
        cells = [f"{r[m]:.3f} [{r[m + '_ci_low']:.3f}, {r[m + '_ci_high']:.3f}]" if m in r and pd.notna(r[m]) else "–" for m in metrics]
        lines.append(f"| {r['model']} | {r['backbone']} | {r['weights']} | {int(r['n'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
