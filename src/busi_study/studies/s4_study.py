"""S4 end to end (notebook 06): variants under grouped CV, S4's protocol, comparison, on-device export.

Every step is one call from the notebook:

* :func:`run_variant` — grouped CV of one training variant on the shared C4/C5 cache, evaluated
  under the protocol (binary metrics with group-bootstrap CIs), written to
  ``reports/<run>/results_binary/<name>/`` through ``ResultsStore.binary`` (the same store, a
  separate folder: the three-class readers expect three-class predictions);
* :func:`compare_with_three_class` — paired group bootstrap of the binary model's
  benign-vs-malignant AUC against each three-class model's, on the same out-of-fold lesion images;
* :func:`protocol_table` — S4's claim / S4's protocol / augment-after-split / grouped CV;
* :func:`export_final_s4` — the final model (all lesion images) as ``.keras`` + model card and as
  TFLite in four precisions, each with its card, under ``reports/<run>/models/``;
* :func:`fold_agreement` — each fold's model converted (full-int8 calibrated on that fold's
  training images) and compared with its Keras original on that fold's test images;
* :func:`latency_table` — per-image latency of the exported files, 1 and 2 threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import provenance
from ..data.arrays import load_image_array
from ..data.augmented_split import S4_AUGMENTED_SET_SIZE
from ..data.store import ProcessedData, sha256_of, write_json
from ..evaluation.binary import binary_table, paired_lesion_comparison
from ..evaluation.evaluate import Evaluation, evaluate, wide_row
from ..info import CLASS_INDEX, SOURCE_STUDIES
from ..models import tflite
from ..models.lightweight import BinaryCV, LightweightExperiment, LightweightRecipe
from ..params import BootstrapParams, TFLiteParams
from ..results import ResultsStore
from ..timing import timed, timed_iter


@dataclass
class VariantRun:
    recipe: LightweightRecipe
    cv: BinaryCV
    evaluation: Evaluation
    table: pd.DataFrame       # binary metrics with CIs
    results_dir: Path


def results_dir(report_dir: Path, name: str) -> Path:
    return ResultsStore(report_dir).binary.model_dir(name)


def _provenance() -> dict:
    repo = Path(__file__).resolve().parents[3]
    return {"git": provenance.git_info(repo), "packages": provenance.package_versions(), "hardware": provenance.hardware()}


def variant(ex: LightweightExperiment, recipe: LightweightRecipe) -> LightweightExperiment:
    """The same experiment (backbone, cache) with another training recipe."""
    import copy

    same = ("backbone", "input_size", "backbone_kwargs", "weights", "augment")
    if any(getattr(recipe, k) != getattr(ex.recipe, k) for k in same):
        raise ValueError("a variant may only change the training settings and the head")
    out = copy.copy(ex)
    out.recipe = recipe
    return out


@timed("variant {ex.recipe.name}")
def run_variant(ex: LightweightExperiment, splits: pd.DataFrame, bootstrap: BootstrapParams, report_dir: Path) -> VariantRun:
    """Grouped CV of ``ex.recipe`` on ``splits`` (one seed), evaluated and written (see module docstring)."""
    cv = ex.cross_validate(splits)
    groups = ex.store.read("groups")
    conflicts = set(groups.loc[groups["label_conflict"], "image_id"])
    ev = evaluate(cv.oof, cv.val, conflict_ids=conflicts, n_resamples=bootstrap.resamples, seed=bootstrap.seed)
    run = VariantRun(ex.recipe, cv, ev, binary_table(ev), results_dir(report_dir, ex.recipe.name))
    record = {
        "model": ex.recipe.name, "title": ex.recipe.title, "recipe": ex.recipe.as_dict(), "task": "benign vs malignant",
        "protocol": f"grouped {splits['fold'].nunique()}-fold CV restricted to lesion images, seed {splits['seed'].iloc[0]}, "
                    "pooled out-of-fold",
        "n": int(len(cv.oof)), "binary": run.table.to_dict(orient="records"),
        "pooled": ev.pooled.to_dict(orient="records"), "collapse_flags": ev.collapse,
        "without_label_conflicts": None if ev.without_conflicts is None else ev.without_conflicts.to_dict(orient="records"),
        "timing": {**ex.timing, "per_fold": cv.timing.to_dict(orient="records")},
        "bootstrap": {"resamples": bootstrap.resamples, "seed": bootstrap.seed, "ci": 0.95},
        "data_manifest_sha256": sha256_of(ex.store.manifest), **_provenance(),
    }
    tables = {"oof": cv.oof, "val": cv.val, "history": cv.history, "binary": run.table}
    ResultsStore(report_dir).binary.write_trained(ex.recipe.name, tables, record)  # atomic files, record last
    return run


@timed("paired comparison with the three-class models ({run.recipe.name})")
def compare_with_three_class(run: VariantRun, results: ResultsStore, bootstrap: BootstrapParams) -> pd.DataFrame:
    """Paired group bootstrap: this binary model minus each three-class model of the run, lesion images only."""
    rows = []
    for name, res in results.load_trained().items():
        t = paired_lesion_comparison(run.cv.oof, res.oof, n_resamples=bootstrap.resamples, seed=bootstrap.seed)
        rows.append(t.assign(model_a=run.recipe.name, model_b=name))
    cols = ["model_a", "model_b", "metric", "n", "a", "b", "diff", "ci_low", "ci_high", "p_two_sided"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


@timed("S4 protocol table ({ex.recipe.name})")
def protocol_table(ex: LightweightExperiment, grouped: VariantRun, augmented_size: int, seed: int
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """S4's claim beside S4's protocol, augment-after-split and grouped CV (same recipe).

    Returns (table with one row per protocol, S4-protocol test predictions per item).
    """
    before, pred = ex.augment_before_split(augmented_size, seed)
    after = ex.augment_after_split(seed)
    g = grouped.table.set_index("metric")
    claims = SOURCE_STUDIES["S4"]["claims"]
    rows = [
        {"protocol": f"S4 as published (Kaggle set of {S4_AUGMENTED_SET_SIZE:,} augmented images, random 70/15/15)",
         "accuracy": claims["accuracy"], "macro_f1": claims["f1"]},
        before,
        after,
        {"protocol": "grouped CV on the original lesion images (this study)", "n_items": int(len(grouped.cv.oof)),
         "n_test": int(len(grouped.cv.oof)), "accuracy": g.loc["accuracy", "value"],
         "accuracy_ci_low": g.loc["accuracy", "ci_low"], "accuracy_ci_high": g.loc["accuracy", "ci_high"],
         "macro_f1": g.loc["macro_f1", "value"], "macro_f1_ci_low": g.loc["macro_f1", "ci_low"],
         "macro_f1_ci_high": g.loc["macro_f1", "ci_high"], "f1_malignant": g.loc["f1_malignant", "value"],
         "auc": g.loc["auc", "value"], "auc_ci_low": g.loc["auc", "ci_low"], "auc_ci_high": g.loc["auc", "ci_high"],
         "copy_in_training": 0, "near_duplicate_in_training": 0, "any_in_training": 0, "share_any": 0.0},
    ]
    table = pd.DataFrame(rows)
    table.insert(1, "recipe", ["(S4)"] + [ex.recipe.name] * 3)
    first = ["protocol", "recipe", "n_items", "views_per_image", "n_train", "n_val", "n_test"]
    for m in ("accuracy", "macro_f1", "auc"):
        first += [m, f"{m}_ci_low", f"{m}_ci_high"]
    first += ["f1_malignant", "copy_in_training", "near_duplicate_in_training", "any_in_training", "share_any"]
    return table[[c for c in first if c in table] + [c for c in table if c not in first]], pred


# ---------------------------------------------------------------- export
def _card(recipe: LightweightRecipe, run: VariantRun, store: ProcessedData, epochs: int) -> dict:
    return {
        "model": recipe.name, "title": recipe.title, "source_study": "S4", "task": "benign vs malignant",
        "classes": ["benign", "malignant"], "output": "p_malignant (one sigmoid unit), shape (n, 1)",
        "input": {"size": [recipe.input_size, recipe.input_size, 3], "dtype": "float32",
                  "range": "RGB pixel values 0-255 (greyscale images repeated to 3 channels)",
                  "resize": "plain resize of the whole image to a square (cv2.INTER_AREA)",
                  "preprocessing": "none (the model applies its own backbone preprocessing)"},
        "backbone": recipe.backbone_label, "weights": "random init" if recipe.weights in (None, "none") else str(recipe.weights),
        "trained_on": f"all {len(run.cv.oof)} lesion images (benign + malignant), {epochs} epochs",
        "cv_metrics": {"protocol": "grouped 5-fold CV on lesion images, pooled out-of-fold, 95% group-bootstrap CI",
                       **{r["metric"]: [r["value"], r["ci_low"], r["ci_high"]] for r in run.table.to_dict(orient="records")}},
        "data_manifest_sha256": sha256_of(store.manifest), "not_for_clinical_use": True, **_provenance(),
    }


def representative_images(images: np.ndarray, idx: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` training images (uint8) for full-integer calibration, drawn with ``seed``."""
    idx = np.asarray(idx)
    take = idx if len(idx) <= n else np.sort(np.random.default_rng(seed).choice(idx, size=n, replace=False))
    return images[take]


