"""The app's logic without Streamlit: find the exported models, load one, classify uploads.

Everything here works on bytes and arrays in memory; nothing is written to disk. The page
functions (``app.pages``) call these and only lay out the results, so the logic is tested
directly and the pages with Streamlit's ``AppTest``.

Per image (:func:`analyse`): decode (``app.inputs``, one clear message per bad file), measure
how unlike BUSI it is (``app.ood``), resize to the model's input exactly as ``predict`` does
(``cv2.INTER_AREA`` of the whole image to a square), class probabilities (raw, and after the
model's temperature), the malignant decision at the model's two validation thresholds, and a
Grad-CAM map of the predicted class (``explain.gradcam``) upsampled to the image.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from ..data.images import fit_square, unfit_square
from ..errors import StudyError
from ..info import CLASSES, PROBA_COLUMNS
from ..results import ResultsStore
from . import ood
from .inputs import DecodedImage, InputRejected, decode_upload

PROBA = PROBA_COLUMNS
PROBA_CAL = [f"{c}_calibrated" for c in PROBA]
#: Columns of ``python -m busi_study predict`` (first, in this order), then the app's own.
PREDICT_COLUMNS = ["path", *PROBA, "predicted", "error"]
APP_COLUMNS = [*PROBA_CAL, "temperature", "malignant_at_spec90_threshold", "malignant_at_sens90_threshold",
               "lesion_found", "lesion_area", "unlike_training_data", "notes"]
#: Longest side of the images shown on the page (the Grad-CAM overlay is drawn at this size).
DISPLAY_SIDE = 512
#: The command that makes a model on a fresh clone (its wall time is measured in the README).
MAKE_MODEL_COMMAND = 'make report ARGS="--profile smoke --data /path/to/Dataset_BUSI_with_GT"'


@dataclass
class ModelEntry:
    """One exported model: ``reports/<run>/models/<name>.keras`` and its card."""

    name: str
    path: Path
    card: dict
    results: ResultsStore | None = None      # the run's results store, when it holds this model

    @property
    def macro_auc(self) -> float | None:
        v = self.card.get("cv_metrics", {}).get("macro_auc")
        return None if v is None else float(v)

    @property
    def deployed_default(self) -> bool:
        """This file is the form (final model or fold ensemble) its model card deploys by default."""
        return self.card.get("deployed_default", self.path.name) == self.path.name

    @property
    def label(self) -> str:
        auc = self.macro_auc
        return self.name + (f" (CV macro AUC {auc:.3f})" if auc is not None else " (no CV metrics)")


def entry_for(path: Path) -> ModelEntry:
    """A model file and what lies beside it: its card ``<name>.json`` and, when the file is a
    run's exported model (``reports/<run>/models/<name>.keras``), that run's results store."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"model file not found: {path}")
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    store = ResultsStore(path.resolve().parent.parent)
    return ModelEntry(path.stem, path, card, store if path.stem in store.trained_names() else None)


def find_models(reports_dir: Path) -> list[ModelEntry]:
    """Exported models of ``reports_dir/latest``, best first (highest CV macro AUC, the report's rule;
    of a model's two forms, final model and fold ensemble, the one its card deploys by default first).
    A crop pipeline (notebook 05: segmenter + classifier of the crop) is left to ``predict``: the
    app runs one network per image; so is a binary model (notebook 06's S4-style model), whose
    missing p_normal the app's three-class page cannot show."""
    entries = [entry_for(p) for p in ResultsStore(Path(reports_dir) / "latest").exported_models()]
    # three-class models only: a binary model (S4: benign vs malignant, no p_normal) is left to predict too
    entries = [e for e in entries if not e.card.get("pipeline") and len(e.card.get("classes", CLASSES)) == len(CLASSES)]
    return sorted(entries, key=lambda e: (e.macro_auc is None, -(e.macro_auc or 0.0), not e.deployed_default, e.name))


