"""Lesion-aware candidate models (notebook 05), trained on cached frozen-backbone features.

Candidates (each trained and scored under the same grouped folds):

* ``attention`` — the whole image's last feature map F (h × w × C) → a 1 × 1 convolution with
  a sigmoid gives an attention map a; the features pooled under a (Σ a·F / Σ a) and the plain
  average of F → dropout → softmax. During training a is *supervised by the lesion mask*
  (binary cross-entropy against the mask averaged to h × w, weight ``attention_weight``; normal
  images: an empty mask). At test time only the image goes in.
* ``two_stream`` — the whole image's pooled features and the pooled features of the crop
  around the lesion that fold's segmenter predicted (:mod:`busi_study.models.crops`), concatenated →
  dropout → softmax.
* ``two_stream_hires`` — the same with the crop at a higher input resolution.
* ``attention_ft`` — the attention head of ``attention`` on the S0 recipe's network,
  trained as S0 is (head on the frozen top, then the top blocks fine-tuned on the cached lower-block
  outputs of the augmented views); each view's mask goes through the same flip / rotation / zoom /
  shift as its image, so the attention target stays on the lesion.

In the first three the backbone stays frozen (one view per image, no augmentation), so they cost
seconds per fold; ``attention_ft`` costs what the S0 recipe costs. The choice between them is made
on the pooled *inner-validation* log loss only.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ..data.arrays import labels_and_groups, load_mask_array
from ..data.store import ProcessedData
from ..info import CHOICES, PROBA_COLUMNS
from ..timing import timed
from .augment import views_batch
from .experiment import Experiment, FoldModel, run_folds
from .recipes import Recipe, features_recipe
from .training import BestWeights, TrainConfig, TrainResult, balanced_class_weight, train_with_mask

CANDIDATES = CHOICES["lesion_candidate"]


@dataclass(frozen=True, kw_only=True)
class CandidateRecipe:
    name: str
    kind: str                      # one of CANDIDATES
    backbone: str
    input_size: int                # whole image
    crop_size: int                 # crop stream (two_stream*)
    train: TrainConfig
    dropout: float
    attention_weight: float
    weights: str | None
    preprocessing: str
    backbone_kwargs: dict[str, Any] | None = None
    source_study: str = "ours"
    finetune_from: Recipe | None = None  # attention_ft: the recipe whose network and training it reuses (S0's)

    def __post_init__(self) -> None:
        if self.kind not in CANDIDATES:
            raise ValueError(f"unknown lesion-aware candidate '{self.kind}' — use one of: {', '.join(CANDIDATES)}")
        if self.kind == "attention_ft" and self.finetune_from is None:
            raise ValueError("the attention_ft candidate needs finetune_from (the S0 recipe it fine-tunes)")

    @property
    def backbone_label(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in (self.backbone_kwargs or {}).items())
        return self.backbone + (f" ({extra})" if extra else "")

    @property
    def weights_label(self) -> str:
        return str(self.weights)

    @property
    def title(self) -> str:
        if self.kind == "attention_ft":
            f = self.finetune_from
            return (f"{self.name}: mask-supervised attention head on {self.backbone_label}, {self.weights}, {self.input_size}px, "
                    f"top {f.unfreeze_blocks} blocks fine-tuned as {f.name} ({f.n_views} cached views)")
        what = {"attention": "mask-supervised attention head", "two_stream": f"whole image + predicted-lesion crop ({self.crop_size}px)",
                "two_stream_hires": f"whole image + predicted-lesion crop ({self.crop_size}px)"}[self.kind]
        return f"{self.name}: {what} on frozen {self.backbone_label}, {self.weights}, {self.input_size}px"

    def gradcam_layer(self) -> str | None:
        from .registry import get_spec

        return get_spec(self.backbone).gradcam_layer

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- heads
def attention_head(feature_shape: tuple[int, ...], dropout: float, n_classes: int = len(PROBA_COLUMNS)):
    """F → (probabilities, attention map a in [0, 1] of F's spatial size, flattened to h·w)."""
    import keras
    from keras import layers

    from .builders import AttentionPool

    f = keras.Input(feature_shape, name="features")
    a = layers.Conv2D(1, 1, activation="sigmoid", name="attention")(f)
    pooled = AttentionPool(name="att_pool")([f, a])
    x = layers.Concatenate(name="att_concat")([pooled, layers.GlobalAveragePooling2D(name="gap")(f)])
    x = layers.Dropout(dropout, name="dropout")(x)
    p = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    flat = layers.Reshape((int(feature_shape[0]) * int(feature_shape[1]),), name="attention_map")(a)
    return keras.Model(f, [p, flat], name="attention_head")


def two_stream_head(dim_whole: int, dim_crop: int, dropout: float, n_classes: int = len(PROBA_COLUMNS)):
    """(pooled whole-image features, pooled crop features) → probabilities."""
    import keras
    from keras import layers

    w, c = keras.Input((dim_whole,), name="whole"), keras.Input((dim_crop,), name="crop")
    x = layers.Dropout(dropout, name="dropout")(layers.Concatenate(name="concat")([w, c]))
    return keras.Model([w, c], layers.Dense(n_classes, activation="softmax", name="probs")(x), name="two_stream_head")


# ---------------------------------------------------------------- experiment
@timed("frozen top features {backbone} {size}px")
def frozen_top(store: ProcessedData, backbone: str, kw: dict, weights: str | None, size: int, *, seed: int,
               images: np.ndarray | None = None) -> tuple[np.ndarray, object, object]:
    """The frozen backbone's last feature map of every image (or of ``images``): float32 (n, h, w, C),
    plus (preprocess layer, backbone) for export. Whole images are cached on disk by the experiment."""
    ex = Experiment(features_recipe(backbone, kw, weights, size), store, seed=seed, progress=False, images=images).prepare()
    return np.asarray(ex.views[0], np.float32), ex.preprocess, ex.backbone


class CandidateExperiment:
    """One candidate on one fold's inputs (duck-typed for :func:`experiment.run_folds`)."""

    def __init__(self, recipe: CandidateRecipe, table: pd.DataFrame, whole: np.ndarray, masks: np.ndarray | None,
                 crop: np.ndarray | None, progress: bool = True) -> None:
        self.recipe, self.table, self.progress = recipe, table, progress
        self.y = table["label_idx"].to_numpy()
        self.whole, self.masks, self.crop = whole, masks, crop

    fold_indices = Experiment.fold_indices  # fold indices and prediction frames as every experiment
    _frame = Experiment._frame

    def _inputs(self, idx):
        if self.recipe.kind == "attention":
            return self.whole[idx]
        return [self.whole.mean(axis=(1, 2))[idx], self.crop[idx]]

    def fit(self, train_idx: np.ndarray, val_idx: np.ndarray | None, seed: int, epochs: list[int] | None = None) -> FoldModel:
        import keras

        r, cfg = self.recipe, self.recipe.train
        keras.utils.set_random_seed(seed)
        if r.kind == "attention":
            head = attention_head(self.whole.shape[1:], r.dropout)
            head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                         loss=["sparse_categorical_crossentropy", "binary_crossentropy"], loss_weights=[1.0, r.attention_weight])
            targets = lambda idx: [self.y[idx], self.masks[idx]]  # noqa: E731
        else:
            head = two_stream_head(self.whole.shape[-1], self.crop.shape[-1], r.dropout)
            head.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="sparse_categorical_crossentropy")
            targets = lambda idx: self.y[idx]  # noqa: E731
        cw = balanced_class_weight(self.y[train_idx]) if cfg.class_weight else None
        rng = np.random.default_rng(seed)
        rows, stopper = [], BestWeights(cfg.patience)
        t_start = time.perf_counter()
        for epoch in range(1, ((epochs or [None])[0] or cfg.epochs) + 1):
            t0 = time.perf_counter()
            idx = train_idx[rng.permutation(len(train_idx))]
            sw = None if cw is None else np.array([cw[int(c)] for c in self.y[idx]], np.float32)
            h = head.fit(self._inputs(idx), targets(idx), batch_size=cfg.batch_size, epochs=1, shuffle=False, verbose=0,
                         sample_weight=sw)
            acc = float((self._probs(head, train_idx).argmax(1) == self.y[train_idx]).mean())  # in inference mode
            row = {"epoch": epoch, "loss": float(h.history["loss"][0]), "accuracy": acc}
            if val_idx is not None and len(val_idx):
                p = self._probs(head, val_idx)
                row["val_loss"] = float(-np.mean(np.log(np.clip(p[np.arange(len(val_idx)), self.y[val_idx]], 1e-7, 1))))
                row["val_accuracy"] = float((p.argmax(1) == self.y[val_idx]).mean())
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if "val_loss" in row and stopper.stop_after(head, epoch, row["val_loss"]):
                break
        best_epoch = stopper.restore(head, len(rows))
        res = TrainResult(pd.DataFrame(rows), best_epoch, round(time.perf_counter() - t_start, 1))
        return FoldModel(head, head, [res])

    def _probs(self, head, idx) -> np.ndarray:
        out = head.predict(self._inputs(idx), batch_size=64, verbose=0)
        return np.asarray(out[0] if isinstance(out, list) else out, np.float64)

    def predict(self, fm: FoldModel, idx: np.ndarray, tta: bool = False) -> np.ndarray:
        return self._probs(fm.model, idx)


