"""Grad-CAM and Grad-CAM++ for the study's Keras classifiers, plus the randomisation sanity check.

The classifiers (``busi_study.models.builders``) are Keras 3 functional models whose top level
is a simple chain: ``image`` input (float pixels 0–255) → preprocessing layers → either a nested
backbone (itself a functional ``keras.Model``) or plain conv layers → head layers → a 3-way
``Dense`` (softmax or linear). The Grad-CAM target layer is given by name and may live inside
the nested backbone. A naive ``keras.Model(model.inputs, [inner_layer.output, model.output])``
then fails with "graph disconnected", because the inner layer's symbolic tensor belongs to the
backbone's own graph, not to the outer one. So instead:

* inside the model that directly holds the target layer we build a two-output model
  ``keras.Model(sub.inputs, [target.output, sub.output])`` (both tensors are in ``sub``'s graph);
* the chains above it are *replayed* layer by layer under one ``tf.GradientTape``, calling that
  two-output model in place of ``sub``.

The replay is checked once per call against ``model(x)`` on a few images, so a top level that
is not a chain (branches, shared layers) fails loudly instead of giving wrong maps.

Class score. When the last top-level layer is a ``Dense`` (or conv) layer with softmax
activation, or a ``Softmax``/``Activation("softmax")`` layer, gradients are taken of the
pre-softmax score (logit) of the class, as in Selvaraju et al. (2017): the softmax couples the
classes, and its gradient vanishes for confident predictions. When the logit cannot be reached
(e.g. the softmax sits inside a nested head model), the model's output (probability) is used;
``score="logit"`` makes that an error instead.

Only the TensorFlow backend of Keras 3 is supported (``tf.GradientTape``). TensorFlow and Keras
are imported inside the functions, so importing this module is cheap.

References: Selvaraju et al., "Grad-CAM", ICCV 2017; Chattopadhay et al., "Grad-CAM++", WACV
2018; Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..info import CHOICES

if TYPE_CHECKING:  # only for annotations; keeps the import of this module free of TensorFlow
    import keras

METHODS = CHOICES["gradcam_method"]
SCORES = ("auto", "logit", "output")

# Layers whose 4-D output is not a useful Grad-CAM target: they only pool, pad, crop or drop
# what the preceding conv layer computed (e.g. S2's ``pool3`` after ``conv3``).
_NOT_A_TARGET = ("Pooling", "Dropout", "ZeroPadding", "Cropping", "InputLayer", "Reshape", "UpSampling")


# --------------------------------------------------------------------------------------------
# finding layers
# --------------------------------------------------------------------------------------------


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _output_rank(layer: Any) -> int | None:
    """Rank of a layer's (single) output tensor, None when it has none or several."""
    try:
        out = layer.output
    except Exception:  # a layer used more than once, or never called
        return None
    shape = getattr(out, "shape", None)
    return None if shape is None else len(shape)


def _iter_layers(model: Any, prefix: tuple[Any, ...] = ()):
    """Yield (path, layer) for every layer, depth first in ``model.layers`` order; ``path`` is
    the chain of models from ``model`` down to the one directly holding ``layer``."""
    path = (*prefix, model)
    for layer in model.layers:
        yield list(path), layer
        if _is_model(layer):
            yield from _iter_layers(layer, path)


def _candidates(model: Any) -> list[str]:
    """'outer/inner' names of the layers that could serve as Grad-CAM targets (4-D output)."""
    out = []
    for path, layer in _iter_layers(model):
        if _output_rank(layer) == 4 and not any(s in type(layer).__name__ for s in _NOT_A_TARGET):
            out.append("/".join([p.name for p in path[1:]] + [layer.name]))
    return out


