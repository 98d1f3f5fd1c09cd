"""On-device export: a Keras classifier → TFLite (four precisions), its size, latency and agreement.

Precisions (``MODES``):

* ``float32`` — plain conversion;
* ``float16`` — weights stored as float16 (computed in float32 on a CPU);
* ``dynamic_int8`` — weights int8, activations float (dynamic-range quantisation);
* ``full_int8`` — weights and activations int8, calibrated on representative images that must
  come from the *training* data of the model being converted; input uint8 (the RGB pixels),
  output uint8 (probabilities in steps of 1/256), dequantised by :class:`TFLiteModel`.

Models are run with LiteRT (``ai_edge_litert``), the maintained runtime that replaces
``tf.lite.Interpreter`` (deprecated in TensorFlow 2.20+); ``tf.lite.Interpreter`` is used only
if LiteRT is not installed, and :data:`RUNTIME` says which one ran.

Latency is measured per image with preprocessing included (file decode, resize, cast or
quantise, invoke, read and dequantise the output): median and 90th percentile over ``runs``
timed runs after ``warmup`` untimed ones, with 1 and 2 interpreter threads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..data.images import read_rgb
from ..evaluation.metrics import auc_batch
from ..timing import step, timed

MODES = ("float32", "float16", "dynamic_int8", "full_int8")

try:  # the maintained runtime (LiteRT); TensorFlow's own interpreter only as a fallback
    from ai_edge_litert.interpreter import Interpreter as _Interpreter

    RUNTIME = "ai_edge_litert"
except ImportError:  # pragma: no cover - depends on the environment
    _Interpreter = None
    RUNTIME = "tf.lite.Interpreter (ai-edge-litert not installed)"


@timed("TFLite convert ({mode})")
def convert(model, mode: str, representative: np.ndarray | None = None) -> bytes:
    """TFLite flatbuffer of a Keras ``model`` (input: float RGB 0–255, (n, size, size, 3)).

    representative: uint8 or float images (k, size, size, 3) from the model's training data;
    required for ``full_int8``.
    """
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    return _configured(tf.lite.TFLiteConverter.from_keras_model(model), mode, representative).convert()


def _configured(conv, mode: str, representative: np.ndarray | None):
    """``conv`` (a TFLite converter of a Keras model) set up for precision ``mode``."""
    import tensorflow as tf

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic_int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "full_int8":
        if representative is None or len(representative) == 0:
            raise ValueError("full_int8 needs representative images from the training data")
        rep = np.asarray(representative, dtype=np.float32)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([r[None]] for r in rep)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return conv


@timed("TFLite conversions (one export)")
def convert_all(model, modes: Iterable[str] = MODES, representative: np.ndarray | None = None) -> dict[str, bytes]:
    """:func:`convert` for several precisions of one model, byte for byte the same flatbuffers.

    TensorFlow's Keras converter exports the model to a temporary SavedModel and loads it back
    for every conversion; the export (7–10 s of a 12 s conversion on a 2-core CPU) does not depend
    on the precision, so here the first conversion's export is kept and the others load it, each
    through TensorFlow's own steps (``TFLiteConverter.from_keras_model``, then its SavedModel
    import). If TensorFlow's converter internals are not what this expects, every precision is
    converted on its own, as :func:`convert` does.
    """
    modes = list(modes)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
    rep = {m: representative if m == "full_int8" else None for m in modes}
    try:
        from tensorflow.lite.python import conversion_metadata_schema_py_generated as metadata_fb
        from tensorflow.lite.python import lite as tf_lite
        from tensorflow.python.saved_model import signature_constants, tag_constants
        from tensorflow.python.saved_model.load import load as load_saved_model

        base = tf_lite.TFLiteKerasModelConverterV2
        keras_model_type = metadata_fb.ModelType.KERAS_MODEL
        expected = all(hasattr(base, a) for a in ("_convert_keras_to_saved_model", "_load_saved_model", "_parse_saved_model_args",
                                                   "_set_original_model_type"))
    except (ImportError, AttributeError):  # pragma: no cover - depends on the TensorFlow version
        expected = False
    if not expected:  # pragma: no cover - another TensorFlow: one export per conversion
        return {m: convert(model, m, rep[m]) for m in modes}

    export_dir = tempfile.mkdtemp(prefix="busi_tflite_")
    exported: list[str] = []

    class SharedExport(base):
        def _convert_keras_to_saved_model(self, output_dir):
            if not exported:  # the first precision: TensorFlow's export and import, into the kept folder
                out = super()._convert_keras_to_saved_model(export_dir)
                if self.saved_model_dir:
                    exported.append(export_dir)
                return out
            # the next ones: what TensorFlow does after its export, on the kept export
            self.saved_model_dir = exported[0]
            self._saved_model_tags = {tag_constants.SERVING}
            self._saved_model_exported_names = [signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY]
            self._parse_saved_model_args(always_enable_saved_model_import=self.experimental_lower_to_saved_model)
            graph_def, input_tensors, output_tensors = self._load_saved_model(self.saved_model_dir, self._saved_model_tags)
            self._trackable_obj = load_saved_model(self.saved_model_dir, self._saved_model_tags)
            return graph_def, input_tensors, output_tensors

    try:
        out = {}
        for mode in modes:
            with step(f"TFLite convert ({mode})"):
                tf_lite.TFLiteConverterBase._set_original_model_type(keras_model_type)  # as from_keras_model does
                out[mode] = _configured(SharedExport(model), mode, rep[mode]).convert()
        return out
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)


def _interpreter(content: bytes | None, path: Path | None, threads: int):
    if _Interpreter is not None:
        return _Interpreter(model_content=content, model_path=None if path is None else str(path), num_threads=threads)
    import tensorflow as tf  # pragma: no cover

    return tf.lite.Interpreter(model_content=content, model_path=None if path is None else str(path), num_threads=threads)


class TFLiteModel:
    """A ``.tflite`` classifier with Keras-like ``predict``: float RGB images → probabilities.

    Quantised inputs are quantised with the model's own scale and zero point; quantised outputs
    dequantised. A binary model returns (n, 1) (p_malignant), a three-class one (n, 3).
    """

    def __init__(self, source: str | Path | bytes, threads: int = 1) -> None:
        content = source if isinstance(source, (bytes, bytearray)) else None
        self.path = None if content is not None else Path(source)
        if self.path is not None and not self.path.exists():
            from ..errors import StudyError

            raise StudyError(f"model file not found: {self.path}")
        self.size_bytes = len(content) if content is not None else self.path.stat().st_size
        self.interpreter = _interpreter(content, self.path, threads)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        self.input_size = int(self.inp["shape"][1])
        self.n_outputs = int(self.out["shape"][-1])

    def _set_input(self, image: np.ndarray) -> None:
        x = np.asarray(image, dtype=np.float32)[None]
        dtype = self.inp["dtype"]
        if dtype in (np.uint8, np.int8):
            scale, zero = self.inp["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.inp["index"], x)

    def _get_output(self) -> np.ndarray:
        y = self.interpreter.get_tensor(self.out["index"])[0]
        if self.out["dtype"] in (np.uint8, np.int8):
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, dtype=np.float64)

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        """Probabilities of one image (size, size, 3), RGB 0–255."""
        self._set_input(image)
        self.interpreter.invoke()
        return self._get_output()

    def predict(self, images: np.ndarray, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        """Probabilities of a batch (n, size, size, 3), one image at a time (batch size 1)."""
        del batch_size, verbose  # Keras-compatible signature
        return np.stack([self.predict_one(im) for im in images]) if len(images) else np.zeros((0, self.n_outputs))


def load_image(path: Path, size: int) -> np.ndarray:
    """The study's preprocessing of one file: decode to RGB, plain resize (INTER_AREA) to size×size."""
    return cv2.resize(read_rgb(Path(path)), (size, size), interpolation=cv2.INTER_AREA)


