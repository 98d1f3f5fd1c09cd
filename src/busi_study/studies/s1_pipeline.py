"""Notebook 05, S1's pipeline: enhancement ablation, lesion segmenter, classifier of the predicted lesion.

Each step is one call from the notebook; results go through the study's :class:`ResultsStore`:
the crop classifier is a model like any other (``results/<name>/``: out-of-fold predictions,
metrics with CIs, fold models, exported final model with its card), and additionally keeps the
box of every crop per fold (``boxes.csv``) and its segmenter (``models/<name>.segmenter.keras``).
The segmenter's own measures are written to ``results_segmentation/<name>/``.

For outer fold ``k`` the crops come from fold ``k``'s segmenter (:class:`models.crops.CropSource`);
the crop margin is chosen on the inner validation parts only (pooled validation log loss of a cheap
frozen-feature head on one view), never on the outer test folds. ``s1_protocol`` reruns S1's own
random image-level split (docs/protocol.md §6).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from ..data.arrays import load_originals
from ..data.store import ProcessedData, atomic_path, write_json
from ..errors import ParameterError
from ..evaluation.bootstrap import paired_bootstrap_difference
from ..evaluation.evaluate import Evaluation, arrays, evaluate, validation_scores
from ..evaluation.metrics import classification_metrics
from ..models.crops import CropSource, boxes_of, crop_cv
from ..models.crops import crop as crop_image
from ..models.experiment import CVResult, Experiment
from ..models.recipes import Recipe, augment_config, backbone_kwargs, s0_recipe, train_config
from ..models.registry import get_spec, weights_available
from ..models.segmentation import (
    SegCV,
    SegmentationExperiment,
    SegmenterRecipe,
    per_image_table,
    shortcut_table,
    summary_table,
    upsample,
)
from ..models.training import TrainConfig
from ..params import BootstrapParams, ModelParams, S0Params, S1Params
from ..results import ResultsStore
from ..timing import timed, timed_iter
from .model_run import ModelRun, check_weights, data_hashes, final_epochs, model_card, write_results


# ---------------------------------------------------------------- recipes
def segmenter_recipe(s1: S1Params, models: ModelParams, preprocessing: str) -> SegmenterRecipe:
    seg = s1.seg
    if seg.input_size % 32:
        raise ParameterError(f"s1_seg_input_size must be a multiple of 32 (the encoder's output stride), got "
                             f"{seg.input_size} — e.g. 224")
    kw = backbone_kwargs(seg.backbone, models.mobilenet_alpha)
    suffix = f"-a{models.mobilenet_alpha}" if seg.backbone == "mobilenet_v2" else ""
    return SegmenterRecipe(
        name=f"s1_segmenter-{seg.backbone}{suffix}", backbone=seg.backbone, input_size=seg.input_size,
        train=TrainConfig(epochs=seg.train.epochs, batch_size=seg.train.batch_size, learning_rate=seg.train.learning_rate,
                          patience=seg.train.patience, class_weight=False),
        decoder_channels=seg.decoder_channels, n_views=seg.views, threshold=seg.threshold, min_area=seg.min_area,
        backbone_kwargs=kw, weights=models.weights, preprocessing=preprocessing)


def crop_recipe(s1: S1Params, s0: S0Params, models: ModelParams, augment, backbone: str) -> Recipe:
    """S1's classifier of the predicted-lesion crop: S0's two-phase fine-tuning (same settings) with
    ``s1_unfreeze_blocks`` blocks unfrozen (null: all of them, end to end as S1)."""
    blocks = s1.unfreeze_blocks or len(get_spec(backbone).blocks)
    suffix = f"-a{models.mobilenet_alpha}" if backbone == "mobilenet_v2" else ""
    return Recipe(
        name=f"s1_crop-{backbone}{suffix}-b{blocks}", kind="finetune", input_size=s0.input_size,
        train=train_config(s0.head, models.class_weight), source_study="S1", backbone=backbone,
        backbone_kwargs=backbone_kwargs(backbone, models.mobilenet_alpha), weights=models.weights, head="gap",
        head_dropout=s0.dropout, finetune=train_config(s0.finetune, models.class_weight), unfreeze_blocks=blocks,
        n_views=models.n_views, augment=augment_config(augment), preprocessing="none")


def margin_proxy(s1: S1Params, s0: S0Params, models: ModelParams, augment, backbone: str, input_size: int) -> Recipe:
    """The cheap head the crop margin is chosen with: GAP head on the frozen backbone, one view."""
    return Recipe(name="s1_margin_proxy", kind="frozen_head", input_size=input_size,
                  train=train_config(s1.head, models.class_weight), source_study="S1", backbone=backbone,
                  backbone_kwargs=backbone_kwargs(backbone, models.mobilenet_alpha), weights=models.weights,
                  head="gap", head_dropout=s0.dropout, n_views=1, augment=augment_config(augment), preprocessing="none")


# ---------------------------------------------------------------- enhancement ablation
@timed("enhancement ablation")
def enhancement_ablation(options: list[str], s0: S0Params, models: ModelParams, augment, store: ProcessedData,
                         splits: pd.DataFrame, *, seed: int, bootstrap: BootstrapParams, progress: bool = True
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The S0 recipe under grouped CV once per enhancement option. Returns (metrics per option with
    CIs and wall time, paired group-bootstrap differences option − none)."""
    base = s0_recipe(s0, models, augment)
    ok, why = check_weights(base)
    if not ok:
        return pd.DataFrame([{"enhancement": "all", "skipped": why}]), pd.DataFrame()
    rows, preds = [], {}
    for opt in options:
        t0 = time.perf_counter()
        recipe = replace(base, name=f"{base.name}-{opt}", preprocessing=opt)
        cv = Experiment(recipe, store, seed=seed, progress=progress).prepare().cross_validate(splits, tta=False)
        ev = evaluate(cv.oof, cv.val, n_resamples=bootstrap.resamples, seed=bootstrap.seed)
        preds[opt] = cv.oof
        pooled = ev.pooled.set_index("metric")
        row = {"enhancement": opt, "n": len(cv.oof), "seconds": round(time.perf_counter() - t0, 1)}
        for m in ("accuracy", "macro_auc", "benign_vs_malignant_auc", "macro_f1"):
            if m in pooled.index:
                row.update({m: pooled.loc[m, "value"], f"{m}_ci_low": pooled.loc[m, "ci_low"],
                            f"{m}_ci_high": pooled.loc[m, "ci_high"]})
        rows.append(row)
        if progress:
            print(f"  enhancement {opt}: accuracy {row.get('accuracy', float('nan')):.3f}, "
                  f"macro AUC {row.get('macro_auc', float('nan')):.3f}, {row['seconds']:.0f} s", flush=True)
    diffs = []
    if "none" in preds:
        y, p0, g = arrays(preds["none"])
        for opt in options:
            if opt == "none":
                continue
            _, p1, _ = arrays(preds[opt])
            d = paired_bootstrap_difference(y, p1, p0, g, metrics=("accuracy", "macro_auc", "auc_malignant"),
                                            n_resamples=bootstrap.resamples, seed=bootstrap.seed)
            diffs.append(d.assign(enhancement=opt, versus="none"))
    diff = pd.concat(diffs, ignore_index=True) if diffs else pd.DataFrame()
    if len(diff):
        diff = diff[["enhancement", "versus"] + [c for c in diff.columns if c not in ("enhancement", "versus")]]
    return pd.DataFrame(rows), diff