def find_layer(model: keras.Model, name: str) -> tuple[list[keras.Model], keras.layers.Layer]:
    """Find the layer called ``name`` in ``model`` or in any model nested in it.

    Returns ``(path, layer)``: ``path`` lists the models from ``model`` itself (``path[0]``) down
    to the one that directly holds the layer (``path[-1]``); a top-level layer has
    ``path == [model]``. Top-level layers are searched first, then nested models depth first,
    so an ambiguous name resolves to the shallowest match. A nested model can itself be named
    (e.g. ``"backbone"``). Raises ``ValueError`` listing candidate conv layers when not found.
    """
    for layer in model.layers:  # shallowest match first
        if layer.name == name:
            return [model], layer
    for path, layer in _iter_layers(model):
        if layer.name == name:
            return path, layer
    cands = _candidates(model)
    shown = ", ".join(cands[-12:]) if cands else "(none)"
    raise ValueError(
        f"layer '{name}' not found in model '{model.name}' or its nested models; "
        f"layers with 4-D output (last {min(12, len(cands))} of {len(cands)}): {shown}"
    )


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the default Grad-CAM target: the last layer with a 4-D output.

    Nested models are searched (the deepest last 4-D layer wins over the nested model itself,
    so a classifier around MobileNetV2 gives ``"out_relu"``). Pooling, dropout, padding,
    cropping and reshaping layers are skipped: they only pool or move what the conv layer before
    them computed, and a pooled map is coarser (S2's CNN gives ``"conv3"``, not ``"pool3"``).
    """

    def last_in(m: Any) -> str | None:
        for layer in reversed(m.layers):
            if _is_model(layer):
                inner = last_in(layer)
                if inner is not None:
                    return inner
            if _output_rank(layer) == 4 and not any(s in type(layer).__name__ for s in _NOT_A_TARGET):
                return layer.name
        return None

    name = last_in(model)
    if name is None:
        raise ValueError(f"model '{model.name}' has no layer with a 4-D output to use for Grad-CAM")
    return name


# --------------------------------------------------------------------------------------------
# the forward pass that exposes the target layer's activations and the class scores
# --------------------------------------------------------------------------------------------


def _chain_layers(model: Any) -> list[Any]:
    """The model's layers in call order, without input layers (the replay of a chain)."""
    import keras

    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _is_softmax(fn: Any) -> bool:
    return getattr(fn, "__name__", "") == "softmax"


def _linear_twin(layer: Any) -> Any | None:
    """A copy of ``layer`` with linear activation and the same weights, or None if impossible.

    Used to get logits out of a ``Dense(..., activation="softmax")`` output layer without
    touching the user's model. The twin's weights are a copy: the gradient is taken with
    respect to activations, not weights, so copies are as good as the originals here.
    """
    try:
        cfg = {**layer.get_config(), "activation": "linear"}
        twin = type(layer).from_config(cfg)
        twin.build(layer.input.shape)
        twin.set_weights(layer.get_weights())
        return twin
    except Exception:
        return None


class _Forward:
    """Callable ``x -> (activations, scores, outputs)`` for one model and target layer.

    ``scores`` are the per-class logits when reachable (``score_kind == "logit"``), otherwise
    the model outputs (``score_kind == "output"``).
    """

    def __init__(self, model: Any, layer_name: str, score: str = "auto") -> None:
        import keras

        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(f"Grad-CAM here needs the TensorFlow backend (Keras backend is '{keras.backend.backend()}')")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.model = model
        self.path, self.target = find_layer(model, layer_name)
        self.layer_name = layer_name
        # the model holding the target directly: one model with both outputs in its own graph
        holder = self.path[-1]
        self._holder_twin = None
        if holder is not model:
            self._holder_twin = keras.Model(holder.inputs, [self.target.output, holder.output], name=f"{holder.name}_gradcam")
        # logits: the top-level last layer decides
        last = _chain_layers(model)[-1]
        act = None if _is_model(last) else getattr(last, "activation", None)
        self._logit_fn: Callable[[Any], Any] | None = None
        self._output_is_logit = False
        if _is_softmax(act):
            self._logit_fn = _linear_twin(last)  # None when the layer cannot be copied
        elif type(last).__name__ == "Softmax" or (type(last).__name__ == "Activation" and _is_softmax(act)):
            self._logit_fn = lambda x: x  # the softmax layer's input is the logit
        elif getattr(act, "__name__", "") == "linear":
            self._output_is_logit = True  # linear output layer: the output is the logit already
        if score == "logit" and self._logit_fn is None and not self._output_is_logit:
            raise ValueError(f"score='logit': cannot reach the pre-softmax score of model '{model.name}' (last layer {last.name})")
        self.use_logit = score in ("auto", "logit") and self._logit_fn is not None
        self.score_kind = "logit" if (self.use_logit or self._output_is_logit) else "output"

    def _replay(self, m: Any, depth: int, x: Any) -> tuple[Any, Any, Any]:
        """Run chain ``m`` (``self.path[depth]``) on ``x``; returns (activations, logits or
        None, output). Only the top level (depth 0) looks at logits."""
        feats, logits = None, None
        layers = _chain_layers(m)
        inner = self.path[depth + 1] if depth + 1 < len(self.path) else None
        for i, layer in enumerate(layers):
            is_last = depth == 0 and i == len(layers) - 1
            if layer is self.target:
                x = feats = layer(x, training=False)
            elif inner is not None and layer is inner:
                if depth + 1 == len(self.path) - 1:  # ``inner`` holds the target: its two-output twin
                    feats, x = self._holder_twin(x, training=False)
                else:  # deeper nesting: replay ``inner`` as a chain too
                    feats, _, x = self._replay(inner, depth + 1, x)
            else:
                if is_last and self.use_logit:
                    logits = self._logit_fn(x)
                x = layer(x, training=False)
        if feats is None:
            raise ValueError(f"replaying '{m.name}' as a chain never reached layer '{self.layer_name}'")
        return feats, logits, x

    def __call__(self, x: Any) -> tuple[Any, Any, Any]:
        feats, logits, out = self._replay(self.model, 0, x)
        return feats, (logits if self.use_logit else out), out

    def check(self, x: Any) -> None:
        """Compare the replay with ``model(x)``; a mismatch means the top level is not a chain."""
        try:
            _, _, out = self(x)
        except Exception as exc:  # e.g. a merge layer called with one tensor: not a chain
            raise ValueError(
                f"replaying model '{self.model.name}' layer by layer failed ({type(exc).__name__}: {exc}); "
                "Grad-CAM here supports models whose top level (and any nested level above the target "
                "layer) is a simple chain of layers"
            ) from exc
        ref = self.model(x, training=False)
        if not np.allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-5):
            raise ValueError(
                f"replaying model '{self.model.name}' layer by layer does not reproduce its output: "
                "Grad-CAM here supports models whose top level (and any nested level above the target "
                "layer) is a simple chain of layers"
            )


