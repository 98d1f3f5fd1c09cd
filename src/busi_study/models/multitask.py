"""One network that outlines the lesion and classifies the image: a multi-task U-Net on a fine-tuned encoder.

The encoder is a backbone of the registry (MobileNetV2 α 0.35 on the study's machines) trained the way
the S0 recipe trains it: its lower blocks stay frozen and their outputs for every image and augmented
view are computed once (cached), the top ``unfreeze_blocks`` blocks are fine-tuned (BatchNorm in
inference mode). On top of the encoder:

* a **classification head**: global average pooling of the last feature map → dropout → softmax
  (S0's head);
* a **U-Net decoder** with skips from the encoder at output strides 16, 8, 4 and 2 (the registry's
  ``unet_taps``): upsample ×2, concatenate the (1 × 1-projected) skip, 3 × 3 convolution (depthwise-
  separable at strides 4 and 2), BatchNorm, ReLU, four times, then a sigmoid: the lesion probability at half the input size. The exported model
  upsamples it to the input size; ``predict`` maps it back onto the original image.

Loss: categorical cross-entropy (class-weighted) + ``mask_weight`` × (binary cross-entropy + soft Dice)
of the lesion map against the view's own mask: every augmented view's mask goes through the view's
geometric transform (and its lesion-keeping crop, :func:`busi_study.models.augment.view_with_mask`),
so the target stays on the lesion. Masks are training targets only (docs/protocol.md §1): at test time
the network sees the image alone.

Training, as the S0 recipe: phase 1 trains the head and the decoder on the frozen encoder's cached
outputs; phase 2 fine-tunes the top blocks together with them on the cached lower-block outputs, at
the lower learning rate. Early stopping on the combined validation loss of the outer fold's inner
validation part; the study's seeded batch order (:mod:`busi_study.models.training`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ..data.arrays import labels_and_groups, load_image_array, load_mask_array
from ..data.store import ProcessedData, atomic_path, sha256_of
from ..info import CLASSES, PROBA_COLUMNS
from .augment import AugmentConfig, view_with_mask
from .experiment import Experiment, FoldModel
from .features import cache_key
from .registry import get_spec
from .training import TrainConfig, train_multitask

LEVELS = ("S2", "S4", "S8", "S16")  # the decoder's skips, output strides 2, 4, 8, 16


def calls_normal(proba: np.ndarray) -> np.ndarray:
    """Whether the model calls each image normal (argmax of its class probabilities, last axis)."""
    return np.asarray(proba).argmax(axis=-1) == CLASSES.index("normal")


def outline_shown(found: np.ndarray, called: np.ndarray, gate: str) -> np.ndarray:
    """Whether the outline is shown: a region was found and, with gate ``classifier``, the model does not
    call the image normal (``called``). The one rule for the validation choice, the study's measures,
    ``predict``, the app and notebook 08."""
    return np.logical_and(found, np.logical_not(called)) if gate == "classifier" else np.asarray(found)


@dataclass(frozen=True, kw_only=True)
class MultitaskRecipe:
    """Everything that defines the multi-task model (see the module docstring)."""

    name: str
    backbone: str
    input_size: int
    weights: str | None
    unfreeze_blocks: int
    head_dropout: float
    decoder_channels: int            # channels of the decoder at output strides 4 and 2 (×4 at 16, ×2 at 8)
    mask_weight: float               # λ: weight of the mask loss beside the class cross-entropy
    fit: str                         # stretch | pad: how an image becomes a square input
    crop_prob: float                 # share of augmented views that start as a lesion-keeping random crop
    crop_min_side: float             # smallest side of such a crop, as a share of the image's side
    threshold: float                 # lesion probability above which a pixel is lesion
    min_area: float                  # predicted regions below this share of the image count as "nothing found"
    gate: str                        # none | classifier: no outline where the model calls the image normal
    n_views: int
    augment: AugmentConfig
    train: TrainConfig               # phase 1: head + decoder on the frozen encoder
    finetune: TrainConfig            # phase 2: top blocks + head + decoder
    preprocessing: str
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    source_study: str = "ours"

    kind = "multitask"

    @property
    def output_size(self) -> int:
        """Side of the decoder's lesion map (half the input)."""
        return self.input_size // 2

    @property
    def backbone_label(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.backbone_kwargs.items())
        return self.backbone + (f" ({extra})" if extra else "")

    @property
    def weights_label(self) -> str:
        from .registry import describe_weights

        return describe_weights(self.weights)

    @property
    def title(self) -> str:
        crop = f", lesion-keeping crops in {self.crop_prob:.0%} of views" if self.crop_prob else ""
        return (f"{self.name}: multi-task U-Net (outline + class) on {self.backbone_label}, {self.weights_label}, "
                f"{self.input_size}px ({self.fit}), top {self.unfreeze_blocks} blocks fine-tuned, λ {self.mask_weight:g}{crop}")

    def gradcam_layer(self) -> str | None:
        return get_spec(self.backbone).gradcam_layer

    def as_dict(self) -> dict:
        return {**asdict(self), "kind": self.kind, "weights_label": self.weights_label}


