"""One model under the protocol: cached views → grouped CV → out-of-fold predictions → final model.

An :class:`Experiment` owns the networks of one :class:`Recipe` on one processed dataset:

* ``prepare()`` decodes the images once and computes the cached views (augmented images for a
  model trained from scratch; frozen-backbone outputs for a head; frozen lower-block outputs for
  fine-tuning), shared by every fold;
* ``fit(train_idx, val_idx, seed)`` trains a fresh trainable part (fresh head, ImageNet weights
  restored in unfrozen blocks) and returns a :class:`FoldModel`;
* ``cross_validate(splits)`` runs the outer folds and collects out-of-fold predictions;
* ``full_model(fold_model)`` assembles an exportable classifier (image in, probabilities out).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.arrays import labels_and_groups, load_image_array
from ..data.store import ProcessedData, sha256_of
from ..info import PROBA_COLUMNS
from ..timing import step, timed, timed_iter
from . import builders
from .features import cache_key, frozen_outputs, image_views
from .recipes import Recipe
from .registry import get_spec
from .training import TrainResult, predict, train


@dataclass
class FoldModel:
    """A trained trainable part and what it took."""

    model: object                    # the trainable Keras model (input: cached views)
    head: object | None              # the head model (frozen_head / finetune)
    phases: list[TrainResult]
    weights_snapshot: list[np.ndarray] = field(default_factory=list)  # upper-backbone weights (finetune)

    @property
    def best_epochs(self) -> list[int]:
        return [p.best_epoch for p in self.phases]

    @property
    def seconds(self) -> float:
        return round(sum(p.seconds for p in self.phases), 1)


@dataclass
class CVResult:
    oof: pd.DataFrame            # image_id, fold, label, group_id, p_normal, p_benign, p_malignant
    oof_tta: pd.DataFrame | None  # same with predictions averaged over all cached views
    val: pd.DataFrame            # validation predictions per fold (thresholds, temperature)
    history: pd.DataFrame        # fold, phase, epoch, loss, accuracy, val_loss, val_accuracy, seconds
    timing: pd.DataFrame         # fold, seconds, best_epochs
    fold_models: list[FoldModel]


class Experiment:
    """See the module docstring. ``store`` is the processed dataset; ``seed`` fixes views and init."""

    def __init__(self, recipe: Recipe, store: ProcessedData, seed: int, progress: bool = True,
                 images: np.ndarray | None = None, images_key: str | None = None) -> None:
        """``images``: use these uint8 (n, size, size, 3) images (manifest order) instead of the
        decoded dataset, e.g. crops around predicted lesions; their cached views are kept on disk
        only when ``images_key`` (what made them) is given."""
        self.recipe = recipe
        self.store = store
        self.seed = seed
        self.progress = progress
        self.images, self.images_key = images, images_key
        self.table = labels_and_groups(store)
        self.y = self.table["label_idx"].to_numpy()
        self.views: np.ndarray | None = None
        self.timing: dict[str, float] = {}
        self.determinism: dict = {}

    # ---------- preparation: networks and cached views ----------
    def _cache_path(self, what: str) -> Path | None:
        r = self.recipe
        if self.images is not None and self.images_key is None:
            return None
        extra = () if self.images is None else (self.images_key,)
        key = cache_key(what, r.backbone, sorted(r.backbone_kwargs.items()), r.weights, r.input_size, r.unfreeze_blocks or 0,
                        r.n_views, self.seed, r.augment.key(), r.preprocessing, sha256_of(self.store.manifest), *extra)
        return self.store.cache_dir / "features" / f"{r.backbone or 'images'}-{what}-{key}.npy"

    @timed("prepare {self.recipe.name}")
    def prepare(self, views: bool = True) -> Experiment:
        """Build the frozen networks and compute (or load) the cached views; ``views=False``: the
        networks only, the same ones (what :meth:`full_model` turns fold models into classifiers
        with), without decoding an image or computing a view."""
        import os

        import keras

        from .determinism import enable

        r = self.recipe
        # deterministic ops unless switched off to measure their cost (BUSI_DETERMINISTIC=0)
        self.determinism = enable() if os.environ.get("BUSI_DETERMINISTIC", "1") != "0" else {"op_determinism": False}
        t0 = time.perf_counter()
        images = None if not views else self.images if self.images is not None else load_image_array(
            self.store, r.input_size, r.preprocessing, progress=self.progress)
        self.timing["decode_s"] = round(time.perf_counter() - t0, 1)
        if r.kind == "scratch":
            if not views:
                return self
            t0 = time.perf_counter()
            self.views = image_views(images, r.n_views, self.seed, r.augment)
            self.timing["views_s"] = round(time.perf_counter() - t0, 1)
            return self
        keras.utils.set_random_seed(self.seed)
        self.preprocess, self.backbone = builders.backbone_with_preprocessing(r.backbone, r.input_size, r.weights, **r.backbone_kwargs)
        self.backbone.trainable = False
        inputs = keras.Input((r.input_size, r.input_size, 3), name="image")
        if r.kind == "frozen_head":
            extractor = keras.Model(inputs, self.backbone(self.preprocess(inputs)))
            if not views:
                return self
            self.views, info = frozen_outputs(extractor, images, r.n_views, self.seed, r.augment, self._cache_path("top"),
                                              progress=self.progress)
        else:
            spec = get_spec(r.backbone)
            if not 0 < r.unfreeze_blocks <= len(spec.blocks):
                raise ValueError(f"unfreeze_blocks must be in 1..{len(spec.blocks)} for {r.backbone}")
            first_layer = spec.blocks[r.unfreeze_blocks - 1][1]
            boundary = self.backbone.get_layer(first_layer).input
            lower = keras.Model(self.backbone.input, boundary, name="lower")
            self.upper = keras.Model(boundary, self.backbone.output, name="upper")
            extractor = keras.Model(inputs, lower(self.preprocess(inputs)))
            if not views:
                self.upper_initial = [w.copy() for w in self.upper.get_weights()]
                return self
            self.views, info = frozen_outputs(extractor, images, r.n_views, self.seed, r.augment, self._cache_path("lower"),
                                              progress=self.progress)
            self.upper_initial = [w.copy() for w in self.upper.get_weights()]
            # phase-1 features (frozen top) from the lower cache: cheap, computed once
            t0 = time.perf_counter()
            with step(f"top blocks on the cached lower outputs ({r.n_views} views)"):
                self.top_views = np.stack([np.asarray(self.upper.predict(self.views[v], batch_size=64, verbose=0))
                                           for v in range(r.n_views)])
            self.timing["top_from_lower_s"] = round(time.perf_counter() - t0, 1)
        self.timing["frozen_outputs_s"] = info["seconds"]
        self.timing["frozen_outputs_cached"] = info["cached"]
        return self

    # ---------- training ----------
    def _new_head(self, feature_shape):
        r = self.recipe
        return builders.HEADS[r.head](feature_shape, dropout=r.head_dropout)

    def fit(self, train_idx: np.ndarray, val_idx: np.ndarray | None, seed: int, epochs: list[int] | None = None) -> FoldModel:
        """Train a fresh trainable part. ``epochs`` (per phase) fixes the epochs when ``val_idx`` is None."""
        import keras

        r = self.recipe
        assert self.views is not None, "call prepare() first"
        keras.utils.set_random_seed(seed)
        e = epochs or [None, None]
        if r.kind == "scratch":
            model = builders.s2_cnn(r.input_size)
            res = train(model, self.views, self.y, train_idx, val_idx, r.train, seed, epochs=e[0])
            return FoldModel(model, None, [res])
        if r.kind == "frozen_head":
            head = self._new_head(self.views.shape[2:])
            res = train(head, self.views, self.y, train_idx, val_idx, r.train, seed, epochs=e[0])
            return FoldModel(head, head, [res])
        # finetune: phase 1 = new head on the frozen top; phase 2 = top blocks + head on the lower cache
        self.upper.set_weights(self.upper_initial)
        head = self._new_head(self.top_views.shape[2:])
        res1 = train(head, self.top_views, self.y, train_idx, val_idx, r.train, seed, epochs=e[0])
        for layer in self.upper.layers:
            # BatchNorm stays in inference mode (trainable=False) while the convolutions adapt
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
        inputs = keras.Input(self.views.shape[2:], name="lower_features")
        x = self.upper(inputs)
        for layer in head.layers[1:]:
            x = layer(x)
        model = keras.Model(inputs, x, name="finetune")
        res2 = train(model, self.views, self.y, train_idx, val_idx, r.finetune, seed + 1, epochs=e[1])
        return FoldModel(model, head, [res1, res2], [w.copy() for w in self.upper.get_weights()])

    def predict(self, fm: FoldModel, idx: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities (len(idx), 3) from view 0, or averaged over every cached view (TTA)."""
        if fm.weights_snapshot:
            self.upper.set_weights(fm.weights_snapshot)
        views = range(self.views.shape[0]) if tta else [0]
        return np.mean([predict(fm.model, self.views[v, idx]) for v in views], axis=0)

    # ---------- cross-validation ----------
    def fold_indices(self, splits: pd.DataFrame, fold: int) -> dict[str, np.ndarray]:
        """Row positions (into ``self.table``) of the train / val / test images of ``fold``."""
        pos = {k: i for i, k in enumerate(self.table["image_id"])}
        part = splits[splits["fold"] == fold]
        return {role: np.array(sorted(pos[i] for i in part.loc[part["role"] == role, "image_id"]), dtype=int)
                for role in ("train", "val", "test")}

    @timed("cross-validation {self.recipe.name}")
    def cross_validate(self, splits: pd.DataFrame, *, tta: bool, seed: int | None = None, on_fold=None) -> CVResult:
        """Run every outer fold of ``splits`` (one seed) and collect out-of-fold predictions."""
        return run_folds(lambda fold: self, splits, seed, tta, on_fold)

    def _frame(self, idx: np.ndarray, proba: np.ndarray, fold: int) -> pd.DataFrame:
        t = self.table.iloc[idx]
        df = pd.DataFrame({"image_id": t["image_id"].to_numpy(), "fold": int(fold), "label": t["label"].to_numpy(),
                           "group_id": t["group_id"].to_numpy()})
        for j, c in enumerate(PROBA_COLUMNS):
            df[c] = proba[:, j]
        return df

    # ---------- export ----------
    def full_model(self, fm: FoldModel):
        """An exportable classifier: float RGB image (size, size, 3) in [0, 255] → probabilities."""
        r = self.recipe
        if r.kind == "scratch":
            return fm.model
        if fm.weights_snapshot:
            self.upper.set_weights(fm.weights_snapshot)
        model = builders.assemble(self.preprocess, self.backbone, fm.head, r.input_size, name=r.name.replace(".", "_"))
        for layer in model.layers:
            layer.trainable = False
        return model


