"""report/: export (figures and tables), plots, the index page, and the notebook views."""

import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from busi_study import (
    plots,  # noqa: E402
    provenance,  # noqa: E402
)
from busi_study.errors import StudyError  # noqa: E402
from busi_study.evaluation.calibration import reliability_table  # noqa: E402
from busi_study.info import DEMO_BANNER  # noqa: E402
from busi_study.report.export import round_table, save_figure, save_table, titled  # noqa: E402
from busi_study.report.index import write_index  # noqa: E402


def preds(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "fold": np.arange(n) % 5,
                         "label": np.array(["normal", "benign", "malignant"])[y], "group_id": [f"g{k}" for k in range(n)],
                         "p_normal": p[:, 0], "p_benign": p[:, 1], "p_malignant": p[:, 2]})


def test_save_figure_writes_png_at_dpi_and_pdf(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1])
    png, pdf = save_figure(fig, "x", tmp_path, dpi=100)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    plt.close(fig)
    from PIL import Image

    assert Image.open(png).info["dpi"][0] == pytest.approx(100, abs=1)


def test_save_table_rounds_floats_and_writes_latex(tmp_path):
    df = pd.DataFrame({"metric": ["a_b"], "value": [0.123456], "n": [7]})
    csv, tex = save_table(df, "t", tmp_path)
    assert csv.read_text().splitlines() == ["metric,value,n", "a\\_b,0.123,7".replace("\\_", "_")]
    assert "a\\_b" in tex.read_text() and "0.123" in tex.read_text() and "\\begin{tabular}" in tex.read_text()
    assert round_table(pd.DataFrame({"x": [1.23456]}), 2)["x"].iloc[0] == 1.23
    assert titled("T", demo=True).endswith(f"[{DEMO_BANNER}]") and titled("T") == "T"


@pytest.mark.parametrize("make", [
    lambda: plots.learning_curves(pd.DataFrame({"fold": [0, 0], "phase": [1, 1], "epoch": [1, 2], "loss": [1.0, 0.8],
                                                "val_loss": [1.1, 0.9], "accuracy": [0.5, 0.6], "val_accuracy": [0.4, 0.5]}), "t"),
    lambda: plots.roc_one_vs_rest(preds(), "t"),
    lambda: plots.roc_overlay({"a": preds(), "b": preds(seed=1)}, "t"),
    lambda: plots.reliability({"a": reliability_table(np.zeros(3, int), np.eye(3))}, "t"),
    lambda: plots.reliability_before_after({"a": reliability_table(np.zeros(3, int), np.eye(3))},
                                           {"a": reliability_table(np.zeros(3, int), np.eye(3))}, "t"),
    lambda: plots.image_gallery([{"image": np.zeros((8, 8), np.uint8), "caption": "c", "mask": np.eye(8, dtype=bool),
                                  "cam": np.ones((8, 8))}, {"image": np.zeros((8, 8, 3), np.uint8), "caption": "d"}], ncols=2),
    lambda: plots.error_rates(pd.DataFrame({"factor": ["f", "f"], "level": ["a", "b"], "n": [3, 4], "error_rate": [0.1, 0.2],
                                            "ci_low": [0.0, 0.1], "ci_high": [0.3, 0.4]}), "t"),
    lambda: plots.pointing_game(pd.DataFrame({"model": ["m", "m"], "map": ["Grad-CAM (predicted class)", "centred Gaussian baseline"],
                                              "value": [0.6, 0.4], "ci_low": [0.5, 0.3], "ci_high": [0.7, 0.5]}), "t"),
], ids=["learning_curves", "roc", "roc_overlay", "reliability", "reliability_pair", "gallery", "error_rates", "pointing_game"])
def test_every_plot_draws_something(make):
    fig = make()
    assert fig.axes and any(ax.has_data() for ax in fig.axes)
    plt.close(fig)


def test_confusion_plot_shows_counts():
    counts = pd.DataFrame([[5, 1, 0], [2, 7, 1], [0, 1, 4]], index=["normal", "benign", "malignant"],
                          columns=["normal", "benign", "malignant"])
    fig = plots.confusion(counts, counts.div(counts.sum(axis=1), axis=0), "t")
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert any("7" in t for t in texts)
    plt.close(fig)


def meta(run_id="r1", ok=True, demo=False, notebooks=None):
    return {"run_id": run_id, "ok": ok, "demo": demo, "profile": "smoke", "git": {"commit": "abc123def4567890", "dirty": False},
            "params": {"seed": 42}, "notebooks": notebooks or [], "models": None, "data": None, "wall_s": 1.0,
            "packages": {}, "hardware": provenance.hardware(), "kernel": "busi-study", "command": "run_all.py", "started_utc": "x", "finished_utc": "y"}


