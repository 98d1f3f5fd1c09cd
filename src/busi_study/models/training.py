"""Training on cached views with early stopping, deterministic given the seed.

Each epoch every training image contributes one randomly chosen view (views are cached arrays:
frozen-network outputs or augmented images), in an order drawn from the same seeded NumPy
generator (Keras's own shuffling is not used: its seed depends on how many random ops were
created before, so two equal models could see different batch orders). Validation uses view 0
(unaugmented). Early stopping watches validation loss and restores a *copy* of the best weights.

A model with one sigmoid output (a binary head, S4) is trained with binary cross-entropy on
0/1 labels; a model with several inputs gets ``views`` as a tuple of arrays, one per input,
each of shape (n_views, n, ...).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..info import CLASSES


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """epochs: maximum; patience: early-stopping patience on val loss (None: train all epochs
    and keep the best-val-loss weights); class_weight: weight classes by inverse frequency in
    the training part. The study's values come from the profile (``recipes.train_config``); only
    the switches below have defaults (what every phase does unless a recipe says otherwise)."""

    epochs: int
    batch_size: int
    learning_rate: float
    patience: int | None
    class_weight: bool
    augment_views: bool = True
    restore_best: bool = True  # False: keep the last epoch's weights (a source study's fixed-epoch run)
    steps_per_execution: int = 1  # batches per compiled call: same updates, less per-step overhead (batch 1)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    history: pd.DataFrame  # epoch, loss, accuracy, val_loss, val_accuracy, seconds
    best_epoch: int        # 1-based epoch whose weights were restored
    seconds: float


class BestWeights:
    """Early stopping on the validation loss with a copy of the best weights (the loops of the
    segmenter and the lesion-aware heads, which train on more than one target)."""

    def __init__(self, patience: int | None) -> None:
        self.patience, self.best, self.loss, self.epoch, self.waited = patience, None, np.inf, 0, 0

    def stop_after(self, model, epoch: int, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when patience has run out."""
        if val_loss < self.loss - 1e-6:
            self.loss, self.epoch, self.waited, self.best = val_loss, epoch, 0, [w.copy() for w in model.get_weights()]
            return False
        self.waited += 1
        return self.patience is not None and self.waited >= self.patience

    def restore(self, model, epochs_run: int) -> int:
        """Put the best weights back (if any were recorded); return the epoch kept."""
        if self.best is None:
            return epochs_run
        model.set_weights(self.best)
        return self.epoch


def balanced_class_weight(y: np.ndarray, n_classes: int = len(CLASSES)) -> dict[int, float]:
    """n / (k · count_c) for each class present (sklearn's 'balanced')."""
    counts = np.bincount(y, minlength=n_classes)
    present = counts > 0
    k = int(present.sum())
    return {c: float(len(y) / (k * counts[c])) if counts[c] else 0.0 for c in range(n_classes)}


def is_binary(model) -> bool:
    """A model with a single output unit (sigmoid): binary cross-entropy on 0/1 labels."""
    return int(model.outputs[0].shape[-1]) == 1


def _compile(model, learning_rate: float, steps_per_execution: int = 1) -> None:
    import keras

    loss = "binary_crossentropy" if is_binary(model) else "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)


def _take(views, v: np.ndarray | int, idx: np.ndarray):
    """``views[v, idx]`` for one array, or a list of them for a tuple of arrays (multi-input model)."""
    if isinstance(views, (tuple, list)):
        return [a[v, idx] for a in views]
    return views[v, idx]


