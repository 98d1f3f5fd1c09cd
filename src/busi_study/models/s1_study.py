"""S1 in notebook 05: enhancement ablation, lesion segmenter, classifier of the predicted lesion.

Each step is one call from the notebook; results go through the study's :class:`ResultsStore`:
the crop classifier is a model like any other (``results/<name>/``: out-of-fold predictions,
metrics with CIs, fold models, exported final model with its card), and additionally keeps the
box of every crop per fold (``boxes.csv``) and its segmenter (``models/<name>.segmenter.keras``).
The segmenter's own measures are written to ``results_segmentation/<name>/``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..data.store import ProcessedData, atomic_path, write_json
from ..errors import ParameterError
from ..evaluation.bootstrap import paired_bootstrap_difference
from ..evaluation.evaluate import Evaluation, arrays, evaluate
from ..params import BootstrapParams, ModelParams, S0Params, S1Params
from ..results import ResultsStore
from .experiment import CVResult, Experiment
from .lesion_aware import CandidateRecipe
from .lesion_pipeline import CropSource, boxes_of, choose_margin, crop_cv, load_originals, val_scores
from .lesion_pipeline import crop as crop_image
from .model_run import ModelRun, check_weights, data_hashes, final_epochs, model_card, write_results
from .recipes import Recipe, augment_config, backbone_kwargs, s0_recipe, train_config
from .registry import get_spec, weights_available
from .segmentation import SegCV, SegmentationExperiment, SegmenterRecipe, per_image_table, shortcut_table, summary_table, upsample
from .training import TrainConfig


# ---------------------------------------------------------------- recipes
def segmenter_recipe(s1: S1Params, models: ModelParams, preprocessing: str = "none") -> SegmenterRecipe:
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
        n_views=models.n_views, augment=augment_config(augment))


def margin_proxy(s1: S1Params, models: ModelParams, augment, backbone: str, input_size: int) -> Recipe:
    """The cheap head the crop margin is chosen with: GAP head on the frozen backbone, one view."""
    return Recipe(name="s1_margin_proxy", kind="frozen_head", input_size=input_size,
                  train=train_config(s1.head, models.class_weight), source_study="S1", backbone=backbone,
                  backbone_kwargs=backbone_kwargs(backbone, models.mobilenet_alpha), weights=models.weights,
                  head="gap", head_dropout=0.2, n_views=1, augment=augment_config(augment))


# ---------------------------------------------------------------- enhancement ablation
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
    splits = store.read("splits")
    splits = splits[splits["seed"] == seed]
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
class CropRun:
    run: ModelRun
    margin: float | None = None
    margins: pd.DataFrame | None = None
    boxes: pd.DataFrame | None = None
    source: CropSource | None = None
    final_boxes: np.ndarray | None = None   # boxes from the final segmenter (all images), for other pipelines' final models


def run_crop_classifier(s1: S1Params, s0: S0Params, models: ModelParams, augment, seg: SegRun, store: ProcessedData,
                        results: ResultsStore, *, seed: int, bootstrap: BootstrapParams, progress: bool = True) -> list[CropRun]:
    """One S1-pipeline classifier per backbone of ``s1_classifier_backbones`` (skipped visibly
    without weights): margin chosen on inner validation, grouped CV on each fold's crops,
    evaluated, exported with the segmenter."""
    out = []
    splits = store.read("splits")
    splits = splits[splits["seed"] == seed]
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
        margin, margins = choose_margin(margin_proxy(s1, models, augment, backbone, recipe.input_size), source, splits,
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
        ex0 = Experiment(recipe, store, seed=seed, progress=False).prepare()
        run = ModelRun(recipe, results.model_dir(recipe.name), experiment=ex0, cv=cv, evaluation=ev)
        run.timing = {"prepare_s": round(t_margin, 1), "margin_choice_s": round(t_margin, 1), "cv_s": round(t_cv, 1),
                      "segmenter_cv_s": seg.timing["total_s"],
                      "per_fold_s": cv.timing["seconds"].tolist()}
        for k, fm in enumerate(cv.fold_models):
            with atomic_path(results.fold_model_path(recipe.name, k)) as tmp:
                ex0.full_model(fm).save(tmp)
        boxes = source.box_table(margin)
        pipeline = {"kind": "crop of the predicted lesion", "segmenter": seg.recipe.as_dict(), "margin": margin,
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


def export_pipeline(seg: SegRun, cv: CVResult, ev: Evaluation, recipe: Recipe, source: CropSource, margin: float,
                    results: ResultsStore, store: ProcessedData, *, seed: int, bootstrap: BootstrapParams,
                    pipeline: dict) -> tuple[object, np.ndarray]:
    """Final segmenter (all images, median early-stopping epoch of the folds) → crops of every image
    → final classifier (all images, the folds' median epochs); both saved, the card describes the pipeline."""
    ex_seg = seg.experiment
    seg_epochs = max(1, int(round(float(np.median(seg.cv.timing["best_epoch"])))))
    n = len(ex_seg.table)
    dec, _, _, _ = ex_seg.fit(np.arange(n), None, seed + 99, epochs=seg_epochs)
    maps = ex_seg.predict(dec)
    boxes, _ = boxes_of(maps, seg.recipe.threshold, seg.recipe.min_area, margin)
    crops = np.stack([crop_image(im, b, recipe.input_size) for im, b in zip(source.originals, boxes)])
    ex = Experiment(recipe, store, seed=seed, progress=False, images=crops).prepare()
    epochs = final_epochs(cv)
    fm = ex.fit(np.arange(n), None, seed + 99, epochs=epochs)
    path = results.exported_model_path(recipe.name)
    seg_path = path.with_name(f"{path.stem}.segmenter.keras")
    with atomic_path(seg_path) as tmp:
        ex_seg.full_segmenter(dec).save(tmp)
    with atomic_path(path) as tmp:
        ex.full_model(fm).save(tmp)
    card = model_card(recipe, ev, store, epochs, n_splits=int(cv.oof["fold"].nunique()), seed=seed, bootstrap=bootstrap,
                      val=cv.val)
    card["input"]["resize"] = ("crop of the lesion predicted by the segmenter (box of its largest region, widened by "
                               f"{margin:g} of its size on each side, whole image when nothing is found), cut from the "
                               "original image, then a plain resize to a square (cv2.INTER_AREA)")
    card["pipeline"] = {**pipeline, "segmenter_file": seg_path.name, "segmenter_epochs": seg_epochs,
                        "segmenter_input_size": seg.recipe.input_size, "threshold": seg.recipe.threshold,
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



# ---------------------------------------------------------------- lesion-aware candidates (ours)
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
            weights=models.weights, finetune_from=base))
    return out