class FinetunedAttentionExperiment(Experiment):
    """``attention_ft``: the S0 recipe's experiment (cached lower-block outputs of every augmented
    view, top blocks fine-tuned) with the mask-supervised attention head instead of the plain one."""

    def __init__(self, candidate: CandidateRecipe, store: ProcessedData, seed: int, progress: bool = True) -> None:
        super().__init__(replace(candidate.finetune_from, name=candidate.name), store, seed=seed, progress=progress)
        self.candidate = candidate

    def prepare(self) -> FinetunedAttentionExperiment:
        super().prepare()
        self.mask_views = mask_views(self.store, self.recipe, self.seed, self.top_views.shape[2])
        return self

    def fit(self, train_idx: np.ndarray, val_idx: np.ndarray | None, seed: int, epochs: list[int] | None = None) -> FoldModel:
        import keras

        r, c = self.recipe, self.candidate
        keras.utils.set_random_seed(seed)
        e = epochs or [None, None]
        self.upper.set_weights(self.upper_initial)
        head = attention_head(self.top_views.shape[2:], c.dropout)
        res1 = train_with_mask(head, self.top_views, self.y, self.mask_views, train_idx, val_idx, r.train, seed, e[0],
                               mask_weight=c.attention_weight)
        for layer in self.upper.layers:  # BatchNorm stays in inference mode, as in the S0 recipe
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        inputs = keras.Input(self.views.shape[2:], name="lower_features")
        model = keras.Model(inputs, head(self.upper(inputs)), name="attention_finetune")
        res2 = train_with_mask(model, self.views, self.y, self.mask_views, train_idx, val_idx, r.finetune, seed + 1, e[1],
                               mask_weight=c.attention_weight)
        return FoldModel(model, head, [res1, res2], [w.copy() for w in self.upper.get_weights()])

    def predict(self, fm: FoldModel, idx: np.ndarray, tta: bool = False) -> np.ndarray:
        if fm.weights_snapshot:
            self.upper.set_weights(fm.weights_snapshot)
        views = range(self.views.shape[0]) if tta else [0]
        return np.mean([np.asarray(fm.model.predict(self.views[v, idx], batch_size=64, verbose=0)[0], np.float64)
                        for v in views], axis=0)

    def full_model(self, fm: FoldModel):
        """Image → probabilities (the attention map, a training aid, is left out)."""
        import keras

        if fm.weights_snapshot:
            self.upper.set_weights(fm.weights_snapshot)
        probs_head = keras.Model(fm.head.inputs, fm.head.outputs[0], name="attention_head")  # as export_classifier
        inputs = keras.Input((self.recipe.input_size, self.recipe.input_size, 3), name="image")
        model = keras.Model(inputs, probs_head(self.backbone(self.preprocess(inputs))), name=self.recipe.name.replace(".", "_"))
        for layer in model.layers:
            layer.trainable = False
        return model


