"""Run one model of the study end to end and write its results (used by the model notebooks).

``run_model`` checks the weights (a backbone whose ImageNet weights cannot be loaded is skipped
with a visible reason, or fails with ``strict``), runs the grouped CV on the cached views,
evaluates the out-of-fold predictions, saves per-fold models (for the explanations), trains the
final model on all images with the folds' median early-stopping epochs, and exports it with a
model card. ``source_protocol`` reruns the source study's own random image-level split.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from .. import provenance
from ..data.store import ProcessedData, atomic_path, sha256_of, write_json
from ..evaluation.deployment import decision_settings
from ..evaluation.evaluate import Evaluation, evaluate, wide_row
from ..evaluation.metrics import classification_metrics
from ..info import CLASSES
from ..models.experiment import CVResult, Experiment
from ..models.recipes import Recipe
from ..models.registry import WeightsUnavailable, weights_available
from ..params import BootstrapParams, ModelParams, SourceProtocolParams
from ..results import ResultsStore
from ..timing import timed, timed_iter


@dataclass
class ModelRun:
    recipe: Recipe
    results_dir: Path
    skipped: str | None = None
    experiment: Experiment | None = None
    cv: CVResult | None = None
    evaluation: Evaluation | None = None
    timing: dict = field(default_factory=dict)
    exported: Path | None = None

    @property
    def n_splits(self) -> int:
        """Outer folds actually run (from the split file, not from a parameter)."""
        return int(self.cv.oof["fold"].nunique()) if self.cv is not None else 0

    @property
    def protocol(self) -> str:
        return f"grouped {self.n_splits}-fold CV, n = {len(self.cv.oof)}" if self.cv is not None else ""


def check_weights(recipe: Recipe) -> tuple[bool, str]:
    """Whether the recipe's pretrained weights can be loaded here (scratch models: always)."""
    if recipe.backbone is None:
        return True, "random init (trained from scratch)"
    return weights_available(recipe.backbone, recipe.weights, recipe.input_size, **recipe.backbone_kwargs)


@timed("model run {recipe.name}")
def run_model(recipe: Recipe, store: ProcessedData, results: ResultsStore, *, seed: int, models: ModelParams,
              bootstrap: BootstrapParams, progress: bool = True) -> ModelRun:
    """Cross-validate, evaluate and export one recipe; see the module docstring.

    seed: the split seed (selects the folds of ``splits.csv``; also seeds views and initialisation).
    models: strict (fail instead of skip on missing weights), tta, export_models.
    bootstrap: resamples and seed of the group-bootstrap CIs.
    """
    out = results.model_dir(recipe.name)
    ok, message = check_weights(recipe)
    if not ok:
        if models.strict:
            raise WeightsUnavailable(recipe.backbone, "", Path(), message)
        results.write_skipped(recipe.name, {"reason": message, "recipe": recipe.as_dict()})
        return ModelRun(recipe, out, skipped=message)
    t0 = time.perf_counter()
    ex = Experiment(recipe, store, seed=seed, progress=progress).prepare()
    t_prep = time.perf_counter() - t0
    splits = store.splits_of(seed)
    t0 = time.perf_counter()
    cv = ex.cross_validate(splits, tta=models.tta)
    t_cv = time.perf_counter() - t0
    groups = store.read("groups")
    conflicts = set(groups.loc[groups["label_conflict"], "image_id"])
    ev = evaluate(cv.oof, cv.val, tta=cv.oof_tta, conflict_ids=conflicts, n_resamples=bootstrap.resamples, seed=bootstrap.seed)
    run = ModelRun(recipe, out, experiment=ex, cv=cv, evaluation=ev)
    run.timing = {"prepare_s": round(t_prep, 1), "cv_s": round(t_cv, 1), **ex.timing,
                  "per_fold_s": cv.timing["seconds"].tolist()}
    for k, fm in timed_iter(enumerate(cv.fold_models), "save fold model {0[0]}"):
        with atomic_path(results.fold_model_path(recipe.name, k)) as tmp:  # never in place (--only hard-links it)
            ex.full_model(fm).save(tmp)
    if models.export_models:
        t0 = time.perf_counter()
        run.exported = export_final(ex, cv, ev, results, store, seed=seed, bootstrap=bootstrap)
        run.timing["final_model_s"] = round(time.perf_counter() - t0, 1)
    write_results(run, store, results, seed=seed, models=models, bootstrap=bootstrap)
    return run


