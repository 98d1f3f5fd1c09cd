"""Notebook 05, the multi-task U-Net (:mod:`busi_study.models.multitask`): one fine-tuned network that
outlines the lesion and classifies the image.

``run_multitask`` runs it under the protocol like every model (grouped CV on the study's splits,
out-of-fold predictions, metrics with CIs, fold models, final model and card: it enters the comparison,
the error analysis, the external validation, ``predict`` and the app), and measures its lesion maps as
the segmenter's are measured (out-of-fold Dice / IoU / HD95 on lesion images, false positives on normal
images), paired against the frozen-encoder segmenter of the same run on the same images. It also
writes the fold ensemble (the mean of the five fold models) beside the final model; the card of each
says which form is deployed by default (``mt_deployed``, fixed before any external test).

``seed_comparison`` retrains it and the S0 recipe with several training seeds on the same splits:
a "better than S0" claim needs the paired group-bootstrap CI to exclude 0 for every seed.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..data.images import unfit_square
from ..data.store import ProcessedData, atomic_path, write_json
from ..errors import ParameterError
from ..evaluation.bootstrap import bootstrap_mean_ci, paired_bootstrap_difference, resample_weights
from ..evaluation.evaluate import Evaluation, arrays, evaluate, validation_scores
from ..info import PROBA_COLUMNS
from ..models.ensemble import fold_ensemble
from ..models.experiment import CVResult, Experiment, run_folds
from ..models.multitask import MultitaskExperiment, MultitaskMaps, MultitaskRecipe, calls_normal, fold_maps, outline_shown
from ..models.recipes import augment_config, backbone_kwargs, s0_recipe, train_config
from ..models.registry import weights_available
from ..models.segmentation import per_image_table, shortcut_table, summary_table, upsample
from ..params import AugmentParams, BootstrapParams, ModelParams, MultitaskParams, S0Params
from ..results import ResultsStore
from ..timing import step, timed
from .model_run import ModelRun, data_hashes, final_epochs, model_card, write_results
from .s1_pipeline import MaskSource

ENSEMBLE_SUFFIX = ".folds"


def multitask_recipe(mt: MultitaskParams, s0: S0Params, models: ModelParams, augment: AugmentParams) -> MultitaskRecipe:
    """The S0 recipe's network (MobileNetV2, ``s0_unfreeze_blocks`` fine-tuned, ``s0_dropout``) and both
    of its training phases, with the decoder and the settings of ``mt_*``."""
    if mt.input_size % 32:
        raise ParameterError(f"mt_input_size must be a multiple of 32 (the encoder's output stride), got {mt.input_size} "
                             "— e.g. 224 or 288")
    alpha = models.mobilenet_alpha
    return MultitaskRecipe(
        name=f"mt_unet-mobilenet_v2-a{alpha}-b{s0.unfreeze_blocks}", backbone="mobilenet_v2",
        backbone_kwargs=backbone_kwargs("mobilenet_v2", alpha), weights=models.weights, input_size=mt.input_size,
        unfreeze_blocks=s0.unfreeze_blocks, head_dropout=s0.dropout, decoder_channels=mt.decoder_channels,
        mask_weight=mt.mask_weight, fit=mt.fit, crop_prob=mt.crop_prob, crop_min_side=mt.crop_min_side,
        threshold=mt.thresholds[0], min_area=mt.min_areas[0], gate=mt.outline_gates[0], n_views=models.n_views, augment=augment_config(augment),
        train=train_config(s0.head, models.class_weight), finetune=train_config(s0.finetune, models.class_weight),
        preprocessing="none")


@dataclass
class MultitaskRun:
    run: ModelRun
    skipped: str | None = None
    experiment: MultitaskExperiment | None = None
    maps: MultitaskMaps | None = None
    outline_choice: pd.DataFrame | None = None   # threshold and smallest region, scored on inner validation
    per_image: pd.DataFrame | None = None        # segmentation measures per out-of-fold image
    summary: pd.DataFrame | None = None          # means with CIs (as the segmenter's)
    shortcut: pd.DataFrame | None = None
    paired: pd.DataFrame | None = None           # against the frozen-encoder segmenter, same images
    final_maps: np.ndarray | None = None         # every image's map by the final model (the crop pipeline's export)
    final_epochs: list[int] | None = None
    exported: dict = field(default_factory=dict)  # form → path (final, fold_ensemble)

    @property
    def name(self) -> str:
        return self.run.recipe.name


@timed("multi-task model")
def run_multitask(mt: MultitaskParams, s0: S0Params, models: ModelParams, augment: AugmentParams, store: ProcessedData,
                  results: ResultsStore, *, seed: int, bootstrap: BootstrapParams, frozen_per_image: pd.DataFrame | None = None,
                  progress: bool = True) -> MultitaskRun:
    """Grouped CV, evaluation, lesion-map measures (paired with ``frozen_per_image``, the frozen-encoder
    segmenter's per-image table, when given), fold models, final model and fold ensemble."""
    recipe = multitask_recipe(mt, s0, models, augment)
    ok, why = weights_available(recipe.backbone, recipe.weights, recipe.input_size, **recipe.backbone_kwargs)
    if not ok:
        results.write_skipped(recipe.name, {"reason": why, "recipe": recipe.as_dict()})
        return MultitaskRun(ModelRun(recipe, results.model_dir(recipe.name), skipped=why), skipped=why)
    t0 = time.perf_counter()
    with step("prepare: lower-block views and their masks"):
        ex = MultitaskExperiment(recipe, store, seed=seed, progress=progress).prepare()
    t_prep = time.perf_counter() - t0
    splits = store.splits_of(seed)
    t0 = time.perf_counter()
    with step(f"cross-validation ({splits['fold'].nunique()} folds)"):
        cv = run_folds(lambda fold: ex, splits, seed, models.tta)
    t_cv = time.perf_counter() - t0
    groups = store.read("groups")
    conflicts = set(groups.loc[groups["label_conflict"], "image_id"])
    ev = evaluate(cv.oof, cv.val, tta=cv.oof_tta, conflict_ids=conflicts, n_resamples=bootstrap.resamples, seed=bootstrap.seed)
    run = ModelRun(recipe, results.model_dir(recipe.name), experiment=ex, cv=cv, evaluation=ev)
    run.timing = {"prepare_s": round(t_prep, 1), "cv_s": round(t_cv, 1), **ex.timing, "per_fold_s": cv.timing["seconds"].tolist()}
    t0 = time.perf_counter()
    outline_choice = choose_outline(ex, cv.fold_models, splits, mt.thresholds, mt.min_areas, mt.outline_gates, cv.val)
    best = outline_choice[outline_choice["chosen"]].iloc[0]
    ex.recipe = recipe = replace(recipe, threshold=float(best["threshold"]), min_area=float(best["min_area"]),
                                 gate=str(best["gate"]))
    run.recipe = recipe
    maps = fold_maps(ex, cv.fold_models, splits)
    oof_maps = upsample(maps.oof, recipe.input_size)
    per_image = per_image_table(oof_maps, ex.masks_full, ex.table, recipe.threshold, recipe.min_area)
    per_image.insert(1, "fold", maps.test_fold)
    per_image = gate_per_image(per_image, cv.oof, recipe.gate)
    per_image["dice_shown"] = shown_outline_dice(oof_maps, ex.masks_full, recipe.threshold, per_image["found"].to_numpy())
    mrun = MultitaskRun(run, experiment=ex, maps=maps, per_image=per_image, outline_choice=outline_choice,
                        summary=summary_table(per_image, bootstrap.resamples, bootstrap.seed), shortcut=shortcut_table(per_image))
    if frozen_per_image is not None and len(frozen_per_image):
        mrun.paired = paired_segmentation(per_image, frozen_per_image, bootstrap)
    run.timing["segmentation_measures_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    for k, fm in enumerate(cv.fold_models):
        with atomic_path(results.fold_model_path(recipe.name, k)) as tmp:
            ex.full_model(fm).save(tmp)
    run.timing["fold_models_s"] = round(time.perf_counter() - t0, 1)
    if models.export_models:
        t0 = time.perf_counter()
        mrun.exported, mrun.final_maps, mrun.final_epochs = _export(
            ex, cv, ev, mt, results, store, seed=seed, bootstrap=bootstrap)
        run.exported = mrun.exported.get("final")
        run.timing["final_model_s"] = round(time.perf_counter() - t0, 1)
    seg_record = {"model": recipe.name, "title": recipe.title, "recipe": recipe.as_dict(), "n": int(len(per_image)),
                  "summary": mrun.summary.to_dict(orient="records"),
                  "shortcut_rule_accuracy": mrun.shortcut.attrs["rule_accuracy"],
                  "paired_with_frozen_segmenter": None if mrun.paired is None else mrun.paired.to_dict(orient="records"),
                  "protocol": f"grouped {run.n_splits}-fold CV, seed {seed}, out-of-fold maps at {recipe.input_size}px "
                              f"({recipe.fit})", **data_hashes(store)}
    seg_record["outline_choice"] = outline_choice.to_dict(orient="records")
    results.segmentation.write_trained(recipe.name, {"per_image": per_image, "summary": mrun.summary,
                                                     "shortcut": mrun.shortcut}, seg_record)
    write_results(run, store, results, seed=seed, models=models, bootstrap=bootstrap,
                  extra={"outline": _outline(recipe), "deployed": mt.deployed,
                         "segmentation": mrun.summary.to_dict(orient="records")})
    return mrun


@timed("outline threshold, smallest region and gate on validation")
def choose_outline(ex: MultitaskExperiment, fold_models: list, splits: pd.DataFrame, thresholds: list[float],
                   min_areas: list[float], gates: list[str], val_predictions: pd.DataFrame) -> pd.DataFrame:
    """The outline's threshold, smallest region and gate, chosen on the inner validation images of every
    fold (each by its fold's model and its fold's class predictions, ``val_predictions`` = the CV's
    validation table; the outer test folds unused): see :func:`outline_choice_table`."""
    size = ex.recipe.input_size
    probs, refs, called = [], [], []
    for fold, fm in zip(sorted(splits["fold"].unique()), fold_models):
        val = ex.fold_indices(splits, fold)["val"]
        probs.append(upsample(ex.predict_masks(fm, val), size))
        refs.append(ex.masks_full[val] > 0)
        called.append(called_normal(ex.table["image_id"].iloc[val], val_predictions[val_predictions["fold"] == fold]))
    return outline_choice_table(np.concatenate(probs), np.concatenate(refs), np.concatenate(called), thresholds,
                                min_areas, gates)


def called_normal(image_ids: pd.Series, predictions: pd.DataFrame) -> np.ndarray:
    """Whether the model's class prediction (argmax of ``p_*``) is "normal", for each of ``image_ids``."""
    p = predictions.set_index("image_id").reindex(list(image_ids))[PROBA_COLUMNS]
    if p["p_normal"].isna().any():
        missing = list(p.index[p["p_normal"].isna()][:3])
        raise ValueError(f"no class prediction for {missing} — the outline gate needs every image's prediction")
    return calls_normal(p.to_numpy(dtype=float))


def outline_choice_table(probs: np.ndarray, refs: np.ndarray, called: np.ndarray, thresholds: list[float],
                         min_areas: list[float], gates: list[str]) -> pd.DataFrame:
    """Every (threshold, smallest region, gate) scored on validation images: the mean per-image score,
    where a lesion image scores the Dice of the thresholded map against its mask (0 when no outline is
    shown) and a normal image scores 1 when no outline is shown, else 0. An outline is shown when its
    region covers at least the smallest share of the image and, with gate ``classifier``, the model does
    not call the image normal (``called``). The highest score is chosen (ties: the first, i.e. the
    profile's order)."""
    from ..models.segmentation import mask_scores

    lesion = refs.reshape(len(refs), -1).any(axis=1)
    rows = []
    for t in thresholds:
        pred = probs >= t
        area = pred.reshape(len(pred), -1).mean(axis=1)
        dice = np.array([mask_scores(p, r)[0] if le else np.nan for p, r, le in zip(pred, refs, lesion)])
        for a in min_areas:
            for gate in gates:
                found = outline_shown(area >= a, called, gate)
                score = np.where(lesion, np.where(found, np.nan_to_num(dice), 0.0), (~found).astype(float))
                rows.append({"threshold": t, "min_area": a, "gate": gate, "val_score": float(score.mean()),
                             "val_dice_lesion": float(np.where(found, np.nan_to_num(dice), 0.0)[lesion].mean()),
                             "val_normal_with_region": float(found[~lesion].mean()) if (~lesion).any() else np.nan,
                             "val_lesion_nothing_found": float((~found[lesion]).mean()), "n_val": int(len(refs))})
    t = pd.DataFrame(rows)
    t["chosen"] = False
    t.loc[t["val_score"].idxmax(), "chosen"] = True
    return t


def shown_outline_dice(probs: np.ndarray, masks: np.ndarray, threshold: float, found: np.ndarray) -> np.ndarray:
    """Dice of the outline a user is shown (``predict`` and the app draw the largest predicted region, and
    nothing where ``found`` is False: Dice 0 on a lesion image), against each mask; NaN on images without
    a lesion. The ``dice`` column measures the whole thresholded map instead."""
    from ..models.segmentation import largest_region, mask_scores

    out = np.full(len(probs), np.nan)
    for i in range(len(probs)):
        ref = masks[i] > 0
        if ref.any():
            out[i] = mask_scores(largest_region(probs[i] >= threshold), ref)[0] if found[i] else 0.0
    return out


def gate_per_image(per_image: pd.DataFrame, oof: pd.DataFrame, gate: str) -> pd.DataFrame:
    """The per-image table as the deployed outline behaves: ``called_normal`` (the model's out-of-fold class
    prediction) recorded, and with gate ``classifier`` no outline (``found`` False) where it is True. Dice,
    IoU and HD95 stay the measures of the lesion map itself."""
    out = per_image.copy()
    out["called_normal"] = called_normal(out["image_id"], oof)
    out["found"] = outline_shown(out["found"].to_numpy(), out["called_normal"].to_numpy(), gate)
    return out


def _outline(recipe: MultitaskRecipe) -> dict:
    return {"output": 1, "threshold": recipe.threshold, "min_area": recipe.min_area, "gate": recipe.gate, "fit": recipe.fit,
            "resolution": f"decoder at {recipe.output_size}px, upsampled to the input"}


@timed("final model + fold ensemble")
def _export(ex: MultitaskExperiment, cv: CVResult, ev: Evaluation, mt: MultitaskParams, results: ResultsStore,
            store: ProcessedData, *, seed: int, bootstrap: BootstrapParams) -> tuple[dict, np.ndarray, list[int]]:
    """The final model (all images, the folds' median epochs) and the fold ensemble, each with a card;
    returns their paths, the final model's lesion maps of every image and its epochs."""
    r = ex.recipe
    epochs = final_epochs(cv)
    fm = ex.fit(np.arange(len(ex.y)), None, seed + 99, epochs=epochs)
    final_maps = ex.predict_masks(fm)
    paths = {"final": results.exported_model_path(r.name),
             "fold_ensemble": results.exported_model_path(r.name + ENSEMBLE_SUFFIX)}
    with atomic_path(paths["final"]) as tmp:
        ex.full_model(fm).save(tmp)
    # the members from their files: the in-memory fold networks share the backbone's layers (and weights)
    folds = load_fold_networks(results, r.name)
    with atomic_path(paths["fold_ensemble"]) as tmp:
        fold_ensemble(folds, r.name + ENSEMBLE_SUFFIX).save(tmp)
    base = model_card(r, ev, store, epochs, n_splits=int(cv.oof["fold"].nunique()), seed=seed, bootstrap=bootstrap, val=cv.val)
    base["input"]["resize"] = ("the whole image padded to a square with black borders (centred), then resized (cv2.INTER_AREA)"
                               if r.fit == "pad" else base["input"]["resize"])
    base["input"]["fit"] = r.fit
    base["outputs"] = ["class probabilities (normal, benign, malignant)",
                       "lesion probability map at the input size (threshold it at outline.threshold)"]
    base["outline"] = _outline(r)
    default = paths[mt.deployed].name
    note = (f"deployed by default: {default} ({'the mean of the five CV fold models' if mt.deployed == 'fold_ensemble' else 'one model trained on all images'}); "
            "the choice is the profile's mt_deployed, fixed before any external test (the external set is never used "
            "to choose); notebook 08 reports both forms on BrEaST with a paired CI")
    write_json({**base, "form": "final", "deployed_default": default, "deployment": note}, paths["final"].with_suffix(".json"))
    write_json({**base, "model": r.name + ENSEMBLE_SUFFIX, "results": r.name, "form": "fold_ensemble",
                "members": [f"results/{r.name}/fold{k}.keras" for k in range(len(folds))],
                "trained_on": "five models, each on the training part of one outer CV fold (four fifths of the images); "
                              "the mean of their outputs",
                "deployed_default": default, "deployment": note}, paths["fold_ensemble"].with_suffix(".json"))
    return paths, final_maps, epochs


def mask_source(mrun: MultitaskRun) -> MaskSource:
    """The multi-task model's lesion maps as the crop pipeline's source (S1's pipeline on the better
    masks): each fold model's maps of every image, and the final model (its map output) as the
    pipeline's segmenter. Maps of padded inputs are mapped onto the stretched image first."""
    if mrun.skipped:
        return MaskSource(mrun.name, None, None, lambda: (None, None, None), "none", "stretch", 0.0, skipped=mrun.skipped)
    ex, r = mrun.experiment, mrun.experiment.recipe
    shapes = list(zip(ex.store.read("manifest")["height"], ex.store.read("manifest")["width"])) if r.fit != "stretch" else []
    fold_maps_ = maps_in_stretch_coordinates(mrun.maps.fold_maps.reshape(-1, r.output_size, r.output_size),
                                             shapes * mrun.maps.fold_maps.shape[0], r.fit)
    cv = MultitaskMaps(mrun.maps.oof, fold_maps_.reshape(mrun.maps.fold_maps.shape), mrun.maps.test_fold)

    def final():
        if "final" not in mrun.exported:
            raise ValueError("the multi-task model was not exported (export_models: false): no final segmenter")

        def save(path):  # a copy of the saved final network (the in-memory one shares the experiment's layers)
            with atomic_path(path) as tmp:
                shutil.copyfile(mrun.exported["final"], tmp)

        maps = maps_in_stretch_coordinates(mrun.final_maps, shapes, r.fit)
        return maps, (mrun.final_epochs or [None])[-1], save

    return MaskSource(mrun.name, ex, cv, final, preprocessing=r.preprocessing, fit=r.fit,
                      cv_seconds=float(mrun.run.timing.get("cv_s", 0.0)))


def load_fold_networks(results: ResultsStore, name: str) -> list:
    """The saved fold models of ``name`` (each an independent network)."""
    import keras

    from ..models import builders  # noqa: F401  (registers the preprocessing layer)

    return [keras.models.load_model(p, compile=False) for p in results.load_fold_paths(name)]


def paired_segmentation(a: pd.DataFrame, b: pd.DataFrame, bootstrap: BootstrapParams) -> pd.DataFrame:
    """Per-image measures of two segmenters on the same images (``a`` − ``b``): mean difference with a
    95 % group-bootstrap CI; Dice, IoU and HD95 on lesion images, "found" on lesion images and on
    normal images (a false positive there)."""
    m = a.merge(b, on=["image_id", "label", "group_id"], suffixes=("_a", "_b"))
    rows = []
    for measure, images, sub in (("dice", "benign + malignant", m[m["label"] != "normal"]),
                                 ("iou", "benign + malignant", m[m["label"] != "normal"]),
                                 ("hd95 (% of diagonal)", "benign + malignant", m[m["label"] != "normal"]),
                                 ("lesion found", "benign + malignant", m[m["label"] != "normal"]),
                                 ("region found (false positive)", "normal", m[m["label"] == "normal"])):
        if sub.empty:
            continue
        col = {"hd95 (% of diagonal)": "hd95", "lesion found": "found", "region found (false positive)": "found"}.get(measure, measure)
        if f"{col}_a" not in sub or f"{col}_b" not in sub:
            continue
        va, vb = sub[f"{col}_a"].astype(float).to_numpy(), sub[f"{col}_b"].astype(float).to_numpy()
        both = np.isfinite(va) & np.isfinite(vb)
        w = resample_weights(sub["group_id"].to_numpy()[both], bootstrap.resamples, bootstrap.seed)
        n, diff, lo, hi = bootstrap_mean_ci(w, (va - vb)[both])
        rows.append({"measure": measure, "images": images, "n": n, "a": float(va[both].mean()), "b": float(vb[both].mean()),
                     "diff": diff, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def maps_in_stretch_coordinates(maps: np.ndarray, shapes: list[tuple[int, int]], fit: str) -> np.ndarray:
    """Lesion maps made on padded squares, as maps of the stretched image (what a box relative to the
    original image is computed on); maps of stretched inputs are returned as they are."""
    if fit == "stretch":
        return maps
    o = maps.shape[-1]
    import cv2

    return np.stack([cv2.resize(unfit_square(m.astype(np.float32), s, fit), (o, o), interpolation=cv2.INTER_LINEAR)
                     for m, s in zip(maps, shapes)]).astype(maps.dtype)


def targets_table(cls: Evaluation, seg: pd.DataFrame) -> pd.DataFrame:
    """The model's measured values beside the study's targets for it, met or not (with the CI)."""
    pooled = cls.pooled.set_index("metric")
    s = seg.set_index(["measure", "images"])
    rows = []

    def add(what, value, lo, hi, target, higher=True):
        met = (value >= target) if higher else (value <= target)
        rows.append({"target": what, "value": value, "ci_low": lo, "ci_high": hi,
                     "required": f"{'>=' if higher else '<='} {target}", "met": bool(met)})

    for metric, target in (("benign_vs_malignant_auc", 0.94), ("macro_auc", 0.94), ("accuracy", 0.85)):
        if metric in pooled.index:
            add(metric, *pooled.loc[metric, ["value", "ci_low", "ci_high"]], target)
    if ("dice", "benign + malignant") in s.index:
        add("mean Dice, lesion images", *s.loc[("dice", "benign + malignant"), ["value", "ci_low", "ci_high"]], 0.78)
    if ("dice (outline as shown)", "benign + malignant") in s.index:
        add("mean Dice of the shown outline, lesion images",
            *s.loc[("dice (outline as shown)", "benign + malignant"), ["value", "ci_low", "ci_high"]], 0.78)
    if ("region found (false positive)", "normal") in s.index:
        add("normal images with a predicted region", *s.loc[("region found (false positive)", "normal"),
                                                             ["value", "ci_low", "ci_high"]], 0.15, higher=False)
    return pd.DataFrame(rows)


def paired_with_s0(results: ResultsStore, name: str, bootstrap: BootstrapParams) -> pd.DataFrame:
    """This run's multi-task model against its S0 recipe (notebook 04) on the same out-of-fold images:
    paired group-bootstrap differences (one training seed; the seed repeats are ``seed_comparison``)."""
    s0 = next((n for n in results.trained_names() if n.startswith("s0_finetune-")), None)
    if s0 is None or name not in results.trained_names():
        return pd.DataFrame()
    y, pa, g = arrays(results.load(name).oof)
    _, pb, _ = arrays(results.load(s0).oof)
    d = paired_bootstrap_difference(y, pa, pb, g, metrics=("accuracy", "macro_auc", "benign_vs_malignant_auc", "auc_malignant"),
                                    n_resamples=bootstrap.resamples, seed=bootstrap.seed)
    return d.rename(columns={"a": "multitask", "b": "s0"}).assign(multitask_model=name, s0_model=s0)


# ---------------------------------------------------------------- against S0 over training seeds
@timed("multi-task seed comparison")
def seed_comparison(mt: MultitaskParams, s0: S0Params, models: ModelParams, augment: AugmentParams, store: ProcessedData, *,
                    split_seed: int, bootstrap: BootstrapParams, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The multi-task model and the S0 recipe, each retrained with every seed of ``mt_seeds`` on the same
    splits (views fixed by the split seed). Returns (per seed and metric: both values and the paired
    difference with its group-bootstrap CI; summary: mean ± sd over seeds, seeds whose CI excludes 0)."""
    if not mt.seeds:
        return pd.DataFrame(), pd.DataFrame()
    splits = store.splits_of(split_seed)
    mt_ex = MultitaskExperiment(multitask_recipe(mt, s0, models, augment), store, seed=split_seed, progress=False).prepare()
    s0_ex = Experiment(s0_recipe(s0, models, augment), store, seed=split_seed, progress=False).prepare()
    rows = []
    for s in mt.seeds:
        t0 = time.perf_counter()
        a = run_folds(lambda fold: mt_ex, splits, s, False).oof
        t1 = time.perf_counter()
        b = s0_ex.cross_validate(splits, seed=s, tta=False).oof
        seconds = {"multitask_s": round(t1 - t0, 1), "s0_s": round(time.perf_counter() - t1, 1)}
        y, pa, g = arrays(a)
        _, pb, _ = arrays(b)
        d = paired_bootstrap_difference(y, pa, pb, g, metrics=("accuracy", "macro_auc", "benign_vs_malignant_auc"),
                                        n_resamples=bootstrap.resamples, seed=bootstrap.seed)
        for _, r in d.iterrows():
            rows.append({"seed": s, "metric": r["metric"], "multitask": r["a"], "s0": r["b"], "diff": r["diff"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"], **seconds})
        if progress:
            acc = d.set_index("metric").loc["accuracy"]
            print(f"  seed {s}: accuracy {acc['a']:.3f} vs S0 {acc['b']:.3f} (diff {acc['diff']:+.3f}, 95 % CI "
                  f"{acc['ci_low']:+.3f} to {acc['ci_high']:+.3f}; {seconds['multitask_s']:.0f} s + {seconds['s0_s']:.0f} s)",
                  flush=True)
    per_seed = pd.DataFrame(rows)
    summary = per_seed.groupby("metric").agg(multitask_mean=("multitask", "mean"), multitask_sd=("multitask", "std"),
                                             s0_mean=("s0", "mean"), s0_sd=("s0", "std"), diff_mean=("diff", "mean"),
                                             diff_sd=("diff", "std")).reset_index()
    above = per_seed.assign(up=per_seed["ci_low"] > 0).groupby("metric")["up"].sum()
    summary["seeds_better_ci_excludes_0"] = summary["metric"].map(above).astype(int)
    summary["n_seeds"] = len(mt.seeds)
    return per_seed, summary


def validation_choice(candidates: dict[str, CVResult]) -> pd.DataFrame:
    """Pooled inner-validation log loss and accuracy of each candidate setting (what a choice is made on)."""
    rows = []
    for name, cv in candidates.items():
        loss, acc = validation_scores(cv.val)
        rows.append({"candidate": name, "val_log_loss": loss, "val_accuracy": acc, "n_val": len(cv.val)})
    t = pd.DataFrame(rows)
    if len(t):
        t["chosen"] = t["val_log_loss"] == t["val_log_loss"].min()
    return t