# ---------------------------------------------------------------- networks
def decoder_head(shapes: dict[str, tuple[int, ...]], top_shape: tuple[int, ...], channels: int, dropout: float,
                 n_classes: int = len(PROBA_COLUMNS)):
    """(S2, S4, S8, S16 skips, top feature map) → (class probabilities, lesion probability at stride 2)."""
    import keras
    from keras import layers

    skips = {lv: keras.Input(shapes[lv], name=f"skip_{lv.lower()}") for lv in LEVELS}
    top = keras.Input(top_shape, name="top")
    x = layers.GlobalAveragePooling2D(name="head_gap")(top)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    probs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    widths = {"S16": channels * 4, "S8": channels * 2, "S4": channels, "S2": channels}
    m = layers.Conv2D(widths["S16"], 1, activation="relu", name="dec_top_proj")(top)
    for lv in ("S16", "S8", "S4", "S2"):
        m = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec_up_{lv.lower()}")(m)
        s = layers.Conv2D(widths[lv], 1, activation="relu", name=f"dec_skip_{lv.lower()}")(skips[lv])
        m = layers.Concatenate(name=f"dec_cat_{lv.lower()}")([m, s])
        # depthwise-separable at the two finest levels, where a full 3 × 3 convolution costs most on a CPU
        conv = layers.SeparableConv2D if lv in ("S4", "S2") else layers.Conv2D
        m = conv(widths[lv], 3, padding="same", use_bias=False, name=f"dec_conv_{lv.lower()}")(m)
        m = layers.BatchNormalization(name=f"dec_bn_{lv.lower()}")(m)
        m = layers.ReLU(name=f"dec_relu_{lv.lower()}")(m)
    mask = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(m)
    return keras.Model([*(skips[lv] for lv in LEVELS), top], [probs, mask], name="decoder_head")