@timed("final model + TFLite {ex.recipe.name}")
def export_final_s4(ex: LightweightExperiment, run: VariantRun, results: ResultsStore, seed: int, tfl: TFLiteParams) -> dict:
    """Train on every lesion image, save ``models/<name>.keras`` + card, and its TFLite files + cards."""
    r = ex.recipe
    epochs = r.train.epochs if r.train.patience is None else max(1, int(round(float(run.cv.timing["best_epoch"].median()))))
    head, _ = ex.fit(np.arange(len(ex.y)), None, seed + 99, epochs=epochs)
    model = ex.full_model(head)
    keras_path = results.exported_model_path(r.name)
    model.save(keras_path)
    card = _card(r, run, ex.store, epochs)
    write_json(card, keras_path.with_suffix(".json"))
    rep = representative_images(ex.images, np.arange(len(ex.y)), tfl.representative_images, seed)
    paths = tflite.export_all(model, keras_path.with_suffix(""), rep)
    for mode, p in paths.items():
        write_json({**card, "format": f"TFLite {mode}", "runtime": tflite.RUNTIME, "keras_model": keras_path.name,
                    "representative_data": f"{len(rep)} training images" if mode == "full_int8" else None},
                   p.with_suffix(".json"))
    return {"keras": keras_path, **paths}


