"""The Streamlit pages: classify images, and the model card. Layout only; logic is in ``engine``.

``run_app`` is the whole app (``main.py`` calls it with the command-line options; the tests call
it through ``streamlit.testing.v1.AppTest``). Uploads stay in memory (Streamlit keeps them in
RAM; ``engine`` decodes them from bytes); results live in this browser session's
``st.session_state`` and go with it; nothing is written to disk or logged.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from ..errors import StudyError, first_line
from ..info import BUSI, CLASSES
from . import engine
from .inputs import SUFFIXES
from .server import keep_tensorflow_caches, keep_uploads_in_memory

NOTICE = ("**Research use only — not a medical device.** This demo shows what a model trained on the "
          "public BUSI dataset outputs; it must not be used to diagnose, screen or treat anyone.")
PAGES = ("Classify images", "Model card")
REPORTS = Path(__file__).resolve().parents[3] / "reports"
#: Wall time of MAKE_MODEL_COMMAND, measured on the study's 2-core CPU machine (see REPORT/README).
MAKE_MODEL_TIME = "measured 14.5 minutes on the study's shared 2-core CPU, no GPU"


@st.cache_resource(show_spinner="Loading the model …", max_entries=4)
def _cached_model(path: str, mtime: float) -> engine.LoadedModel:
    """One load per model file (and modification time) for the life of the server."""
    return engine.load(engine.entry_for(Path(path)))


def _models(model: str | None, reports: str | None) -> tuple[list[engine.ModelEntry], str | None]:
    """The models to offer and an error message (None when all is well)."""
    if model:
        try:
            return [engine.entry_for(Path(model))], None
        except StudyError as exc:
            return [], f"--model {model}: {exc}"
    folder = Path(reports) if reports else REPORTS
    entries = engine.find_models(folder)
    if not entries:
        return [], f"No exported model found in {folder / 'latest' / 'models'}."
    return entries, None


def no_model_page(message: str) -> None:
    st.error(message)
    st.markdown("Make one (it runs the study's smoke profile on your BUSI copy and exports every model "
                f"under `reports/latest/models/`; {MAKE_MODEL_TIME}), then reload this page:")
    st.code(engine.MAKE_MODEL_COMMAND, language="bash")
    st.markdown("Or start the app on a model file: `make app ARGS=\"--model path/to/model.keras\"`.")


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def _probability_table(r: engine.ImageResult) -> str:
    head = "| class | raw | calibrated |\n|---|---|---|\n"
    cal = r.proba_calibrated
    return head + "\n".join(f"| {c} | {r.proba[i]:.3f} | {_fmt(None if cal is None else float(cal[i]))} |"
                            for i, c in enumerate(CLASSES))


def _decision_text(r: engine.ImageResult, decision: dict) -> str:
    parts = [f"Predicted class: **{r.predicted}** (highest probability; temperature scaling does not change it)."]
    for key, flag, what in (("threshold_spec90", r.malignant_spec90, "high-specificity rule (≥ 90 % specificity on validation)"),
                            ("threshold_sens90", r.malignant_sens90, "high-sensitivity rule (≥ 90 % sensitivity on validation)")):
        t = decision.get(key)
        if t is None:
            parts.append(f"Malignant, {what}: threshold missing.")
        else:
            parts.append(f"Malignant, {what}: **{'yes' if flag else 'no'}** (raw p_malignant {r.proba[2]:.3f} vs {t:.3f}).")
    return "  \n".join(parts)


def update_results(store: dict | None, setting: tuple, files: list[tuple[str, str, bytes]], analyse) -> tuple[dict, list, int]:
    """Per-file results kept between reruns: analyse only the files (id, name, bytes) not in
    ``store`` under the same ``setting`` (model, Grad-CAM), drop the ones no longer uploaded.
    ``analyse(list of (name, bytes)) -> results``. Returns (new store, results in file order, files analysed)."""
    if not store or store.get("setting") != setting:
        store = {"setting": setting, "by_id": {}}
    new = [f for f in files if f[0] not in store["by_id"]]
    if new:
        store["by_id"].update(zip((f[0] for f in new), analyse([(name, data) for _, name, data in new])))
    store = {"setting": setting, "by_id": {f[0]: store["by_id"][f[0]] for f in files}}
    return store, [store["by_id"][f[0]] for f in files], len(new)


def _analyse_cached(lm: engine.LoadedModel, files: list, with_gradcam: bool) -> tuple[list[engine.ImageResult], int, float]:
    """Results for the current uploads, kept in this browser session's memory for the files still
    uploaded, so reruns of the page (the download button, adding a file) do not recompute them."""
    t0 = time.perf_counter()
    store, results, n_new = update_results(
        st.session_state.get("_results"), (str(lm.entry.path), with_gradcam),
        [(f.file_id, f.name, f.getvalue()) for f in files],
        lambda uploads: engine.analyse(lm, uploads, with_gradcam=with_gradcam))
    st.session_state["_results"] = store
    return results, n_new, time.perf_counter() - t0


def classify_page(lm: engine.LoadedModel, with_gradcam: bool) -> None:
    st.title("Classify breast-ultrasound images")
    st.markdown(f"Model **{lm.entry.name}**. Upload one or more images (PNG, JPEG, BMP); each gets the class "
                "probabilities (raw and temperature-scaled), the malignant decision at the model card's "
                "thresholds and a Grad-CAM map of where the model looked. Images stay in memory and are not kept.")
    files = st.file_uploader("Ultrasound images", type=list(SUFFIXES), accept_multiple_files=True, key="uploads")
    if not files:
        st.info("No image uploaded yet.")
        return
    with st.spinner("Classifying …"):
        results, n_new, seconds = _analyse_cached(lm, list(files), with_gradcam)
    n_ok = sum(not r.error for r in results)
    st.caption(f"{len(results)} file(s), {n_ok} classified; {n_new} new file(s) answered in {seconds:.2f} s"
               + (f" ({seconds / n_new:.2f} s per file{' with Grad-CAM' if with_gradcam else ''})." if n_new else "."))
    temperature = lm.decision.get("temperature")
    if temperature is None:
        st.warning(f"No temperature for this model ({lm.decision['source']}): calibrated probabilities are not shown.")
    for r in results:
        st.subheader(r.name)
        if r.error:
            st.error(f"{r.name}: {r.error}")
            continue
        for w in r.unlike_training:
            st.warning(f"Unlike the training data: {w}. The model's output may be meaningless for this image.")
        for n in r.notes:
            st.info(f"{r.name}: {n}")
        if r.outline is not None:
            c1, c0, c2, c3 = st.columns([1, 1, 1, 1])
            area = (f"area {r.lesion_area:.1%} of the image" if r.lesion_found else
                    "none shown: the model calls the image normal" if r.predicted == "normal" and lm.outline.gate == "classifier"
                    else "no lesion region found")
            c0.image(r.outline, caption=f"predicted lesion outline ({area})", width="stretch")
        else:
            c1, c2, c3 = st.columns([1, 1, 1])
        c1.image(r.display, caption=f"uploaded ({r.size_text})", width="stretch")
        if r.overlay is not None:
            c2.image(r.overlay, caption=f"Grad-CAM of '{r.predicted}' (layer {lm.gradcam_layer})", width="stretch")
        else:
            c2.caption("Grad-CAM off")
        c3.markdown(_probability_table(r))
        c3.markdown(_decision_text(r, lm.decision))
    table = engine.results_table(results, temperature)
    st.subheader("All files")
    st.dataframe(table, hide_index=True)
    st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name="predictions.csv",
                       mime="text/csv", key="download")


def _table(path: Path, model: str) -> pd.DataFrame | None:
    if not path.exists():
        return None
    t = pd.read_csv(path)
    return t[t["model"] == model] if "model" in t.columns else t


def _metric_rows(cv: dict) -> pd.DataFrame:
    rows = [{"metric": k, "value": v, "95% CI": f"[{_fmt(cv.get(k + '_ci_low'))}, {_fmt(cv.get(k + '_ci_high'))}]"}
            for k, v in cv.items() if isinstance(v, (int, float)) and not k.endswith(("_ci_low", "_ci_high"))]
    return pd.DataFrame(rows)


def model_card_page(lm: engine.LoadedModel) -> None:
    card, entry = lm.entry.card, lm.entry
    run_dir = entry.path.resolve().parent.parent
    st.title(f"Model card: {card.get('title', entry.name)}")
    if not card:
        st.warning(f"No model card (`{entry.path.with_suffix('.json').name}`) beside the model file.")
    st.markdown(f"File `{entry.path}` · source study {card.get('source_study', '–')} · backbone "
                f"{card.get('backbone', '–')} · input {card.get('input', {}).get('size', '–')}")
    st.header("Data")
    st.markdown(f"{BUSI['name']}: {BUSI['citation']}. Trained on {card.get('trained_on', '–')}. "
                f"Data manifest SHA-256 `{card.get('data_manifest_sha256', '–')}`.")
    st.header("Protocol")
    cv = card.get("cv_metrics", {})
    st.markdown(cv.get("protocol", "–") + ". Duplicate-aware splits: near-duplicate images stay in one fold.")
    st.header("Cross-validated performance")
    metrics = _metric_rows(cv)
    if metrics.empty:
        st.info("No CV metrics in the card.")
    else:
        st.dataframe(metrics, hide_index=True)
    st.header("Calibration and decision thresholds")
    d = lm.decision
    st.markdown(f"Temperature **{_fmt(d.get('temperature'), 2)}**; malignant thresholds on raw p_malignant: "
                f"high-specificity {_fmt(d.get('threshold_spec90'))}, high-sensitivity {_fmt(d.get('threshold_sens90'))}. "
                f"Source: {d.get('source')}; {d.get('fitted_on', '')}")
    cal = _table(run_dir / "tables" / "calibration_summary.csv", entry.name)
    if cal is not None and not cal.empty:
        st.dataframe(cal, hide_index=True)
    else:
        st.caption("No calibration table in this run (notebook 07_error_analysis).")
    st.header("Localisation (Grad-CAM against the lesion masks)")
    loc = _table(run_dir / "tables" / "localisation_summary.csv", entry.name)
    if loc is not None and not loc.empty:
        st.dataframe(loc, hide_index=True)
    else:
        st.caption("No localisation table in this run (notebook 07_error_analysis).")
    st.header("External validation")
    ext = [t for p in sorted((run_dir / "tables").glob("external*.csv")) if (t := _table(p, entry.name)) is not None and not t.empty]
    if ext:
        for t in ext:
            st.dataframe(t, hide_index=True)
    else:
        st.caption("No external-validation results in this run.")
    st.header("Weights")
    st.markdown(f"{card.get('weights', '–')}; git commit `{card.get('git', {}).get('commit', '–')}`.")
    st.header("Limitations")
    st.markdown(
        "- Trained and cross-validated on one public dataset (BUSI: one hospital, one period, about 600 women); "
        "performance on other scanners and populations is unknown unless an external result is shown above.\n"
        "- The CV numbers describe models trained like this one, not this final model on new patients.\n"
        "- The temperature and thresholds come from the fold models' validation predictions; the final model has no "
        "held-out data of its own.\n"
        + ("- The lesion outline is the model's own segmentation (thresholded lesion map, largest region), measured on BUSI "
           "against the masks in notebook 05 and on the external set in notebook 08; Grad-CAM shows where the class score "
           "is sensitive, which is another thing.\n" if card.get("outline") else
           "- Grad-CAM shows where the class score is sensitive, not a lesion segmentation; this model does not segment.\n")
        + "- The out-of-distribution check is a range check on size, colour and intensity only.\n"
        + "- " + NOTICE.replace("**", ""))
    if card.get("deployment"):
        st.header("Deployed form")
        st.markdown(card["deployment"])


def run_app(model: str | None = None, reports: str | None = None) -> None:
    """The whole app; ``model`` a ``.keras`` file, else the best exported model of ``reports/latest``."""
    keep_uploads_in_memory()
    keep_tensorflow_caches()
    st.set_page_config(page_title="BUSI study — research demo", layout="wide")
    st.warning(NOTICE)
    page = st.sidebar.radio("Page", PAGES, key="page")
    entries, message = _models(model, reports)
    if not entries:
        no_model_page(message or "No model.")
        return
    labels = [e.label for e in entries]
    choice = st.sidebar.selectbox("Model (best first)", labels, index=0, key="model")
    entry = entries[labels.index(choice)]
    with_gradcam = st.sidebar.checkbox("Grad-CAM", value=True, key="gradcam")
    try:
        lm = _cached_model(str(entry.path), entry.path.stat().st_mtime)
    except Exception as exc:  # a broken file: say so, no traceback
        st.error(f"Cannot load {entry.path}: {type(exc).__name__}: {first_line(exc, 200)}")
        return
    st.sidebar.caption(f"Temperature: {_fmt(lm.decision.get('temperature'), 2)} ({lm.decision['source'].split(':')[0]}); "
                       f"model loaded in {lm.load_seconds:.1f} s (cached).")
    st.sidebar.caption(NOTICE)
    if page == PAGES[0]:
        classify_page(lm, with_gradcam)
    else:
        model_card_page(lm)