# ---------------------------------------------------------------- experiment
class MultitaskExperiment:
    """A :class:`MultitaskRecipe` on one processed dataset: cached lower-block outputs of every view,
    fold models trained on them, out-of-fold class probabilities and lesion maps, exportable models."""

    fold_indices = Experiment.fold_indices  # fold indices and prediction frames as every experiment
    _frame = Experiment._frame

    def __init__(self, recipe: MultitaskRecipe, store: ProcessedData, seed: int, progress: bool = True) -> None:
        self.recipe, self.store, self.seed, self.progress = recipe, store, seed, progress
        self.table = labels_and_groups(store)
        self.y = self.table["label_idx"].to_numpy()
        self.timing: dict[str, Any] = {}
        self.determinism: dict = {}

    # ---------- preparation ----------
    def _cache_stem(self, masks: np.ndarray) -> Path:
        r = self.recipe
        key = cache_key("multitask", r.backbone, sorted(r.backbone_kwargs.items()), r.weights, r.input_size,
                        r.unfreeze_blocks, r.n_views, self.seed, r.augment.key(), r.fit, r.crop_prob, r.crop_min_side,
                        r.preprocessing, sha256_of(self.store.manifest), int(masks.sum()), masks.shape)
        return self.store.cache_dir / "features" / f"{r.backbone}-multitask-{key}"

    def prepare(self) -> MultitaskExperiment:
        """Build the networks, compute (or load) the cached lower-block outputs of every view and their
        masks, and the frozen upper outputs (phase 1)."""
        import os

        import keras

        from . import builders
        from .determinism import enable

        r = self.recipe
        self.determinism = enable() if os.environ.get("BUSI_DETERMINISTIC", "1") != "0" else {"op_determinism": False}
        t0 = time.perf_counter()
        images = load_image_array(self.store, r.input_size, r.preprocessing, progress=self.progress, fit=r.fit)
        masks = load_mask_array(self.store, r.input_size, progress=self.progress, fit=r.fit)
        self.masks_full = masks
        self.timing["decode_s"] = round(time.perf_counter() - t0, 1)
        keras.utils.set_random_seed(self.seed)
        self.preprocess, self.backbone = builders.backbone_with_preprocessing(r.backbone, r.input_size, r.weights,
                                                                              **r.backbone_kwargs)
        self.backbone.trainable = False
        self._split_backbone()
        t0 = time.perf_counter()
        self.lower_views, self.mask_views, cached = self._lower_outputs(images, masks)
        self.timing.update(lower_outputs_s=round(time.perf_counter() - t0, 1), lower_outputs_cached=cached)
        self.upper_initial = [w.copy() for w in self.upper.get_weights()]
        t0 = time.perf_counter()
        self.top_views = self._upper_outputs(self.lower_views[0])
        self.timing["top_from_lower_s"] = round(time.perf_counter() - t0, 1)
        return self

    def _split_backbone(self) -> None:
        """lower: image → [boundary, taps below it]; upper: boundary → [taps above it, last feature map]."""
        import keras

        r = self.recipe
        spec = get_spec(r.backbone)
        if not spec.unet_taps:
            raise ValueError(f"{r.backbone}: no U-Net skip layers (unet_taps) in the registry")
        if not 0 < r.unfreeze_blocks <= len(spec.blocks):
            raise ValueError(f"unfreeze_blocks must be in 1..{len(spec.blocks)} for {r.backbone}")
        first = spec.blocks[r.unfreeze_blocks - 1][1]
        order = {layer.name: i for i, layer in enumerate(self.backbone.layers)}
        boundary = self.backbone.get_layer(first).input
        taps = dict(zip(LEVELS, spec.unet_taps))
        self.lower_levels = [lv for lv in LEVELS if order[taps[lv]] < order[first]]
        self.upper_levels = [lv for lv in LEVELS if lv not in self.lower_levels]
        self.lower = keras.Model(self.backbone.input, [boundary, *(self.backbone.get_layer(taps[lv]).output
                                                                    for lv in self.lower_levels)], name="lower")
        self.upper = keras.Model(boundary, [*(self.backbone.get_layer(taps[lv]).output for lv in self.upper_levels),
                                            self.backbone.output], name="upper")
        self.taps = taps

    def _lower_outputs(self, images: np.ndarray, masks: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, bool]:
        """float16 arrays (n_views, n, ...) of the lower model's outputs, and the views' masks at the
        decoder's size (float16 (n_views, n, o, o, 1), area-averaged 0/1 masks); cached on disk."""
        import keras
        from tqdm import tqdm

        r = self.recipe
        n, o = len(images), r.output_size
        stem = self._cache_stem(masks)
        names = ["boundary", *self.lower_levels, "masks"]
        paths = [Path(f"{stem}-{k.lower()}.npy") for k in names]
        if all(p.exists() for p in paths):
            arrs = [np.load(p) for p in paths]
            if all(a.shape[:2] == (r.n_views, n) for a in arrs):
                return arrs[:-1], arrs[-1], True
        inp = keras.Input((r.input_size, r.input_size, 3))
        extractor = keras.Model(inp, self.lower(self.preprocess(inp)))
        outs = [np.zeros((r.n_views, n, *(int(d) for d in t.shape[1:])), np.float16) for t in extractor.outputs]
        mviews = np.zeros((r.n_views, n, o, o, 1), np.float16)
        for v in tqdm(range(r.n_views), desc=f"lower-block outputs ({r.n_views} views)", disable=not self.progress):
            for s in range(0, n, 32):
                idx = range(s, min(s + 32, n))
                pairs = [view_with_mask(images[i], masks[i], i, v, self.seed, r.augment, r.crop_prob, r.crop_min_side)
                         for i in idx]
                x = np.stack([p[0] for p in pairs]).astype(np.float32)
                res = extractor(x, training=False)
                for a, t in zip(outs, res if isinstance(res, (list, tuple)) else [res]):
                    a[v, s: s + len(x)] = np.asarray(t)
                mviews[v, s: s + len(x), ..., 0] = np.stack(
                    [cv2.resize(p[1].astype(np.float32), (o, o), interpolation=cv2.INTER_AREA) for p in pairs])
        for p, a in zip(paths, [*outs, mviews]):
            with atomic_path(p) as tmp:
                np.save(tmp, a)
        return outs, mviews, False

    def _upper_outputs(self, boundary: np.ndarray) -> list[np.ndarray]:
        """The frozen upper part's outputs for every view (phase 1 inputs): float16 (n_views, n, ...)."""
        out = []
        for v in range(boundary.shape[0]):
            res = self.upper.predict(boundary[v].astype(np.float32), batch_size=64, verbose=0)
            res = res if isinstance(res, list) else [res]
            if not out:
                out = [np.zeros((boundary.shape[0], *np.shape(t)), np.float16) for t in res]
            for a, t in zip(out, res):
                a[v] = t
        return out

    # ---------- the inputs of each phase, in the decoder head's order ----------
    def _phase1_inputs(self) -> list[np.ndarray]:
        lower = dict(zip(self.lower_levels, self.lower_views[1:]))
        upper = dict(zip(self.upper_levels, self.top_views[:-1]))
        return [lower[lv] if lv in lower else upper[lv] for lv in LEVELS] + [self.top_views[-1]]

    def _new_head(self):
        shapes = {lv: tuple(a.shape[2:]) for lv, a in zip(LEVELS, self._phase1_inputs()[:-1])}
        return decoder_head(shapes, tuple(self.top_views[-1].shape[2:]), self.recipe.decoder_channels,
                            self.recipe.head_dropout)

    def _phase2_model(self, head):
        """lower outputs → upper (trainable but BatchNorm) → decoder head."""
        import keras

        inputs = [keras.Input(tuple(a.shape[2:]), name=f"lower_{k}") for k, a in
                  zip(["boundary", *[lv.lower() for lv in self.lower_levels]], self.lower_views)]
        up = self.upper(inputs[0])
        up = up if isinstance(up, (list, tuple)) else [up]
        level = {**dict(zip(self.lower_levels, inputs[1:])), **dict(zip(self.upper_levels, up[:-1]))}
        return keras.Model(inputs, head([*(level[lv] for lv in LEVELS), up[-1]]), name="multitask")

    # ---------- training and prediction ----------
    def fit(self, train_idx: np.ndarray, val_idx: np.ndarray | None, seed: int, epochs: list[int] | None = None) -> FoldModel:
        """Phase 1 (head + decoder on the frozen encoder), then phase 2 (top blocks too); ``epochs`` fixes
        the epochs per phase when ``val_idx`` is None (the final model)."""
        import keras

        r = self.recipe
        keras.utils.set_random_seed(seed)
        e = epochs or [None, None]
        self.upper.set_weights(self.upper_initial)
        head = self._new_head()
        res1 = train_multitask(head, self._phase1_inputs(), self.y, self.mask_views, train_idx, val_idx, r.train, seed,
                               e[0], mask_weight=r.mask_weight)
        for layer in self.upper.layers:  # BatchNorm stays in inference mode, as in the S0 recipe
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        model = self._phase2_model(head)
        res2 = train_multitask(model, self.lower_views, self.y, self.mask_views, train_idx, val_idx, r.finetune, seed + 1,
                               e[1], mask_weight=r.mask_weight)
        return FoldModel(model, head, [res1, res2], [w.copy() for w in self.upper.get_weights()])

    def _outputs(self, fm: FoldModel, idx: np.ndarray, view: int) -> tuple[np.ndarray, np.ndarray]:
        if fm.weights_snapshot:
            self.upper.set_weights(fm.weights_snapshot)
        p, m = fm.model.predict([a[view, idx].astype(np.float32) for a in self.lower_views], batch_size=32, verbose=0)
        return np.asarray(p, np.float64), np.asarray(m[..., 0], np.float32)

    def predict(self, fm: FoldModel, idx: np.ndarray, tta: bool = False) -> np.ndarray:
        """Class probabilities (len(idx), 3) from view 0, or averaged over every cached view (TTA)."""
        views = range(self.recipe.n_views) if tta else [0]
        return np.mean([self._outputs(fm, idx, v)[0] for v in views], axis=0)

    def predict_masks(self, fm: FoldModel, idx: np.ndarray | None = None) -> np.ndarray:
        """Lesion probability at the decoder's size (len(idx), o, o) of view 0 (the image itself)."""
        idx = np.arange(len(self.table)) if idx is None else idx
        return self._outputs(fm, idx, 0)[1]

    # ---------- export ----------
    def full_model(self, fm: FoldModel):
        """The exportable network: float RGB image (size, size, 3) in [0, 255] → [class probabilities (3,),
        lesion probability at the input size (size, size, 1)]."""
        import keras
        from keras import layers

        if fm.weights_snapshot:
            self.upper.set_weights(fm.weights_snapshot)
        r = self.recipe
        features = keras.Model(self.backbone.input, [*(self.backbone.get_layer(self.taps[lv]).output for lv in LEVELS),
                                                     self.backbone.output], name="encoder")
        head = self._new_head()  # an uncompiled twin: the saved file needs nothing of the training code (its loss)
        head.set_weights(fm.head.get_weights())
        inputs = keras.Input((r.input_size, r.input_size, 3), name="image")
        probs, mask = head(features(self.preprocess(inputs)))
        probs = layers.Identity(name="probs_out")(probs)
        mask = layers.UpSampling2D(2, interpolation="bilinear", name="mask_out")(mask)
        model = keras.Model(inputs, [probs, mask], name=r.name.replace(".", "_"))
        for layer in model.layers:
            layer.trainable = False
        return model

    def classifier(self, full) -> object:
        """The class-probability output of an exported network alone (for Grad-CAM and TFLite)."""
        import keras

        return keras.Model(full.inputs, full.outputs[0], name=f"{full.name}_classifier")


# ---------------------------------------------------------------- lesion maps of the folds
@dataclass
class MultitaskMaps:
    """Each image's lesion map from the fold model that held it out, and from every fold's model."""

    oof: np.ndarray              # (n, o, o) float32
    fold_maps: np.ndarray        # (n_folds, n, o, o) float16
    test_fold: np.ndarray        # (n,)


def fold_maps(ex: MultitaskExperiment, fold_models: list[FoldModel], splits: pd.DataFrame) -> MultitaskMaps:
    """Lesion maps of every image by every fold model (the crop pipeline needs the training images' maps
    too); ``oof`` keeps each image's map from the fold where it was a test image."""
    folds = sorted(int(f) for f in splits["fold"].unique())
    n, o = len(ex.table), ex.recipe.output_size
    out = np.zeros((len(folds), n, o, o), np.float16)
    oof, test_fold = np.zeros((n, o, o), np.float32), np.full(n, -1)
    for k, (fold, fm) in enumerate(zip(folds, fold_models)):
        maps = ex.predict_masks(fm)
        out[k] = maps
        test = ex.fold_indices(splits, fold)["test"]
        oof[test], test_fold[test] = maps[test], fold
    return MultitaskMaps(oof, out, test_fold)
