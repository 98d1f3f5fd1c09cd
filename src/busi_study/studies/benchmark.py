"""Cached frozen-backbone features vs the frozen base in the training loop (one fold, one process).

Both runs train the same head from the same initial weights on the same sequence of views
(view choice per image and epoch from the same seed): once on the cached backbone outputs,
once with the image augmented and pushed through the frozen backbone at every step, as a
Keras ``fit`` with augmentation layers would, in the same batch order. The inputs the head sees
agree up to float rounding (``max_abs_feature_diff``), and so do the two heads' test
probabilities (``max_abs_prob_diff``); the ratio of wall times is what caching buys.

``cached_vs_in_loop`` measures a trained experiment's own backbone. ``timing_only`` measures a
backbone whose pretrained weights are not available (random init: wall times do not depend on
the weight values) on a subset of a fold, so the speed of, e.g., S3's ResNet50 design can be
measured on a machine that cannot download its weights; its metrics mean nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from ..data.arrays import load_image_array
from ..evaluation.metrics import classification_metrics
from ..models import builders
from ..models.augment import AugmentConfig, views_batch
from ..models.experiment import Experiment
from ..models.features import frozen_outputs
from ..models.recipes import Recipe
from ..models.training import TrainConfig, _compile, balanced_class_weight, predict, train
from ..timing import timed


def _compare(preprocess, backbone, new_head, images: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray,
             views: np.ndarray, n_views: int, seed: int, view_seed: int, augment: AugmentConfig, cfg: TrainConfig,
             input_size: int, epochs: int) -> dict:
    """Train ``new_head()`` both ways; return wall times, test probabilities and the feature check.

    views: cached backbone outputs (n_views, n, ...) indexed like ``images`` / ``y``.
    """
    import keras

    keras.utils.set_random_seed(seed)
    head = new_head()
    t0 = time.perf_counter()
    train(head, views, y, tr, None, cfg, seed, epochs=epochs)
    cached_s = time.perf_counter() - t0
    p_cached = predict(head, views[0, te])

    keras.utils.set_random_seed(seed)
    head2 = new_head()
    full = builders.assemble(preprocess, backbone, head2, input_size, name="in_loop")
    keras.utils.set_random_seed(seed)
    _compile(full, cfg.learning_rate)
    rng = np.random.default_rng(seed)
    cw = balanced_class_weight(y[tr]) if cfg.class_weight else None
    t0 = time.perf_counter()
    for _ in range(epochs):
        chosen = rng.integers(0, n_views, size=len(tr))
        order = rng.permutation(len(tr))  # the batch order of training.train
        x = np.stack([views_batch(images, np.array([i]), int(v), view_seed, augment)[0] for i, v in zip(tr[order], chosen[order])])
        full.fit(x.astype(np.float32), y[tr[order]], batch_size=cfg.batch_size, epochs=1, shuffle=False, class_weight=cw,
                 verbose=0)
    loop_s = time.perf_counter() - t0
    p_loop = predict(full, images[te].astype(np.float32))

    # what the head is fed: the cached outputs against the frozen base run now on the same views
    inp = keras.Input((input_size, input_size, 3))
    extractor = keras.Model(inp, backbone(preprocess(inp), training=False))
    some = te[: min(16, len(te))]
    fresh = np.asarray(extractor(views_batch(images, some, 0, view_seed, augment).astype(np.float32), training=False))
    feat_diff = float(np.abs(fresh - views[0, some]).max())
    return {"cached_s": cached_s, "loop_s": loop_s, "p_cached": p_cached, "p_loop": p_loop, "feature_diff": feat_diff}


def _rows(res: dict, y_test: np.ndarray, fold: int, epochs: int, n_train: int, backbone: str, weights: str,
          cache_s: float, metrics_meaningful: bool = True) -> pd.DataFrame:
    rows = []
    for way, p, s in (("cached features", res["p_cached"], res["cached_s"]),
                      ("frozen base in the loop", res["p_loop"], res["loop_s"])):
        m = classification_metrics(y_test, p) if metrics_meaningful else {}
        rows.append({"backbone": backbone, "weights": weights, "way": way, "fold": fold, "epochs": epochs,
                     "n_train": n_train, "n_test": len(y_test), "seconds": round(s, 1), "seconds_per_epoch": round(s / epochs, 2),
                     "accuracy": m.get("accuracy", np.nan), "macro_auc": m.get("macro_auc", np.nan),
                     "log_loss": m.get("log_loss", np.nan)})
    out = pd.DataFrame(rows)
    out["speed_ratio"] = [round(res["loop_s"] / res["cached_s"], 1), np.nan]
    out["one_time_cache_s"] = [round(cache_s, 1), np.nan]
    out["max_abs_feature_diff"] = [res["feature_diff"], np.nan]
    out["max_abs_prob_diff"] = [float(np.abs(res["p_cached"] - res["p_loop"]).max()), np.nan]
    return out


def cached_vs_in_loop(ex: Experiment, splits: pd.DataFrame, epochs: int, fold: int = 0) -> pd.DataFrame:
    """Train the recipe's head for ``epochs`` epochs on ``fold`` both ways; one row per way.

    Columns: backbone, weights, way, epochs, seconds, seconds_per_epoch, accuracy, macro_auc,
    log_loss; on the cached row: the speed ratio (in-loop seconds / cached seconds), the one-time
    cost of computing the cache (0 when it was loaded from disk), the largest difference between
    cached and freshly computed backbone outputs, and between the two ways' test probabilities.
    """
    r = ex.recipe
    if r.kind != "frozen_head":
        raise ValueError("the benchmark applies to a head on a frozen backbone")
    idx = ex.fold_indices(splits, fold)
    tr, te = idx["train"], idx["test"]
    cfg = replace(r.train, epochs=epochs, patience=None)
    images = load_image_array(ex.store, r.input_size, r.preprocessing, progress=False)
    res = _compare(ex.preprocess, ex.backbone, lambda: ex._new_head(ex.views.shape[2:]), images, ex.y, tr, te, ex.views,
                   ex.views.shape[0], int(splits["seed"].iloc[0]), ex.seed, r.augment, cfg, r.input_size, epochs)
    return _rows(res, ex.y[te], fold, epochs, len(tr), r.backbone_label, r.weights_label,
                 float(ex.timing.get("frozen_outputs_s", 0.0)))


def timing_only(recipe: Recipe, store, splits: pd.DataFrame, epochs: int, n_train: int, n_test: int = 32,
                fold: int = 0, seed: int = 42, n_views: int = 2) -> pd.DataFrame:
    """The same comparison for ``recipe``'s backbone with **random** weights on a subset of a fold.

    ``n_train`` training and ``n_test`` test images of ``fold`` are drawn (seeded); the cache is
    computed for those images and ``n_views`` views only and its cost reported. The time per
    epoch does not depend on how many images or views are cached, so neither does the ratio;
    accuracy columns are left empty (random features).
    """
    import keras

    if recipe.kind != "frozen_head":
        raise ValueError("the benchmark applies to a head on a frozen backbone")
    ex = Experiment(recipe, store, seed=seed, progress=False)  # not prepared: only its image table and labels
    idx = ex.fold_indices(splits, fold)
    tr_all, te_all = idx["train"], idx["test"]
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.choice(tr_all, size=min(n_train, len(tr_all)), replace=False))
    te = np.sort(rng.choice(te_all, size=min(n_test, len(te_all)), replace=False))
    sub = np.concatenate([tr, te])
    images = load_image_array(store, recipe.input_size, recipe.preprocessing, progress=False)[sub]
    y = ex.y[sub]
    tr_l, te_l = np.arange(len(tr)), np.arange(len(tr), len(sub))
    keras.utils.set_random_seed(seed)
    preprocess, backbone = builders.backbone_with_preprocessing(recipe.backbone, recipe.input_size, None, **recipe.backbone_kwargs)
    backbone.trainable = False
    inp = keras.Input((recipe.input_size, recipe.input_size, 3))
    extractor = keras.Model(inp, backbone(preprocess(inp)))
    views, info = frozen_outputs(extractor, images, n_views, seed, recipe.augment, None, progress=False)
    cfg = replace(recipe.train, epochs=epochs, patience=None)
    res = _compare(preprocess, backbone, lambda: builders.HEADS[recipe.head](views.shape[2:], dropout=recipe.head_dropout),
                   images, y, tr_l, te_l, views, n_views, seed, seed, recipe.augment, cfg, recipe.input_size, epochs)
    out = _rows(res, y[te_l], fold, epochs, len(tr), recipe.backbone_label, "random init (timing only)",
                float(info["seconds"]), metrics_meaningful=False)
    out["one_time_cache_images"] = [len(sub) * n_views, np.nan]
    return out


@timed("cached-vs-in-loop benchmark")
def benchmark_frozen_heads(runs: list, store, seed: int, epochs: int, timing_images: int) -> pd.DataFrame | None:
    """Notebook 03's benchmark: cached vs in-loop on the last trained frozen-head run (same fold,
    same batches), and timing-only rows (random weights, ``timing_images`` images) for every run
    skipped for missing weights. ``runs``: :class:`~busi_study.studies.model_run.ModelRun` objects.
    None when there is nothing to benchmark."""
    splits = store.splits_of(seed)
    benches = []
    trained = [r for r in runs if not r.skipped and r.recipe.kind == "frozen_head"]
    if trained:
        benches.append(cached_vs_in_loop(trained[-1].experiment, splits, epochs=epochs))
    for run in runs:
        if run.skipped and timing_images:
            benches.append(timing_only(run.recipe, store, splits, epochs=epochs, n_train=timing_images, seed=seed))
    return pd.concat(benches, ignore_index=True) if benches else None


def describe_benchmark(bench: pd.DataFrame) -> str:
    """One Markdown bullet per (backbone, weights): speed ratio, seconds per epoch, cache cost, and
    how far apart the features and probabilities of the two ways are."""
    lines = []
    for (bb, w), part in bench.groupby(["backbone", "weights"], sort=False):
        c = part.iloc[0]
        lines.append(f"- **{bb}** ({w}): cached features **{c['speed_ratio']:.1f}× faster** per epoch "
                     f"({c['seconds_per_epoch']:.2f} s vs {part.iloc[1]['seconds_per_epoch']:.2f} s for {int(c['n_train'])} "
                     f"training images; one-time cache {c['one_time_cache_s']:.0f} s); largest difference of the backbone "
                     f"outputs the head sees: {c['max_abs_feature_diff']:.2g}; of the test probabilities: {c['max_abs_prob_diff']:.2g}.")
    return "\n".join(lines)