# --------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------


def _as_class_array(class_index: int | Sequence[int] | np.ndarray | None, n: int) -> np.ndarray | None:
    if class_index is None:
        return None
    idx = np.asarray(class_index)
    if idx.ndim == 0:
        idx = np.full(n, int(idx))
    if idx.shape != (n,):
        raise ValueError(f"class_index must be an int or have shape ({n},), got shape {idx.shape}")
    return idx.astype(np.int64)


def _combine(feats: Any, grads: Any, method: str) -> Any:
    """Grad-CAM / Grad-CAM++ maps (n, h, w) from activations A and gradients dY/dA (n, h, w, k)."""
    import tensorflow as tf

    if method == "gradcam":
        # neuron importance: spatially averaged gradient per channel (Selvaraju et al., eq. 1)
        weights = tf.reduce_mean(grads, axis=(1, 2))
    else:
        # Grad-CAM++ closed form with the exponential score exp(Y): its higher derivatives are
        # powers of dY/dA (Chattopadhay et al., eq. 19); the common exp(Y) factor of the weights
        # is the same for all channels and disappears in the per-map normalisation.
        g2 = tf.square(grads)
        g3 = g2 * grads
        sum_a = tf.reduce_sum(feats, axis=(1, 2), keepdims=True)
        denom = 2.0 * g2 + sum_a * g3
        denom = tf.where(denom != 0.0, denom, tf.ones_like(denom))  # alpha = 0 where the gradient is 0
        alpha = g2 / denom
        weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=(1, 2))
    cam = tf.einsum("nhwk,nk->nhw", feats, weights)
    return tf.nn.relu(cam)


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    class_index: int | Sequence[int] | np.ndarray | None = None,
    layer_name: str | None = None,
    method: str = "gradcam",
    batch_size: int = 16,
    score: str = "auto",
) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) maps of ``images`` for the given classes.

    Parameters
    ----------
    model : the classifier (Keras 3, TensorFlow backend); see the module docstring for the
        supported structure.
    images : float array (n, H, W, 3) in the model's input units (pixels 0–255 for the study's
        models), H, W the model's input size. A single image (H, W, 3) is accepted too.
    class_index : int for all images, int array (n,) (e.g. predicted or true classes), or None
        for each image's predicted class (argmax of the model's output).
    layer_name : target layer, searched in nested models too (e.g. ``"out_relu"`` inside
        MobileNetV2, ``"conv3"`` in S2's CNN); None → :func:`last_conv_layer_name`.
    method : ``"gradcam"`` (Selvaraju et al. 2017) or ``"gradcam++"`` (Chattopadhay et al. 2018).
    batch_size : images per forward/backward pass (one ``GradientTape`` per batch).
    score : ``"auto"`` differentiates the pre-softmax logit when reachable, else the output;
        ``"logit"`` requires the logit; ``"output"`` always uses the model's output.

    Returns
    -------
    float32 array (n, h, w) at the target layer's spatial resolution: ReLU'd, each map divided
    by its maximum (max 1; a map with no positive evidence stays all zero).
    """
    import tensorflow as tf

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x_all = np.asarray(images, dtype=np.float32)
    if x_all.ndim == 3:
        x_all = x_all[None]
    if x_all.ndim != 4:
        raise ValueError(f"images must have shape (n, H, W, C), got {x_all.shape}")
    n = len(x_all)
    idx_all = _as_class_array(class_index, n)
    fwd = _Forward(model, layer_name or last_conv_layer_name(model), score=score)
    if n == 0:
        return np.zeros((0, 0, 0), np.float32)
    fwd.check(tf.constant(x_all[: min(n, 2)]))

    maps = []
    for start in range(0, n, batch_size):
        x = tf.constant(x_all[start : start + batch_size])
        idx = None if idx_all is None else tf.constant(idx_all[start : start + batch_size])
        maps.append(_batch_maps(fwd, x, idx, method).numpy())
    return _normalise(np.concatenate(maps))


def _batch_maps(fwd: _Forward, x: Any, idx: Any, method: str) -> Any:
    """Un-normalised maps (n, h, w) of one batch; ``idx`` None → each image's predicted class."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        feats, scores, out = fwd(x)
        if feats.shape.rank != 4:
            raise ValueError(f"layer '{fwd.layer_name}' has output shape {tuple(feats.shape)}; Grad-CAM needs (n, h, w, channels)")
        if idx is None:
            idx = tf.argmax(out, axis=-1)
        # one image's score depends only on its own activations (inference mode: no batch
        # statistics), so the gradient of the sum gives every image's gradient in one pass
        picked = tf.gather(scores, idx, axis=1, batch_dims=1)
        total = tf.reduce_sum(picked)
    grads = tape.gradient(total, feats)
    if grads is None:
        raise ValueError(f"the class score does not depend on layer '{fwd.layer_name}'")
    return _combine(tf.cast(feats, tf.float32), tf.cast(grads, tf.float32), method)


def _normalise(cams: np.ndarray) -> np.ndarray:
    """Each map divided by its maximum (an all-zero map stays zero); float32."""
    cams = np.asarray(cams, dtype=np.float32)
    peak = cams.max(axis=(1, 2), keepdims=True)
    return np.divide(cams, peak, out=np.zeros_like(cams), where=peak > 0)


class GradCAM:
    """:func:`gradcam` for many calls on one model (e.g. an app answering one upload at a time).

    The layer replay is built and checked against ``model(x)`` once, on the first call, and the
    forward and backward pass is compiled with ``tf.function``, so later calls cost about one
    graph execution instead of three eager passes. Same arguments and the same maps as
    :func:`gradcam` (up to float rounding).
    """

    def __init__(self, model: keras.Model, layer_name: str | None = None, method: str = "gradcam", score: str = "auto") -> None:
        import tensorflow as tf

        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.fwd = _Forward(model, layer_name or last_conv_layer_name(model), score=score)
        self.layer_name, self.method = self.fwd.layer_name, method
        self._checked = False
        # one trace for any batch size: the batch dimension is left open in the signatures
        shape = [None, *(int(d) for d in model.inputs[0].shape[1:])]
        x_spec = tf.TensorSpec(shape, tf.float32)
        self._fn = tf.function(lambda x, idx: _batch_maps(self.fwd, x, idx, method),
                               input_signature=[x_spec, tf.TensorSpec([None], tf.int64)])
        self._fn_predicted = tf.function(lambda x: _batch_maps(self.fwd, x, None, method), input_signature=[x_spec])

    def __call__(self, images: np.ndarray, class_index: int | Sequence[int] | np.ndarray | None = None,
                 batch_size: int = 16) -> np.ndarray:
        import tensorflow as tf

        x_all = np.asarray(images, dtype=np.float32)
        if x_all.ndim == 3:
            x_all = x_all[None]
        if x_all.ndim != 4:
            raise ValueError(f"images must have shape (n, H, W, C), got {x_all.shape}")
        n = len(x_all)
        if n == 0:
            return np.zeros((0, 0, 0), np.float32)
        idx_all = _as_class_array(class_index, n)
        if not self._checked:
            self.fwd.check(tf.constant(x_all[: min(n, 2)]))
            self._checked = True
        maps = []
        for start in range(0, n, batch_size):
            x = tf.constant(x_all[start : start + batch_size])
            if idx_all is None:
                maps.append(self._fn_predicted(x).numpy())
            else:
                maps.append(self._fn(x, tf.constant(idx_all[start : start + batch_size], tf.int64)).numpy())
        return _normalise(np.concatenate(maps))


def upsample(maps: np.ndarray, size_hw: tuple[int, int] | Sequence[tuple[int, int]]) -> np.ndarray | list[np.ndarray]:
    """Bilinear resize of maps to the original image size (cv2, pixel centres aligned).

    maps : (n, h, w) array, or one (h, w) map.
    size_hw : (H0, W0) for all maps → float32 array (n, H0, W0) (or (H0, W0) for one map); or
        a sequence of n sizes, one per map (BUSI images differ in size) → list of (H0_i, W0_i).
    Values stay within the input range (bilinear interpolation is a convex combination).
    """
    import cv2

    arr = np.asarray(maps, dtype=np.float32)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"maps must have shape (n, h, w) or (h, w), got {arr.shape}")
    sizes = np.asarray(size_hw)
    if sizes.ndim == 1:
        h0, w0 = (int(v) for v in sizes)
        out = np.stack([cv2.resize(m, (w0, h0), interpolation=cv2.INTER_LINEAR) for m in arr]) if len(arr) else np.zeros((0, h0, w0), np.float32)
        return out[0] if single else out
    if len(sizes) != len(arr):
        raise ValueError(f"got {len(sizes)} sizes for {len(arr)} maps")
    return [cv2.resize(m, (int(w0), int(h0)), interpolation=cv2.INTER_LINEAR) for m, (h0, w0) in zip(arr, sizes)]


