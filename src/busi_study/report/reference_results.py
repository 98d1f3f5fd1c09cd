"""Reference results: export one run's numbers to ``reports/reference/`` and check a rerun.

``export_reference`` copies numbers only (no images, no models): the model comparison (CSV and
Markdown), each model's metrics JSON, the paired differences, the source-protocol and claims
tables, the speed benchmark, the split table, the data summary and the run metadata; then it
regenerates the README's results section from them. ``check_against_reference`` says, model by
model and metric by metric, whether a new run's pooled value falls inside the reference CI.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd

CHECK_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "malignant_auc", "benign_vs_malignant_auc", "ece")
TABLE_PATTERNS = ("comparison_*.csv", "comparison_*.md", "*_claims_vs_ours.csv", "*_source_protocol.csv",
                  "*_benchmark_*.csv", "splits_per_fold.csv", "data_reference_check.csv", "duplicates_label_conflicts.csv",
                  "eda_intensity_vs_s0.csv", "localisation*.csv", "calibration*.csv", "error_*.csv", "external_*.csv",
                  "s4_backbones.csv", "s4_metrics_binary.csv", "s4_paired_*.csv", "s4_tflite_targets.csv", "s4_wall_times.csv",
                  "s1_enhancement_*.csv", "s1_segmentation_summary.csv", "s1_segmentation_shortcut.csv", "s1_candidates_*.csv",
                  "s1_seed_comparison*.csv", "*_margins.csv", "s1_late_fusion_*.csv", "mt_*.csv")
#: External-validation metrics that ``--check-reference`` compares (docs/protocol.md §9).
EXTERNAL_CHECK_METRICS = ("auc", "sensitivity_spec90", "specificity_spec90", "ece")
#: Tables of the ablation profile (params/ablation.yaml), exported to ``reports/reference/ablation/``.
ABLATION_PATTERNS = ("s1_enhancement_*.csv", "s1_seed_comparison*.csv", "mt_seed_comparison*.csv")
#: Segmentation summaries that ``--check-reference`` compares (value inside the reference CI).
SEGMENTATION_CHECK = {"mt_segmentation_summary.csv": ("dice", "iou", "region found (false positive)"),
                      "external_outline_summary.csv": ("dice", "nothing found")}
ABLATION_DIR = "ablation"
README_START, README_END = "<!-- reference-results:start -->", "<!-- reference-results:end -->"


def export_reference(run_dir: Path, ref_dir: Path, readme: Path | None = None) -> list[Path]:
    """Write ``ref_dir`` from a complete run folder; return the files written."""
    run_dir, ref_dir = Path(run_dir).resolve(), Path(ref_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    if not meta.get("ok"):
        raise ValueError(f"{run_dir} is not a complete run")
    kept = None
    if ref_dir.exists():
        if (ref_dir / ABLATION_DIR).is_dir():  # the ablation profile's numbers come from another run: keep them
            kept = ref_dir.parent / f".{ref_dir.name}-{ABLATION_DIR}-kept"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.move(str(ref_dir / ABLATION_DIR), kept)
        shutil.rmtree(ref_dir)
    (ref_dir / "metrics").mkdir(parents=True)
    if kept is not None:
        shutil.move(str(kept), ref_dir / ABLATION_DIR)
    written = []
    for pattern in TABLE_PATTERNS:
        for f in sorted((run_dir / "tables").glob(pattern)):
            shutil.copy2(f, ref_dir / f.name)
            written.append(ref_dir / f.name)
    for d in sorted([*(run_dir / "results").glob("*"), *(run_dir / "results_segmentation").glob("*")]):
        for name in ("metrics.json", "SKIPPED.json"):
            if (d / name).exists():
                target = ref_dir / "metrics" / f"{d.name}{'' if name == 'metrics.json' else '.SKIPPED'}.json"
                shutil.copy2(d / name, target)
                written.append(target)
    for name in ("run.json", "data_summary.json", "external_summary.json"):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, ref_dir / name)
            written.append(ref_dir / name)
    (ref_dir / "README.md").write_text(_reference_readme(meta))
    written.append(ref_dir / "README.md")
    if readme is not None and readme.exists():
        update_readme(readme, ref_dir)
    return written


def export_ablation(run_dir: Path, ref_dir: Path) -> list[Path]:
    """Write ``ref_dir/ablation/`` from a complete run of the ablation profile: its ablation tables
    (enhancement ablation, seed comparison), its run.json and a README with the wall times; the rest
    of ``ref_dir`` is left alone. Returns the files written."""
    run_dir = Path(run_dir).resolve()
    meta = json.loads((run_dir / "run.json").read_text())
    if not meta.get("ok"):
        raise ValueError(f"{run_dir} is not a complete run")
    tables = [f for pattern in ABLATION_PATTERNS for f in sorted((run_dir / "tables").glob(pattern))]
    if not tables:
        raise ValueError(f"{run_dir} has no ablation tables ({', '.join(ABLATION_PATTERNS)}) — run the ablation profile "
                         "(run_all.py --profile ablation --only 05)")
    out = Path(ref_dir) / ABLATION_DIR
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = []
    for f in [*tables, run_dir / "run.json"]:
        shutil.copy2(f, out / f.name)
        written.append(out / f.name)
    ran = [n for n in meta.get("notebooks", []) if not n.get("from_run")]
    hw = meta["hardware"]
    lines = ["# Ablation results", "",
             f"Tables of one run of the `{meta['profile']}` profile (`{meta.get('command')}`), run id `{meta['run_id']}`, "
             f"git commit `{meta['git']['commit']}`{' (uncommitted changes)' if meta['git'].get('dirty') else ''}, on "
             f"{hw['cpu']} ({hw['cpu_count']} logical cores), GPU: {', '.join(hw['gpus']) or 'none'}.", "",
             "Wall time of the notebooks this run executed: " + ", ".join(f"{n['name']} {n['wall_s']:.0f} s" for n in ran)
             + (f" (built on run `{meta['partial_of']}`)" if meta.get("partial_of") else "") + ".", "",
             "Files: " + ", ".join(f"`{f.name}`" for f in tables) + " (the `seconds` / `*_s` columns are each step's wall "
             "time), `run.json` (parameters, versions, hardware).", ""]
    (out / "README.md").write_text("\n".join(lines))
    written.append(out / "README.md")
    return written


def _reference_readme(meta: dict) -> str:
    wall = {n["name"]: n["wall_s"] for n in meta.get("notebooks", [])}
    hw = meta["hardware"]
    lines = [
        "# Reference results",
        "",
        f"Numbers of one full run (`{meta.get('command')}`), run id `{meta['run_id']}`, git commit "
        f"`{meta['git']['commit']}`{' (uncommitted changes)' if meta['git'].get('dirty') else ''}, profile "
        f"`{meta['profile']}`, on {hw['cpu']} ({hw['cpu_count']} logical cores), GPU: {', '.join(hw['gpus']) or 'none'}.",
        "",
        f"Total wall time {meta['wall_s']:.0f} s; per notebook: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items()) + ".",
        "",
        *([f"Profile `{meta['profile']}` is the reference profile plus notebook 05's enhancement ablation and seed repeats "
           "(params/ablation.yaml): every number outside those two tables is what the reference profile gives, and 05's wall "
           f"time includes both (their own wall times are in `{ABLATION_DIR}/`).", ""] if meta.get("profile") == ABLATION_DIR else []),
        *([f"This run built on the complete run `{meta['partial_of']}` (`--only` / `--from`): notebooks "
           + ", ".join(n["name"] for n in meta.get("notebooks", []) if n.get("from_run"))
           + " and their results were carried over from it (their wall times are that run's); the total wall time "
           "counts this run's notebooks only.", ""] if meta.get("partial_of") else []),
        "`comparison_models.csv` / `.md`: one row per model, pooled out-of-fold metrics under grouped 5-fold CV with 95 % "
        "group-bootstrap CIs; `metrics/<model>.json`: everything measured for that model (per fold, operating points, "
        "secondary analysis without label-conflict groups, TTA, timing per fold, weights used, versions, hardware). "
        "`run_all.py --check-reference` reruns and compares against these CIs.",
        "",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, ref_dir: Path) -> None:
    """Replace the README's results section (between the marker comments) with the reference table."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    md = (ref_dir / "comparison_models.md").read_text() if (ref_dir / "comparison_models.md").exists() else "(no models)\n"
    meta = json.loads((ref_dir / "run.json").read_text())
    wall = sum(n["wall_s"] for n in meta.get("notebooks", []))
    block = (f"{README_START}\n_Generated from `reports/reference/` (run `{meta['run_id']}`, commit "
             f"`{meta['git']['commit'][:12]}`, profile `{meta['profile']}`, {meta['hardware']['cpu_count']} CPU cores, "
             f"GPU: {', '.join(meta['hardware']['gpus']) or 'none'}, notebooks' wall time {wall / 60:.1f} min). Pooled out-of-fold "
             f"predictions, grouped 5-fold CV, value [95 % group-bootstrap CI]._\n\n{md}\n{_extra_tables(ref_dir)}{README_END}")
    text = re.sub(re.escape(README_START) + r".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    readme.write_text(text)


def _ci(v: float, lo: float, hi: float) -> str:
    return "–" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _extra_tables(ref_dir: Path) -> str:
    """Markdown: calibration before/after temperature scaling and the pointing game, when present."""
    out = []
    cal = ref_dir / "calibration_summary.csv"
    if cal.exists():
        c = pd.read_csv(cal)
        out += ["Calibration (temperature scaling fitted on each fold's validation part):", "",
                "| model | ECE before | ECE after | log loss before | log loss after |", "|---|---|---|---|---|"]
        out += [f"| {r['model']} | {_ci(r['ece_before'], r['ece_before_ci_low'], r['ece_before_ci_high'])} | "
                f"{_ci(r['ece_after'], r['ece_after_ci_low'], r['ece_after_ci_high'])} | "
                f"{_ci(r['log_loss_before'], r['log_loss_before_ci_low'], r['log_loss_before_ci_high'])} | "
                f"{_ci(r['log_loss_after'], r['log_loss_after_ci_low'], r['log_loss_after_ci_high'])} |" for _, r in c.iterrows()]
        out.append("")
    loc = ref_dir / "localisation_summary.csv"
    if loc.exists():
        t = pd.read_csv(loc)
        t = t[t["subset"] == "correctly classified lesions"]
        out += ["Do the models look at the lesion? Grad-CAM (predicted class) of correctly classified benign and malignant "
                "images against their masks, beside a centred Gaussian map:", "",
                "| model | n | pointing game | baseline | energy inside mask | baseline | IoU | baseline |",
                "|---|---|---|---|---|---|---|---|"]
        for model, g in t.groupby("model", sort=False):
            cells = []
            for m in ("pointing_hit", "energy_inside", "iou"):
                for mp in ("Grad-CAM (predicted class)", "centred Gaussian baseline"):
                    r = g[(g["measure"] == m) & (g["map"] == mp)]
                    cells.append(_ci(r["value"].iloc[0], r["ci_low"].iloc[0], r["ci_high"].iloc[0]) if len(r) else "–")
            n = int(g.loc[g["map"] == "Grad-CAM (predicted class)", "n"].max())
            out.append(f"| {model} | {n} | " + " | ".join(cells) + " |")
        out.append("")
    out += _external_markdown(ref_dir)
    return "\n".join(out) + ("\n" if out else "")


def _external_markdown(ref_dir: Path) -> list[str]:
    """Markdown lines for the external validation (BrEaST), when the reference run has it."""
    summary_path, csv = ref_dir / "external_summary.json", ref_dir / "external_validation_metrics.csv"
    if not summary_path.exists():
        return []
    summary = json.loads(summary_path.read_text())
    if summary.get("skipped") or not csv.exists():
        return [f"External validation (BrEaST-Lesions_USG): skipped in the reference run ({summary.get('skipped', 'no table')}).", ""]
    t = pd.read_csv(csv)
    metrics = [("auc", "AUC"), ("sensitivity_spec90", "sens @ spec90 thr."), ("specificity_spec90", "spec @ spec90 thr."),
               ("log_loss", "log loss"), ("log_loss_T", "log loss, BUSI T"), ("ece", "ECE"), ("ece_T", "ECE, BUSI T")]
    out = [f"External validation on BrEaST-Lesions_USG (run `{summary.get('run', '?')}`; testing only; benign vs malignant on "
           f"{summary.get('n_lesions')} lesion "
           f"images, {summary.get('n_malignant')} malignant, score p_malignant; thresholds and temperature from BUSI validation "
           "predictions; 95 % bootstrap CI over patients; BUSI CV value and drop in the second line of each cell):", "",
           "| model | " + " | ".join(label for _, label in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for model, g in t.groupby("model", sort=False):
        g = g.set_index("metric")
        cells = [f"{_ci(g.loc[m, 'value'], g.loc[m, 'ci_low'], g.loc[m, 'ci_high'])}<br>BUSI {g.loc[m, 'cv_value']:.3f}, "
                 f"drop {g.loc[m, 'drop']:+.3f}" if m in g.index else "–" for m, _ in metrics]
        out.append(f"| {model}{' (best by BUSI CV)' if model == summary.get('best') else ''} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def cpu_note(run_hardware: dict, ref_hardware: dict) -> str | None:
    """One line when the run's CPU vector instructions differ from the reference run's (or were not recorded).

    Same code, same data and same seeds give bit-identical networks only on CPUs with the same instruction
    sets; elsewhere every trained model is a different draw, like another training seed, and a value can
    leave the reference CI by chance. ``None`` when both are recorded and equal."""
    new, ref = run_hardware.get("cpu_features"), ref_hardware.get("cpu_features")
    if new is not None and new == ref:
        return None
    show = lambda f: ", ".join(f) if f else "not recorded"  # noqa: E731
    return (f"note: this run's CPU vector instructions ({show(new)}) {'differ from' if ref is not None else 'cannot be compared with'} "
            f"the reference run's ({show(ref)}): trained models are then not bit-identical to the reference's, "
            "and a value outside its CI may be training noise rather than a change of the code")


def check_against_reference(run_dir: Path, ref_dir: Path, metrics: tuple[str, ...] = CHECK_METRICS) -> pd.DataFrame:
    """One row per (model, metric) present in both: reference value and CI, new value, inside."""
    ref = pd.read_csv(Path(ref_dir) / "comparison_models.csv")
    new = pd.read_csv(Path(run_dir) / "tables" / "comparison_models.csv")
    rows = []
    for _, r in ref[ref["status"] == "trained"].iterrows():
        match = new[(new["model"] == r["model"]) & (new["status"] == "trained")]
        for m in metrics:
            if m not in ref.columns:
                continue
            row = {"model": r["model"], "metric": m, "reference": r[m], "ci_low": r[f"{m}_ci_low"],
                   "ci_high": r[f"{m}_ci_high"], "new": float(match[m].iloc[0]) if len(match) else float("nan")}
            row["inside"] = bool(len(match)) and row["ci_low"] - 1e-9 <= row["new"] <= row["ci_high"] + 1e-9
            rows.append(row)
    rows += _check_external(Path(run_dir), Path(ref_dir))
    rows += _check_segmentation(Path(run_dir), Path(ref_dir))
    return pd.DataFrame(rows)


def _check_segmentation(run_dir: Path, ref_dir: Path) -> list[dict]:
    """Segmentation rows (the multi-task model's outline on BUSI, and on BrEaST) when the reference has them."""
    rows = []
    for name, measures in SEGMENTATION_CHECK.items():
        ref_csv, new_csv = ref_dir / name, run_dir / "tables" / name
        if not ref_csv.exists():
            continue
        ref = pd.read_csv(ref_csv)
        new = pd.read_csv(new_csv) if new_csv.exists() else ref.iloc[0:0]
        keys = [k for k in ("model", "measure", "images") if k in ref.columns]
        for _, r in ref[ref["measure"].isin(measures)].iterrows():
            match = new.merge(r[keys].to_frame().T, on=keys) if len(new) else new
            value = float(match["value"].iloc[0]) if len(match) else float("nan")
            label = " / ".join(str(r[k]) for k in keys if k != "measure")
            rows.append({"model": f"{name.removesuffix('.csv')}: {label}", "metric": r["measure"], "reference": r["value"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"], "new": value,
                         "inside": bool(len(match)) and r["ci_low"] - 1e-9 <= value <= r["ci_high"] + 1e-9})
    return rows


def _check_external(run_dir: Path, ref_dir: Path) -> list[dict]:
    """External-validation rows (model ``<name> (BrEaST)``) when the reference has them."""
    ref_csv, new_csv = ref_dir / "external_validation_metrics.csv", run_dir / "tables" / "external_validation_metrics.csv"
    if not ref_csv.exists():
        return []
    ref = pd.read_csv(ref_csv)
    new = pd.read_csv(new_csv) if new_csv.exists() else ref.iloc[0:0]
    rows = []
    for _, r in ref[ref["metric"].isin(EXTERNAL_CHECK_METRICS)].iterrows():
        match = new[(new["model"] == r["model"]) & (new["metric"] == r["metric"])]
        value = float(match["value"].iloc[0]) if len(match) else float("nan")
        rows.append({"model": f"{r['model']} (BrEaST)", "metric": f"external_{r['metric']}", "reference": r["value"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "new": value,
                     "inside": bool(len(match)) and r["ci_low"] - 1e-9 <= value <= r["ci_high"] + 1e-9})
    return rows
