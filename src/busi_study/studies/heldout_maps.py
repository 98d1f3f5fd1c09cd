"""Do the models look at the lesion? Grad-CAM of every fold model against the lesion masks.

For each model, every benign and malignant image is explained by the fold model that held it
out (``results/<model>/fold<k>.keras``), for its predicted and its true class. Maps are
upsampled to the original image size and compared with the OR-merged mask: pointing game
(maximum inside the mask dilated by ``tolerance`` × diagonal), energy inside the mask, and IoU
of the map thresholded at the level that maximises IoU on that fold's *validation* lesions. The
same measures for a centred Gaussian map (its threshold chosen the same way) are the baseline.

A crop pipeline (notebook 05) classifies a crop around the lesion its fold's segmenter predicted:
its fold model is explained on the crop it saw, and the map is pasted back into the box the crop
was cut from (zero elsewhere), so its measures are in whole-image coordinates like every other model's.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data.arrays import labels_and_groups, load_image_array
from ..data.images import mask_paths, merged_mask, unfit_square
from ..data.store import ProcessedData
from ..evaluation.bootstrap import bootstrap_mean_ci, resample_weights
from ..explain.gradcam import gradcam, upsample
from ..explain.localisation import baseline_table, choose_iou_threshold, localisation_table
from ..info import CLASS_INDEX
from ..results import ModelResults
from ..timing import timed

MEASURES = ("pointing_hit", "energy_inside", "iou")


def model_input_size(model: ModelResults) -> int:
    return int(model.recipe["input_size"])


class ModelInputs:
    """What a model's fold models take (whole images, or each fold's crops for a crop pipeline) and
    how a map on those inputs goes back to the original image."""

    def __init__(self, trained: ModelResults, store: ProcessedData) -> None:
        self.size = model_input_size(trained)
        self.fit = trained.recipe.get("fit", "stretch")  # how the model makes its square input
        self.store = store
        boxes = trained.table("boxes") if trained.record.get("pipeline") else None
        self.boxes = None if boxes is None else boxes.set_index(["fold", "image_id"])
        self.ids = labels_and_groups(store)["image_id"].tolist()
        self._whole = None
        self._originals = None

    def images(self, fold: int) -> np.ndarray:
        """uint8 (n, size, size, 3) in manifest order: the inputs fold ``fold``'s model sees."""
        if self.boxes is None:
            if self._whole is None:
                self._whole = load_image_array(self.store, self.size, progress=False, fit=self.fit)
            return self._whole
        from ..data.arrays import load_originals
        from ..models.crops import BOX_COLUMNS, crop

        if self._originals is None:
            self._originals = load_originals(self.store)
        b = self.boxes.loc[int(fold)].loc[self.ids, list(BOX_COLUMNS)].to_numpy()
        return np.stack([crop(im, box, self.size) for im, box in zip(self._originals, b)])

    def to_image(self, maps, fold: int, ids: list[str], shapes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Maps on the inputs → maps of the original images' shapes (pasted into the crop box)."""
        if self.boxes is None and self.fit != "stretch":
            return [unfit_square(m, shape, self.fit) for m, shape in zip(maps, shapes)]
        if self.boxes is None:
            return upsample(maps, shapes)
        from ..models.crops import BOX_COLUMNS, paste

        return [paste(m, self.boxes.loc[(int(fold), i), list(BOX_COLUMNS)].to_numpy(), shape)
                for m, i, shape in zip(maps, ids, shapes)]


def load_classifier(path):
    """A fold model as a single-output classifier (the class-probability chain of a multi-task network)."""
    import keras

    from ..models import builders  # noqa: F401  (registers the preprocessing layer)
    from ..models.ensemble import classifier_chain

    return classifier_chain(keras.models.load_model(path, compile=False))


def model_gradcam_layer(model: ModelResults) -> str | None:
    """The Grad-CAM layer named in the backbone registry (S2's CNN: its last convolution)."""
    from ..models.recipes import gradcam_layer_of

    return gradcam_layer_of(model.recipe.get("backbone"))


def lesion_masks(store: ProcessedData, image_ids: list[str]) -> list[np.ndarray]:
    """OR-merged masks at original image size, in the order of ``image_ids``."""
    manifest = store.read("manifest").set_index("image_id")
    root = store.raw_root()
    out = []
    for i in image_ids:
        r = manifest.loc[i]
        out.append(merged_mask(mask_paths(r, root), (int(r["height"]), int(r["width"]))))
    return out


@timed("Grad-CAM {trained.name}")
def explain_model(trained: ModelResults, store: ProcessedData, splits: pd.DataFrame, method: str = "gradcam",
                  tolerance: float = 0.05, max_per_fold: int | None = None, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Per-image localisation of one model's fold models (benign and malignant test images).

    Returns (table, extras): one row per explained image with image_id, fold, label, predicted,
    correct, group_id, the three measures for the predicted-class map (``*``), for the true-class
    map (``*_true``) and for the Gaussian baseline (``baseline_*``); extras holds the per-fold IoU
    thresholds and a few maps for figures.
    """
    import keras

    from ..models import builders  # noqa: F401  (registers the preprocessing layer)

    name, layer = trained.name, model_gradcam_layer(trained)
    table = labels_and_groups(store)
    pos = {k: i for i, k in enumerate(table["image_id"])}
    inputs = ModelInputs(trained, store)
    rows, thresholds, examples = [], {}, {}
    lesion = table["label"].isin(["benign", "malignant"])
    for fold in tqdm(sorted(splits["fold"].unique()), desc=f"Grad-CAM {name}", disable=not progress):
        part = splits[splits["fold"] == fold]
        model = load_classifier(trained.fold_model_path(fold))
        images = inputs.images(fold)
        ids = {role: [i for i in part.loc[part["role"] == role, "image_id"] if lesion.iloc[pos[i]]] for role in ("val", "test")}
        if max_per_fold:
            ids = {k: v[:max_per_fold] for k, v in ids.items()}
        # threshold for IoU: chosen on this fold's validation lesions (true-class maps), never on test
        vidx = np.array([pos[i] for i in ids["val"]])
        vmasks = lesion_masks(store, ids["val"])
        vy = table["label"].iloc[vidx].map(CLASS_INDEX).to_numpy()
        vmaps = inputs.to_image(gradcam(model, images[vidx].astype(np.float32), vy, layer, method), fold, ids["val"],
                                [m.shape for m in vmasks])
        thr = choose_iou_threshold(vmaps, vmasks)
        thr_base = choose_iou_threshold([np.asarray(b) for b in _gaussians(vmasks)], vmasks)
        thresholds[int(fold)] = {"map": thr, "baseline": thr_base}
        tidx = np.array([pos[i] for i in ids["test"]])
        tmasks = lesion_masks(store, ids["test"])
        x = images[tidx].astype(np.float32)
        proba = np.asarray(model.predict(x, verbose=0))
        pred = proba.argmax(axis=1)
        true = table["label"].iloc[tidx].map(CLASS_INDEX).to_numpy()
        maps_pred = inputs.to_image(gradcam(model, x, pred, layer, method), fold, ids["test"], [m.shape for m in tmasks])
        same = pred == true
        maps_true = list(maps_pred)
        if (~same).any():
            wrong = [i for k, i in enumerate(ids["test"]) if not same[k]]
            other = inputs.to_image(gradcam(model, x[~same], true[~same], layer, method), fold, wrong,
                                    [m.shape for k, m in enumerate(tmasks) if not same[k]])
            for k, m in zip(np.flatnonzero(~same), other):
                maps_true[k] = m
        lp = localisation_table(maps_pred, tmasks, thr, tolerance, ids["test"])
        lt = localisation_table(maps_true, tmasks, thr, tolerance, ids["test"])
        lb = baseline_table(tmasks, thr_base, tolerance, ids=ids["test"])
        for k, image_id in enumerate(ids["test"]):
            r = table.iloc[tidx[k]]
            rows.append({"image_id": image_id, "fold": int(fold), "label": r["label"], "group_id": r["group_id"],
                         "predicted": ["normal", "benign", "malignant"][pred[k]], "correct": bool(same[k]),
                         **{m: lp.iloc[k][m] for m in MEASURES}, **{f"{m}_true": lt.iloc[k][m] for m in MEASURES},
                         **{f"baseline_{m}": lb.iloc[k][m] for m in MEASURES}})
            if len(examples) < 400:
                examples[image_id] = maps_pred[k]
        keras.backend.clear_session()
    return pd.DataFrame(rows), {"thresholds": thresholds, "maps": examples}


@timed("Grad-CAM overlays {trained.name}")
def explain_images(trained: ModelResults, store: ProcessedData, splits: pd.DataFrame, image_ids: list[str],
                   method: str = "gradcam") -> dict[str, np.ndarray]:
    """Predicted-class maps (original image size) of any images, normal ones included, each from
    the fold model that held it out; for figures (overlays of every class), not for measures."""
    import keras

    from ..models import builders  # noqa: F401  (registers the preprocessing layer)

    layer = model_gradcam_layer(trained)
    table = labels_and_groups(store)
    pos = {k: i for i, k in enumerate(table["image_id"])}
    manifest = store.read("manifest").set_index("image_id")
    test = splits[splits["role"] == "test"].set_index("image_id")["fold"]
    inputs = ModelInputs(trained, store)
    out: dict[str, np.ndarray] = {}
    wanted = [i for i in dict.fromkeys(image_ids) if i in test.index]
    for fold in sorted({int(test[i]) for i in wanted}):
        ids = [i for i in wanted if int(test[i]) == fold]
        model = load_classifier(trained.fold_model_path(fold))
        x = inputs.images(fold)[[pos[i] for i in ids]].astype(np.float32)
        pred = np.asarray(model.predict(x, verbose=0)).argmax(axis=1)
        shapes = [(int(manifest.loc[i, "height"]), int(manifest.loc[i, "width"])) for i in ids]
        for i, m in zip(ids, inputs.to_image(gradcam(model, x, pred, layer, method), fold, ids, shapes)):
            out[i] = m
        keras.backend.clear_session()
    return out


def _gaussians(masks):
    from ..explain.localisation import centred_gaussian

    return [centred_gaussian(m.shape) for m in masks]


@timed("localisation bootstrap {model}")
def summarise(loc: pd.DataFrame, model: str, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean of each measure (map and baseline) on all lesions and on correctly classified
    lesions, with 95 % group-bootstrap CIs. One row per (subset, measure)."""
    rows = []
    for subset, d in (("all lesions", loc), ("correctly classified lesions", loc[loc["correct"]])):
        if d.empty:
            continue
        w = resample_weights(d["group_id"].to_numpy(), n_resamples, seed).astype(float)
        for m in MEASURES:
            for tag, col in (("Grad-CAM (predicted class)", m), ("Grad-CAM (true class)", f"{m}_true"),
                             ("centred Gaussian baseline", f"baseline_{m}")):
                n, value, lo, hi = bootstrap_mean_ci(w, d[col].to_numpy(dtype=float))
                rows.append({"model": model, "subset": subset, "measure": m, "map": tag, "n": n,
                             "value": value, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


@timed("Grad-CAM sanity check {model.name}")
def sanity_check_table(model: ModelResults, store: ProcessedData, splits: pd.DataFrame, n_layers: int, n_images: int,
                       seed: int, method: str = "gradcam") -> pd.DataFrame:
    """The randomisation sanity check (Adebayo et al. 2018) on fold 0's model: Spearman rank
    correlation of the maps of its first ``n_images`` lesion test images before and after the top
    ``n_layers`` weighted layers are re-initialised. One row."""
    import keras

    from ..explain.gradcam import sanity_check
    from ..models import builders  # noqa: F401  (registers the preprocessing layer)

    table = labels_and_groups(store)
    label = table.set_index("image_id")["label"]
    test0 = splits[(splits["fold"] == 0) & (splits["role"] == "test")]["image_id"]
    ids = [i for i in test0 if label[i] != "normal"][:n_images]
    pos = {k: i for i, k in enumerate(table["image_id"])}
    x = ModelInputs(model, store).images(0)[[pos[i] for i in ids]].astype(np.float32)
    net = load_classifier(model.fold_model_path(0))
    out = sanity_check(net, x, None, model_gradcam_layer(model), n_layers, seed, method=method)
    keras.backend.clear_session()
    return pd.DataFrame([{"model": model.name, "layers_randomised": ", ".join(out["layers"]), "n_images": len(ids),
                          "spearman_mean": out["mean"], "spearman_median": out["median"], "n_undefined": out["n_undefined"]}])
