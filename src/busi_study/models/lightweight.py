"""S4: a lightweight multi-scale (C4 + C5) head for benign vs malignant, on cached frozen features.

S4 fed MobileNetV3Small's last layer at output stride 16 ("C4") and its last layer at stride 32
("C5") into an auxiliary stage "inspired by SSDLiteX" and classified benign vs malignant. Our
documented reading of that stage (:func:`ssdlite_head`): on each of C4 and C5 one SSDLite block —
depthwise 3×3 + BatchNorm + ReLU6, then pointwise 1×1 + BatchNorm + ReLU6 — globally average
pooled; the two vectors concatenated, dropout, one sigmoid unit (p_malignant). C4 / C5 are the
layers the backbone registry names (MobileNetV3's SSDLite attachment points; for MobileNetV2,
the backbone available offline here, the corresponding layers).

The backbone is frozen, so its C4 and C5 outputs for every lesion image and every cached view
are computed once and reused by every fold, epoch and protocol (:class:`LightweightExperiment`).
Three protocols run on the same cache:

* grouped CV (the study's splits restricted to lesion images), class weights from each training
  fold, thresholds chosen on each fold's validation part;
* S4's own protocol: the lesion images augmented to about 9,015 items *before* a random
  70 / 15 / 15 split (:mod:`busi_study.data.augmented_split` counts what leaks);
* augment *after* a random image-level 70 / 15 / 15 split (only near-duplicates can leak).

Predictions are written in the study's three-class table format with ``p_normal = 0`` and
``p_benign = 1 - p_malignant``, so the protocol's evaluation code applies unchanged (its
benign-vs-malignant AUC is then the binary AUC).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.arrays import labels_and_groups, load_image_array
from ..data.augmented_split import augmented_pool, leak_counts, random_split, views_needed
from ..data.store import ProcessedData, atomic_path, sha256_of
from ..evaluation.metrics import classification_metrics
from ..info import PROBA_COLUMNS
from ..params import AugmentParams, ModelParams, S4Params
from ..timing import timed, timed_iter
from .augment import AugmentConfig, views_batch
from .features import cache_key
from .recipes import augment_config, backbone_kwargs, train_config
from .registry import build_backbone, feature_tensors, get_spec
from .training import TrainConfig, TrainResult, train

LESION_CLASSES = ("benign", "malignant")


@dataclass(frozen=True, kw_only=True)
class LightweightRecipe:
    """Everything that defines one S4-style model: backbone, input size, head, training."""

    name: str
    backbone: str
    input_size: int
    train: TrainConfig
    weights: str | None
    head_channels: int
    dropout: float
    n_views: int
    augment: AugmentConfig
    backbone_kwargs: dict = field(default_factory=dict)
    source_study: str = "S4"

    @property
    def backbone_label(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.backbone_kwargs.items() if k != "include_preprocessing")
        return self.backbone + (f" ({extra})" if extra else "")

    @property
    def title(self) -> str:
        from .registry import describe_weights

        t = self.train
        how = (f"batch {t.batch_size}, {t.epochs} epochs" + ("" if t.patience is None else f", early stopping (patience {t.patience})"))
        return (f"{self.name}: SSDLite C4+C5 head on frozen {self.backbone_label}, {describe_weights(self.weights)}, "
                f"{self.input_size}px, {how}")

    def as_dict(self) -> dict:
        return asdict(self)


def s4_recipe(s4: S4Params, models: ModelParams, augment: AugmentParams, backbone: str, variant: str) -> LightweightRecipe:
    """``variant``: ``faithful`` (S4: batch 1, fixed epochs, last epoch's weights, ``s4_*``) or
    ``early_stopped`` (``s4_es_*``, best validation-loss weights)."""
    if variant == "faithful":
        t = s4.train
        # batch 1: 32 batches per compiled call give the same updates with less per-step overhead
        cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, learning_rate=t.learning_rate, patience=t.patience,
                          class_weight=models.class_weight, restore_best=False,
                          steps_per_execution=32 if t.batch_size == 1 else 1)
    elif variant == "early_stopped":
        cfg = train_config(s4.es, models.class_weight)
    else:
        raise ValueError("variant must be 'faithful' or 'early_stopped'")
    alpha = f"-a{models.mobilenet_alpha}" if backbone == "mobilenet_v2" else ""
    return LightweightRecipe(
        name=f"s4_c4c5-{backbone}{alpha}-{variant}", backbone=backbone, input_size=s4.input_size, train=cfg,
        backbone_kwargs=backbone_kwargs(backbone, models.mobilenet_alpha), weights=models.weights,
        head_channels=s4.head_channels, dropout=s4.dropout, n_views=models.n_views, augment=augment_config(augment),
    )


# ---------------------------------------------------------------- the head
def ssdlite_block(x, channels: int, name: str):
    """Depthwise 3×3 + BN + ReLU6, pointwise 1×1 (``channels``) + BN + ReLU6, global average pool."""
    from keras import layers

    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x = layers.Conv2D(channels, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_pw_relu6")(x)
    return layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)


def ssdlite_head(c4_shape: tuple[int, ...], c5_shape: tuple[int, ...], channels: int, dropout: float,
                 name: str = "s4_head"):
    """Two inputs (C4 (h, w, c), C5 (h', w', c')) → one SSDLite block each → concat → dropout →
    Dense(1, sigmoid) = p_malignant. Output shape (n, 1)."""
    import keras
    from keras import layers

    c4 = keras.Input(tuple(c4_shape), name="c4")
    c5 = keras.Input(tuple(c5_shape), name="c5")
    x = layers.Concatenate(name="concat")([ssdlite_block(c4, channels, "c4"), ssdlite_block(c5, channels, "c5")])
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(1, activation="sigmoid", name="p_malignant")(x)
    return keras.Model([c4, c5], out, name=name)


def feature_extractor(backbone, backbone_name: str):
    """The backbone with two outputs, [C4, C5] (registry layer names)."""
    import keras

    return keras.Model(backbone.input, feature_tensors(backbone, backbone_name), name="backbone_c4c5")


def assemble(preprocess, extractor, head, input_size: int, name: str):
    """Full classifier: float RGB image (size, size, 3) in [0, 255] → p_malignant (n, 1)."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    c4, c5 = extractor(preprocess(inputs))
    return keras.Model(inputs, head([c4, c5]), name=name)


def as_three_class(p_malignant: np.ndarray) -> np.ndarray:
    """(n,) p_malignant → (n, 3) rows (0, 1 - p, p) in the study's class order."""
    p = np.clip(np.asarray(p_malignant, dtype=np.float64).reshape(-1), 0.0, 1.0)
    return np.stack([np.zeros_like(p), 1.0 - p, p], axis=1)


# ---------------------------------------------------------------- cached C4 / C5 views
@timed("C4/C5 outputs ({n_views} views × {images.shape[0]} images)")
def multiscale_outputs(extractor, images: np.ndarray, n_views: int, seed: int, augment: AugmentConfig,
                       cache_stem: Path | None = None, batch_size: int = 32, progress: bool = True
                       ) -> tuple[tuple[np.ndarray, np.ndarray], dict]:
    """C4 and C5 outputs for every view of every image, cached as float16 ``<stem>-c4.npy`` /
    ``-c5.npy`` (memory-mapped when loaded). Shapes (n_views, n, h, w, c)."""
    from tqdm import tqdm

    paths = None if cache_stem is None else [Path(f"{cache_stem}-{lv}.npy") for lv in ("c4", "c5")]
    n = len(images)
    if paths and all(p.exists() for p in paths):
        arrs = tuple(np.load(p, mmap_mode="r") for p in paths)
        if all(a.shape[:2] == (n_views, n) for a in arrs):
            return arrs, {"seconds": 0.0, "cached": True}
    shapes = [tuple(int(d) for d in t.shape[1:]) for t in extractor.outputs]
    outs = [np.zeros((n_views, n, *s), dtype=np.float16) for s in shapes]
    t0 = time.perf_counter()
    steps = [(v, s) for v in range(n_views) for s in range(0, n, batch_size)]
    for v, s in tqdm(steps, desc=f"C4/C5 outputs ({n_views} views)", disable=not progress, mininterval=5):
        idx = np.arange(s, min(s + batch_size, n))
        res = extractor(views_batch(images, idx, v, seed, augment).astype(np.float32), training=False)
        for o, r in zip(outs, res):
            o[v, idx] = np.asarray(r)
    seconds = time.perf_counter() - t0
    for p, o in zip(paths or [], outs):
        with atomic_path(p) as tmp:  # a full disk: one line naming the cache file
            np.save(tmp, o)
    return tuple(outs), {"seconds": round(seconds, 1), "cached": False}


@dataclass
class BinaryCV:
    oof: pd.DataFrame        # image_id, fold, label, group_id, p_normal (0), p_benign, p_malignant
    val: pd.DataFrame        # the same for each fold's validation part
    history: pd.DataFrame    # fold, epoch, loss, accuracy, val_loss, val_accuracy, seconds
    timing: pd.DataFrame     # fold, seconds, best_epoch
    heads: list              # trained head per fold


class LightweightExperiment:
    """One S4-style recipe on the lesion images of a processed dataset (see module docstring)."""

    def __init__(self, recipe: LightweightRecipe, store: ProcessedData, seed: int, progress: bool = True) -> None:
        self.recipe, self.store, self.seed, self.progress = recipe, store, seed, progress
        table = labels_and_groups(store)
        self.rows = np.flatnonzero(table["label"].isin(LESION_CLASSES).to_numpy())  # positions in the manifest
        self.table = table.iloc[self.rows].reset_index(drop=True)
        self.y = (self.table["label"] == "malignant").to_numpy().astype(np.int64)
        self.views: tuple[np.ndarray, np.ndarray] | None = None
        self.images: np.ndarray | None = None
        self.timing: dict = {}

    def _cache_stem(self, n_views: int) -> Path:
        r = self.recipe
        key = cache_key("c4c5", r.backbone, sorted(r.backbone_kwargs.items()), r.weights, r.input_size, n_views,
                        self.seed, r.augment.key(), sha256_of(self.store.manifest))
        return self.store.folder / "features" / f"{r.backbone}-c4c5-{key}"

    @timed("prepare {self.recipe.name}")
    def prepare(self, augmented_size: int | None = None) -> LightweightExperiment:
        """Build the frozen backbone and compute (or load) the cached C4/C5 views of the lesion images.

        augmented_size: cache enough views for S4's augmented set of this many items (S4: 9,015),
        at least the recipe's ``n_views``; views beyond those are used by S4's protocol only.
        """
        import keras

        from .builders import BackbonePreprocess

        r = self.recipe
        n_views = max(r.n_views, views_needed(len(self.y), augmented_size) if augmented_size else 0)
        t0 = time.perf_counter()
        self.images = load_image_array(self.store, r.input_size, progress=self.progress)[self.rows]
        self.timing["decode_s"] = round(time.perf_counter() - t0, 1)
        keras.utils.set_random_seed(self.seed)
        self.preprocess = BackbonePreprocess(get_spec(r.backbone).preprocess, name="preprocess")
        self.backbone = build_backbone(r.backbone, r.input_size, r.weights, **r.backbone_kwargs)
        self.backbone.trainable = False
        self.extractor = feature_extractor(self.backbone, r.backbone)
        inputs = keras.Input((r.input_size, r.input_size, 3), name="image")
        extractor = keras.Model(inputs, self.extractor(self.preprocess(inputs)))
        self.views, info = multiscale_outputs(extractor, self.images, n_views, self.seed, r.augment,
                                              self._cache_stem(n_views), progress=self.progress)
        self.timing.update(frozen_outputs_s=info["seconds"], frozen_outputs_cached=info["cached"])
        return self

    @property
    def n_cached_views(self) -> int:
        return int(self.views[0].shape[0])

    # ---------- training and prediction ----------
    def fit(self, train_idx: np.ndarray, val_idx: np.ndarray | None, seed: int, epochs: int | None = None,
            views: tuple[np.ndarray, np.ndarray] | None = None, augment_views: bool = True,
            y: np.ndarray | None = None) -> tuple[object, TrainResult]:
        """Train a fresh head on ``views`` (default: the cached views, a random one of the recipe's
        ``n_views`` per image and epoch) with labels ``y`` (default: the lesion images' 0/1 labels)."""
        import keras

        r = self.recipe
        views = self.views if views is None else views
        v = views if augment_views else tuple(a[:1] for a in views)
        if augment_views and v[0].shape[0] > r.n_views:  # a larger cache (S4's protocol): the recipe's views only
            v = tuple(a[: r.n_views] for a in v)
        keras.utils.set_random_seed(seed)
        head = ssdlite_head(v[0].shape[2:], v[1].shape[2:], r.head_channels, r.dropout)
        res = train(head, v, self.y if y is None else y, train_idx, val_idx, r.train, seed, epochs=epochs)
        return head, res

    def predict(self, head, idx: np.ndarray, views: tuple[np.ndarray, np.ndarray] | None = None, view: int = 0) -> np.ndarray:
        """p_malignant (len(idx),) from one cached view (0: the unaugmented image)."""
        v = self.views if views is None else views
        return np.asarray(head.predict([np.asarray(v[0][view, idx], np.float32), np.asarray(v[1][view, idx], np.float32)],
                                       batch_size=64, verbose=0), dtype=np.float64).reshape(-1)

    def frame(self, idx: np.ndarray, p: np.ndarray, fold: int) -> pd.DataFrame:
        t = self.table.iloc[idx]
        df = pd.DataFrame({"image_id": t["image_id"].to_numpy(), "fold": int(fold), "label": t["label"].to_numpy(),
                           "group_id": t["group_id"].to_numpy()})
        df[PROBA_COLUMNS] = as_three_class(p)
        return df

    def fold_indices(self, splits: pd.DataFrame, fold: int) -> dict[str, np.ndarray]:
        """Positions (into the lesion table) of the train / val / test lesion images of ``fold``."""
        pos = {k: i for i, k in enumerate(self.table["image_id"])}
        part = splits[(splits["fold"] == fold) & splits["image_id"].isin(pos)]
        return {role: np.array(sorted(pos[i] for i in part.loc[part["role"] == role, "image_id"]), dtype=int)
                for role in ("train", "val", "test")}

    @timed("cross-validation {self.recipe.name}")
    def cross_validate(self, splits: pd.DataFrame, seed: int | None = None) -> BinaryCV:
        """The study's grouped folds restricted to lesion images: out-of-fold p_malignant."""
        seed = int(splits["seed"].iloc[0]) if seed is None else seed
        oof, val, hist, timing, heads = [], [], [], [], []
        for fold in timed_iter(sorted(splits["fold"].unique()), "fold {}"):
            idx = self.fold_indices(splits, fold)
            head, res = self.fit(idx["train"], idx["val"], seed + 1000 * int(fold))
            p = self.predict(head, idx["test"])
            oof.append(self.frame(idx["test"], p, fold))
            val.append(self.frame(idx["val"], self.predict(head, idx["val"]), fold))
            hist.append(res.history.assign(fold=int(fold)))
            timing.append({"fold": int(fold), "seconds": res.seconds, "best_epoch": res.best_epoch})
            heads.append(head)
            if self.progress:
                acc = float(((p >= 0.5) == self.y[idx["test"]]).mean())
                print(f"  {self.recipe.name} fold {fold}: {len(idx['train'])} train / {len(idx['val'])} val / "
                      f"{len(idx['test'])} test, epoch kept {res.best_epoch}, {res.seconds:.0f} s, test accuracy {acc:.3f}",
                      flush=True)
        cat = lambda xs: pd.concat(xs, ignore_index=True).sort_values(["fold", "image_id"]).reset_index(drop=True)  # noqa: E731
        return BinaryCV(cat(oof), cat(val), pd.concat(hist, ignore_index=True), pd.DataFrame(timing), heads)

    def full_model(self, head, name: str | None = None):
        """Exportable classifier: image (size, size, 3) float in [0, 255] → p_malignant (n, 1)."""
        model = assemble(self.preprocess, self.extractor, head, self.recipe.input_size,
                         (name or self.recipe.name).replace(".", "_"))
        for layer in model.layers:
            layer.trainable = False
        return model

    # ---------- S4's own protocol and the augment-after-split control ----------
    @timed("S4 protocol: augment before a random split ({self.recipe.name})")
    def augment_before_split(self, target_size: int, seed: int) -> tuple[dict, pd.DataFrame]:
        """S4's protocol: items = cached views (0 = original) of every lesion image, dropped at
        random to ``target_size``; random stratified 70 / 15 / 15 *item* split; train on the
        training items (each a fixed view), stop / choose as the recipe says on the validation
        items, test on the test items. Returns (metrics + leak counts, per-item test predictions)."""
        n_views = self.n_cached_views
        pool = augmented_pool(len(self.y), n_views, target_size, seed)
        src, vw = pool["source"].to_numpy(), pool["view"].to_numpy()
        item_y = self.y[src]
        role = random_split(item_y, seed)
        leaks = leak_counts(src, self.table["group_id"].to_numpy()[src], role)
        # one "view" holding every item: (1, n_items, ...), so training sees each item as it is
        t0 = time.perf_counter()
        items = tuple(np.asarray(a[vw, src])[None] for a in self.views)
        tr, va, te = (np.flatnonzero(role == r) for r in ("train", "val", "test"))
        head, res = self.fit(tr, va, seed + 500, views=items, augment_views=False, y=item_y)
        p = self.predict(head, te, views=items)
        m = _binary_summary(item_y[te], p)
        out = {"protocol": f"S4: augment to {len(pool):,} items before a random 70/15/15 item split", "n_items": len(pool),
               "views_per_image": n_views, "n_train": len(tr), "n_val": len(va), **m, **leaks,
               "epoch_kept": res.best_epoch, "seconds": round(time.perf_counter() - t0, 1)}
        pred = pd.DataFrame({"image_id": self.table["image_id"].to_numpy()[src[te]], "view": vw[te], "label_y": item_y[te],
                             "p_malignant": p})
        return out, pred

    @timed("augment after a random split ({self.recipe.name})")
    def augment_after_split(self, seed: int) -> dict:
        """Random stratified 70 / 15 / 15 split of the *images*, then the training images'
        augmented views used in training; test on the original test images (view 0)."""
        t0 = time.perf_counter()
        role = random_split(self.y, seed)
        leaks = leak_counts(np.arange(len(self.y)), self.table["group_id"].to_numpy(), role)
        tr, va, te = (np.flatnonzero(role == r) for r in ("train", "val", "test"))
        head, res = self.fit(tr, va, seed + 500)
        p = self.predict(head, te)
        return {"protocol": "augment after a random 70/15/15 image split", "n_items": len(self.y),
                "views_per_image": self.recipe.n_views, "n_train": len(tr), "n_val": len(va),
                **_binary_summary(self.y[te], p), **leaks, "epoch_kept": res.best_epoch,
                "seconds": round(time.perf_counter() - t0, 1)}


def _binary_summary(y: np.ndarray, p: np.ndarray) -> dict:
    """Accuracy, macro F1, F1 of malignant and AUC of one test set (S4's metrics), threshold 0.5."""
    m = classification_metrics(np.where(y == 1, 2, 1), as_three_class(p))
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "f1_malignant": m["f1_malignant"], "auc": m["benign_vs_malignant_auc"]}