def run_folds(experiment_of_fold, splits: pd.DataFrame, seed: int | None, tta: bool, on_fold=None) -> CVResult:
    """The outer folds of ``splits`` (one seed): ``experiment_of_fold(fold)`` gives the prepared
    :class:`Experiment` whose views that fold trains and tests on (the same one for every fold,
    or one per fold when the inputs depend on the fold, e.g. crops from that fold's segmenter)."""
    seed = int(splits["seed"].iloc[0]) if seed is None else seed
    oof, oof_tta, val_rows, hist, timing, models = [], [], [], [], [], []
    for fold in timed_iter(sorted(splits["fold"].unique()), "fold {}"):
        ex = experiment_of_fold(int(fold))
        idx = ex.fold_indices(splits, fold)
        fm = ex.fit(idx["train"], idx["val"], seed + 1000 * int(fold))
        p = ex.predict(fm, idx["test"])
        oof.append(ex._frame(idx["test"], p, fold))
        if tta:
            oof_tta.append(ex._frame(idx["test"], ex.predict(fm, idx["test"], tta=True), fold))
        val_rows.append(ex._frame(idx["val"], ex.predict(fm, idx["val"]), fold))
        for ph, res in enumerate(fm.phases, start=1):
            hist.append(res.history.assign(fold=int(fold), phase=ph))
        timing.append({"fold": int(fold), "seconds": fm.seconds, "best_epochs": fm.best_epochs})
        if ex.progress:
            acc = float((p.argmax(axis=1) == ex.y[idx["test"]]).mean())
            print(f"  {ex.recipe.name} fold {fold}: {len(idx['train'])} train / {len(idx['val'])} val / "
                  f"{len(idx['test'])} test, best epoch(s) {fm.best_epochs}, {fm.seconds:.0f} s, test accuracy {acc:.3f}",
                  flush=True)
        models.append(fm)
        if on_fold:
            on_fold(int(fold), fm, p, idx)
    cat = lambda xs: pd.concat(xs, ignore_index=True).sort_values(["fold", "image_id"]).reset_index(drop=True)  # noqa: E731
    return CVResult(cat(oof), cat(oof_tta) if tta else None, cat(val_rows), pd.concat(hist, ignore_index=True),
                    pd.DataFrame(timing), models)