def decision_for(entry: ModelEntry) -> dict:
    """Temperature and malignant thresholds: from the card, else fitted now on the run's
    validation predictions (``results/<name>/val_predictions.csv``), else marked missing.
    Never fitted on uploaded images."""
    from ..evaluation.deployment import decision_settings

    if entry.card.get("decision"):
        return {**entry.card["decision"], "source": "model card"}
    val = entry.results.load(entry.name).val if entry.results else None
    if val is not None and not val.empty:
        return {**decision_settings(val), "source": f"fitted on results/{entry.name}/val_predictions.csv (the card has none)"}
    return {"temperature": None, "threshold_spec90": None, "threshold_sens90": None,
            "source": "missing: the card has no temperature or thresholds and the run's validation predictions "
                      f"(results/{entry.name}/val_predictions.csv) are not beside the model"}


@dataclass
class LoadedModel:
    entry: ModelEntry
    model: object
    input_size: int
    gradcam_layer: str
    decision: dict
    load_seconds: float
    explainer: object = None                 # explain.gradcam.GradCAM (a list: one per member of a fold ensemble)
    forward: object = None                   # the model's forward pass compiled for any batch size
    outline: object = None                   # predict.OutlineModel: the model also outlines the lesion
    fit: str = "stretch"                     # how an image becomes the square input


def load(entry: ModelEntry) -> LoadedModel:
    """Load the Keras model (the page caches this with ``st.cache_resource``)."""
    from ..explain.gradcam import GradCAM, last_conv_layer_name
    from ..predict import CropPipelineModel, OutlineModel, load_model, model_classes

    t0 = time.perf_counter()
    model, _ = load_model(entry.path)
    if isinstance(model, CropPipelineModel) or (not isinstance(model, OutlineModel) and model_classes(model) != CLASSES):
        what = ("a crop pipeline (segmenter + classifier)" if isinstance(model, CropPipelineModel)
                else "a binary benign-vs-malignant model (no p_normal)")
        raise StudyError(f"{entry.path.name} is {what}: the app shows three-class models only — classify with "
                         f"python -m busi_study predict IMAGES --model {entry.path}")
    outline = model if isinstance(model, OutlineModel) else None
    net = outline.network if outline else model
    chains = outline.chains if outline else [model]  # the class path of each member: what Grad-CAM explains
    layer = entry.card.get("gradcam_layer") or last_conv_layer_name(chains[0])
    import tensorflow as tf

    size = int(net.inputs[0].shape[1])
    # one graph for every batch size (Keras's predict_on_batch retraces, seconds, on each new one)
    forward = tf.function(lambda x: net(x, training=False), input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    explainer = [GradCAM(c, layer) for c in chains]
    lm = LoadedModel(entry, net, size, layer, decision_for(entry), 0.0, explainer, forward, outline,
                     outline.fit if outline else "stretch")
    # warm-up on a blank BUSI-sized image through the whole path: graph tracing, the Grad-CAM
    # replay check and first imports happen here, once per server (the page caches this
    # object), not on the first upload
    buf = io.BytesIO()
    Image.new("L", (560, 470), 90).save(buf, format="PNG")
    analyse(lm, [("warm-up.png", buf.getvalue())])
    lm.load_seconds = time.perf_counter() - t0
    return lm


@dataclass
class ImageResult:
    name: str
    error: str = ""
    size_text: str = ""
    proba: np.ndarray | None = None          # raw class probabilities (3,)
    proba_calibrated: np.ndarray | None = None
    predicted: str = ""
    malignant_spec90: bool | None = None
    malignant_sens90: bool | None = None
    display: np.ndarray | None = None        # uint8 RGB, longest side <= DISPLAY_SIDE
    overlay: np.ndarray | None = None        # the same with the Grad-CAM map blended in
    cam: np.ndarray | None = None            # the Grad-CAM map at the layer's resolution, [0, 1]
    outline: np.ndarray | None = None        # the display image with the predicted lesion's outline drawn
    lesion_found: bool | None = None         # outlining models: a lesion region was found
    lesion_area: float | None = None         # its area, as a share of the image
    unlike_training: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _display(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = min(1.0, DISPLAY_SIDE / max(h, w))
    return rgb if s == 1.0 else cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] map (same H, W) over an RGB image with the JET colour map; uint8 RGB."""
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.clip((1 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32), 0, 255))


def draw_outline(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the contour of a boolean mask (same H, W) drawn in green; uint8 RGB."""
    out = np.ascontiguousarray(rgb.copy())
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), max(1, round(max(rgb.shape[:2]) / 256)))
    return out


