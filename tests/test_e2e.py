"""End to end: run_all.py on demo data with the smoke profile, as a user would.

One complete run, one failing run (the previous report must survive) and one partial rerun;
the report is opened in headless Chromium. In CI (CI=true) a missing Chromium is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from busi_study.cli import REPO
from busi_study.info import DEMO_BANNER
from busi_study.models.registry import weights_available
from busi_study.report import browser
from busi_study.report.runner import discover_notebooks

pytestmark = pytest.mark.e2e


def run_all(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "run_all.py"), "--demo", "--profile", "smoke", "--no-progress",
           "--reports-dir", str(tmp / "reports"), "--data-dir", str(tmp / "data"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=2400, cwd=tmp)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    first = run_all(tmp)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    latest = (tmp / "reports" / "latest").resolve()
    return tmp, first, latest


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("href", "src") and v and not v.startswith(("http:", "https:", "#", "data:", "mailto:")):
                self.links.append(v)


def test_report_layout(study):
    tmp, first, run = study
    assert "Report ready" in first.stdout and str(run / "index.html") in first.stdout
    for nb in ("00_download", "01_eda_intensity"):
        executed = json.loads((run / "notebooks" / f"{nb}.ipynb").read_text())
        assert any(c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code")
        html = (run / "html" / f"{nb}.html").read_text()
        assert DEMO_BANNER in html
    pngs = sorted((run / "figures").glob("*.png"))
    assert len(pngs) >= 8
    for png in pngs:
        assert png.with_suffix(".pdf").exists()
        dpi = Image.open(png).info.get("dpi")
        assert dpi and round(dpi[0]) == 150  # the smoke profile's figure_dpi
    csvs = sorted((run / "tables").glob("*.csv"))
    assert {"eda_intensity_vs_s0", "splits_per_fold", "data_validation_issues"} <= {c.stem for c in csvs}
    for csv in csvs:
        assert csv.with_suffix(".tex").exists()


def test_run_metadata(study):
    _, _, run = study
    meta = json.loads((run / "run.json").read_text())
    assert meta["ok"] and meta["demo"] and meta["profile"] == "smoke"
    assert len(meta["git"]["commit"]) == 40 or meta["git"]["commit"].startswith("unknown")
    assert {"numpy", "pandas", "papermill", "nbconvert"} <= set(meta["packages"])
    assert meta["hardware"]["cpu_count"] >= 1
    assert [n["name"] for n in meta["notebooks"]] == [nb.stem for nb in discover_notebooks(REPO / "notebooks")]
    assert all(n["ok"] and n["wall_s"] > 0 for n in meta["notebooks"])
    data = meta["data"]
    assert len(data["manifest_sha256"]) == 64 and data["dataset"] == "demo"
    assert data["duplicates"]["n_label_conflict_groups"] == 1
    assert meta["params"]["seed"] == 42 and meta["params"]["data_source"] == "demo"


def test_every_notebook_step_is_timed(study):
    """run.json holds a step for every executed cell of every notebook (papermill's injected
    parameters cell included), the package's costly steps nested inside them, and the front page
    says where the time went."""
    from busi_study.report.steps import cell_titles

    tmp, first, run = study
    meta = json.loads((run / "run.json").read_text())
    steps = meta["steps"]
    for nb in discover_notebooks(REPO / "notebooks"):
        executed = json.loads((run / "notebooks" / nb.name).read_text())
        counts = sorted(c["execution_count"] for c in executed["cells"] if c["cell_type"] == "code" and c["execution_count"])
        cells = {s["cell"]: s for s in steps if s["notebook"] == nb.stem and s["cell"] is not None}
        assert counts and sorted(cells) == counts, f"{nb.stem}: cells {counts}, timed {sorted(cells)}"
        assert all(s["seconds"] is not None and s["ok"] for s in cells.values()), nb.stem
        assert {s["step"] for s in cells.values()} == set(cell_titles(nb).values()), nb.stem
    inside = [s for s in steps if s["cell"] is None and s["depth"] > 0]
    assert all(s["parent"] and s["seconds"] is not None for s in inside)
    names = {s["step"] for s in inside}
    expected = ["decode images", "prepare s2_cnn", "cross-validation s2_cnn", "fold 0", "repeat 0", "final model",
                "evaluate (metrics", "group bootstrap", "TFLite agreement", "Grad-CAM s2_cnn", "figure ", "table "]
    if weights_available("mobilenet_v2", "imagenet", 112, alpha=0.35)[0]:  # the pretrained models' steps
        expected += ["frozen outputs", "encoder outputs", "S1 protocol", "margin choice"]
    for prefix in expected:
        assert any(n.startswith(prefix) for n in names), prefix
    by_nb = {}
    for s in inside:
        by_nb.setdefault(s["notebook"], set()).add(s["step"].split(" ")[0])
    assert {"cross-validation", "evaluate"} <= by_nb["02_baseline_cnn"] and "Grad-CAM" in by_nb["07_error_analysis"]
    table = pd.read_csv(run / "tables" / "timing_steps.csv")
    assert len(table) == len(steps) and table["seconds"].notna().all()
    index = (run / "index.html").read_text()
    assert 'id="timing"' in index and "The 15 slowest steps" in index
    assert "Time: no earlier complete run of this profile" in first.stdout


def test_models_results_exports_and_comparison(study):
    _, _, run = study
    table = pd.read_csv(run / "tables" / "comparison_models.csv")
    trained = set(table.loc[table["status"] == "trained", "model"])
    assert "s2_cnn" in trained
    if weights_available("mobilenet_v2", "imagenet", 112, alpha=0.35)[0]:
        assert {"s3_head-mobilenet_v2-a0.35", "s0_finetune-mobilenet_v2-a0.35-b2"} <= trained
    for model in trained:
        res = run / "results" / model
        oof = pd.read_csv(res / "oof.csv")
        assert oof["image_id"].is_unique and {"p_normal", "p_benign", "p_malignant", "fold"} <= set(oof.columns)
        metrics = json.loads((res / "metrics.json").read_text())
        assert metrics["weights"] in ("imagenet", "random init") and metrics["n"] == len(oof)
        card = json.loads((run / "models" / f"{model}.json").read_text())
        assert card["classes"] == ["normal", "benign", "malignant"] and "accuracy_ci_low" in card["cv_metrics"]
        # what the app needs: a temperature and malignant thresholds from validation predictions
        assert card["decision"]["temperature"] > 0 and card["decision"]["n_validation"] == len(pd.read_csv(res / "val_predictions.csv"))
        assert card["gradcam_layer"]
        assert (run / "models" / f"{model}.keras").exists()
        if list(res.glob("fold*.keras")):
            assert (res / "localisation_per_image.csv").exists()
        else:  # a two-input (two-stream) lesion-aware model keeps no single-input fold models: no Grad-CAM maps
            assert metrics["recipe"]["kind"].startswith("two_stream") and card["pipeline"]["inputs"] == ["image", "crop"]
    for skipped in table.loc[table["status"] == "skipped", "flags"]:
        assert "not available" in skipped
    for name in ("comparison_models", "localisation_summary", "calibration_summary", "error_rate_by_factor"):
        assert (run / "tables" / f"{name}.csv").exists(), name
    index = (run / "index.html").read_text()
    assert "Model comparison" in index and "comparison_roc_malignant.png" in index
    errors = index[index.index('id="errors"'):index.index('id="figures"')]
    assert "ECE before" in errors and "pointing-game hit rate" in errors and "centred Gaussian baseline" in errors
    assert "s3_benchmark_cached_vs_in_loop.csv" in index
    bench = pd.read_csv(run / "tables" / "s3_benchmark_cached_vs_in_loop.csv")
    assert bench["max_abs_feature_diff"].dropna().lt(1e-3).all()
    if not weights_available("resnet50", "imagenet", 224)[0]:  # offline: ResNet50 timed with random weights
        assert (bench.loc[bench["backbone"] == "resnet50", "weights"] == "random init (timing only)").sum() == 2


def test_external_validation_skips_without_external_data(study):
    # the demo run has no BrEaST copy: notebook 08 runs, says where to get it, and skips; the page says so
    _, _, run = study
    nb = json.loads((run / "notebooks" / "08_external_validation.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "skipped: no external data given" in text and "--external PATH" in text
    index = (run / "index.html").read_text()
    section = index[index.index('id="external"'):index.index('id="figures"')]
    assert "skipped" in section and "cancerimagingarchive" in section


def test_s4_lightweight_protocol_and_tflite_export(study):
    _, _, run = study
    backbones = pd.read_csv(run / "tables" / "s4_backbones.csv")
    assert "mobilenet_v3_small" in set(backbones["backbone"])
    claims = pd.read_csv(run / "tables" / "s4_claims_vs_ours.csv")
    assert len(claims) == 4 and claims.loc[0, "accuracy"] == 0.96
    s4, after = claims.iloc[1], claims.iloc[2]
    assert s4["copy_in_training"] > 0.5 * s4["n_test"] and after["copy_in_training"] == 0  # the leak, counted
    binary = pd.read_csv(run / "tables" / "s4_metrics_binary.csv")
    assert {"auc", "accuracy", "f1_malignant", "sens_at_spec90", "ece"} <= set(binary["metric"])
    assert binary["model"].str.endswith("faithful").any() and binary["model"].str.endswith("early_stopped").any()
    paired = pd.read_csv(run / "tables" / "s4_paired_vs_three_class.csv")
    assert "s2_cnn" in set(paired["model_b"])
    export = pd.read_csv(run / "tables" / "s4_benchmark_tflite.csv")
    assert list(export["format"]) == ["keras", "float32", "float16", "dynamic_int8", "full_int8"]
    tfl = export[export["format"] != "keras"]
    assert (tfl["median_ms_1t"] > 0).all() and (tfl["p90_ms_1t"] >= tfl["median_ms_1t"]).all()
    assert tfl.loc[tfl["format"] == "float32", "max_abs_dp"].iloc[0] < 1e-4
    name = export["model"].iloc[0]
    card = json.loads((run / "models" / f"{name}.full_int8.json").read_text())
    assert card["classes"] == ["benign", "malignant"] and card["format"] == "TFLite full_int8"
    assert (run / "models" / f"{name}.full_int8.tflite").exists()
    assert (run / "tables" / "s4_benchmark_tflite_three_class.csv").exists()


def test_index_links_resolve_and_page_says_demo(study):
    _, _, run = study
    index = (run / "index.html").read_text()
    assert index.count(DEMO_BANNER) >= 2
    parser = Links()
    parser.feed(index)
    assert len(parser.links) >= 20
    missing = [link for link in parser.links if not (run / link).exists()]
    assert missing == []


def test_index_renders_in_chromium_with_figures(study):
    _, _, run = study
    if browser.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (apt-get install chromium)")
        pytest.skip("chromium not installed")
    shot = run / "screenshot.png"
    loaded, total = browser.render(run / "index.html", shot)
    assert total >= 8 and loaded == total
    assert Image.open(shot).size[0] == 1280


def test_failed_run_keeps_previous_report(study):
    tmp, _, good = study
    # inside the range every profile checks before running (a fraction), refused by the splits in 00 (below 0.5)
    failed = run_all(tmp, "--set", "val_fraction=0.6")
    assert failed.returncode == 1
    err = [line for line in failed.stderr.splitlines() if line.startswith("FAILED")]
    assert err == ["FAILED: 00_download: ParameterError: val_fraction must be in (0, 0.5), got 0.6 — e.g. --set "
                   "val_fraction=0.125"]
    assert "partial output:" in failed.stderr and "Traceback" not in failed.stderr
    assert (tmp / "reports" / "latest").resolve() == good
    bad_runs = [p for p in (tmp / "reports").iterdir() if (p / "FAILED.txt").exists()]
    assert len(bad_runs) == 1 and (bad_runs[0] / "notebooks" / "00_download.ipynb").exists()
    assert (good / "index.html").exists() and json.loads((good / "run.json").read_text())["ok"]


def test_only_reruns_one_notebook_and_carries_the_rest(study):
    tmp, _, good = study
    res = run_all(tmp, "--only", "01")
    assert res.returncode == 0, res.stderr[-2000:]
    new = (tmp / "reports" / "latest").resolve()
    assert new != good
    meta = json.loads((new / "run.json").read_text())
    by = {n["name"]: n for n in meta["notebooks"]}
    assert by["00_download"]["from_run"] == good.name and by["01_eda_intensity"]["from_run"] is None
    # the steps of the carried notebooks come with them; the time left is estimated from the complete run
    carried = {s["from_run"] for s in meta["steps"] if s["notebook"] == "00_download"}
    assert carried == {good.name} and all(s.get("from_run") is None for s in meta["steps"] if s["notebook"] == "01_eda_intensity")
    assert f"(from run {good.name})" in res.stdout and "01_eda_intensity … (last run" in res.stdout
    assert (new / "html" / "00_download.html").exists()
    assert meta["partial_of"] == good.name


def _app_script(reports=None):
    from busi_study.app.pages import run_app

    run_app(reports=reports)


def test_app_serves_the_exported_models(study):
    """The app on this run's exported models: best model first, an upload answered, the card shown."""
    from streamlit.testing.v1 import AppTest

    tmp, _, run = study
    at = AppTest.from_function(_app_script, kwargs={"reports": str(tmp / "reports")}, default_timeout=300).run()
    assert not at.exception
    table = pd.read_csv(run / "tables" / "comparison_models.csv")
    best = table[table["status"] == "trained"].sort_values("macro_auc", ascending=False)["model"].iloc[0]
    assert at.selectbox(key="model").value.startswith(best)
    image = next(p for p in sorted((tmp / "data").rglob("benign*.png")) if "_mask" not in p.name)
    at.file_uploader(key="uploads").set_value([(image.name, image.read_bytes(), "image/png")]).run()
    assert not at.exception and not at.error
    assert any("| class | raw | calibrated |" in m.value for m in at.markdown)
    assert at.dataframe[0].value["p_malignant"].notna().all()
    at.sidebar.radio(key="page").set_value("Model card").run()
    assert not at.exception and "Cross-validated performance" in [h.value for h in at.header]


