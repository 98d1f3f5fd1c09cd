"""The report's front page: ``reports/<run-id>/index.html``.

Plain HTML, no external assets, so it opens from disk, from a zip, or from a static server.
A small script marks ``<body data-images-loaded="N/M">`` once the page has loaded, which the
end-to-end test reads from headless Chromium to prove the figures really render.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..info import CLASSES, DEMO_BANNER

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:0 20px 40px;color:#1d1d1f}
h1{font-size:26px;margin:18px 0 4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:30px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3} .ok{color:#0a7d28;font-weight:600} .bad{color:#b00020;font-weight:600}
.demo{background:#b00020;color:#fff;font-weight:700;padding:8px 16px;text-align:center;font-size:18px}
.warn{background:#fff4e5;border-left:5px solid #e67e00;padding:8px 14px;margin:10px 0}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:16px}
figure{margin:0;border:1px solid #e2e2e2;padding:6px;background:#fafafa} figure img{width:100%;height:auto}
figcaption{font-size:12px;color:#555;word-break:break-all} code{background:#f3f3f3;padding:0 3px}
details{margin:6px 0}
"""

LOADED_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
</script>
"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _data_section(data: dict | None) -> str:
    if not data:
        return "<p>No data summary in this run (the download notebook did not run or failed).</p>"
    per = data["images_per_class"]
    exp = data.get("expected", {})
    rows = [(c, per.get(c, 0), exp.get("images", {}).get(c, "")) for c in CLASSES]
    rows.append(("<b>images</b>", f"<b>{data['n_images']}</b>", sum(exp.get("images", {}).values()) or ""))
    rows.append(("<b>masks</b>", f"<b>{data['n_masks']}</b>", exp.get("masks", "")))
    parts = [f"<p>Source: <code>{_e(data['source'])}</code> — {_e(data['how'])}</p>",
             _table(rows, ("class", "found", "expected"))]
    ref = data.get("reference")
    if ref:
        c = ref["counts"]
        verdict = ('<span class="ok">all files pixel-identical to the public release</span>' if ref["all_match"]
                   else '<span class="bad">differs from the public release</span>')
        parts.append(f"<p>Reference check against the published BUSI release: {verdict}: "
                     f"<b>{ref['pixel_identical_images']} images / {ref['pixel_identical_masks']} masks "
                     f"pixel-identical</b>.</p>")
        parts.append(_table([(o, c[o]["image"], c[o]["mask"]) for o in c], ("outcome", "images", "masks")))
    elif data.get("dataset") == "demo":
        parts.append("<p>Reference check: not applicable (synthetic demo phantoms, not BUSI).</p>")
    d = data["duplicates"]
    parts.append(
        f"<p>Near-duplicate groups (docs/protocol.md §2; link when pHash distance ≤ {d['phash_threshold']} or dHash "
        f"distance ≤ {d['dhash_threshold']}{'' if d.get('ssim_min') is None else ', SSIM ≥ ' + str(d['ssim_min'])}): "
        f"<b>{d['n_groups']} groups</b> for {data['n_images']} images; {d['n_multi_image_groups']} groups hold more than "
        f"one image ({d['images_in_multi_image_groups']} images); <b>{d['n_label_conflict_groups']} label-conflict "
        f"groups</b> ({d['images_in_label_conflict_groups']} images).</p>")
    s = data["splits"]
    parts.append(f"<p>Splits: StratifiedGroupKFold, {s['n_splits']} folds, seed {s['seed']}, "
                 f"{s['repeats']} repeat(s), inner validation ≈ {s['val_fraction']:.3f} of groups. "
                 f"Manifest SHA-256 <code>{_e(data['manifest_sha256'])}</code>; splits SHA-256 "
                 f"<code>{_e(data['splits_sha256'])}</code>.</p>")
    return "\n".join(parts)


def _notebooks_section(meta: dict) -> str:
    rows = []
    for n in meta.get("notebooks", []):
        state = '<span class="ok">ok</span>' if n["ok"] else f'<span class="bad">failed</span>: {_e(n.get("error"))}'
        src = f" (from run {_e(n['from_run'])})" if n.get("from_run") else ""
        rows.append((f"<a href=\"{_e(n['html'])}\">{_e(n['name'])}</a>", state + src, f"{n['wall_s']:.1f}",
                     f"<a href=\"{_e(n['ipynb'])}\">executed .ipynb</a>"))
    return _table(rows, ("notebook (HTML)", "status", "wall time (s)", "notebook"))