@timed("mask views ({recipe.n_views})")
def mask_views(store: ProcessedData, recipe: Recipe, seed: int, grid: int) -> np.ndarray:
    """Each cached view's lesion mask on the feature grid: float32 (n_views, n, grid·grid) in [0, 1].
    View v of a mask goes through view v's geometric transform of its image (same seed, index, view)."""
    m = load_mask_array(store, recipe.input_size, progress=False) * np.uint8(255)
    out = np.zeros((recipe.n_views, len(m), grid * grid), np.float32)
    for v in range(recipe.n_views):
        warped = views_batch(m, np.arange(len(m)), v, seed, recipe.augment) > 127  # photometric jitter cannot cross 127
        out[v] = np.stack([cv2.resize(x.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA).reshape(-1)
                           for x in warped])
    return out


def masks_at(store: ProcessedData, size: int, grid: int) -> np.ndarray:
    """Lesion masks averaged to the feature grid, flattened: float32 (n, grid·grid) in [0, 1] (the attention targets)."""
    m = load_mask_array(store, size, progress=False).astype(np.float32)
    return np.stack([cv2.resize(x, (grid, grid), interpolation=cv2.INTER_AREA).reshape(-1) for x in m])


@timed("cross-validation {recipe.name}")
def candidate_cv(recipe: CandidateRecipe, store: ProcessedData, splits: pd.DataFrame, *, seed: int, source=None,
                 margin: float | None = None, progress: bool = True, view_seed: int | None = None):
    """Grouped CV of one candidate (crops from ``source``, a :class:`busi_study.models.crops.CropSource`, for the two-stream ones).
    ``seed`` is the training seed; ``view_seed`` (default ``seed``) fixes attention_ft's augmented views, as
    the split seed fixes the S0 recipe's."""
    if recipe.kind == "attention_ft":
        ex = FinetunedAttentionExperiment(recipe, store, seed=seed if view_seed is None else view_seed,
                                          progress=progress).prepare()
        return run_folds(lambda fold: ex, splits, seed, tta=False)
    kw = recipe.backbone_kwargs or {}
    whole, _, _ = frozen_top(store, recipe.backbone, kw, recipe.weights, recipe.input_size, seed=seed)
    table = labels_and_groups(store)
    masks = masks_at(store, recipe.input_size, whole.shape[1]) if recipe.kind == "attention" else None

    def experiment(fold: int) -> CandidateExperiment:
        crop = None
        if recipe.kind != "attention":
            crop = frozen_top(store, recipe.backbone, kw, recipe.weights, recipe.crop_size,
                              images=source.images(fold, margin, recipe.crop_size), seed=seed)[0].mean(axis=(1, 2))
        return CandidateExperiment(recipe, table, whole, masks, crop, progress=progress)

    return run_folds(experiment, splits, seed, tta=False)


