"""Notebook 05, the study's own lesion-aware models: candidates chosen on inner validation, late
fusion with the S0 recipe, and the chosen model against S0 over several training seeds.

Every candidate (:mod:`busi_study.models.lesion_models`) runs the same grouped folds; the one with
the lowest pooled inner-validation log loss is evaluated on its out-of-fold test predictions and
written like every model of the study (fold models, final model and card). A "better than S0" claim
needs the paired group-bootstrap CI to exclude 0 for every training seed (docs/protocol.md §5).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data.arrays import labels_and_groups
from ..data.store import ProcessedData, atomic_path, write_json
from ..evaluation.bootstrap import paired_bootstrap_difference
from ..evaluation.evaluate import Evaluation, arrays, evaluate, validation_scores
from ..evaluation.fusion import late_fusion
from ..models.crops import crop as crop_image
from ..models.experiment import CVResult, Experiment
from ..models.lesion_models import (
    CandidateExperiment,
    CandidateRecipe,
    FinetunedAttentionExperiment,
    candidate_cv,
    export_classifier,
    export_two_stream,
    frozen_top,
    masks_at,
)
from ..models.recipes import backbone_kwargs, s0_recipe
from ..models.registry import weights_available
from ..models.training import TrainConfig
from ..params import BootstrapParams, ModelParams, S0Params, S1Params
from ..results import ResultsStore
from ..timing import timed, timed_iter
from .model_run import ModelRun, final_epochs, model_card, write_results
from .s1_pipeline import CropRun


def candidate_recipes(s1: S1Params, s0: S0Params, models: ModelParams, augment) -> list[CandidateRecipe]:
    """One recipe per ``s1_candidates`` entry: on the segmenter's backbone (frozen, one view), or for
    ``attention_ft`` on the S0 recipe's network, fine-tuned with S0's settings."""
    backbone = s1.seg.backbone
    suffix = f"-a{models.mobilenet_alpha}" if backbone == "mobilenet_v2" else ""
    out = []
    for kind in s1.candidates:
        base = s0_recipe(s0, models, augment) if kind == "attention_ft" else None
        head_train = TrainConfig(epochs=s1.head.epochs, batch_size=s1.head.batch_size, learning_rate=s1.head.learning_rate,
                                 patience=s1.head.patience, class_weight=models.class_weight)
        out.append(CandidateRecipe(
            name=f"lesion_aware-{kind}-{backbone}{suffix}" + (f"-b{s0.unfreeze_blocks}" if base else ""), kind=kind,
            backbone=base.backbone if base else backbone, input_size=s0.input_size,
            crop_size=s1.hires_size if kind == "two_stream_hires" else s0.input_size,
            train=base.train if base else head_train, dropout=s0.dropout, attention_weight=s1.attention_weight,
            backbone_kwargs=base.backbone_kwargs if base else backbone_kwargs(backbone, models.mobilenet_alpha),
            weights=models.weights, preprocessing="none", finetune_from=base))
    return out


@dataclass
class CandidateSearch:
    table: pd.DataFrame                  # validation scores of every candidate (the choice is made on these)
    chosen: CandidateRecipe | None
    run: ModelRun | None = None
    skipped: str | None = None
    seed: int | None = None              # the training (and split) seed of the search's CVs


@timed("lesion-aware candidates")
def run_candidates(s1: S1Params, s0: S0Params, models: ModelParams, augment, crop: CropRun | None, store: ProcessedData,
                   results: ResultsStore, *, seed: int, bootstrap: BootstrapParams, progress: bool = True) -> CandidateSearch:
    """Grouped CV of every candidate; the one with the lowest pooled inner-validation log loss is
    evaluated on the out-of-fold test predictions, written like every model and (attention) exported."""

    splits = store.splits_of(seed)
    recipes = candidate_recipes(s1, s0, models, augment)
    if not recipes:
        return CandidateSearch(pd.DataFrame(), None, skipped="no candidates (s1_candidates: [])")
    ok, why = weights_available(recipes[0].backbone, recipes[0].weights, recipes[0].input_size, **recipes[0].backbone_kwargs)
    if not ok:
        return CandidateSearch(pd.DataFrame(), None, skipped=why)
    rows, cvs = [], {}
    for r in recipes:
        if r.kind in ("two_stream", "two_stream_hires") and (crop is None or crop.source is None):
            rows.append({"candidate": r.name, "kind": r.kind, "skipped": "no predicted-lesion crops (segmenter or crop classifier skipped)"})
            continue
        ok, why = weights_available(r.backbone, r.weights, r.crop_size, **r.backbone_kwargs)
        if not ok:
            rows.append({"candidate": r.name, "kind": r.kind, "skipped": why})
            continue
        t0 = time.perf_counter()
        cv = candidate_cv(r, store, splits, seed=seed, source=crop.source if crop else None,
                          margin=crop.margin if crop else None, progress=progress)
        cvs[r.name] = cv
        loss, acc = validation_scores(cv.val)
        rows.append({"candidate": r.name, "kind": r.kind, "val_log_loss": loss, "val_accuracy": acc,
                     "n_val": len(cv.val), "seconds": round(time.perf_counter() - t0, 1)})
    table = pd.DataFrame(rows)
    scored = table.dropna(subset=["val_log_loss"]) if "val_log_loss" in table else table.iloc[0:0]
    if not len(scored):
        return CandidateSearch(table, None, skipped="no candidate could run")
    best = scored.loc[scored["val_log_loss"].idxmin(), "candidate"]
    table["chosen"] = table["candidate"] == best
    chosen = next(r for r in recipes if r.name == best)
    cv = cvs[best]
    groups = store.read("groups")
    conflicts = set(groups.loc[groups["label_conflict"], "image_id"])
    ev = evaluate(cv.oof, cv.val, conflict_ids=conflicts, n_resamples=bootstrap.resamples, seed=bootstrap.seed)
    run = ModelRun(chosen, results.model_dir(chosen.name), cv=cv, evaluation=ev)
    run.timing = {"prepare_s": 0.0, "cv_s": float(table.loc[table["chosen"], "seconds"].iloc[0]),
                  "per_fold_s": cv.timing["seconds"].tolist()}
    if chosen.kind == "attention":
        _save_attention_models(chosen, cv, ev, results, store, seed=seed, bootstrap=bootstrap, export=models.export_models, run=run)
    elif chosen.kind == "attention_ft":
        _save_finetuned_attention_models(chosen, cv, ev, results, store, seed=seed, bootstrap=bootstrap,
                                         export=models.export_models, run=run)
    elif models.export_models and crop is not None and crop.final_boxes is not None:
        _export_two_stream(chosen, cv, ev, crop, results, store, seed=seed, bootstrap=bootstrap, run=run)
    write_results(run, store, results, seed=seed, models=models, bootstrap=bootstrap,
                  extra={"candidate_search": table.to_dict(orient="records"),
                         "choice": "lowest pooled inner-validation log loss (outer test folds unused)"})
    return CandidateSearch(table, chosen, run, seed=seed)


@timed("fold models + final model {recipe.name}")
def _save_attention_models(recipe: CandidateRecipe, cv: CVResult, ev: Evaluation, results: ResultsStore,
                           store: ProcessedData, *, seed: int, bootstrap: BootstrapParams, export: bool, run: ModelRun) -> None:
    """Fold models (image → probabilities, for the explanations) and the final model trained on all images."""

    whole, preprocess, backbone = frozen_top(store, recipe.backbone, recipe.backbone_kwargs or {}, recipe.weights,
                                             recipe.input_size, seed=seed)
    for k, fm in enumerate(cv.fold_models):
        with atomic_path(results.fold_model_path(recipe.name, k)) as tmp:
            export_classifier(recipe, fm.head, preprocess, backbone).save(tmp)
    if not export:
        return
    t0 = time.perf_counter()

    ex = CandidateExperiment(recipe, labels_and_groups(store), whole, masks_at(store, recipe.input_size, whole.shape[1]), None,
                             progress=False)
    epochs = final_epochs(cv)
    fm = ex.fit(np.arange(len(ex.y)), None, seed + 99, epochs=epochs)
    path = results.exported_model_path(recipe.name)
    with atomic_path(path) as tmp:
        export_classifier(recipe, fm.head, preprocess, backbone).save(tmp)
    write_json(model_card(recipe, ev, store, epochs, n_splits=int(cv.oof["fold"].nunique()), seed=seed, bootstrap=bootstrap,
                          val=cv.val), path.with_suffix(".json"))
    run.exported = path
    run.timing["final_model_s"] = round(time.perf_counter() - t0, 1)


@timed("late fusion with S0")
def late_fusion_with_s0(results: ResultsStore, model: str, *, bootstrap: BootstrapParams
                        ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Candidate (e) without training: the S0 recipe's and ``model``'s saved predictions averaged,
    p = w·p_S0 + (1 − w)·p_model, w chosen on inner validation. Returns (validation scores per w,
    paired fused − S0 on the test folds, a one-line summary or the reason it could not run)."""

    s0 = next((n for n in results.trained_names() if n.startswith("s0_finetune-")), None)
    if s0 is None:
        return pd.DataFrame(), pd.DataFrame(), "no S0-recipe results in this run (notebook 04 not run): late fusion skipped"
    a, b = results.load(s0), results.load(model)
    if a.val is None or b.val is None:
        return pd.DataFrame(), pd.DataFrame(), "no inner-validation predictions to choose the weight on: late fusion skipped"
    fu = late_fusion(a.val, a.oof, b.val, b.oof, n_resamples=bootstrap.resamples, seed=bootstrap.seed)
    paired = fu.paired.rename(columns={"a": "fused", "b": "s0"}).assign(w_s0=fu.weight, s0_model=s0, other=model)
    acc = paired.set_index("metric").loc["accuracy"]
    text = (f"Late fusion {s0} + {model}: weight of S0 chosen on validation **{fu.weight:g}**; on the test folds fused − S0 "
            f"accuracy {acc['diff']:+.3f} [{acc['ci_low']:+.3f}, {acc['ci_high']:+.3f}]")
    return fu.validation.rename(columns={"w_base": "w_s0"}), paired, text