# ---------------------------------------------------------------- segmenter
@dataclass
class SegRun:
    recipe: SegmenterRecipe
    skipped: str | None = None
    experiment: SegmentationExperiment | None = None
    cv: SegCV | None = None
    per_image: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    shortcut: pd.DataFrame | None = None
    timing: dict = field(default_factory=dict)


@timed("segmenter {recipe.name}")
def run_segmenter(recipe: SegmenterRecipe, store: ProcessedData, results: ResultsStore, *, seed: int,
                  bootstrap: BootstrapParams, progress: bool = True) -> SegRun:
    """Grouped CV of the segmenter; out-of-fold maps measured at the input size against the masks."""
    seg_store = results.segmentation
    ok, why = weights_available(recipe.backbone, recipe.weights, recipe.input_size, **recipe.backbone_kwargs)
    if not ok:
        seg_store.write_skipped(recipe.name, {"reason": why, "recipe": recipe.as_dict()})
        return SegRun(recipe, skipped=why)
    t0 = time.perf_counter()
    ex = SegmentationExperiment(recipe, store, seed=seed, progress=progress).prepare()
    splits = store.splits_of(seed)
    cv = ex.cross_validate(splits)
    t_cv = time.perf_counter() - t0
    full = upsample(cv.oof, recipe.input_size)
    per_image = per_image_table(full, ex.masks_full, ex.table, recipe.threshold, recipe.min_area)
    per_image.insert(1, "fold", cv.test_fold)
    run = SegRun(recipe, experiment=ex, cv=cv, per_image=per_image,
                 summary=summary_table(per_image, bootstrap.resamples, bootstrap.seed), shortcut=shortcut_table(per_image))
    run.timing = {"total_s": round(t_cv, 1), **ex.timing, "per_fold_s": cv.timing["seconds"].tolist(),
                  "best_epochs": cv.timing["best_epoch"].tolist()}
    record = {"model": recipe.name, "title": recipe.title, "recipe": recipe.as_dict(), "n": int(len(per_image)),
              "summary": run.summary.to_dict(orient="records"), "shortcut_rule_accuracy": run.shortcut.attrs["rule_accuracy"],
              "timing": run.timing, "protocol": f"grouped {len(cv.timing)}-fold CV, seed {seed}, out-of-fold maps at "
              f"{recipe.input_size}px", **data_hashes(store)}
    seg_store.write_trained(recipe.name, {"per_image": per_image, "summary": run.summary, "history": cv.history,
                                          "shortcut": run.shortcut}, record)
    return run