def _timing_section(meta: dict, top: int = 15) -> str:
    """Where the time goes: per-notebook totals and the slowest steps (``busi_study.timing``)."""
    from .steps import notebook_totals, slowest_steps

    steps = meta.get("steps") or []
    if not steps:
        return ("<p>No step timings in this run (run by a runner from before step timing, or no notebook ran); "
                "the notebooks' wall times are above.</p>")
    total = float(meta.get("wall_s") or 0.0)
    rows = []
    for _, r in notebook_totals(meta).iterrows():
        src = f" (run {_e(r['from_run'])})" if isinstance(r["from_run"], str) and r["from_run"] else ""
        rows.append((_e(r["notebook"]) + src, _s(r["wall_s"]), _s(r["in_cells_s"]), _s(r["other_s"]),
                     f"{_e(r['slowest_cell'])} ({_s(r['slowest_cell_s'])} s)" if r["slowest_cell"] else "–"))
    parts = [f"<p>Every notebook cell and the study's costly steps inside them (image decoding, frozen-feature caches, "
             f"cross-validations and their folds, source-protocol repeats, final models, TFLite export and agreement, "
             f"Grad-CAM maps, bootstraps, figures and tables) are timed; steps nest, a step's time includes the steps "
             f"inside it (the list of the slowest leaves out a step that is almost all one step inside it and shows "
             f'that one). All {len(steps)} steps: <a href="tables/timing_steps.csv">CSV</a> · '
             f'<a href="tables/timing_steps.tex">LaTeX</a>. The console estimates the time left of the next run of '
             f"this profile from them.</p>",
             _table(rows, ("notebook", "wall time (s)", "in its cells (s)", "kernel, papermill, HTML (s)", "slowest cell")),
             f"<h3>The {top} slowest steps</h3>"]
    rows = []
    for k, r in slowest_steps(steps, top).iterrows():
        share = f"{100 * r['seconds'] / total:.0f} %" if total > 0 else "–"
        inside = _e(r["parent"]) if isinstance(r["parent"], str) and r["parent"] else "–"
        cores = (f"{r['cpu_s'] / r['seconds']:.1f}" if pd.notna(r.get("cpu_s")) and r["seconds"] > 0 else "–")
        rows.append((k + 1, _e(r["notebook"]), _e(r["step"]), inside, _s(r["seconds"]), share, cores))
    parts.append(_table(rows, ("", "notebook", "step", "inside", "seconds", "of the run", "cores busy")))
    parts.append("<p><i>cores busy</i>: CPU seconds of the notebook's process over wall seconds (2.0: both cores of a "
                 "2-core machine; about 1: one core, a step a second process could run beside another; lower: waiting "
                 "for the disk, another process or another machine's job).</p>")
    return "\n".join(parts)


def _s(v) -> str:
    """Seconds with one decimal; – when unknown."""
    try:
        return "–" if v is None or pd.isna(v) else f"{float(v):.1f}"
    except (TypeError, ValueError):
        return "–"


def _models_section(run_dir: Path, meta: dict) -> str:
    csv = run_dir / "tables" / "comparison_models.csv"
    if not csv.exists():
        return "<p>No model results in this run.</p>"
    t = pd.read_csv(csv)
    cols = ["accuracy", "balanced_accuracy", "macro_f1", "kappa", "macro_auc", "malignant_auc", "benign_vs_malignant_auc",
            "ece", "sens_at_spec90", "spec_at_sens90", "fold_seconds"]
    rows = []
    for _, r in t.iterrows():
        if r["status"] != "trained":
            rows.append((f"<b>{_e(r['model'])}</b>", _e(r["backbone"]), _e(r["weights"]), "–",
                         f'<span class="bad">skipped</span>: {_e(r["flags"])}', *[""] * (len(cols) - 1)))
            continue
        cells = []
        for c in cols:
            if c == "fold_seconds":
                cells.append(_e(r.get(c, "")) if isinstance(r.get(c), str) else "–")
            elif c in t.columns and pd.notna(r.get(c)):
                cells.append(_ci(r[c], r[c + "_ci_low"], r[c + "_ci_high"]))
            else:
                cells.append("–")
        name = f"<b>{_e(r['model'])}</b>" + (f'<br><span class="bad">⚠ {_e(r["flags"])}</span>' if isinstance(r["flags"], str) and r["flags"] else "")
        rows.append((name, _e(r["backbone"]), _e(r["weights"]), int(r["n"]), *cells))
    header = ("model", "backbone", "weights", "n", *cols[:-1], "CV wall time per fold (s)")
    html_t = '<div style="overflow-x:auto">' + _table(rows, header) + "</div>"
    # the protocol each model actually ran (from its results), not a parameter of this run
    protocols = sorted(set(t.loc[t["status"] == "trained", "protocol"].dropna())) or ["no trained model"]
    parts = [f"<p>Pooled out-of-fold predictions ({_e('; '.join(protocols))}); "
             f"95 % group-bootstrap CIs in brackets ({_e(meta['params'].get('bootstrap_resamples'))} resamples, "
             "percentile intervals; ECE is biased upwards in resamples, so its interval can lie above the point "
             "estimate). "
             '<a href="tables/comparison_models.csv">CSV</a> · <a href="tables/comparison_models.tex">LaTeX</a> · '
             '<a href="tables/comparison_models.md">Markdown</a></p>', html_t]
    paired = run_dir / "tables" / "comparison_paired_differences.csv"
    if paired.exists():
        p = pd.read_csv(paired)
        parts.append(f"<h3>Best model ({_e(p['model_a'].iloc[0])}, by macro AUC) against each other model: paired group "
                     "bootstrap of the difference</h3>")
        parts.append(p.to_html(index=False, border=0, float_format=lambda v: f"{v:.3f}"))
    roc = run_dir / "figures" / "comparison_roc_malignant.png"
    if roc.exists():
        parts.append('<figure style="max-width:560px"><img src="figures/comparison_roc_malignant.png" '
                     'alt="ROC overlay"><figcaption>comparison_roc_malignant · '
                     '<a href="figures/comparison_roc_malignant.pdf">PDF</a></figcaption></figure>')
    return "\n".join(parts)