# --------------------------------------------------------------------------------------------
# sanity check (Adebayo et al. 2018): cascading randomisation of the top layers
# --------------------------------------------------------------------------------------------


def _weighted_leaves(model: Any) -> list[tuple[str, Any]]:
    """('outer/inner/name', layer) for every non-model layer with weights, in call order."""
    out = []
    for path, layer in _iter_layers(model):
        if not _is_model(layer) and layer.weights:
            out.append(("/".join([p.name for p in path[1:]] + [layer.name]), layer))
    return out


def top_weighted_layers(model: keras.Model, n_layers: int) -> list[str]:
    """'outer/inner/name' paths of the last ``n_layers`` layers with weights (Dense, Conv,
    BatchNorm, …), counted from the output and descending into nested models, output first."""
    if n_layers < 0:
        raise ValueError("n_layers must be >= 0")
    leaves = _weighted_leaves(model)
    return [name for name, _ in reversed(leaves)][:n_layers]


def _reinit_value(layer: Any, var: Any, seed: int) -> np.ndarray:
    """A fresh value for ``var``: the layer's own initialiser for it (``<name>_initializer``,
    re-seeded so the result is reproducible), else normal noise of the current values' scale."""
    import keras

    shape, dtype = tuple(var.shape), var.dtype
    init = getattr(layer, f"{var.name}_initializer", None)
    if init is not None:
        init = keras.initializers.get(init)
        cfg = init.get_config()
        if "seed" in cfg:
            init = type(init).from_config({**cfg, "seed": seed})
        return np.asarray(init(shape, dtype=dtype))
    current = np.asarray(var.numpy())
    scale = float(current.std()) or 0.05
    return np.random.default_rng(seed).normal(0.0, scale, shape).astype(current.dtype)