@timed("fold models + final model {recipe.name}")
def _save_finetuned_attention_models(recipe: CandidateRecipe, cv: CVResult, ev: Evaluation, results: ResultsStore,
                                     store: ProcessedData, *, seed: int, bootstrap: BootstrapParams, export: bool,
                                     run: ModelRun) -> None:
    """attention_ft: fold models (image → probabilities) and the final model on all images, as the S0 recipe's."""

    ex = FinetunedAttentionExperiment(recipe, store, seed=seed, progress=False).prepare()  # the cached views again
    for k, fm in enumerate(cv.fold_models):
        with atomic_path(results.fold_model_path(recipe.name, k)) as tmp:
            ex.full_model(fm).save(tmp)
    if not export:
        return
    t0 = time.perf_counter()
    epochs = final_epochs(cv)
    fm = ex.fit(np.arange(len(ex.y)), None, seed + 99, epochs=epochs)
    path = results.exported_model_path(recipe.name)
    with atomic_path(path) as tmp:
        ex.full_model(fm).save(tmp)
    write_json(model_card(recipe, ev, store, epochs, n_splits=int(cv.oof["fold"].nunique()), seed=seed, bootstrap=bootstrap,
                          val=cv.val), path.with_suffix(".json"))
    run.exported = path
    run.timing["final_model_s"] = round(time.perf_counter() - t0, 1)