@timed("TFLite latency {model_file.name} ({threads} threads)")
def latency(model_file: Path, image_files: list[Path], threads: int, runs: int = 100, warmup: int = 10) -> dict:
    """Per-image latency (ms) of ``model_file`` with ``threads`` interpreter threads,
    preprocessing included (:func:`load_image` + quantise + invoke + dequantise).

    The images are cycled through; ``warmup`` runs are not timed. Returns median, p90, mean, runs.
    """
    if runs < 1 or not image_files:
        raise ValueError("need at least one run and one image")
    m = TFLiteModel(model_file, threads=threads)
    times = []
    for k in range(warmup + runs):
        f = image_files[k % len(image_files)]
        t0 = time.perf_counter()
        m.predict_one(load_image(f, m.input_size))
        if k >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    t = np.asarray(times)
    return {"threads": threads, "runs": runs, "warmup": warmup, "median_ms": float(np.median(t)),
            "p90_ms": float(np.percentile(t, 90)), "mean_ms": float(t.mean())}


def score(p: np.ndarray) -> np.ndarray:
    """The ranking score of a prediction: p_malignant for a binary (n, 1) or a three-class (n, 3) output."""
    p = np.asarray(p, dtype=np.float64)
    return p[:, -1] if p.ndim == 2 else p