def randomise_top_layers(model: keras.Model, n_layers: int, seed: int = 0) -> keras.Model:
    """A copy of ``model`` with the last ``n_layers`` weighted layers re-initialised.

    The copy is ``keras.models.clone_model`` (nested models cloned too) with every weight copied
    from ``model``; then each weight of the chosen layers (see :func:`top_weighted_layers`) is
    redrawn from the layer's initialiser (``kernel_initializer``, ``bias_initializer``,
    ``gamma_initializer``, ``moving_variance_initializer``, …) with a seed derived from ``seed``,
    or, for a weight without an initialiser attribute, from N(0, std of its current values).
    Note that zeros/ones initialisers (biases, BatchNorm) re-initialise to constants: this is
    what "re-initialised" means in Adebayo et al. The original model is not modified.
    """
    import keras

    chosen = set(top_weighted_layers(model, n_layers))
    clone = keras.models.clone_model(model)
    src, dst = _weighted_leaves(model), _weighted_leaves(clone)
    if [a for a, _ in src] != [b for b, _ in dst]:
        raise ValueError("the cloned model's layers do not match the original's")
    for k, ((name, ls), (_, ld)) in enumerate(zip(src, dst)):
        if name in chosen:
            ld.set_weights([_reinit_value(ld, v, seed * 100_003 + k * 101 + j) for j, v in enumerate(ld.weights)])
        else:
            ld.set_weights(ls.get_weights())
    return clone