@dataclass
class CandidateSearch:
    table: pd.DataFrame                  # validation scores of every candidate (the choice is made on these)
    chosen: CandidateRecipe | None
    run: ModelRun | None = None
    skipped: str | None = None


def run_candidates(s1: S1Params, s0: S0Params, models: ModelParams, augment, crop: CropRun | None, store: ProcessedData,
                   results: ResultsStore, *, seed: int, bootstrap: BootstrapParams, progress: bool = True) -> CandidateSearch:
    """Grouped CV of every candidate; the one with the lowest pooled inner-validation log loss is
    evaluated on the out-of-fold test predictions, written like every model and (attention) exported."""
    from .lesion_aware import candidate_cv

    splits = store.read("splits")
    splits = splits[splits["seed"] == seed]
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
        loss, acc = val_scores(cv)
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
    return CandidateSearch(table, chosen, run)


def _save_attention_models(recipe: CandidateRecipe, cv: CVResult, ev: Evaluation, results: ResultsStore,
                           store: ProcessedData, *, seed: int, bootstrap: BootstrapParams, export: bool, run: ModelRun) -> None:
    """Fold models (image → probabilities, for the explanations) and the final model trained on all images."""
    from .lesion_aware import CandidateExperiment, export_classifier, frozen_top, masks_at

    whole, preprocess, backbone = frozen_top(store, recipe.backbone, recipe.backbone_kwargs or {}, recipe.weights,
                                             recipe.input_size, seed=seed)
    for k, fm in enumerate(cv.fold_models):
        with atomic_path(results.fold_model_path(recipe.name, k)) as tmp:
            export_classifier(recipe, fm.head, preprocess, backbone).save(tmp)
    if not export:
        return
    t0 = time.perf_counter()
    from ..data.arrays import labels_and_groups

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


def late_fusion_with_s0(results: ResultsStore, model: str, *, bootstrap: BootstrapParams
                        ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Candidate (e) without training: the S0 recipe's and ``model``'s saved predictions averaged,
    p = w·p_S0 + (1 − w)·p_model, w chosen on inner validation. Returns (validation scores per w,
    paired fused − S0 on the test folds, a one-line summary or the reason it could not run)."""
    from ..evaluation.fusion import late_fusion

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


def _save_finetuned_attention_models(recipe: CandidateRecipe, cv: CVResult, ev: Evaluation, results: ResultsStore,
                                     store: ProcessedData, *, seed: int, bootstrap: BootstrapParams, export: bool,
                                     run: ModelRun) -> None:
    """attention_ft: fold models (image → probabilities) and the final model on all images, as the S0 recipe's."""
    from .lesion_aware import FinetunedAttentionExperiment

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


def seed_comparison(search: CandidateSearch, s1: S1Params, s0: S0Params, models: ModelParams, augment, crop: CropRun | None,
                    store: ProcessedData, *, split_seed: int, bootstrap: BootstrapParams, progress: bool = True
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chosen candidate against the S0 recipe, each trained with every seed of ``s1_seeds`` on the
    same splits. Returns (per seed: both models' accuracy / macro AUC and the paired difference with its
    group-bootstrap CI; summary: mean ± sd across seeds)."""
    from .lesion_aware import candidate_cv

    if search.chosen is None or not s1.seeds:
        return pd.DataFrame(), pd.DataFrame()
    splits = store.read("splits")
    splits = splits[splits["seed"] == split_seed]
    s0_ex = Experiment(s0_recipe(s0, models, augment), store, seed=split_seed, progress=False).prepare()
    rows = []
    for s in s1.seeds:
        t0 = time.perf_counter()
        a = candidate_cv(search.chosen, store, splits, seed=s, source=crop.source if crop else None,
                         margin=crop.margin if crop else None, progress=False, view_seed=split_seed).oof
        t1 = time.perf_counter()
        b = s0_ex.cross_validate(splits, seed=s, tta=False).oof
        seconds = {"lesion_aware_s": round(t1 - t0, 1), "s0_s": round(time.perf_counter() - t1, 1)}
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


def _export_two_stream(recipe: CandidateRecipe, cv: CVResult, ev: Evaluation, crop: CropRun, results: ResultsStore,
                       store: ProcessedData, *, seed: int, bootstrap: BootstrapParams, run: ModelRun) -> None:
    """Final two-stream model: its head trained on all images (whole image + the crops of the crop
    pipeline's final segmenter, the folds' median epochs), saved as a two-input classifier whose card
    names that segmenter, so ``predict`` runs segment → crop → classify."""
    from ..data.arrays import labels_and_groups
    from .lesion_aware import CandidateExperiment, export_two_stream, frozen_top

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
