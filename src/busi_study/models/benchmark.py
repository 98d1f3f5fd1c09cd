"""Cached frozen-backbone features vs the frozen base in the training loop (one fold, one process).

Both runs train the same head from the same initial weights on the same sequence of views
(view choice per image and epoch from the same seed): once on the cached backbone outputs,
once with the image augmented and pushed through the frozen backbone at every step, as a
Keras ``fit`` with augmentation layers would. Equal metrics are expected up to float rounding;
the ratio of wall times is what caching buys.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from ..data.arrays import load_image_array
from ..evaluation.metrics import classification_metrics
from . import builders
from .augment import views_batch
from .experiment import Experiment
from .training import _compile, balanced_class_weight, predict, train


def cached_vs_in_loop(ex: Experiment, splits: pd.DataFrame, epochs: int, fold: int = 0) -> pd.DataFrame:
    """Train the recipe's head for ``epochs`` epochs on ``fold`` both ways; one row per way.

    Columns: way, epochs, seconds, seconds_per_epoch, accuracy, macro_auc, log_loss, and the
    speed ratio (in-loop seconds / cached seconds) on the cached row.
    """
    import keras

    r = ex.recipe
    if r.kind != "frozen_head":
        raise ValueError("the benchmark applies to a head on a frozen backbone")
    seed = int(splits["seed"].iloc[0])
    pos = {k: i for i, k in enumerate(ex.table["image_id"])}
    part = splits[splits["fold"] == fold]
    tr, te = (np.array(sorted(pos[i] for i in part.loc[part["role"] == role, "image_id"])) for role in ("train", "test"))
    cfg = replace(r.train, epochs=epochs, patience=None)
    y = ex.y

    keras.utils.set_random_seed(seed)
    head = ex._new_head(ex.views.shape[2:])
    t0 = time.perf_counter()
    train(head, ex.views, y, tr, None, cfg, seed, epochs=epochs)
    cached_s = time.perf_counter() - t0
    p_cached = predict(head, ex.views[0, te])

    images = load_image_array(ex.store, r.input_size, r.preprocessing, progress=False)
    keras.utils.set_random_seed(seed)
    head2 = ex._new_head(ex.views.shape[2:])
    full = builders.assemble(ex.preprocess, ex.backbone, head2, r.input_size, name="in_loop")
    keras.utils.set_random_seed(seed)
    _compile(full, cfg.learning_rate)
    rng = np.random.default_rng(seed)
    cw = balanced_class_weight(y[tr]) if cfg.class_weight else None
    t0 = time.perf_counter()
    for _ in range(epochs):
        chosen = rng.integers(0, ex.views.shape[0], size=len(tr))
        x = np.stack([views_batch(images, np.array([i]), int(v), ex.seed, r.augment)[0] for i, v in zip(tr, chosen)])
        full.fit(x.astype(np.float32), y[tr], batch_size=cfg.batch_size, epochs=1, shuffle=True, class_weight=cw, verbose=0)
    loop_s = time.perf_counter() - t0
    p_loop = predict(full, images[te].astype(np.float32))

    rows = []
    for way, p, s in (("cached features", p_cached, cached_s), ("frozen base in the loop", p_loop, loop_s)):
        m = classification_metrics(y[te], p)
        rows.append({"way": way, "fold": fold, "epochs": epochs, "n_train": len(tr), "n_test": len(te),
                     "seconds": round(s, 1), "seconds_per_epoch": round(s / epochs, 2),
                     "accuracy": m["accuracy"], "macro_auc": m["macro_auc"], "log_loss": m["log_loss"]})
    out = pd.DataFrame(rows)
    out["speed_ratio"] = [round(loop_s / cached_s, 1), np.nan]
    out["max_abs_prob_diff"] = [float(np.abs(p_cached - p_loop).max()), np.nan]
    return out
