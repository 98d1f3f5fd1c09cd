"""Predict with an exported model: image files or folders in, a CSV of class probabilities out.

    python -m busi_study predict IMAGE_OR_FOLDER ... --model reports/latest/models/NAME.keras [--out preds.csv]
    python -m busi_study predict IMAGES ... --model reports/latest/results/NAME/fold*.keras   # fold ensemble

One row per image (path, p_normal, p_benign, p_malignant, predicted, error). An unreadable
file gets a row with its error instead of stopping the run. Works offline: the ``.keras``
file carries its own preprocessing. Several ``--model`` files (e.g. the five fold models of a
run) give a fold ensemble: the mean of their probabilities.

A ``.tflite`` file (notebook 06's on-device export, any precision) works the same way, run by
LiteRT. A binary model (benign vs malignant, S4) gives p_benign and p_malignant; its p_normal
is left empty (NaN): it was never asked whether an image is normal.

A crop pipeline (notebook 05, S1's pipeline: its card names a segmenter) segments the lesion
first, crops the box around the predicted region from the original image and classifies the
crop; its rows add ``lesion_found`` and the box in pixels, and with ``--masks DIR`` the
predicted lesion mask of each image is written there as a PNG (``lesion_mask`` column).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .data.images import read_rgb
from .data.manifest import IMAGE_SUFFIXES, MASK_RE
from .errors import ModelFileError, StudyError, first_line, from_os_error
from .info import CHOICES, CLASSES, PROBA_COLUMNS


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, masks left out) and keep files as given, in a stable order."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                          and not MASK_RE.match(f.stem))
        else:
            out.append(p)
    return out


def load_model(path: Path):
    """Load an exported classifier, ``.keras`` or ``.tflite`` (and its model card, if beside it)."""
    path = Path(path)
    hint = "use a .keras or .tflite file exported by the study, e.g. reports/latest/models/NAME.keras"
    if not path.exists():
        raise ModelFileError(f"model file not found: {path} — {hint}")
    if path.is_file() and path.suffix.lower() == ".tflite":
        from .models.tflite import TFLiteModel

        try:
            model = TFLiteModel(path)
        except Exception as exc:  # not a flatbuffer, truncated, unsupported ops
            reason = first_line(exc)
            raise ModelFileError(f"cannot load the TFLite model {path} ({type(exc).__name__}: {reason}) — {hint}") from None
        if model.n_outputs not in (1, len(CLASSES)):
            raise ModelFileError(f"{path} is not a classifier of this study (output {model.n_outputs}) — {hint}")
    else:
        if path.is_dir() or path.suffix.lower() != ".keras":
            raise ModelFileError(f"not a .keras model file (nor .tflite): {path} — {hint}")
        import keras

        from .models import builders  # noqa: F401  (registers the custom preprocessing layer)

        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # a corrupt or foreign file fails in many ways inside Keras
            reason = first_line(exc)
            raise ModelFileError(f"cannot load the model {path} ({type(exc).__name__}: {reason}) — the file is corrupt "
                                 f"or not a Keras 3 model; {hint}") from None
        shape_in, shape_out = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
        # three classes, or one sigmoid unit (the binary S4-style model: p_malignant)
        if len(shape_in) != 4 or shape_in[1] is None or shape_in[-1] != 3 or shape_out[-1] not in (1, len(CLASSES)):
            raise ModelFileError(f"{path} is not a {len(CLASSES)}-class image classifier of this study (nor a binary one "
                                 f"with one sigmoid output; input {shape_in}, output {shape_out}) — {hint}")
    card_path = path.with_suffix(".json")
    try:
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
    except (OSError, ValueError):
        card = {}  # the card is documentation; a broken one does not stop a prediction
    pipeline = card.get("pipeline") if isinstance(card, dict) else None
    from .models.ensemble import is_multitask

    if not isinstance(model, CropPipelineModel) and hasattr(model, "outputs") and is_multitask(model):
        model = OutlineModel(model, card if isinstance(card, dict) else {})
    if pipeline and pipeline.get("segmenter_file"):
        seg_path = path.with_name(pipeline["segmenter_file"])
        if not seg_path.exists():
            raise ModelFileError(f"{path} is a crop pipeline but its segmenter {seg_path.name} is not beside it — copy "
                                 "both files (and the .json card) together")
        seg, _ = load_model_file(seg_path)
        model = CropPipelineModel(model, seg, pipeline)
    else:
        _refuse_crop_classifier_without_card(model, path)
    return model, card


def _refuse_crop_classifier_without_card(model, path: Path) -> None:
    """A crop pipeline's classifier was trained on crops of the predicted lesion (or on the whole image
    *and* the crop): without the card that names its segmenter it must not run on whole images."""
    inputs = getattr(model, "inputs", None) or [None]
    name = str(getattr(model, "name", ""))
    results_record = path.parent / "metrics.json"  # fold models: reports/<run>/results/<name>/fold<k>.keras
    try:
        from_pipeline_run = results_record.exists() and bool(json.loads(results_record.read_text()).get("pipeline"))
    except (OSError, ValueError, AttributeError):
        from_pipeline_run = False
    why = ("it takes two inputs (the whole image and the lesion crop)" if len(inputs) > 1 else
           f"{path.with_name(path.stem + '.segmenter.keras').name} lies beside it" if
           path.with_name(path.stem + ".segmenter.keras").exists() else
           f"it is a crop classifier ({name})" if name.startswith("s1_crop") or path.stem.startswith("s1_crop") else
           "it is a fold model of a crop pipeline (results/…/metrics.json)" if from_pipeline_run else "")
    if why:
        raise ModelFileError(f"{path} is the classifier of a crop pipeline ({why}) but its card {path.with_suffix('.json').name} "
                             "(naming the segmenter) is not beside it, and it must not classify whole images — copy the "
                             ".keras, .segmenter.keras and .json files of models/ together")


def load_model_file(path: Path):
    """A Keras file without the classifier checks (a segmenter outputs a mask, not classes)."""
    import keras

    from .models import builders  # noqa: F401  (registers the custom preprocessing layer)

    try:
        return keras.models.load_model(path, compile=False), None
    except Exception as exc:
        reason = first_line(exc)
        raise ModelFileError(f"cannot load the model {path} ({type(exc).__name__}: {reason})") from None


class OutlineModel:
    """A network that outlines the lesion and classifies the image (the multi-task U-Net, or the fold
    ensemble of its fold models): image → class probabilities and a lesion map, mapped back onto the
    original image; the input is fitted to a square as the card says (stretched or padded)."""

    def __init__(self, network, card: dict) -> None:
        from .models.ensemble import classifier_chain, members

        outline = card.get("outline") or {}
        self.network, self.card = network, card
        self.size = int(network.inputs[0].shape[1])
        self.fit = (card.get("input") or {}).get("fit", "stretch")
        self.threshold = float(outline.get("threshold", 0.5))
        self.min_area = float(outline.get("min_area", 0.0))
        self.gate = outline.get("gate", "none")  # cards written before the gate existed: outline always shown
        if self.gate not in CHOICES["outline_gate"]:
            raise ModelFileError(f"the model card's outline gate {self.gate!r} is not one of {', '.join(CHOICES['outline_gate'])}")
        self.chains = [classifier_chain(m) for m in members(network)]  # Grad-CAM: the mean over the members
        self.inputs, self.outputs = network.inputs, network.outputs

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The model input of one RGB image: float32 (size, size, 3)."""
        from .data.images import fit_square

        return fit_square(rgb, self.size, self.fit).astype(np.float32)

    def predict_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (n, 3), lesion probability (n, size, size)) of prepared inputs."""
        p, m = self.network(np.asarray(x, np.float32), training=False)
        return np.asarray(p, np.float64), np.asarray(m, np.float32)[..., 0]

    def outline(self, prob: np.ndarray, shape: tuple[int, int], proba: np.ndarray) -> tuple[np.ndarray, float, bool]:
        """(mask on the original image, its area as a share of the image, found) of one lesion map and the
        image's class probabilities ``proba``: with the card's gate ``classifier`` no outline is shown for an
        image the model calls normal."""
        from .data.images import unfit_square
        from .models.multitask import calls_normal, outline_shown
        from .models.segmentation import largest_region

        full = unfit_square(prob, shape, self.fit) >= self.threshold
        found = bool(outline_shown(bool(full.any()) and full.mean() >= self.min_area, calls_normal(proba), self.gate))
        mask = largest_region(full) if found else np.zeros(shape[:2], bool)
        return mask, float(mask.mean()), found

    def predict(self, x, verbose: int = 0) -> np.ndarray:
        """Class probabilities only (what a plain classifier's ``predict`` gives)."""
        return self.predict_batch(x)[0]


class CropPipelineModel:
    """Segment → crop the box of the largest predicted region (widened by the card's margin; the whole
    image when nothing is found) from the original image → classify the crop, or the whole image and
    the crop for a two-input (two-stream) classifier (notebook 05)."""

    def __init__(self, classifier, segmenter, pipeline: dict) -> None:
        self.classifier, self.segmenter, self.pipeline = classifier, segmenter, pipeline
        self.size = int(classifier.inputs[0].shape[1])
        self.seg_size = int(segmenter.inputs[0].shape[1])

    def lesion(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(predicted mask at the image's size, relative box y0 y1 x0 x1, found)."""
        from .data.images import fit_square, unfit_square
        from .models.crops import box_of

        fit = self.pipeline.get("segmenter_fit", "stretch")
        x = fit_square(rgb, self.seg_size, fit).astype(np.float32)[None]
        out = self.segmenter.predict(x, verbose=0)
        prob = np.asarray(out[-1] if isinstance(out, (list, tuple)) else out)[0, ..., 0]  # a multi-task segmenter: its map
        if fit != "stretch":  # boxes are relative to the original image: the map of the stretched image
            prob = cv2.resize(unfit_square(prob, rgb.shape[:2], fit), (self.seg_size, self.seg_size),
                              interpolation=cv2.INTER_LINEAR)
        box, found = box_of(prob, self.pipeline["threshold"], self.pipeline["min_area"], self.pipeline["margin"])
        h, w = rgb.shape[:2]
        mask = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) >= self.pipeline["threshold"]
        return mask, box, found

    def predict_image(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(probabilities (3,), mask, relative box, found) of one RGB image."""
        from .models.crops import crop

        mask, box, found = self.lesion(rgb)
        if len(self.classifier.inputs) == 2:  # two streams: the whole image and the crop
            whole = cv2.resize(rgb, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32)[None]
            c = crop(rgb, box, int(self.classifier.inputs[1].shape[1])).astype(np.float32)[None]
            return np.asarray(self.classifier.predict([whole, c], verbose=0), np.float64)[0], mask, box, found
        x = crop(rgb, box, self.size).astype(np.float32)[None]
        return np.asarray(self.classifier.predict(x, verbose=0), np.float64)[0], mask, box, found


#: The classes of a binary model (one sigmoid unit: p_malignant); its p_normal column stays empty.
BINARY_CLASSES: tuple[str, ...] = ("benign", "malignant")


def model_classes(model) -> tuple[str, ...]:
    """The classes a loaded model gives probabilities for: the study's three, or benign and malignant
    for a binary model (one output unit, as the S4-style model)."""
    if isinstance(model, CropPipelineModel):
        model = model.classifier
    n = getattr(model, "n_outputs", None)
    if n is None:
        n = int(model.outputs[0].shape[-1])
    return BINARY_CLASSES if int(n) == 1 else CLASSES


def three_class(proba: np.ndarray) -> np.ndarray:
    """(n, 3) probabilities; a binary model's (n, 1) p_malignant becomes (NaN, 1 - p, p)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim == 2 and proba.shape[1] == 1:
        p = proba[:, 0]
        return np.stack([np.full_like(p, np.nan), 1.0 - p, p], axis=1)
    return proba


def _predicted(p: np.ndarray) -> str:
    return CLASSES[int(np.nanargmax(p))]


def check_out_path(out: Path) -> None:
    """Fail early, before any model is loaded, when the output CSV cannot be written."""
    out = Path(out)
    if out.is_dir():
        raise StudyError(f"--out {out} is a folder — give a file name such as {out / 'predictions.csv'}")
    if not out.parent.is_dir():
        raise StudyError(f"--out {out}: the folder {out.parent} does not exist — create it first or choose another path")
    if not os.access(out.parent, os.W_OK):
        raise StudyError(f"--out {out}: the folder {out.parent} is not writable (read-only or no permission) — choose "
                         "another path")


def write_table(table: pd.DataFrame, out: Path) -> None:
    """Write the prediction CSV atomically; no space / read-only / no permission → one-line error."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        table.to_csv(tmp, index=False)
        tmp.replace(out)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        converted = from_os_error(exc, out)
        if converted is None:
            raise
        raise converted from None


def predict_pipeline(model: CropPipelineModel, files: list[Path], masks_dir: Path | None = None) -> pd.DataFrame:
    """Probabilities, lesion box (pixels) and optionally the predicted mask (PNG in ``masks_dir``) per file."""
    rows = []
    for f in files:
        row = {"path": str(f), **dict.fromkeys(PROBA_COLUMNS, np.nan), "predicted": "", "lesion_found": None,
               "box_y0": np.nan, "box_y1": np.nan, "box_x0": np.nan, "box_x1": np.nan, "lesion_mask": "", "error": ""}
        rows.append(row)
        try:
            if not f.exists():
                raise FileNotFoundError("no such file")
            rgb = read_rgb(f)
        except Exception as exc:  # bad file: an error row, not a crash
            row["error"] = f"{type(exc).__name__}: {first_line(exc)}"
            continue
        p, mask, box, found = model.predict_image(rgb)
        h, w = rgb.shape[:2]
        row.update({c: float(v) for c, v in zip(PROBA_COLUMNS, p)}, predicted=_predicted(p), lesion_found=bool(found),
                   box_y0=int(box[0] * h), box_y1=int(round(box[1] * h)), box_x0=int(box[2] * w), box_x1=int(round(box[3] * w)))
        if masks_dir is not None:
            out = Path(masks_dir) / f"{f.stem}_predicted_mask.png"
            tmp = out.with_name(f".{out.stem}.tmp.png")
            _, png = cv2.imencode(".png", mask.astype(np.uint8) * 255)
            try:
                tmp.write_bytes(png.tobytes())
                tmp.replace(out)
            except OSError as exc:  # a full or read-only --masks folder: one line naming the file
                if tmp.parent.is_dir():
                    tmp.unlink(missing_ok=True)
                converted = from_os_error(exc, out)
                if converted is None:
                    raise
                raise converted from None
            row["lesion_mask"] = str(out)
    return pd.DataFrame(rows)


def predict_outline(model: OutlineModel, files: list[Path], masks_dir: Path | None = None) -> pd.DataFrame:
    """Probabilities, the outlined lesion (largest predicted region: found, area as a share of the image,
    box in pixels) and optionally the outline mask (PNG in ``masks_dir``) per file."""
    rows = []
    for f in files:
        row = {"path": str(f), **dict.fromkeys(PROBA_COLUMNS, np.nan), "predicted": "", "lesion_found": None,
               "lesion_area": np.nan, "box_y0": np.nan, "box_y1": np.nan, "box_x0": np.nan, "box_x1": np.nan,
               "lesion_mask": "", "error": ""}
        rows.append(row)
        try:
            if not f.exists():
                raise FileNotFoundError("no such file")
            rgb = read_rgb(f)
        except Exception as exc:  # bad file: an error row, not a crash
            row["error"] = f"{type(exc).__name__}: {first_line(exc)}"
            continue
        p, prob = model.predict_batch(model.prepare(rgb)[None])
        mask, area, found = model.outline(prob[0], rgb.shape[:2], p[0])
        row.update({c: float(v) for c, v in zip(PROBA_COLUMNS, p[0])}, predicted=_predicted(p[0]), lesion_found=found,
                   lesion_area=area)
        if found:
            ys, xs = np.nonzero(mask)
            row.update(box_y0=int(ys.min()), box_y1=int(ys.max()) + 1, box_x0=int(xs.min()), box_x1=int(xs.max()) + 1)
        if masks_dir is not None:
            out = Path(masks_dir) / f"{f.stem}_predicted_mask.png"
            tmp = out.with_name(f".{out.stem}.tmp.png")
            cv2.imwrite(str(tmp), mask.astype(np.uint8) * 255)
            tmp.replace(out)
            row["lesion_mask"] = str(out)
    return pd.DataFrame(rows)


def predict_files(model, files: list[Path], batch_size: int = 16, masks_dir: Path | None = None) -> pd.DataFrame:
    """Probabilities for each file; unreadable files get an ``error`` and no probabilities."""
    if isinstance(model, CropPipelineModel):
        return predict_pipeline(model, files, masks_dir)
    if isinstance(model, OutlineModel):
        return predict_outline(model, files, masks_dir)
    size = int(getattr(model, "input_size", 0) or model.inputs[0].shape[1])
    rows, batch, batch_rows = [], [], []

    def flush():
        if not batch:
            return
        proba = three_class(model.predict(np.stack(batch).astype(np.float32), verbose=0))
        for r, p in zip(batch_rows, proba):
            r.update({col: float(v) for col, v in zip(PROBA_COLUMNS, p)}, predicted=_predicted(p))
        batch.clear()
        batch_rows.clear()

    for f in files:
        row = {"path": str(f), **dict.fromkeys(PROBA_COLUMNS, np.nan), "predicted": "", "error": ""}
        rows.append(row)
        try:
            if not f.exists():
                raise FileNotFoundError("no such file")
            img = cv2.resize(read_rgb(f), (size, size), interpolation=cv2.INTER_AREA)
        except Exception as exc:  # bad file: an error row, not a crash
            row["error"] = f"{type(exc).__name__}: {first_line(exc)}"
            continue
        batch.append(img)
        batch_rows.append(row)
        if len(batch) == batch_size:
            flush()
    flush()
    return pd.DataFrame(rows, columns=["path", *PROBA_COLUMNS, "predicted", "error"])


def predict_ensemble(models: list, files: list[Path], batch_size: int = 16, masks_dir: Path | None = None) -> pd.DataFrame:
    """Mean class probabilities of several models (a fold ensemble); one model: ``predict_files``."""
    if not models:
        raise StudyError("no model given")
    if len(models) == 1:
        return predict_files(models[0], files, batch_size, masks_dir)
    if any(isinstance(m, (CropPipelineModel, OutlineModel)) for m in models):
        raise StudyError("a crop pipeline or an outlining model cannot be part of an ensemble given on the command "
                         "line — give it alone (the multi-task model's fold ensemble is exported as models/<name>.folds.keras)")
    kinds = {model_classes(m) for m in models}
    if len(kinds) > 1:  # the mean of a binary model's p_benign and a three-class one's would mix two class spaces
        raise StudyError("a fold ensemble needs models of the same classes, but these mix a binary (benign vs malignant) "
                         "model with three-class ones — give the binary model alone")
    tables = [predict_files(m, files, batch_size) for m in models]
    out = tables[0].copy()
    cols = PROBA_COLUMNS
    proba = np.mean([t[cols].to_numpy(dtype=np.float64) for t in tables], axis=0)
    out[cols] = proba
    ok = out["error"] == ""
    out.loc[ok, "predicted"] = [_predicted(p) for p in proba[ok.to_numpy()]]
    out["n_models"] = len(models)
    return out