def _ci(v: float, lo: float, hi: float) -> str:
    return "–" if pd.isna(v) else f"{v:.3f}<br><small>[{lo:.3f}, {hi:.3f}]</small>"


def _errors_section(run_dir: Path) -> str:
    """Calibration (ECE before / after temperature scaling) and localisation against the lesion masks."""
    tables = run_dir / "tables"
    parts = []
    cal = tables / "calibration_summary.csv"
    if cal.exists():
        c = pd.read_csv(cal)
        rows = [(f"<b>{_e(r['model'])}</b>", _ci(r["ece_before"], r["ece_before_ci_low"], r["ece_before_ci_high"]),
                 _ci(r["ece_after"], r["ece_after_ci_low"], r["ece_after_ci_high"]),
                 _ci(r["log_loss_before"], r["log_loss_before_ci_low"], r["log_loss_before_ci_high"]),
                 _ci(r["log_loss_after"], r["log_loss_after_ci_low"], r["log_loss_after_ci_high"]), _e(r["temperatures"]))
                for _, r in c.iterrows()]
        parts += ["<h3>Calibration: temperature scaling fitted on each fold's validation part</h3>",
                  _table(rows, ("model", "ECE before", "ECE after", "log loss before", "log loss after",
                                "temperature per fold")),
                  '<p><a href="tables/calibration_summary.csv">CSV</a> · <a href="tables/calibration_summary.tex">LaTeX</a></p>']
    loc = tables / "localisation_summary.csv"
    if loc.exists():
        t = pd.read_csv(loc)
        measures = ["pointing_hit", "energy_inside", "iou"]
        for subset in ("correctly classified lesions", "all lesions"):
            d = t[t["subset"] == subset]
            if d.empty:
                continue
            rows = []
            for (model, mp), g in d.groupby(["model", "map"], sort=False):
                g = g.set_index("measure")
                rows.append((f"<b>{_e(model)}</b>", _e(mp), int(g["n"].max()),
                             *[_ci(g.loc[m, "value"], g.loc[m, "ci_low"], g.loc[m, "ci_high"]) if m in g.index else "–"
                               for m in measures]))
            parts += [f"<h3>Grad-CAM against the lesion masks: {_e(subset)}</h3>",
                      _table(rows, ("model", "map", "n", "pointing-game hit rate", "energy inside the mask", "IoU"))]
        parts.append('<p>Each lesion image explained by the fold model that held it out; 95 % group-bootstrap CIs. '
                     '<a href="tables/localisation_summary.csv">CSV</a> · <a href="tables/localisation_summary.tex">LaTeX</a>'
                     ' · randomisation sanity check: <a href="tables/localisation_sanity_check.csv">CSV</a></p>')
    for fig in ("localisation_pointing_game", "calibration_reliability"):
        if (run_dir / "figures" / f"{fig}.png").exists():
            parts.append(f'<figure style="max-width:640px"><img src="figures/{fig}.png" alt="{fig}"><figcaption>{fig} · '
                         f'<a href="figures/{fig}.pdf">PDF</a></figcaption></figure>')
    return "\n".join(parts) if parts else "<p>No error analysis in this run.</p>"