def test_index_page_states_failures_demo_and_figures(tmp_path):
    (tmp_path / "figures").mkdir()
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    save_figure(fig, "eda_class_counts", tmp_path, dpi=50)
    plt.close(fig)
    nbs = [{"name": "00_download", "ok": True, "wall_s": 1.0, "error": None, "ipynb": "notebooks/00_download.ipynb",
            "html": "html/00_download.html", "from_run": None},
           {"name": "01_eda_intensity", "ok": False, "wall_s": 2.0, "error": "KeyError: 'x'", "ipynb": "n", "html": "h",
            "from_run": None}]
    page = write_index(tmp_path, meta(ok=False, demo=True, notebooks=nbs)).read_text()
    assert DEMO_BANNER in page and "incomplete" in page and "notebook 01_eda_intensity failed: KeyError" in page
    assert "figures/eda_class_counts.png" in page and "abc123def456" in page
    assert re.search(r"<html lang=\"en\">", page)
    ok_page = write_index(tmp_path, meta()).read_text()
    assert DEMO_BANNER not in ok_page and "complete" in ok_page and "incomplete" not in ok_page
    m = meta()
    m["hardware"] = {**m["hardware"], "cpu_features": ["avx", "avx2", "fma"]}
    assert "vector instructions avx, avx2, fma" in write_index(tmp_path, m).read_text()


def test_notebook_views_save_and_title(tmp_path, monkeypatch):
    from busi_study.report import notebook_views
    from busi_study.report.notebook_views import StudyNotebook

    shown = []
    monkeypatch.setattr(notebook_views, "_display", lambda *objs: shown.extend(objs))
    monkeypatch.setattr(plt, "show", lambda: None)
    import hashlib

    from busi_study.data.store import masks_sha256

    data = tmp_path / "data" / "processed" / "demo" / "abc-123"  # keyed folder (issue 12)
    data.mkdir(parents=True)
    raw = tmp_path / "raw"  # the raw image and mask the data path read (checked against their recorded bytes)
    raw.mkdir()
    (raw / "a.png").write_bytes(b"image")
    (raw / "a_mask.png").write_bytes(b"mask")
    digest = {f: hashlib.sha256((raw / f).read_bytes()).hexdigest() for f in ("a.png", "a_mask.png")}
    (data / "manifest.csv").write_text(f"image_id,path,sha256,mask_paths\na,a.png,{digest['a.png']},a_mask.png\n")
    (data / "files.csv").write_text(f"path,sha256\na.png,{digest['a.png']}\na_mask.png,{digest['a_mask.png']}\n")
    (data / "source.json").write_text(json.dumps({"root": str(raw)}))
    (data / "splits.csv").write_text("image_id,fold\na,0\n")
    sha = {n: hashlib.sha256((data / f"{n}.csv").read_bytes()).hexdigest() for n in ("manifest", "splits")}
    masks = masks_sha256(pd.read_csv(data / "manifest.csv"), pd.read_csv(data / "files.csv"))
    summary = {"n_images": 1, "dataset": "demo", "processed_folder": str(data), "manifest_sha256": sha["manifest"],
               "masks_sha256": masks, "splits_sha256": sha["splits"]}
    (data / "data_summary.json").write_text(json.dumps(summary))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data_summary.json").write_text(json.dumps(summary))  # written by 00 of this run
    nb = StudyNotebook.open(tmp_path / "run", tmp_path / "data", demo=True, params={"figure_dpi": 50})
    assert nb.figure_dpi == 50 and nb.params.figure_dpi == 50
    assert nb.store.folder == data and nb.results.root == tmp_path / "run" / "results"
    assert nb.title("x").endswith(f"[{DEMO_BANNER}]") and shown  # the banner was shown
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    nb.figure(fig, "f")
    nb.table(pd.DataFrame({"v": [0.12345]}), "t")
    assert (tmp_path / "run" / "figures" / "f.png").exists() and (tmp_path / "run" / "figures" / "f.pdf").exists()
    assert (tmp_path / "run" / "tables" / "t.csv").read_text().splitlines()[1] == "0.123"
    assert isinstance(shown[-1], pd.DataFrame) and shown[-1]["v"].iloc[0] == 0.123
    with pytest.raises(StudyError, match="outside a notebook needs the parameters"):
        StudyNotebook.open(tmp_path / "run", tmp_path / "data", demo=True)  # no IPython here: say how
    with pytest.raises(StudyError, match="run notebooks/00_download first"):
        StudyNotebook.open(tmp_path / "run2", tmp_path / "nodata", demo=False, params={})


def test_model_section_states_the_protocol_the_results_ran(tmp_path):
    """--set n_splits=10 on a partial run must not relabel results that came from 5 folds."""
    (tmp_path / "tables").mkdir()
    row = {"model": "m", "backbone": "b", "weights": "w", "n": 10, "status": "trained", "flags": "",
           "protocol": "grouped 5-fold CV (StratifiedGroupKFold), seed 42, pooled out-of-fold", "fold_seconds": "1 2"}
    pd.DataFrame([row]).to_csv(tmp_path / "tables" / "comparison_models.csv", index=False)
    m = meta()
    m["params"] = {"n_splits": 10, "bootstrap_resamples": 200}
    page = write_index(tmp_path, m).read_text()
    assert "grouped 5-fold CV" in page and "10-fold" not in page
