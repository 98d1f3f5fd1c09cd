"""S1's region-of-interest step: a U-Net-style lesion segmenter on a frozen ImageNet encoder.

The encoder is a backbone of the registry (MobileNetV2 α 0.35 on the study's machines; S1's
ResNet101 where its weights load) run *once* per image and view: its outputs at output strides
4, 8, 16 and 32 (the registry's C2–C5 feature layers) are cached as float16 and reused by every
fold and epoch. A light decoder (upsample ×2, concatenate the skip, 3 × 3 convolution, BatchNorm,
ReLU; three times) predicts the lesion probability at a quarter of the input size; the exported
segmenter upsamples it to the input size. Masks are training targets and references only
(docs/protocol.md §1): the OR-merged BUSI masks, empty for normal images. Views: 0 = the image, 1 = its
horizontal mirror (mask mirrored too), so augmentation never misaligns image and mask.

Training: binary cross-entropy + soft Dice, Adam, the study's own seeded batch order, early
stopping on the validation loss of the outer fold's inner validation part (as the classifiers).
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
from ..evaluation.bootstrap import bootstrap_mean_ci, resample_weights
from ..timing import timed, timed_iter
from .features import cache_key
from .registry import feature_tensors, get_spec
from .training import BestWeights, TrainConfig

LEVELS = ("C2", "C3", "C4", "C5")  # output strides 4, 8, 16, 32


@dataclass(frozen=True, kw_only=True)
class SegmenterRecipe:
    name: str
    backbone: str
    input_size: int
    train: TrainConfig
    decoder_channels: int
    n_views: int                     # 1: the images; 2: the images and their mirrors
    threshold: float                 # probability above which a pixel is lesion
    min_area: float                  # smaller predicted regions (fraction of the image) count as "nothing found"
    weights: str | None
    preprocessing: str
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone_label(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.backbone_kwargs.items())
        return self.backbone + (f" ({extra})" if extra else "")

    @property
    def title(self) -> str:
        return (f"{self.name}: U-Net decoder on frozen {self.backbone_label}, {self.weights}, "
                f"{self.input_size}px")

    @property
    def output_size(self) -> int:
        return self.input_size // 4

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- networks
def encoder(backbone, name: str):
    """The frozen backbone with its C2–C5 outputs (a Keras model, image preprocessed → 4 maps)."""
    import keras

    return keras.Model(backbone.input, feature_tensors(backbone, name, LEVELS), name="encoder")


def unet_decoder(shapes: list[tuple[int, ...]], channels: int):
    """C2–C5 maps → lesion probability at the C2 resolution (input / 4), one sigmoid channel."""
    import keras
    from keras import layers

    inputs = [keras.Input(s, name=f"{lv.lower()}") for lv, s in zip(LEVELS, shapes)]

    def conv(x, ch, name):
        x = layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    x = layers.Conv2D(channels * 4, 1, activation="relu", name="c5_proj")(inputs[3])
    for k, (skip, ch) in enumerate(zip(inputs[2::-1], (channels * 4, channels * 2, channels))):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{k}")(x)
        s = layers.Conv2D(ch, 1, activation="relu", name=f"skip{k}_proj")(skip)
        x = conv(layers.Concatenate(name=f"cat{k}")([x, s]), ch, f"dec{k}")
    out = layers.Conv2D(1, 1, activation="sigmoid", name="mask")(x)
    return keras.Model(inputs, out, name="decoder")


def seg_loss(y_true, y_pred):
    """Binary cross-entropy + (1 − soft Dice over the batch)."""
    import keras

    ops = keras.ops
    y_true = ops.cast(y_true, y_pred.dtype)
    bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    inter = ops.sum(y_true * y_pred)
    dice = (2.0 * inter + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return bce + (1.0 - dice)


def assemble_segmenter(preprocess, enc, decoder, input_size: int, name: str = "segmenter"):
    """Exportable segmenter: float RGB image (size, size, 3) in [0, 255] → lesion probability (size, size, 1)."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = decoder(enc(preprocess(inputs)))
    x = layers.UpSampling2D(4, interpolation="bilinear", name="to_input_size")(x)
    return keras.Model(inputs, x, name=name)