def data_hashes(store: ProcessedData) -> dict:
    """What a result was made from: manifest and splits hashes and the processed-data folder
    (checked by ``data.consistency`` whenever the result is read or carried over)."""
    return {"data_manifest_sha256": sha256_of(store.manifest), "data_splits_sha256": sha256_of(store.splits),
            "data_folder": str(store.folder)}


def final_epochs(cv: CVResult) -> list[int]:
    """Per training phase, the median of the folds' early-stopping epochs (at least 1)."""
    per_phase = np.array([fm.best_epochs for fm in cv.fold_models])
    return [max(1, int(round(float(np.median(per_phase[:, j]))))) for j in range(per_phase.shape[1])]


def _protocol_text(n_splits: int, seed: int) -> str:
    return f"grouped {n_splits}-fold CV (StratifiedGroupKFold), seed {seed}, pooled out-of-fold"


def model_card(recipe: Recipe, ev: Evaluation, store: ProcessedData, epochs: list[int], *, n_splits: int, seed: int,
               bootstrap: BootstrapParams, val: pd.DataFrame | None = None) -> dict:
    """The card saved beside an exported model: input contract, weights, training data, CV metrics, provenance;
    ``val`` (the folds' validation predictions) adds the temperature and malignant thresholds the app
    uses (``evaluation.deployment``)."""
    return {
        "model": recipe.name,
        "title": recipe.title,
        "source_study": recipe.source_study,
        "classes": list(CLASSES),
        "input": {"size": [recipe.input_size, recipe.input_size, 3], "dtype": "float32",
                  "range": "RGB pixel values 0-255 (greyscale images repeated to 3 channels)",
                  "resize": "plain resize of the whole image to a square (cv2.INTER_AREA)",
                  "preprocessing": recipe.preprocessing + " (the model applies its own backbone preprocessing)"},
        "backbone": recipe.backbone_label,
        "weights": recipe.weights_label,
        "trained_on": f"all {store.read_summary()['n_images']} images of the dataset, epochs per phase {epochs} "
                      "(median early-stopping epoch of the CV folds)",
        "cv_metrics": {"protocol": f"grouped {n_splits}-fold CV, seed {seed}, pooled out-of-fold; "
                                   f"95% group-bootstrap CI ({bootstrap.resamples} resamples)",
                       **wide_row(ev.pooled)},
        **data_hashes(store),
        "git": provenance.git_info(provenance.REPO),
        "gradcam_layer": recipe.gradcam_layer(),
        "decision": None if val is None or val.empty else decision_settings(val),
        "not_for_clinical_use": True,
    }


@timed("final model {ex.recipe.name}")
def export_final(ex: Experiment, cv: CVResult, ev: Evaluation, results: ResultsStore, store: ProcessedData, *, seed: int,
                 bootstrap: BootstrapParams) -> Path:
    """Train on every image with the folds' median epochs; save ``models/<name>.keras`` + card."""
    epochs = final_epochs(cv)
    fm = ex.fit(np.arange(len(ex.y)), None, seed + 99, epochs=epochs)
    model = ex.full_model(fm)
    path = results.exported_model_path(ex.recipe.name)
    with atomic_path(path) as tmp:  # never in place (an --only run may hard-link it)
        model.save(tmp)
    n_splits = int(cv.oof["fold"].nunique())
    write_json(model_card(ex.recipe, ev, store, epochs, n_splits=n_splits, seed=seed, bootstrap=bootstrap, val=cv.val),
               path.with_suffix(".json"))
    return path