def train(
    model,
    views: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    cfg: TrainConfig,
    seed: int,
    epochs: int | None = None,
) -> TrainResult:
    """Train ``model`` (compiled here with Adam + sparse CE) on ``views[:, train_idx]``.

    views: array (n_views, n, ...) of model inputs (a tuple of such arrays for a multi-input
    model). y: int labels (n,). With ``val_idx`` None (final model on all data) it trains exactly
    ``epochs`` epochs without early stopping.
    """
    import keras

    keras.utils.set_random_seed(seed)
    _compile(model, cfg.learning_rate, cfg.steps_per_execution)
    rng = np.random.default_rng(seed)
    n_views = (views[0] if isinstance(views, (tuple, list)) else views).shape[0] if cfg.augment_views else 1
    n_classes = 2 if is_binary(model) else len(CLASSES)
    cw = balanced_class_weight(y[train_idx], n_classes) if cfg.class_weight else None
    max_epochs = epochs or cfg.epochs
    rows, best, best_loss, best_epoch, waited = [], None, np.inf, 0, 0
    t_start = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        chosen = rng.integers(0, n_views, size=len(train_idx))
        order = rng.permutation(len(train_idx))  # shuffled here, not by Keras: same order on every backend and model
        x = _take(views, chosen[order], train_idx[order])
        h = model.fit(x, y[train_idx[order]], batch_size=cfg.batch_size, epochs=1, shuffle=False, class_weight=cw,
                      verbose=0)
        row = {"epoch": epoch, "loss": float(h.history["loss"][0]), "accuracy": float(h.history["accuracy"][0])}
        if val_idx is not None and len(val_idx):
            vl, va = model.evaluate(_take(views, 0, val_idx), y[val_idx], batch_size=64, verbose=0)
            row.update(val_loss=float(vl), val_accuracy=float(va))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if val_idx is None:
            continue
        if row["val_loss"] < best_loss - 1e-6:
            best_loss, best_epoch, waited = row["val_loss"], epoch, 0
            best = [w.copy() for w in model.get_weights()]
        else:
            waited += 1
            if cfg.patience is not None and waited >= cfg.patience:
                break
    if best is not None and cfg.restore_best:
        model.set_weights(best)
    elif best is not None:
        best_epoch = len(rows)
    else:
        best_epoch = len(rows)
    return TrainResult(pd.DataFrame(rows), best_epoch, round(time.perf_counter() - t_start, 1))


def predict(model, x, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (n, 3) in inference mode ((n, 1) for a binary model); ``x`` an array
    or a list of arrays (multi-input model)."""
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)


def train_with_mask(model, views: np.ndarray, y: np.ndarray, masks: np.ndarray, train_idx: np.ndarray,
                    val_idx: np.ndarray | None, cfg: TrainConfig, seed: int, epochs: int | None, *,
                    mask_weight: float) -> TrainResult:
    """:func:`train` for a model with two outputs (probabilities, a lesion map flattened to h·w):
    cross-entropy on the class plus ``mask_weight`` × binary cross-entropy of the map against
    ``masks`` (n_views, n, h·w) — the view's own mask, so augmented images keep their lesion. Early
    stopping on the *classification* log loss of view 0 of the validation images."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss=["sparse_categorical_crossentropy", "binary_crossentropy"], loss_weights=[1.0, mask_weight],
                  metrics=[["accuracy"], []])  # the class accuracy, as train() records it (learning curves)
    rng = np.random.default_rng(seed)
    n_views = views.shape[0] if cfg.augment_views else 1
    cw = balanced_class_weight(y[train_idx]) if cfg.class_weight else None
    rows, stopper = [], BestWeights(cfg.patience)
    t_start = time.perf_counter()
    for epoch in range(1, (epochs or cfg.epochs) + 1):
        t0 = time.perf_counter()
        chosen = rng.integers(0, n_views, size=len(train_idx))
        order = rng.permutation(len(train_idx))
        v, idx = chosen[order], train_idx[order]
        sw = None if cw is None else np.array([cw[int(c)] for c in y[idx]], np.float32)
        h = model.fit(views[v, idx], [y[idx], masks[v, idx]], batch_size=cfg.batch_size, epochs=1, shuffle=False,
                      verbose=0, sample_weight=sw)
        acc_key = next(k for k in h.history if k.endswith("accuracy"))  # probs_accuracy, or <nested head>_accuracy
        row = {"epoch": epoch, "loss": float(h.history["loss"][0]), "accuracy": float(h.history[acc_key][0])}
        if val_idx is not None and len(val_idx):
            p = np.asarray(model.predict(views[0, val_idx], batch_size=64, verbose=0)[0], np.float64)
            row["val_loss"] = float(-np.mean(np.log(np.clip(p[np.arange(len(val_idx)), y[val_idx]], 1e-7, 1))))
            row["val_accuracy"] = float((p.argmax(1) == y[val_idx]).mean())
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if "val_loss" in row and stopper.stop_after(model, epoch, row["val_loss"]):
            break
    best_epoch = stopper.restore(model, len(rows)) if cfg.restore_best else len(rows)
    return TrainResult(pd.DataFrame(rows), best_epoch, round(time.perf_counter() - t_start, 1))