# ---------------------------------------------------------------- measures
def mask_scores(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; both empty → (nan, nan) (no lesion to find)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    inter, total, union = np.logical_and(p, r).sum(), p.sum() + r.sum(), np.logical_or(p, r).sum()
    if total == 0:
        return float("nan"), float("nan")
    return float(2 * inter / total), float(inter / union)


def hd95(pred: np.ndarray, ref: np.ndarray) -> float:
    """95th percentile of the symmetric distances between the two masks' boundaries, as a percentage of
    the image diagonal (scale-free); NaN when either mask is empty."""
    p, r = np.asarray(pred, np.uint8), np.asarray(ref, np.uint8)
    if not p.any() or not r.any():
        return float("nan")

    def boundary(m):
        return m.astype(bool) & ~cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)

    bp, br = boundary(p), boundary(r)
    to_r = cv2.distanceTransform((~br).astype(np.uint8), cv2.DIST_L2, 5)  # distance of each pixel to r's boundary
    to_p = cv2.distanceTransform((~bp).astype(np.uint8), cv2.DIST_L2, 5)
    d = np.concatenate([to_r[bp], to_p[br]])
    return float(np.percentile(d, 95) / np.hypot(*p.shape) * 100)


def upsample(prob: np.ndarray, size: int) -> np.ndarray:
    """Probability maps (n, h, w) → (n, size, size), bilinear (as the exported segmenter does)."""
    return np.stack([cv2.resize(np.asarray(p, np.float32), (size, size), interpolation=cv2.INTER_LINEAR) for p in prob])


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty stays empty)."""
    m = np.asarray(mask, np.uint8)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return m.astype(bool)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == k


def per_image_table(prob: np.ndarray, masks: np.ndarray, table: pd.DataFrame, threshold: float, min_area: float
                    ) -> pd.DataFrame:
    """One row per image: Dice / IoU against the reference mask, predicted and true area (fractions),
    whether a region was found (area ≥ ``min_area``). ``prob`` and ``masks`` at the same size."""
    rows = []
    for i in range(len(prob)):
        pred = prob[i] >= threshold
        d, j = mask_scores(pred, masks[i] > 0)
        area = float(pred.mean())
        found = bool(pred.any()) and area >= min_area
        rows.append({"image_id": table["image_id"].iat[i], "label": table["label"].iat[i],
                     "group_id": table["group_id"].iat[i], "dice": d, "iou": j, "hd95": hd95(pred, masks[i] > 0),
                     "pred_area": area,
                     "true_area": float((masks[i] > 0).mean()), "found": found})
    return pd.DataFrame(rows)


def summary_table(per_image: pd.DataFrame, n_resamples: int, seed: int) -> pd.DataFrame:
    """Mean per-image Dice and IoU (benign, malignant, both), pooled Dice, normal images' false
    positives: each with a 95 % group-bootstrap CI."""
    rows = []

    def add(name, subset, values, what):
        w = resample_weights(subset["group_id"].to_numpy(), n_resamples, seed)
        n, mean, lo, hi = bootstrap_mean_ci(w, values)
        rows.append({"measure": name, "images": what, "n": n, "value": mean, "ci_low": lo, "ci_high": hi})

    lesion = per_image[per_image["label"] != "normal"]
    for what, sub in (("benign + malignant", lesion), ("benign", lesion[lesion["label"] == "benign"]),
                      ("malignant", lesion[lesion["label"] == "malignant"])):
        if len(sub):
            add("dice", sub, sub["dice"].to_numpy(), what)
            add("iou", sub, sub["iou"].to_numpy(), what)
    if len(lesion):
        # pooled Dice = 2 Σ|P∩R| / Σ(|P|+|R|): a ratio of sums, bootstrapped by resampling groups
        w = resample_weights(lesion["group_id"].to_numpy(), n_resamples, seed)
        inter = lesion["dice"].fillna(0).to_numpy() * (lesion["pred_area"] + lesion["true_area"]).to_numpy() / 2
        tot = (lesion["pred_area"] + lesion["true_area"]).to_numpy()
        boot = (w @ (2 * inter)) / np.maximum(w @ tot, 1e-12)
        rows.append({"measure": "pooled dice", "images": "benign + malignant", "n": len(lesion),
                     "value": float(2 * inter.sum() / max(tot.sum(), 1e-12)),
                     "ci_low": float(np.percentile(boot, 2.5)), "ci_high": float(np.percentile(boot, 97.5))})
        add("lesion found", lesion, lesion["found"].astype(float).to_numpy(), "benign + malignant")
        if "dice_shown" in lesion:  # the multi-task model: Dice of the outline as predict and the app show it
            add("dice (outline as shown)", lesion, lesion["dice_shown"].to_numpy(), "benign + malignant")
        if "hd95" in lesion:
            add("hd95 (% of diagonal)", lesion, lesion["hd95"].to_numpy(), "benign + malignant")
    normal = per_image[per_image["label"] == "normal"]
    if len(normal):
        add("predicted area (false positive)", normal, normal["pred_area"].to_numpy(), "normal")
        add("region found (false positive)", normal, normal["found"].astype(float).to_numpy(), "normal")
    return pd.DataFrame(rows)


def shortcut_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """How much "a region was found" alone tells the class: counts per class, and the accuracy of
    the rule "nothing found → normal" for telling normal from lesion images (the crop shortcut)."""
    t = pd.crosstab(per_image["label"], per_image["found"].map({True: "region found", False: "nothing found"}))
    for c in ("region found", "nothing found"):
        if c not in t:
            t[c] = 0
    t = t[["region found", "nothing found"]].reset_index()
    is_normal = per_image["label"] == "normal"
    rule = ~per_image["found"]
    t.attrs["rule_accuracy"] = float((rule == is_normal).mean())
    return t


# ---------------------------------------------------------------- experiment
@dataclass
class SegCV:
    oof: np.ndarray               # (n, h, w) float32: each image's map from the fold where it was a test image
    fold_maps: np.ndarray         # (n_folds, n, h, w) float16: every image's map from each fold's segmenter
    test_fold: np.ndarray         # (n,) the fold in which each image was tested
    history: pd.DataFrame
    timing: pd.DataFrame
    decoders: list


class SegmentationExperiment:
    """A :class:`SegmenterRecipe` on one processed dataset: cached encoder outputs → decoders per fold."""

    def __init__(self, recipe: SegmenterRecipe, store: ProcessedData, seed: int, progress: bool = True) -> None:
        self.recipe, self.store, self.seed, self.progress = recipe, store, seed, progress
        self.table = labels_and_groups(store)
        self.timing: dict[str, float] = {}

    def _cache_stem(self) -> Path:
        r = self.recipe
        key = cache_key("unet", r.backbone, sorted(r.backbone_kwargs.items()), r.weights, r.input_size, r.n_views,
                        r.preprocessing, sha256_of(self.store.manifest))
        return self.store.cache_dir / "features" / f"{r.backbone}-unet-{key}"

    @timed("prepare {self.recipe.name}")
    def prepare(self) -> SegmentationExperiment:
        import keras

        from .builders import BackbonePreprocess
        from .registry import build_backbone

        r = self.recipe
        t0 = time.perf_counter()
        self.images = load_image_array(self.store, r.input_size, r.preprocessing, progress=self.progress)
        masks = load_mask_array(self.store, r.input_size, progress=self.progress)
        self.masks_full = masks
        small = np.stack([cv2.resize(m.astype(np.float32), (r.output_size, r.output_size), interpolation=cv2.INTER_AREA)
                          for m in masks])  # soft targets at the decoder's resolution
        self.targets = np.stack([small, small[:, :, ::-1]])[: r.n_views, ..., None]
        self.timing["decode_s"] = round(time.perf_counter() - t0, 1)
        keras.utils.set_random_seed(self.seed)
        self.preprocess = BackbonePreprocess(get_spec(r.backbone).preprocess, name="preprocess")
        self.backbone = build_backbone(r.backbone, r.input_size, r.weights, **r.backbone_kwargs)
        self.backbone.trainable = False
        self.encoder = encoder(self.backbone, r.backbone)
        t0 = time.perf_counter()
        self.views, cached = self._encode()
        self.timing.update(encoder_outputs_s=round(time.perf_counter() - t0, 1), encoder_outputs_cached=cached)
        return self

    @timed("encoder outputs {self.recipe.name} ({self.recipe.n_views} views)")
    def _encode(self) -> tuple[list[np.ndarray], bool]:
        import keras
        from tqdm import tqdm

        r = self.recipe
        stem = self._cache_stem()
        paths = [Path(f"{stem}-{lv.lower()}.npy") for lv in LEVELS]
        n = len(self.images)
        if all(p.exists() for p in paths):
            arrs = [np.load(p, mmap_mode="r") for p in paths]
            if all(a.shape[:2] == (r.n_views, n) for a in arrs):
                return [np.asarray(a) for a in arrs], True
        inputs = keras.Input((r.input_size, r.input_size, 3))
        model = keras.Model(inputs, self.encoder(self.preprocess(inputs)))
        outs = [np.zeros((r.n_views, n, *(int(d) for d in t.shape[1:])), np.float16) for t in model.outputs]
        steps = [(v, s) for v in range(r.n_views) for s in range(0, n, 32)]
        for v, s in tqdm(steps, desc="encoder outputs", disable=not self.progress, mininterval=5):
            x = self.images[s: s + 32].astype(np.float32)
            if v == 1:
                x = x[:, :, ::-1]
            for o, res in zip(outs, model(x, training=False)):
                o[v, s: s + len(x)] = np.asarray(res)
        for p, o in zip(paths, outs):
            with atomic_path(p) as tmp:
                np.save(tmp, o)
        return outs, False

    # ---------- training and prediction ----------
    def fit(self, train_idx: np.ndarray, val_idx: np.ndarray | None, seed: int, epochs: int | None = None):
        """A fresh decoder trained on ``train_idx`` (early stopping on ``val_idx``); returns (decoder, history, best epoch, s)."""
        import keras

        r, cfg = self.recipe, self.recipe.train
        keras.utils.set_random_seed(seed)
        dec = unet_decoder([tuple(a.shape[2:]) for a in self.views], r.decoder_channels)
        dec.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=seg_loss)
        rng = np.random.default_rng(seed)
        rows, stopper = [], BestWeights(cfg.patience)
        t_start = time.perf_counter()
        for epoch in range(1, (epochs or cfg.epochs) + 1):
            t0 = time.perf_counter()
            chosen = rng.integers(0, r.n_views, size=len(train_idx))
            order = rng.permutation(len(train_idx))
            v, i = chosen[order], train_idx[order]
            h = dec.fit([a[v, i] for a in self.views], self.targets[v, i], batch_size=cfg.batch_size, epochs=1,
                        shuffle=False, verbose=0)
            row = {"epoch": epoch, "loss": float(h.history["loss"][0])}
            if val_idx is not None and len(val_idx):
                row["val_loss"] = float(dec.evaluate([a[0, val_idx] for a in self.views], self.targets[0, val_idx],
                                                     batch_size=32, verbose=0))
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
            if "val_loss" in row and stopper.stop_after(dec, epoch, row["val_loss"]):
                break
        best_epoch = stopper.restore(dec, len(rows))
        return dec, pd.DataFrame(rows), best_epoch, round(time.perf_counter() - t_start, 1)

    def predict(self, dec, idx: np.ndarray | None = None) -> np.ndarray:
        """Lesion probability at the decoder's resolution (len(idx), h, w), view 0."""
        idx = np.arange(len(self.table)) if idx is None else idx
        p = dec.predict([a[0, idx] for a in self.views], batch_size=32, verbose=0)
        return np.asarray(p[..., 0], np.float32)

    def fold_indices(self, splits: pd.DataFrame, fold: int) -> dict[str, np.ndarray]:
        pos = {k: i for i, k in enumerate(self.table["image_id"])}
        part = splits[splits["fold"] == fold]
        return {role: np.array(sorted(pos[i] for i in part.loc[part["role"] == role, "image_id"]), dtype=int)
                for role in ("train", "val", "test")}

    @timed("cross-validation {self.recipe.name}")
    def cross_validate(self, splits: pd.DataFrame, seed: int | None = None) -> SegCV:
        """One decoder per outer fold (inner validation for early stopping); every image's map from
        every fold's decoder is kept (the crop pipeline needs the training images' maps too)."""
        seed = int(splits["seed"].iloc[0]) if seed is None else seed
        folds = sorted(splits["fold"].unique())
        n, h = len(self.table), self.recipe.output_size
        oof = np.zeros((n, h, h), np.float32)
        fold_maps = np.zeros((len(folds), n, h, h), np.float16)
        test_fold = np.full(n, -1)
        hist, timing, decs = [], [], []
        for k, fold in timed_iter(enumerate(folds), "fold {0[1]}"):
            idx = self.fold_indices(splits, fold)
            dec, history, best_epoch, seconds = self.fit(idx["train"], idx["val"], seed + 1000 * int(fold) + 7)
            maps = self.predict(dec)
            fold_maps[k] = maps
            oof[idx["test"]] = maps[idx["test"]]
            test_fold[idx["test"]] = int(fold)
            hist.append(history.assign(fold=int(fold)))
            timing.append({"fold": int(fold), "seconds": seconds, "best_epoch": best_epoch})
            decs.append(dec)
            if self.progress:
                d = [mask_scores(m >= self.recipe.threshold, t > 0.5)[0] for m, t in
                     zip(maps[idx["test"]], self.targets[0, idx["test"], ..., 0])]
                print(f"  segmenter fold {fold}: best epoch {best_epoch}, {seconds:.0f} s, "
                      f"test Dice (lesion images, {h}px) {np.nanmean(d):.3f}", flush=True)
        return SegCV(oof, fold_maps, test_fold, pd.concat(hist, ignore_index=True), pd.DataFrame(timing), decs)

    def full_segmenter(self, dec):
        """Image → lesion probability at the input size; the decoder is copied into an uncompiled
        twin so the saved file needs nothing of this package's training code (its loss) to load."""
        twin = unet_decoder([tuple(a.shape[2:]) for a in self.views], self.recipe.decoder_channels)
        twin.set_weights(dec.get_weights())
        return assemble_segmenter(self.preprocess, self.encoder, twin, self.recipe.input_size,
                                  name=self.recipe.name.replace(".", "_"))