def calibrate(proba: np.ndarray, temperature: float | None) -> np.ndarray | None:
    """``softmax(log p / T)`` over the model's classes; None when there is no temperature."""
    from ..evaluation.calibration import temperature_scale

    if temperature is None:
        return None
    return temperature_scale(np.atleast_2d(proba), float(temperature))


def analyse(lm: LoadedModel, uploads: Sequence[tuple[str, bytes]], profile: dict | None = None,
            with_gradcam: bool = True) -> list[ImageResult]:
    """Classify uploaded files (name, bytes); one result per file, in order; bad files get ``error``."""
    from ..explain.gradcam import upsample

    profile = profile or ood.load_profile()
    results, good, batch = [], [], []
    for name, data in uploads:
        r = ImageResult(name=name)
        results.append(r)
        try:
            img: DecodedImage = decode_upload(name, data)
        except InputRejected as exc:
            r.error = str(exc)
            continue
        r.size_text, r.notes = img.size_text, list(img.notes)
        r.unlike_training = ood.unlike_training(ood.image_measures(img.rgb), profile)
        r.display = _display(img.rgb)
        batch.append(fit_square(img.rgb, lm.input_size, lm.fit))  # as predict makes the input
        good.append(r)
    if not good:
        return results
    x = np.stack(batch).astype(np.float32)
    out = lm.forward(x)
    proba = np.asarray(out[0] if lm.outline else out, dtype=np.float64)
    lesion_maps = np.asarray(out[1], np.float32)[..., 0] if lm.outline else None
    cal = calibrate(proba, lm.decision.get("temperature"))
    pred = proba.argmax(axis=1)
    maps = np.mean([e(x, class_index=pred) for e in lm.explainer], axis=0) if with_gradcam else None
    t_spec, t_sens = lm.decision.get("threshold_spec90"), lm.decision.get("threshold_sens90")
    for i, r in enumerate(good):
        r.proba = proba[i]
        r.proba_calibrated = None if cal is None else cal[i]
        r.predicted = CLASSES[int(pred[i])]
        r.malignant_spec90 = None if t_spec is None else bool(proba[i, 2] >= t_spec)
        r.malignant_sens90 = None if t_sens is None else bool(proba[i, 2] >= t_sens)
        if maps is not None:
            r.cam = maps[i]
            cam = unfit_square(maps[i], r.display.shape[:2], lm.fit) if lm.fit != "stretch" else upsample(maps[i], r.display.shape[:2])
            r.overlay = overlay(r.display, np.clip(cam, 0, 1))
        if lesion_maps is not None:
            mask, r.lesion_area, r.lesion_found = lm.outline.outline(lesion_maps[i], r.display.shape[:2], proba[i])
            r.outline = draw_outline(r.display, mask)
    return results


def results_table(results: Sequence[ImageResult], temperature: float | None) -> pd.DataFrame:
    """One row per file: ``predict``'s columns first (same names, order and meaning), then the app's."""
    rows = []
    for r in results:
        row = {"path": r.name, **dict.fromkeys(PROBA, np.nan), "predicted": r.predicted, "error": r.error,
               **dict.fromkeys(PROBA_CAL, np.nan), "temperature": temperature if not r.error else np.nan,
               "malignant_at_spec90_threshold": r.malignant_spec90, "malignant_at_sens90_threshold": r.malignant_sens90,
               "lesion_found": r.lesion_found, "lesion_area": r.lesion_area,
               "unlike_training_data": "; ".join(r.unlike_training), "notes": "; ".join(r.notes)}
        if r.proba is not None:
            row.update(dict(zip(PROBA, map(float, r.proba))))
        if r.proba_calibrated is not None:
            row.update(dict(zip(PROBA_CAL, map(float, r.proba_calibrated))))
        rows.append(row)
    return pd.DataFrame(rows, columns=PREDICT_COLUMNS + APP_COLUMNS)