# ---------------------------------------------------------------- crop classifier (S1's pipeline)
@dataclass
class MaskSource:
    """Where the crop pipeline's lesion maps come from (S1's segmentation step): every image's map from
    each outer fold's segmenter (``cv.fold_maps``, on the stretched image) and, for the exported
    pipeline, ``final()`` → (every image's map from the final segmenter, its epochs, a function that
    saves the segmenter file ``predict`` runs). ``experiment`` gives the maps' ``recipe`` (threshold,
    min_area, input_size, as_dict), ``table``, ``store`` and ``seed``."""

    name: str
    experiment: object
    cv: object
    final: Callable[[], tuple[np.ndarray, int | None, Callable[[Path], None]]]
    preprocessing: str
    fit: str
    cv_seconds: float
    skipped: str | None = None

    @property
    def recipe(self):
        return self.experiment.recipe


def mask_source(seg: SegRun, seed: int) -> MaskSource:
    """The frozen-encoder segmenter as the crop pipeline's source; its final segmenter is trained on
    all images for the folds' median early-stopping epoch when the pipeline is exported."""
    if seg.skipped:
        return MaskSource(seg.recipe.name, None, None, lambda: (None, None, None), seg.recipe.preprocessing, "stretch", 0.0,
                          skipped=seg.skipped)

    def final():
        ex = seg.experiment
        epochs = max(1, int(round(float(np.median(seg.cv.timing["best_epoch"])))))
        dec, _, _, _ = ex.fit(np.arange(len(ex.table)), None, seed + 99, epochs=epochs)

        def save(path: Path) -> None:
            with atomic_path(path) as tmp:
                ex.full_segmenter(dec).save(tmp)

        return ex.predict(dec), epochs, save

    return MaskSource(seg.recipe.name, seg.experiment, seg.cv, final, preprocessing=seg.recipe.preprocessing, fit="stretch",
                      cv_seconds=seg.timing["total_s"])


@dataclass
class CropRun:
    run: ModelRun
    margin: float | None = None
    margins: pd.DataFrame | None = None
    boxes: pd.DataFrame | None = None
    source: CropSource | None = None
    final_boxes: np.ndarray | None = None   # boxes from the final segmenter (all images), for other pipelines' final models