def export_classifier(recipe: CandidateRecipe, head, preprocess, backbone):
    """The attention candidate as an image classifier: image → preprocessing → frozen backbone →
    the head's probability output (its attention map is a training aid and is left out)."""
    import keras

    if recipe.kind != "attention":
        raise ValueError("only the attention candidate is a single-image classifier; the two-stream ones are pipelines")
    inputs = keras.Input((recipe.input_size, recipe.input_size, 3), name="image")
    probs_head = keras.Model(head.inputs, head.outputs[0], name="attention_head")
    return keras.Model(inputs, probs_head(backbone(preprocess(inputs))), name=recipe.name.replace(".", "_"))


def export_two_stream(recipe: CandidateRecipe, head, preprocess, backbone, preprocess_crop, backbone_crop):
    """A two-stream candidate as a two-input classifier: (image, crop) → probabilities (frozen backbones, pooled)."""
    import keras
    from keras import layers

    if recipe.kind == "attention":
        raise ValueError("the attention candidate is a single-image classifier (export_classifier)")
    image = keras.Input((recipe.input_size, recipe.input_size, 3), name="image")
    crop = keras.Input((recipe.crop_size, recipe.crop_size, 3), name="crop")
    from .builders import BackbonePreprocess

    backbone_crop.name = "backbone_crop"
    pre_crop = BackbonePreprocess(preprocess_crop.mode, name="preprocess_crop")  # layer names must be unique
    w = layers.GlobalAveragePooling2D(name="gap_image")(backbone(preprocess(image)))
    c = layers.GlobalAveragePooling2D(name="gap_crop")(backbone_crop(pre_crop(crop)))
    return keras.Model([image, crop], head([w, c]), name=recipe.name.replace(".", "_"))