@timed("write results {run.recipe.name}")
def write_results(run: ModelRun, store: ProcessedData, results: ResultsStore, *, seed: int, models: ModelParams,
                  bootstrap: BootstrapParams, extra: dict | None = None,
                  extra_tables: dict[str, pd.DataFrame] | None = None) -> None:
    """Predictions, histories, timing and metrics (JSON + CSV) under ``results/<name>/``; ``extra``
    adds keys to the record (e.g. a crop pipeline's segmenter), ``extra_tables`` more tables."""
    cv, ev = run.cv, run.evaluation
    record = {
        "model": run.recipe.name, "title": run.recipe.title, "recipe": run.recipe.as_dict(),
        "weights": run.recipe.weights_label, "backbone": run.recipe.backbone_label,
        "protocol": _protocol_text(run.n_splits, seed),
        "n": int(len(cv.oof)),
        "pooled": ev.pooled.to_dict(orient="records"),
        "per_fold_summary": ev.per_fold_summary.reset_index(names="stat").to_dict(orient="records"),
        "per_fold": ev.per_fold.to_dict(orient="records"),
        "collapse_flags": ev.collapse,
        "without_label_conflicts": None if ev.without_conflicts is None else ev.without_conflicts.to_dict(orient="records"),
        "n_without_label_conflicts": ev.extra.get("n_without_conflicts"),
        "tta": None if ev.tta is None else ev.tta.to_dict(orient="records"),
        "confusion_counts": ev.confusion_counts.to_dict(),
        "timing": run.timing,
        "determinism": run.experiment.determinism if run.experiment else None,
        "final_epochs": final_epochs(cv),
        "exported_model": str(run.exported) if run.exported else None,
        "bootstrap": {"resamples": bootstrap.resamples, "seed": bootstrap.seed, "ci": 0.95},
        **data_hashes(store),
        "git": provenance.git_info(provenance.REPO),
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(),
        "params": {"seed": seed, **asdict(models), **{f"bootstrap_{k}": v for k, v in asdict(bootstrap).items()}},
        **(extra or {}),
    }
    tables = {"oof": cv.oof, "val": cv.val, "oof_tta": cv.oof_tta, "history": cv.history,
              "pooled": ev.pooled, "per_fold": ev.per_fold, **(extra_tables or {})}
    results.write_trained(run.recipe.name, tables, record)


@timed("source protocol {ex.recipe.name}")
def source_protocol(ex: Experiment, source: SourceProtocolParams, seed: int) -> pd.DataFrame:
    """The source studies' protocol: a random *image-level* stratified split (e.g. 85/15 with 10 %
    of training for validation), repeated with seeds seed, seed+1, … One row per repeat."""
    test_fraction, val_fraction, repeats = source.test_fraction, source.val_fraction, source.protocol_repeats
    idx = np.arange(len(ex.y))
    rows = []
    for r in timed_iter(range(repeats), "repeat {}"):
        s = seed + r
        train_val, test = train_test_split(idx, test_size=test_fraction, random_state=s, stratify=ex.y)
        train, val = train_test_split(train_val, test_size=val_fraction, random_state=s, stratify=ex.y[train_val])
        t0 = time.perf_counter()
        fm = ex.fit(np.sort(train), np.sort(val), s + 500)
        p = ex.predict(fm, np.sort(test))
        m = classification_metrics(ex.y[np.sort(test)], p)
        # how many test images have a near-duplicate in training: the leak this protocol allows
        g = ex.table["group_id"].to_numpy()
        leaked = int(np.isin(g[test], g[train_val]).sum())
        rows.append({"repeat": r, "seed": s, "n_test": len(test), "test_images_with_duplicate_in_training": leaked,
                     "seconds": round(time.perf_counter() - t0, 1), **m})
    return pd.DataFrame(rows).rename(columns={"auc_malignant": "malignant_auc"})


def claims_table(study: str, source: pd.DataFrame | None, ev: Evaluation) -> pd.DataFrame:
    """Three columns per claimed metric: the source's number, ours under its protocol (mean and
    range over repeats), ours under the study's protocol (pooled grouped CV with its 95 % CI)."""
    from ..info import CLAIM_TO_METRIC, SOURCE_STUDIES

    pooled = ev.pooled.set_index("metric")
    rows = []
    for claim, reported in SOURCE_STUDIES[study]["claims"].items():
        metric, note = CLAIM_TO_METRIC.get(claim, (None, "no matching metric"))
        row = {"source": study, "claim": claim, "reported": reported, "our_metric": metric or "", "note": note}
        if metric and source is not None and metric in source:
            row.update(source_protocol_mean=source[metric].mean(), source_protocol_min=source[metric].min(),
                       source_protocol_max=source[metric].max())
        if metric and metric in pooled.index:
            row.update(grouped_cv=pooled.loc[metric, "value"], grouped_cv_ci_low=pooled.loc[metric, "ci_low"],
                       grouped_cv_ci_high=pooled.loc[metric, "ci_high"])
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_display(ev: Evaluation) -> pd.DataFrame:
    """The pooled metrics with CIs, per-fold mean ± sd beside them, for a notebook table."""
    t = ev.pooled.copy()
    s = ev.per_fold_summary
    t["fold_mean"] = [s.loc["mean", m] if m in s.columns else np.nan for m in t["metric"]]
    t["fold_sd"] = [s.loc["sd", m] if m in s.columns else np.nan for m in t["metric"]]
    return t