def _external_section(run_dir: Path) -> str:
    """External validation (notebook 08): the final models on BrEaST-Lesions_USG, beside BUSI CV."""
    import json

    summary_path = run_dir / "external_summary.json"
    if not summary_path.exists():
        return "<p>No external validation in this run (notebook 08 did not run).</p>"
    summary = json.loads(summary_path.read_text())
    if summary.get("skipped"):
        return f'<p><span class="bad">skipped</span>: {_e(summary["skipped"])}</p>'
    csv = run_dir / "tables" / "external_validation_metrics.csv"
    if not csv.exists():
        return "<p>External validation did not write its table.</p>"
    t = pd.read_csv(csv)
    metrics = [("auc", "AUC (p_malignant)"), ("sensitivity_spec90", "sensitivity @ spec90 thr."),
               ("specificity_spec90", "specificity @ spec90 thr."), ("log_loss", "log loss"), ("log_loss_T", "log loss, BUSI T"),
               ("ece", "ECE"), ("ece_T", "ECE, BUSI T")]
    rows = []
    for model, g in t.groupby("model", sort=False):
        g = g.set_index("metric")
        cells = []
        for m, _ in metrics:
            if m not in g.index:
                cells.append("–")
                continue
            r = g.loc[m]
            cells.append(f"{_ci(r['value'], r['ci_low'], r['ci_high'])}<br><small>BUSI CV {r['cv_value']:.3f}; "
                         f"drop {r['drop']:+.3f}</small>")
        name = f"<b>{_e(model)}</b>" + (" (best by BUSI CV)" if model == summary.get("best") else "")
        rows.append((name, *cells))
    d = summary.get("data", {})
    ref = d.get("reference", {})
    parts = [f"<p>Final models (trained on all of BUSI) tested on <b>{_e(d.get('dataset', 'BrEaST-Lesions_USG'))}</b> "
             f"({_e(d.get('n_images'))} images from {_e(d.get('n_patients'))} patients, another centre and scanner mix; "
             f"reference check: {_e(ref.get('pixel_identical_images'))} images / {_e(ref.get('pixel_identical_masks'))} masks "
             f"identical to the release). Testing only (docs/protocol.md §9): benign vs malignant on "
             f"{_e(summary.get('n_lesions'))} lesion images ({_e(summary.get('n_malignant'))} malignant), score p_malignant; "
             "thresholds and temperature fixed on BUSI validation predictions. 95 % bootstrap CIs over patients; "
             "the BUSI CV value and the drop (BUSI − BrEaST) below each.</p>",
             '<div style="overflow-x:auto">' + _table(rows, ("model", *[label for _, label in metrics])) + "</div>",
             '<p><a href="tables/external_validation_metrics.csv">all metrics (CSV)</a> · '
             '<a href="tables/external_auc_by_subgroup.csv">AUC by BI-RADS group and image type</a> · '
             '<a href="tables/external_paired_differences.csv">paired comparison</a> · '
             '<a href="tables/external_normal_images.csv">the normal images</a> · '
             '<a href="tables/external_predicted_classes.csv">3-class calls</a> · '
             '<a href="tables/external_localisation_summary.csv">pointing game</a> · '
             '<a href="html/08_external_validation.html">notebook</a></p>']
    fig = "external_roc_reliability"
    if (run_dir / "figures" / f"{fig}.png").exists():
        parts.append(f'<figure style="max-width:760px"><img src="figures/{fig}.png" alt="{fig}"><figcaption>{fig} · '
                     f'<a href="figures/{fig}.pdf">PDF</a></figcaption></figure>')
    return "\n".join(parts)


def _figures_section(run_dir: Path) -> str:
    figs = sorted((run_dir / "figures").glob("*.png"))
    if not figs:
        return "<p>No figures.</p>"
    items = []
    for png in figs:
        pdf = png.with_suffix(".pdf")
        pdf_link = f' · <a href="figures/{_e(pdf.name)}">PDF</a>' if pdf.exists() else ""
        items.append(f'<figure><a href="figures/{_e(png.name)}"><img src="figures/{_e(png.name)}" alt="{_e(png.stem)}">'
                     f'</a><figcaption>{_e(png.stem)}{pdf_link}</figcaption></figure>')
    return f'<div class="figs">{"".join(items)}</div>'


