"""Model builders: S2's CNN, S3's dense head, a GAP head, and the full classifier.

Every classifier takes float RGB pixels in [0, 255] of shape (size, size, 3) and contains its
own preprocessing, so an exported ``.keras`` file needs nothing but an image to predict.
The top level is a simple chain (input → preprocessing → backbone or conv layers → head),
which is what the Grad-CAM code relies on.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from ..info import CLASSES
from .registry import build_backbone, get_spec

N_CLASSES = len(CLASSES)


@keras.saving.register_keras_serializable(package="busi_study")
class BackbonePreprocess(layers.Layer):
    """A backbone's ``preprocess_input`` as a layer: ``tf`` → [-1, 1], ``caffe`` → BGR minus
    the ImageNet mean, ``torch`` → [0, 1] standardised, ``none`` → unchanged."""

    MEAN_BGR = (103.939, 116.779, 123.68)
    MEAN_RGB = (0.485, 0.456, 0.406)
    STD_RGB = (0.229, 0.224, 0.225)

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in ("tf", "caffe", "torch", "none"):
            raise ValueError(f"unknown preprocessing mode {mode}")
        self.mode = mode

    def call(self, x):
        ops = keras.ops
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = x[..., ::-1]
            return x - ops.convert_to_tensor(self.MEAN_BGR, dtype=x.dtype)
        if self.mode == "torch":
            x = x / 255.0
            return (x - ops.convert_to_tensor(self.MEAN_RGB, dtype=x.dtype)) / ops.convert_to_tensor(self.STD_RGB, dtype=x.dtype)
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="busi_study")
class AttentionPool(layers.Layer):
    """Σ a·F / Σ a over the spatial positions: features F (n, h, w, C) pooled under a map a (n, h, w, 1)."""

    def call(self, inputs):
        f, a = inputs
        ops = keras.ops
        return ops.sum(f * a, axis=(1, 2)) / (ops.sum(a, axis=(1, 2)) + 1e-6)


def s2_cnn(input_size: int, n_classes: int = N_CLASSES) -> keras.Model:
    """S2's network exactly: Rescaling(1/255) → [Conv 3×3 same ReLU → MaxPool] × (16, 32, 64)
    → Flatten → Dense 128 ReLU → Dense(n) (softmax here, so every model outputs probabilities)."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, f in enumerate((16, 32, 64), start=1):
        x = layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense128")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="s2_cnn")


def s3_head(feature_shape: tuple[int, ...], dropout: float, n_classes: int = N_CLASSES, name: str = "s3_head") -> keras.Model:
    """S3's head: Flatten → BatchNorm → Dense 256/128/64 ReLU, each followed by Dropout → Dense softmax."""
    inputs = keras.Input(feature_shape, name="features")
    x = layers.Flatten(name="head_flatten")(inputs)
    x = layers.BatchNormalization(name="head_bn")(x)
    for units in (256, 128, 64):
        x = layers.Dense(units, activation="relu", name=f"head_dense{units}")(x)
        x = layers.Dropout(dropout, name=f"head_dropout{units}")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def gap_head(feature_shape: tuple[int, ...], dropout: float, n_classes: int = N_CLASSES, name: str = "gap_head") -> keras.Model:
    """The usual transfer-learning head (S0): GlobalAveragePooling → Dropout → Dense softmax."""
    inputs = keras.Input(feature_shape, name="features")
    x = layers.GlobalAveragePooling2D(name="head_gap")(inputs)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


HEADS = {"s3": s3_head, "gap": gap_head}


def backbone_with_preprocessing(backbone_name: str, input_size: int, weights: str | None, **kwargs: Any):
    """(preprocess layer, backbone model) for ``backbone_name``; see ``registry.build_backbone``."""
    spec = get_spec(backbone_name)
    return BackbonePreprocess(spec.preprocess, name="preprocess"), build_backbone(backbone_name, input_size, weights, **kwargs)


def assemble(preprocess: layers.Layer, backbone: keras.Model, head: keras.Model, input_size: int, name: str) -> keras.Model:
    """The full classifier as a flat chain: image → preprocess → backbone → head layers.

    The head's layers are re-applied (not nested) so Grad-CAM and saving see one simple chain;
    the weights are shared with ``head``.
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = backbone(preprocess(inputs))
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(inputs, x, name=name)
