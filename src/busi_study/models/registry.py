"""One registry of backbones: name → Keras constructor, preprocessing, facts.

Each entry says how to build the backbone (``keras.applications`` constructor and arguments),
how its inputs are preprocessed, its default input size, the layer Grad-CAM uses, how its
top blocks are named for unfreezing, and the weight file Keras looks for in its cache. The
notebooks never hard-code any of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StudyError, first_line


class WeightsUnavailable(StudyError):
    """ImageNet weights for a backbone could not be loaded (offline and not cached)."""

    def __init__(self, backbone: str, filename: str, cache_dir: Path, reason: str) -> None:
        self.backbone, self.filename, self.cache_dir, self.reason = backbone, filename, cache_dir, reason
        super().__init__(
            f"{backbone}: ImageNet weights not available ({reason}); put {filename} in {cache_dir} "
            f"(the Keras cache, $KERAS_HOME/models) or run on a machine with internet"
        )


@dataclass(frozen=True)
class BackboneSpec:
    """Facts about one backbone. ``blocks`` lists unfreezable blocks from the top down as
    (block name, name of the block's first layer); ``always_trainable_top`` are layers above
    the last block that are trained whenever any block is unfrozen."""

    name: str
    constructor: str
    preprocess: str  # "tf" ([-1, 1]), "caffe" (BGR, ImageNet mean), "torch", "none" (model rescales itself)
    input_size: int
    gradcam_layer: str | None  # None: the backbone's last 4-D layer (Keras auto-names it, e.g. MobileNetV3)
    blocks: tuple[tuple[str, str], ...]
    always_trainable_top: tuple[str, ...] = ()
    source_study: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    # multi-scale features for an SSDLite-style head (S4): "C4" = the expansion layer of the first
    # stride-32 block (the last layer at output stride 16, as MobileNetV3's SSDLite attaches it),
    # "C5" = the last layer before pooling. "" means the backbone's output; "NAME+act" means the
    # activation layer applied to NAME (Keras auto-numbers MobileNetV3's activations).
    feature_layers: dict[str, str] = field(default_factory=dict)
    # the multi-task U-Net's skips: the last layer at output strides 2, 4, 8 and 16 (models/multitask.py)
    unet_taps: tuple[str, ...] = ()

    def weights_filename(self, input_size: int = 224, **kwargs: Any) -> str:
        """The file name Keras caches the no-top ImageNet weights under."""
        kw = {**self.defaults, **kwargs}
        if self.name == "mobilenet_v2":
            alpha = float(kw.get("alpha", 1.0))
            alpha_s = {1.0: "1.0", 0.35: "0.35", 0.5: "0.5", 0.75: "0.75", 1.3: "1.3", 1.4: "1.4"}.get(alpha, str(alpha))
            # Keras has weights for these sizes; any other square size loads the 224 file
            rows = input_size if input_size in (96, 128, 160, 192, 224) else 224
            return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha_s}_{rows}_no_top.h5"
        return {
            "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "mobilenet_v3_small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
            "efficientnet_b0": "efficientnetb0_notop.h5",
        }[self.name]


def _mnv2_blocks() -> tuple[tuple[str, str], ...]:
    return tuple((f"block_{k}", f"block_{k}_expand") for k in range(16, 0, -1))


def _resnet_blocks(counts: tuple[int, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for stage, n in zip((5, 4, 3, 2), counts):
        for b in range(n, 0, -1):
            out.append((f"conv{stage}_block{b}", f"conv{stage}_block{b}_1_conv"))
    return tuple(out)


REGISTRY: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2", constructor="MobileNetV2", preprocess="tf", input_size=224, gradcam_layer="out_relu",
        blocks=_mnv2_blocks(), always_trainable_top=("Conv_1", "Conv_1_bn", "out_relu"), source_study="S0",
        defaults={"alpha": 1.0}, feature_layers={"C2": "block_3_expand_relu", "C3": "block_6_expand_relu",
                                                 "C4": "block_13_expand_relu", "C5": "out_relu"},
        unet_taps=("expanded_conv_project_BN", "block_2_add", "block_6_expand_relu", "block_13_expand_relu"),
    ),
    "resnet50": BackboneSpec(
        name="resnet50", constructor="ResNet50", preprocess="caffe", input_size=224, gradcam_layer="conv5_block3_out",
        blocks=_resnet_blocks((3, 6, 4, 3)), source_study="S3",
        feature_layers={"C2": "conv2_block3_out", "C3": "conv3_block4_out", "C4": "conv4_block6_out", "C5": "conv5_block3_out"},
        unet_taps=("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
    ),
    "resnet101": BackboneSpec(
        name="resnet101", constructor="ResNet101", preprocess="caffe", input_size=224, gradcam_layer="conv5_block3_out",
        blocks=_resnet_blocks((3, 23, 4, 3)), source_study="S1",
        feature_layers={"C2": "conv2_block3_out", "C3": "conv3_block4_out", "C4": "conv4_block23_out", "C5": "conv5_block3_out"},
    ),
    "mobilenet_v3_small": BackboneSpec(
        name="mobilenet_v3_small", constructor="MobileNetV3Small", preprocess="none", input_size=224,
        gradcam_layer=None, blocks=(), source_study="S4", defaults={"include_preprocessing": True},
        feature_layers={"C4": "expanded_conv_8_expand_bn+act", "C5": ""},
    ),
    "efficientnet_b0": BackboneSpec(
        name="efficientnet_b0", constructor="EfficientNetB0", preprocess="none", input_size=224,
        gradcam_layer="top_activation", blocks=(), source_study="S3 (future work)",
    ),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise StudyError(f"unknown backbone '{name}' — use one of: {', '.join(sorted(REGISTRY))}") from None


def feature_tensors(backbone, name: str, levels: tuple[str, ...] = ("C4", "C5")) -> list:
    """The symbolic outputs of ``backbone`` (a built Keras model of backbone ``name``) at the
    registry's feature ``levels`` (C4: output stride 16, C5: stride 32), in that order."""
    spec = get_spec(name)
    missing = [lv for lv in levels if lv not in spec.feature_layers]
    if missing:
        raise StudyError(f"{name}: no {'/'.join(missing)} feature layer in the registry "
                         f"(known for: {', '.join(n for n, s in REGISTRY.items() if s.feature_layers)})")
    out = []
    for lv in levels:
        ref = spec.feature_layers[lv]
        if not ref:
            out.append(backbone.output)
        elif ref.endswith("+act"):
            source = backbone.get_layer(ref[: -len("+act")]).output
            consumers = [layer for layer in backbone.layers if getattr(layer, "_inbound_nodes", None)
                         and any(source is t for node in layer._inbound_nodes for t in node.input_tensors)]
            if len(consumers) != 1:
                raise StudyError(f"{name}: expected one layer after {ref}, found {len(consumers)}")
            out.append(consumers[0].output)
        else:
            out.append(backbone.get_layer(ref).output)
    return out


def keras_cache_dir() -> Path:
    """Where Keras looks for downloaded weights: ``$KERAS_HOME/models`` (default ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def is_random_init(weights: str | None) -> bool:
    """``weights`` asks for no pretrained weights (YAML ``none``/``null``, or None)."""
    return weights is None or str(weights).lower() == "none"


def describe_weights(weights: str | None) -> str:
    """What to write in tables and titles: ``imagenet``, ``random init`` or the path."""
    if is_random_init(weights):
        return "random init"
    return str(weights)


def build_backbone(name: str, input_size: int, weights: str | None = "imagenet", **kwargs: Any):
    """Build a no-top backbone as a nested Keras model named ``backbone``.

    weights: ``imagenet`` (raises :class:`WeightsUnavailable` if it cannot be loaded),
    ``none`` (random init, only when asked for explicitly) or a path to a weights file.
    """
    import keras

    spec = get_spec(name)
    kw = {**spec.defaults, **kwargs}
    ctor = getattr(keras.applications, spec.constructor)
    shape = (input_size, input_size, 3)
    w = None if is_random_init(weights) else weights
    path_weights = None
    if w not in (None, "imagenet"):
        path_weights, w = Path(w), None
        if not path_weights.exists():
            raise StudyError(f"{name}: weights file not found: {path_weights} — put the file there or run without pretrained weights")
    try:
        model = ctor(include_top=False, weights=w, input_shape=shape, **kw)
    except Exception as exc:  # offline download failure, missing cache file, bad file
        if w == "imagenet":
            reason = _short_reason(exc)
            raise WeightsUnavailable(name, spec.weights_filename(input_size, **kw), keras_cache_dir(), reason) from None
        raise
    if path_weights is not None:
        model.load_weights(str(path_weights))
    model.name = "backbone"
    return model


def _short_reason(exc: Exception) -> str:
    """One readable line: 'download failed: <network error>' for Keras's URL fetch failures."""
    line = first_line(exc, 10_000)
    if "URL fetch failure" in line:
        line = "download failed: " + (line.split(" -- ", 1)[1] if " -- " in line else line)
    return first_line(line)


def weights_available(name: str, weights: str | None = "imagenet", input_size: int = 224, **kwargs: Any) -> tuple[bool, str]:
    """(available, message) without building anything heavy when the cache already has the file."""
    if is_random_init(weights):
        return True, "random init (explicitly asked for)"
    if weights != "imagenet":
        return Path(weights).exists(), str(weights)
    spec = get_spec(name)
    fname = spec.weights_filename(input_size, **kwargs)
    cached = keras_cache_dir() / fname
    if cached.exists():
        return True, f"imagenet ({cached})"
    try:
        build_backbone(name, input_size, "imagenet", **kwargs)
        return True, "imagenet (downloaded)"
    except WeightsUnavailable as exc:
        return False, str(exc)