@timed("seed comparison")
def seed_comparison(search: CandidateSearch, s1: S1Params, s0: S0Params, models: ModelParams, augment, crop: CropRun | None,
                    store: ProcessedData, *, split_seed: int, bootstrap: BootstrapParams, progress: bool = True
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chosen candidate against the S0 recipe, each trained with every seed of ``s1_seeds`` on the
    same splits. Returns (per seed: both models' accuracy / macro AUC and the paired difference with its
    group-bootstrap CI; summary: mean ± sd across seeds)."""

    if search.chosen is None or not s1.seeds:
        return pd.DataFrame(), pd.DataFrame()
    splits = store.splits_of(split_seed)
    s0_ex = Experiment(s0_recipe(s0, models, augment), store, seed=split_seed, progress=False).prepare()
    rows = []
    for s in timed_iter(s1.seeds, "seed {}"):
        t0 = time.perf_counter()
        reuse = s == split_seed == search.seed and search.run is not None  # the very CV the search ran: same call, same numbers
        a = search.run.cv.oof if reuse else candidate_cv(search.chosen, store, splits, seed=s, view_seed=split_seed, progress=False,
                                                         source=crop.source if crop else None, margin=crop.margin if crop else None).oof
        t1 = time.perf_counter()
        b = s0_ex.cross_validate(splits, seed=s, tta=False).oof
        seconds = {"lesion_aware_s": float(search.run.timing["cv_s"]) if reuse else round(t1 - t0, 1),
                   "s0_s": round(time.perf_counter() - t1, 1)}
        y, pa, g = arrays(a)
        _, pb, _ = arrays(b)
        d = paired_bootstrap_difference(y, pa, pb, g, metrics=("accuracy", "macro_auc", "benign_vs_malignant_auc"),
                                        n_resamples=bootstrap.resamples, seed=bootstrap.seed)
        for _, r in d.iterrows():
            rows.append({"seed": s, "metric": r["metric"], "lesion_aware": r["a"], "s0": r["b"], "diff": r["diff"],
                         "ci_low": r["ci_low"], "ci_high": r["ci_high"], **seconds})
        if progress:
            acc = d.set_index("metric").loc["accuracy"]
            print(f"  seed {s}: accuracy {acc['a']:.3f} vs S0 {acc['b']:.3f} (diff {acc['diff']:+.3f}, "
                  f"95 % CI {acc['ci_low']:+.3f} to {acc['ci_high']:+.3f}; {seconds['lesion_aware_s']:.0f} s + "
                  f"{seconds['s0_s']:.0f} s)", flush=True)
    per_seed = pd.DataFrame(rows)
    summary = per_seed.groupby("metric").agg(lesion_aware_mean=("lesion_aware", "mean"), lesion_aware_sd=("lesion_aware", "std"),
                                             s0_mean=("s0", "mean"), s0_sd=("s0", "std"), diff_mean=("diff", "mean"),
                                             diff_sd=("diff", "std")).reset_index()
    excl = per_seed.assign(ex=(per_seed["ci_low"] > 0) | (per_seed["ci_high"] < 0)).groupby("metric")["ex"].sum()
    summary["seeds_ci_excludes_0"] = summary["metric"].map(excl).astype(int)
    summary["n_seeds"] = len(s1.seeds)
    return per_seed, summary


@timed("final model {recipe.name}")
def _export_two_stream(recipe: CandidateRecipe, cv: CVResult, ev: Evaluation, crop: CropRun, results: ResultsStore,
                       store: ProcessedData, *, seed: int, bootstrap: BootstrapParams, run: ModelRun) -> None:
    """Final two-stream model: its head trained on all images (whole image + the crops of the crop
    pipeline's final segmenter, the folds' median epochs), saved as a two-input classifier whose card
    names that segmenter, so ``predict`` runs segment → crop → classify."""

    t0 = time.perf_counter()
    kw = recipe.backbone_kwargs or {}
    whole, pre, bb = frozen_top(store, recipe.backbone, kw, recipe.weights, recipe.input_size, seed=seed)
    crops = np.stack([crop_image(im, b, recipe.crop_size) for im, b in zip(crop.source.originals, crop.final_boxes)])
    cfeat, pre_c, bb_c = frozen_top(store, recipe.backbone, kw, recipe.weights, recipe.crop_size, images=crops, seed=seed)
    ex = CandidateExperiment(recipe, labels_and_groups(store), whole, None, cfeat.mean(axis=(1, 2)), progress=False)
    epochs = final_epochs(cv)
    fm = ex.fit(np.arange(len(ex.y)), None, seed + 99, epochs=epochs)
    path = results.exported_model_path(recipe.name)
    with atomic_path(path) as tmp:
        export_two_stream(recipe, fm.head, pre, bb, pre_c, bb_c).save(tmp)
    crop_card = json.loads(crop.run.exported.with_suffix(".json").read_text())
    card = model_card(recipe, ev, store, epochs, n_splits=int(cv.oof["fold"].nunique()), seed=seed, bootstrap=bootstrap,
                      val=cv.val)
    card["input"]["resize"] = ("two inputs: the whole image (plain resize) and the crop around the lesion predicted by "
                               f"the segmenter of {crop.run.recipe.name} ({recipe.crop_size}px)")
    card["pipeline"] = {**crop_card["pipeline"], "inputs": ["image", "crop"], "crop_size": recipe.crop_size}
    write_json(card, path.with_suffix(".json"))
    run.exported = path
    run.timing["final_model_s"] = round(time.perf_counter() - t0, 1)