def agreement(y_malignant: np.ndarray, p_keras: np.ndarray, p_tflite: np.ndarray, positive_vs: np.ndarray | None = None) -> dict:
    """How closely an exported model follows its Keras original on the same images.

    y_malignant: 1 for malignant, 0 otherwise (n,); p_keras / p_tflite: probabilities (n, k)
    (k = 1: p_malignant; k = 3: class probabilities). positive_vs: boolean mask of the images that
    count as negatives for the AUC (default: every non-malignant image).

    Returns max and mean |Δp| over all probabilities, the share of images with the same decision
    (argmax; threshold 0.5 for a binary model), the malignant AUC of each (Keras, TFLite) and
    their difference, and the accuracy of each on the decision.
    """
    pk, pt = np.asarray(p_keras, np.float64), np.asarray(p_tflite, np.float64)
    if pk.ndim == 1:
        pk, pt = pk[:, None], pt[:, None]
    y = np.asarray(y_malignant).astype(bool)
    neg = ~y if positive_vs is None else np.asarray(positive_vs)
    w = np.ones((1, len(y)))
    auc_k = float(auc_batch(score(pk), y, neg, w)[0])
    auc_t = float(auc_batch(score(pt), y, neg, w)[0])
    if pk.shape[1] == 1:
        dk, dt = pk[:, 0] >= 0.5, pt[:, 0] >= 0.5
        acc_k, acc_t = float((dk == y).mean()), float((dt == y).mean())
    else:
        dk, dt = pk.argmax(1), pt.argmax(1)
        acc_k = acc_t = float("nan")  # needs the three-class labels: see ``agreement_3class``
    d = np.abs(pk - pt)
    return {"n": int(len(y)), "max_abs_dp": float(d.max()), "mean_abs_dp": float(d.mean()),
            "same_decision": float((dk == dt).mean()), "auc_keras": auc_k, "auc_tflite": auc_t,
            "auc_diff": auc_t - auc_k, "accuracy_keras": acc_k, "accuracy_tflite": acc_t}


def agreement_3class(labels: np.ndarray, p_keras: np.ndarray, p_tflite: np.ndarray) -> dict:
    """:func:`agreement` for a three-class model: malignant-vs-rest AUC, three-class accuracy."""
    labels = np.asarray(labels)
    out = agreement(labels == 2, p_keras, p_tflite)
    out["accuracy_keras"] = float((np.asarray(p_keras).argmax(1) == labels).mean())
    out["accuracy_tflite"] = float((np.asarray(p_tflite).argmax(1) == labels).mean())
    return out


@timed("TFLite export {out_stem.name}")
def export_all(model, out_stem: Path, representative: np.ndarray, modes: Iterable[str] = MODES) -> dict[str, Path]:
    """Write ``<out_stem>.<mode>.tflite`` for each mode; return mode → path."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {}
    for mode, content in convert_all(model, modes, representative).items():
        path = out_stem.with_name(f"{out_stem.name}.{mode}.tflite")
        path.write_bytes(content)
        paths[mode] = path
    return paths


def size_table(paths: dict[str, Path], keras_file: Path | None = None) -> pd.DataFrame:
    """File size per precision (bytes and MB), the ``.keras`` file first when given."""
    rows = [] if keras_file is None else [{"format": "keras", "bytes": Path(keras_file).stat().st_size}]
    rows += [{"format": mode, "bytes": Path(p).stat().st_size} for mode, p in paths.items()]
    t = pd.DataFrame(rows)
    t["MB"] = t["bytes"] / 1e6
    return t