def sanity_check(
    model: keras.Model,
    images: np.ndarray,
    class_index: int | Sequence[int] | np.ndarray | None = None,
    layer_name: str | None = None,
    n_layers: int = 1,
    seed: int = 0,
    method: str = "gradcam",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Model-randomisation test: Spearman rank correlation of each image's map before/after
    re-initialising the top ``n_layers`` weighted layers (:func:`randomise_top_layers`).

    A faithful explanation must change: correlations near 1 mean the map does not depend on
    the learnt weights. ``class_index`` None → the original model's predicted classes, used for
    both models so the same class is explained. Maps are compared at the layer's resolution.

    Returns a dict: ``per_image`` (DataFrame: image, spearman), ``mean`` and ``median`` (NaNs
    ignored), ``n_undefined`` (maps constant before or after, e.g. all zero, where Spearman is
    undefined and reported as NaN), ``layers`` (the randomised layers, output first),
    ``n_layers``, ``seed``, ``method``.
    """
    from scipy.stats import spearmanr

    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    name = layer_name or last_conv_layer_name(model)
    if class_index is None:
        class_index = np.argmax(np.asarray(model.predict(x, batch_size=batch_size, verbose=0)), axis=-1)
    before = gradcam(model, x, class_index, name, method=method, batch_size=batch_size)
    randomised = randomise_top_layers(model, n_layers, seed)
    after = gradcam(randomised, x, class_index, name, method=method, batch_size=batch_size)
    rho = np.full(len(x), np.nan)
    for i, (a, b) in enumerate(zip(before, after)):
        if np.ptp(a) > 0 and np.ptp(b) > 0:  # spearmanr of a constant map is undefined
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rho[i] = spearmanr(a.ravel(), b.ravel()).statistic
    table = pd.DataFrame({"image": np.arange(len(x)), "spearman": rho})
    finite = rho[np.isfinite(rho)]
    return {
        "per_image": table,
        "mean": float(finite.mean()) if finite.size else float("nan"),
        "median": float(np.median(finite)) if finite.size else float("nan"),
        "n_undefined": int((~np.isfinite(rho)).sum()),
        "layers": top_weighted_layers(model, n_layers),
        "n_layers": n_layers,
        "seed": seed,
        "method": method,
    }