@timed("S1 crop classifiers")
def run_crop_classifier(s1: S1Params, s0: S0Params, models: ModelParams, augment, seg: MaskSource, store: ProcessedData,
                        results: ResultsStore, *, seed: int, bootstrap: BootstrapParams, progress: bool = True) -> list[CropRun]:
    """One S1-pipeline classifier per backbone of ``s1_classifier_backbones`` (skipped visibly
    without weights) on the crops of ``seg``'s lesion maps: margin chosen on inner validation,
    grouped CV on each fold's crops, evaluated, exported with the segmenter."""
    out = []
    splits = store.splits_of(seed)
    for backbone in s1.classifier_backbones:
        recipe = crop_recipe(s1, s0, models, augment, backbone)
        ok, why = check_weights(recipe)
        if seg.skipped and ok:
            ok, why = False, f"no segmenter ({seg.skipped})"
        if not ok:
            results.write_skipped(recipe.name, {"reason": why, "recipe": recipe.as_dict()})
            out.append(CropRun(ModelRun(recipe, results.model_dir(recipe.name), skipped=why)))
            continue
        source = CropSource(seg.experiment, seg.cv, load_originals(store, seg.recipe.preprocessing),
                            sorted(int(f) for f in splits["fold"].unique()))
        t0 = time.perf_counter()
        margin, margins = choose_margin(margin_proxy(s1, s0, models, augment, backbone, recipe.input_size), source, splits,
                                        s1.crop_margins, seed=seed, progress=progress)
        t_margin = time.perf_counter() - t0
        t0 = time.perf_counter()
        cv = crop_cv(recipe, source, splits, margin, seed=seed, tta=models.tta, progress=progress)
        t_cv = time.perf_counter() - t0
        groups = store.read("groups")
        conflicts = set(groups.loc[groups["label_conflict"], "image_id"])
        ev = evaluate(cv.oof, cv.val, tta=cv.oof_tta, conflict_ids=conflicts, n_resamples=bootstrap.resamples,
                      seed=bootstrap.seed)
        # the networks that turn a fold model into an exportable classifier (the weights come from the fold model)
        ex0 = Experiment(recipe, store, seed=seed, progress=False).prepare(views=False)  # networks only: no views
        run = ModelRun(recipe, results.model_dir(recipe.name), experiment=ex0, cv=cv, evaluation=ev)
        run.timing = {"prepare_s": round(t_margin, 1), "margin_choice_s": round(t_margin, 1), "cv_s": round(t_cv, 1),
                      "segmenter_cv_s": seg.cv_seconds,
                      "per_fold_s": cv.timing["seconds"].tolist()}
        for k, fm in enumerate(cv.fold_models):
            with atomic_path(results.fold_model_path(recipe.name, k)) as tmp:
                ex0.full_model(fm).save(tmp)
        boxes = source.box_table(margin)
        pipeline = {"kind": "crop of the predicted lesion", "segmenter": seg.recipe.as_dict(), "segmenter_name": seg.name,
                    "margin": margin,
                    "margins_tried": margins.to_dict(orient="records"), "crop_from": "the original-resolution image"}
        if models.export_models:
            t0 = time.perf_counter()
            run.exported, final_boxes = export_pipeline(seg, cv, ev, recipe, source, margin, results, store, seed=seed,
                                                        bootstrap=bootstrap, pipeline=pipeline)
            run.timing["final_model_s"] = round(time.perf_counter() - t0, 1)
        write_results(run, store, results, seed=seed, models=models, bootstrap=bootstrap,
                      extra={"pipeline": pipeline}, extra_tables={"boxes": boxes, "margins": margins})
        out.append(CropRun(run, margin, margins, boxes, source, final_boxes if models.export_models else None))
    return out


@timed("final pipeline {recipe.name}")
def export_pipeline(seg: MaskSource, cv: CVResult, ev: Evaluation, recipe: Recipe, source: CropSource, margin: float,
                    results: ResultsStore, store: ProcessedData, *, seed: int, bootstrap: BootstrapParams,
                    pipeline: dict) -> tuple[object, np.ndarray]:
    """Final segmenter (``seg.final()``) → crops of every image → final classifier (all images, the
    folds' median epochs); both saved, the card describes the pipeline."""
    maps, seg_epochs, save_segmenter = seg.final()
    n = len(maps)
    boxes, _ = boxes_of(maps, seg.recipe.threshold, seg.recipe.min_area, margin)
    crops = np.stack([crop_image(im, b, recipe.input_size) for im, b in zip(source.originals, boxes)])
    ex = Experiment(recipe, store, seed=seed, progress=False, images=crops).prepare()
    epochs = final_epochs(cv)
    fm = ex.fit(np.arange(n), None, seed + 99, epochs=epochs)
    path = results.exported_model_path(recipe.name)
    seg_path = path.with_name(f"{path.stem}.segmenter.keras")
    save_segmenter(seg_path)
    with atomic_path(path) as tmp:
        ex.full_model(fm).save(tmp)
    card = model_card(recipe, ev, store, epochs, n_splits=int(cv.oof["fold"].nunique()), seed=seed, bootstrap=bootstrap,
                      val=cv.val)
    card["input"]["resize"] = ("crop of the lesion predicted by the segmenter (box of its largest region, widened by "
                               f"{margin:g} of its size on each side, whole image when nothing is found), cut from the "
                               "original image, then a plain resize to a square (cv2.INTER_AREA)")
    card["pipeline"] = {**pipeline, "segmenter_file": seg_path.name, "segmenter_epochs": seg_epochs,
                        "segmenter_input_size": seg.recipe.input_size, "segmenter_fit": seg.fit,
                        "threshold": seg.recipe.threshold,
                        "min_area": seg.recipe.min_area}
    write_json(card, path.with_suffix(".json"))
    return path, boxes