def _tree(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_ino, p.stat().st_size) for p in run.rglob("*") if p.is_file()}


def test_only_run_links_files_and_never_changes_the_run_it_builds_on(study):
    tmp, _, _ = study
    base = (tmp / "reports" / "latest").resolve()
    before = {p: hashlib.sha256((base / p).read_bytes()).hexdigest() for p in _tree(base)}
    # a failing --only run: a raw image of the data 00 read is missing, so 01 refuses to open the data
    # (the carried-over notebooks' parameters stay those of the run built on)
    image = Path(json.loads((base / "data_summary.json").read_text())["root"]) / "benign" / "benign (1).png"
    hidden = image.with_name(".hidden.png")
    image.rename(hidden)
    try:
        res = run_all(tmp, "--only", "01")
    finally:
        hidden.rename(image)
    assert res.returncode == 1 and "FAILED: 01_eda_intensity: ProvenanceError" in res.stderr and "benign (1).png" in res.stderr
    new = max((p for p in (tmp / "reports").iterdir() if p.name != "latest"), key=lambda p: p.stat().st_mtime)
    assert (tmp / "reports" / "latest").resolve() == base and not (new / "COMPLETE.json").exists()
    assert {p: hashlib.sha256((base / p).read_bytes()).hexdigest() for p in _tree(base)} == before
    shared = {i for i, _ in _tree(base).values()}
    own = sum(size for i, size in _tree(new).values() if i not in shared)
    total = sum(size for _, size in _tree(base).values())
    assert own < 0.5 * total, (own, total)  # links, not a copy of the whole report


def test_rerun_gives_identical_out_of_fold_predictions(study):
    """Same commit, data and seed on the same machine: every model's OOF predictions identical,
    also when the frozen-feature cache is recomputed (issue 12, defect 6)."""
    tmp, _, first = study
    shutil.rmtree(tmp / "data" / "processed" / "demo" / "cache", ignore_errors=True)
    res = run_all(tmp, "--only", "02", "03", "04")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    again = (tmp / "reports" / "latest").resolve()
    trained = [d.name for d in sorted((first / "results").iterdir()) if (d / "oof.csv").exists()]
    assert "s2_cnn" in trained
    cols = ["p_normal", "p_benign", "p_malignant"]
    for model in trained:
        a = pd.read_csv(first / "results" / model / "oof.csv").sort_values("image_id").reset_index(drop=True)
        b = pd.read_csv(again / "results" / model / "oof.csv").sort_values("image_id").reset_index(drop=True)
        assert a["image_id"].tolist() == b["image_id"].tolist()
        diff = float((a[cols] - b[cols]).abs().to_numpy().max())
        assert diff == 0.0, f"{model}: max |dp| = {diff:.3g} between two runs of the same commit, data and seed"