@timed("TFLite files and cards {keras_path.name}")
def export_final_keras(keras_path: Path, images: np.ndarray, seed: int, tfl: TFLiteParams) -> dict:
    """TFLite files (four precisions) + cards beside an exported three-class ``.keras`` model;
    ``images`` are its training images (all images of the dataset) for full-int8 calibration."""
    import keras

    from ..models import builders  # noqa: F401  (registers the preprocessing layer)
    from ..models.ensemble import classifier_chain

    keras_path = Path(keras_path)
    model = classifier_chain(keras.models.load_model(keras_path, compile=False))  # a multi-task network: its classifier
    rep = representative_images(images, np.arange(len(images)), tfl.representative_images, seed)
    stem = keras_path.with_suffix("")
    paths = tflite.export_all(model, stem, rep)
    card_path = keras_path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {"model": stem.name}
    for mode, p in paths.items():
        write_json({**card, "format": f"TFLite {mode}", "runtime": tflite.RUNTIME, "keras_model": keras_path.name,
                    "representative_data": f"{len(rep)} training images" if mode == "full_int8" else None},
                   p.with_suffix(".json"))
    return {"keras": keras_path, **paths}


@timed("TFLite agreement with Keras")
def fold_agreement(fold_models: list, fold_sets: list[dict], images: np.ndarray, labels: np.ndarray, binary: bool,
                   seed: int, tfl: TFLiteParams) -> pd.DataFrame:
    """Each fold's Keras model vs its TFLite conversions on that fold's test images, pooled over folds.

    fold_models: Keras full models (image → probabilities), one per fold; fold_sets: per fold
    ``{"train": idx, "test": idx}`` into ``images`` / ``labels``; labels: 0/1 malignant (binary)
    or class indices (three-class). Full-int8 is calibrated on each fold's training images.
    Returns one row per precision: max / mean |Δp|, same decision, AUC and accuracy of Keras
    and TFLite on the pooled out-of-fold images (the first ``tflite_agreement_folds`` folds;
    null: all), with ``folds`` saying how many.
    """
    n_rep, k_max = tfl.representative_images, tfl.agreement_folds
    if k_max:
        fold_models, fold_sets = fold_models[: int(k_max)], fold_sets[: int(k_max)]
    pk, pt = [], {m: [] for m in tflite.MODES}
    ys = []
    for k, (model, sets) in timed_iter(enumerate(zip(fold_models, fold_sets)), "fold {0[0]}"):
        test = sets["test"]
        x = images[test].astype(np.float32)
        pk.append(np.asarray(model.predict(x, batch_size=32, verbose=0), dtype=np.float64))
        ys.append(labels[test])
        rep = representative_images(images, sets["train"], n_rep, seed + k)
        for mode, content in tflite.convert_all(model, tflite.MODES, rep).items():
            pt[mode].append(tflite.TFLiteModel(content, threads=2).predict(x))
    y, keras_p = np.concatenate(ys), np.concatenate(pk)
    rows = []
    for mode in tflite.MODES:
        p = np.concatenate(pt[mode])
        a = tflite.agreement(y == 1, keras_p, p) if binary else tflite.agreement_3class(y, keras_p, p)
        rows.append({"format": mode, "folds": len(fold_sets), **a})
    return pd.DataFrame(rows)


def s4_fold_sets(ex: LightweightExperiment, splits: pd.DataFrame) -> list[dict]:
    return [ex.fold_indices(splits, f) for f in sorted(splits["fold"].unique())]


