"""Exported forms of a model: the fold ensemble, and the class-probability chain of a multi-output network.

* :func:`fold_ensemble` — the mean of a model's five CV fold models (each trained on four fifths of the
  data) as one Keras model with the same input and outputs as each member: image → mean class
  probabilities (and, for the multi-task network, the mean lesion map). Its members keep their names
  (``member0`` … ``member4``), so :func:`members` finds them again after loading.
* :func:`classifier_chain` — for the multi-task network (image → [probabilities, lesion map]) the path
  image → preprocessing → backbone → pooled head → probabilities as a plain chain of layers sharing
  the network's weights: what Grad-CAM, TFLite and every single-output reader take.
"""

from __future__ import annotations

from typing import Any


def fold_ensemble(models: list, name: str):
    """One Keras model averaging ``models`` (same input shape; one or two outputs each)."""
    import keras
    from keras import layers

    if not models:
        raise ValueError("a fold ensemble needs at least one model")
    size = tuple(models[0].inputs[0].shape[1:])
    inputs = keras.Input(size, name="image")
    outs = []
    for k, m in enumerate(models):
        m.name = f"member{k}"
        o = m(inputs)
        outs.append(o if isinstance(o, (list, tuple)) else [o])
    n_out = len(outs[0])
    merged = [layers.Average(name="probs_mean" if j == 0 else "mask_mean")([o[j] for o in outs]) if len(outs) > 1
              else outs[0][j] for j in range(n_out)]
    model = keras.Model(inputs, merged if n_out > 1 else merged[0], name=name.replace(".", "_"))
    for layer in model.layers:
        layer.trainable = False
    return model


def members(model) -> list:
    """The member models of a fold ensemble (``[model]`` for any other model)."""
    found = [layer for layer in model.layers if layer.name.startswith("member") and hasattr(layer, "layers")]
    return found or [model]


def is_multitask(model: Any) -> bool:
    """A network with two outputs, class probabilities and a lesion map (models/multitask.py)."""
    return len(getattr(model, "outputs", []) or []) == 2 and len(model.outputs[1].shape) == 4


def classifier_chain(model):
    """The multi-task network's classification path as a chain: image → preprocess → backbone (nested,
    its last feature map) → head_gap → head_dropout → probs. Any other model is returned as it is."""
    import keras

    if not is_multitask(model):
        return model
    pre = next(layer for layer in model.layers if layer.name == "preprocess")
    encoder = next(layer for layer in model.layers if layer.name == "encoder")
    head = next(layer for layer in model.layers if layer.name == "decoder_head")
    backbone = keras.Model(encoder.inputs, encoder.outputs[-1], name="backbone")
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    x = backbone(pre(inputs))
    for name in ("head_gap", "head_dropout", "probs"):
        x = head.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"{model.name}_classifier")