def claims_table(s1_claims: dict, crop_runs: list[CropRun], protocol: pd.DataFrame | None) -> pd.DataFrame:
    """S1's claims beside S1's protocol (our pipeline, random split) and the study's grouped CV."""
    rows = []
    for cr in crop_runs:
        if cr.run.skipped:
            continue
        pooled = cr.run.evaluation.pooled.set_index("metric")
        for claim, reported in s1_claims.items():
            row = {"model": cr.run.recipe.name, "claim": claim, "reported": reported}
            # S1's protocol is scored on its random test part only (no validation score is kept)
            if claim == "test_accuracy" and protocol is not None and len(protocol) and "accuracy" in protocol:
                row.update(s1_protocol_mean=protocol["accuracy"].mean(), s1_protocol_min=protocol["accuracy"].min(),
                           s1_protocol_max=protocol["accuracy"].max())
            row.update(grouped_cv=pooled.loc["accuracy", "value"], grouped_cv_ci_low=pooled.loc["accuracy", "ci_low"],
                       grouped_cv_ci_high=pooled.loc["accuracy", "ci_high"])
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- margin choice and S1's own protocol
@timed("margin choice ({proxy.name})")
def choose_margin(proxy: Recipe, source: CropSource, splits: pd.DataFrame, margins: list[float], *, seed: int,
                  progress: bool = True) -> tuple[float, pd.DataFrame]:
    """The margin with the lowest pooled inner-validation log loss of ``proxy`` (a frozen-feature
    head on one view); the table lists every candidate's validation scores (test folds unused)."""
    rows = []
    for m in timed_iter(margins, "margin {}"):
        t0 = time.perf_counter()
        cv = crop_cv(replace(proxy, n_views=1), source, splits, m, seed=seed, tta=False, progress=False)
        loss, acc = validation_scores(cv.val)
        rows.append({"margin": m, "val_log_loss": loss, "val_accuracy": acc, "n_val": len(cv.val),
                     "seconds": round(time.perf_counter() - t0, 1)})
        if progress:
            print(f"  margin {m}: validation log loss {rows[-1]['val_log_loss']:.4f}, accuracy {acc:.3f}", flush=True)
    table = pd.DataFrame(rows)
    best = float(table.loc[table["val_log_loss"].idxmin(), "margin"])
    table["chosen"] = table["margin"] == best
    return best, table


@timed("S1 protocol")
def s1_protocol(seg: SegmentationExperiment, recipe: Recipe, originals: list[np.ndarray], margin: float, *,
                test_fraction: float, val_fraction: float, repeats: int, epochs: list[int], seed: int) -> pd.DataFrame:
    """S1's own protocol: a random *image-level* split (repeated), segmenter and classifier trained
    on the training part, the classifier for a fixed number of epochs per phase (S1: 3), tested on
    the random test part; the test images with a near-duplicate in training are counted."""
    y = seg.table["label_idx"].to_numpy()
    g = seg.table["group_id"].to_numpy()
    idx = np.arange(len(y))
    rows = []
    for r in timed_iter(range(repeats), "repeat {}"):
        s = seed + r
        t0 = time.perf_counter()
        train_val, test = train_test_split(idx, test_size=test_fraction, random_state=s, stratify=y)
        train, val = train_test_split(train_val, test_size=val_fraction, random_state=s, stratify=y[train_val])
        dec, _, _, _ = seg.fit(np.sort(train), np.sort(val), s + 300)
        maps = seg.predict(dec)
        boxes, _ = boxes_of(maps, seg.recipe.threshold, seg.recipe.min_area, margin)
        crops = np.stack([crop_image(im, b, recipe.input_size) for im, b in zip(originals, boxes)])
        ex = Experiment(recipe, seg.store, seed=s, progress=False, images=crops).prepare()
        fm = ex.fit(np.sort(train_val), None, s + 500, epochs=epochs)
        p = ex.predict(fm, np.sort(test))
        m = classification_metrics(y[np.sort(test)], p)
        rows.append({"repeat": r, "seed": s, "n_test": len(test), "epochs_per_phase": str(epochs),
                     "test_images_with_duplicate_in_training": int(np.isin(g[test], g[train_val]).sum()),
                     "seconds": round(time.perf_counter() - t0, 1), **m})
    return pd.DataFrame(rows).rename(columns={"auc_malignant": "malignant_auc"})