def three_class_fold_sets(store: ProcessedData, splits: pd.DataFrame) -> tuple[list[dict], np.ndarray]:
    """Per fold train / test positions into the manifest, and the class indices of every image."""
    manifest = store.read("manifest")
    pos = {k: i for i, k in enumerate(manifest["image_id"])}
    sets = []
    for f in sorted(splits["fold"].unique()):
        part = splits[splits["fold"] == f]
        sets.append({role: np.array(sorted(pos[i] for i in part.loc[part["role"] == role, "image_id"]))
                     for role in ("train", "test")})
    return sets, manifest["label"].map(CLASS_INDEX).to_numpy()


def best_three_class(results: ResultsStore, metric: str = "benign_vs_malignant_auc") -> str | None:
    """The three-class model of the run with the highest pooled ``metric`` that has fold models
    and an exported final model."""
    best, best_v = None, -np.inf
    for name, record in results.records().items():
        res = results.load(name)
        if not res.fold_model_paths() or not results.exported_model_path(name).exists() or record.get("pipeline"):
            continue  # a crop pipeline's networks take crops, not images
        pooled = {r["metric"]: r["value"] for r in record["pooled"]}
        v = pooled.get(metric, np.nan)
        if np.isfinite(v) and v > best_v:
            best, best_v = name, v
    return best


@timed("load fold models {name}")
def load_fold_models(results: ResultsStore, name: str) -> list:
    import keras

    from ..models import builders  # noqa: F401  (registers the preprocessing layer)
    from ..models.ensemble import classifier_chain

    return [classifier_chain(keras.models.load_model(f, compile=False)) for f in results.load(name).fold_model_paths()]


def three_class_images(store: ProcessedData, results: ResultsStore, name: str) -> np.ndarray:
    """All images at the input size of the three-class model ``name`` (its exported card says it)."""
    card = json.loads(results.exported_model_path(name).with_suffix(".json").read_text())
    return load_image_array(store, int(card["input"]["size"][0]), progress=False, fit=card["input"].get("fit", "stretch"))


@timed("TFLite latency")
def latency_table(paths: dict, image_files: list[Path], tfl: TFLiteParams) -> pd.DataFrame:
    """Per-image latency (preprocessing included) of each TFLite file, with 1 and 2 threads."""
    rows = []
    for mode in tflite.MODES:
        if mode not in paths:
            continue
        for threads in (1, 2):
            lat = tflite.latency(paths[mode], image_files, threads, runs=tfl.latency_runs, warmup=tfl.latency_warmup)
            rows.append({"format": mode, **lat})
    return pd.DataFrame(rows)


def export_table(model: str, paths: dict, agreement: pd.DataFrame, latency: pd.DataFrame) -> pd.DataFrame:
    """One row per format: size (MB), latency (median / p90 ms, 1 and 2 threads), agreement with Keras."""
    size = tflite.size_table({m: p for m, p in paths.items() if m != "keras"}, paths.get("keras"))
    lat = latency.pivot(index="format", columns="threads", values=["median_ms", "p90_ms"])
    lat.columns = [f"{a}_{b}t" for a, b in lat.columns]
    out = size.merge(lat.reset_index(), on="format", how="left").merge(agreement, on="format", how="left")
    out.insert(0, "model", model)
    return out


def targets_check(table: pd.DataFrame, tfl: TFLiteParams) -> pd.DataFrame:
    """The on-device targets of the full-int8 model (``tflite_target_*``) against what was measured:
    size, 1-thread median latency, AUC drop against the float32 TFLite model."""
    max_mb, max_ms, max_auc_drop = tfl.target_mb, tfl.target_ms, tfl.target_auc_drop
    full = table.set_index("format")
    row = full.loc["full_int8"]
    auc_float = full.loc["float32", "auc_tflite"]
    checks = [("size (MB)", row["MB"], f"<= {max_mb}", row["MB"] <= max_mb),
              ("median latency, 1 thread (ms)", row["median_ms_1t"], f"<= {max_ms}", row["median_ms_1t"] <= max_ms),
              ("AUC drop vs float32 TFLite", auc_float - row["auc_tflite"], f"<= {max_auc_drop}",
               (auc_float - row["auc_tflite"]) <= max_auc_drop)]
    return pd.DataFrame(checks, columns=["target", "measured", "required", "met"])


def grouped_row(ev: Evaluation) -> dict:
    """Headline numbers of a binary evaluation as one wide row."""
    return wide_row(binary_table(ev), ["auc", "accuracy", "macro_f1", "f1_malignant", "sens_at_spec90", "spec_at_sens90", "ece"])