def _tables_section(run_dir: Path, inline_max_rows: int = 20) -> str:
    csvs = sorted((run_dir / "tables").glob("*.csv"))
    if not csvs:
        return "<p>No tables.</p>"
    out = []
    for csv in csvs:
        tex = csv.with_suffix(".tex")
        links = f'<a href="tables/{_e(csv.name)}">CSV</a>' + (f' · <a href="tables/{_e(tex.name)}">LaTeX</a>' if tex.exists() else "")
        df = pd.read_csv(csv)
        inline = ""
        if len(df) <= inline_max_rows and len(df.columns) <= 14:
            inline = df.to_html(index=False, border=0, na_rep="", escape=True)
        out.append(f"<h3>{_e(csv.stem)} <small>({links}; {len(df)} rows)</small></h3>{inline}")
    return "\n".join(out)


def _meta_section(meta: dict) -> str:
    git = meta["git"]
    hw = meta["hardware"]
    rows = [
        ("run id", _e(meta["run_id"])),
        ("profile", _e(meta["profile"])),
        ("command", f"<code>{_e(meta.get('command') or '')}</code>"),
        ("git commit", f"<code>{_e(git['commit'])}</code>" + (" <b>(uncommitted changes)</b>" if git.get("dirty") else "")),
        ("started / finished (UTC)", f"{_e(meta['started_utc'])} / {_e(meta.get('finished_utc', ''))}"),
        ("total wall time", f"{meta.get('wall_s', 0):.1f} s"),
        ("CPU", f"{_e(hw['cpu'])} ({hw['cpu_count']} logical cores), {hw.get('memory_gib')} GiB RAM"
                + (f"; vector instructions {_e(', '.join(hw['cpu_features']))} (trained models are bit-identical only "
                   "on CPUs with the same ones)" if hw.get("cpu_features") else "")),
        ("GPU", _e(", ".join(hw["gpus"]) or "none")),
        ("platform / Python", f"{_e(hw['platform'])} / {_e(hw['python'])}"),
        ("Jupyter kernel", _e(meta.get("kernel", ""))),
    ]
    if meta.get("partial_of"):
        rows.append(("partial run", f"notebooks not rerun are carried over from run {_e(meta['partial_of'])}"))
    pk = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(meta["packages"].items()))
    params = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in sorted(meta["params"].items()))
    return (_table(rows, ("", "")) + f"<details><summary>package versions</summary><p>{pk}</p></details>"
            f"<details open><summary>parameters</summary><table>{params}</table></details>")


def write_index(run_dir: Path, meta: dict) -> Path:
    """Write ``index.html`` for ``run_dir`` from its run metadata and its figures and tables."""
    run_dir = Path(run_dir)
    demo = meta.get("demo")
    data = meta.get("data")
    warnings = list((data or {}).get("warnings", []))
    for n in meta.get("notebooks", []):
        if not n["ok"]:
            warnings.insert(0, f"notebook {n['name']} failed: {n.get('error')}")
    for name, reason in (meta.get("models") or {}).get("skipped", []):
        warnings.append(f"model {name} skipped: {reason}")
    banner = f'<div class="demo">{DEMO_BANNER}</div>' if demo else ""
    warn_html = "".join(f'<div class="warn">⚠ {_e(w)}</div>' for w in warnings)
    state = '<span class="ok">complete</span>' if meta.get("ok") else '<span class="bad">incomplete (a notebook failed)</span>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>BUSI study report — {_e(meta['run_id'])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>{banner}
<h1>Deep learning for breast-ultrasound classification (BUSI): study report</h1>
<p>Run <code>{_e(meta['run_id'])}</code> — {state} — profile <b>{_e(meta['profile'])}</b> —
commit <code>{_e(meta['git']['commit'][:12])}</code>. Protocol: <code>docs/protocol.md</code> (grouped 5-fold CV,
group-bootstrap CIs).</p>
{warn_html}
<h2 id="data">Data</h2>
{_data_section(data)}
<h2 id="notebooks">Notebooks</h2>
{_notebooks_section(meta)}
<h2 id="timing">Where the time goes</h2>
{_timing_section(meta)}
<h2 id="models">Model comparison</h2>
{_models_section(run_dir, meta)}
<h2 id="errors">Calibration and localisation</h2>
{_errors_section(run_dir)}
<h2 id="external">External validation</h2>
{_external_section(run_dir)}
<h2 id="figures">Figures</h2>
<p>PNG at 300 dpi (click) and PDF, stable file names, for citation.</p>
{_figures_section(run_dir)}
<h2 id="tables">Tables</h2>
{_tables_section(run_dir)}
<h2 id="run">Run metadata</h2>
{_meta_section(meta)}
<p><a href="run.json">run.json</a> (everything above, machine-readable)</p>
{banner}
{LOADED_SCRIPT}
</body></html>
"""
    path = run_dir / "index.html"
    tmp = path.with_name("index.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