def mask_loss(y_true, y_pred):
    """Per image: binary cross-entropy of the lesion map + (1 − soft Dice), smoothed by 1 so that an
    empty reference (a normal image) asks for an empty map. y: (n, h, w, 1) in [0, 1]."""
    import keras

    ops = keras.ops
    y_true = ops.cast(y_true, y_pred.dtype)
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred), axis=(1, 2))
    inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    dice = (2.0 * inter + 1.0) / (ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3)) + 1.0)
    return bce + (1.0 - dice)


def mask_loss_np(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """:func:`mask_loss` in NumPy, per image (the validation loss of early stopping)."""
    p = np.clip(np.asarray(y_pred, np.float64), 1e-7, 1 - 1e-7)
    t = np.asarray(y_true, np.float64)
    axes = tuple(range(1, t.ndim))
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p), axis=axes)
    dice = (2 * np.sum(t * p, axis=axes) + 1) / (np.sum(t, axis=axes) + np.sum(p, axis=axes) + 1)
    return bce + (1 - dice)


def train_multitask(model, views: list[np.ndarray], y: np.ndarray, masks: np.ndarray, train_idx: np.ndarray,
                    val_idx: np.ndarray | None, cfg: TrainConfig, seed: int, epochs: int | None, *,
                    mask_weight: float) -> TrainResult:
    """:func:`train` for a model with several inputs (``views``: arrays (n_views, n, ...), one per input)
    and two outputs, class probabilities and a lesion map: class-weighted cross-entropy + ``mask_weight`` ×
    :func:`mask_loss` against ``masks`` (n_views, n, h, w, 1), the view's own mask. Early stopping on the
    same combined loss of view 0 of the validation images; the history also keeps the validation class
    log loss (``val_ce``) and the mean Dice of the lesion images at 0.5 (``val_dice``)."""
    import keras

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=["sparse_categorical_crossentropy", mask_loss],
                  loss_weights=[1.0, mask_weight], metrics=[["accuracy"], []])
    rng = np.random.default_rng(seed)
    n_views = views[0].shape[0] if cfg.augment_views else 1
    cw = balanced_class_weight(y[train_idx]) if cfg.class_weight else None
    rows, stopper = [], BestWeights(cfg.patience)
    t_start = time.perf_counter()
    for epoch in range(1, (epochs or cfg.epochs) + 1):
        t0 = time.perf_counter()
        chosen = rng.integers(0, n_views, size=len(train_idx))
        order = rng.permutation(len(train_idx))
        v, idx = chosen[order], train_idx[order]
        sw = None if cw is None else np.array([cw[int(c)] for c in y[idx]], np.float32)
        h = model.fit([a[v, idx].astype(np.float32) for a in views], [y[idx], masks[v, idx].astype(np.float32)],
                      batch_size=cfg.batch_size, epochs=1, shuffle=False, verbose=0, sample_weight=sw)
        acc_key = next(k for k in h.history if k.endswith("accuracy"))
        row = {"epoch": epoch, "loss": float(h.history["loss"][0]), "accuracy": float(h.history[acc_key][0])}
        if val_idx is not None and len(val_idx):
            p, m = model.predict([a[0, val_idx].astype(np.float32) for a in views], batch_size=32, verbose=0)
            p = np.asarray(p, np.float64)
            t = masks[0, val_idx].astype(np.float32)
            ce = float(-np.mean(np.log(np.clip(p[np.arange(len(val_idx)), y[val_idx]], 1e-7, 1))))
            row.update(val_loss=ce + mask_weight * float(np.mean(mask_loss_np(t, m))), val_ce=ce,
                       val_accuracy=float((p.argmax(1) == y[val_idx]).mean()), val_dice=_mean_dice(t, m))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        if "val_loss" in row and stopper.stop_after(model, epoch, row["val_loss"]):
            break
    best_epoch = stopper.restore(model, len(rows)) if cfg.restore_best else len(rows)
    return TrainResult(pd.DataFrame(rows), best_epoch, round(time.perf_counter() - t_start, 1))


def _mean_dice(ref: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    """Mean Dice of the maps at ``threshold`` over the images whose reference has a lesion."""
    r, p = np.asarray(ref) >= 0.5, np.asarray(prob) >= threshold
    axes = tuple(range(1, r.ndim))
    has = r.any(axis=axes)
    if not has.any():
        return float("nan")
    inter = np.logical_and(r, p).sum(axis=axes)
    return float(np.mean(2 * inter[has] / (r.sum(axis=axes)[has] + p.sum(axis=axes)[has])))
