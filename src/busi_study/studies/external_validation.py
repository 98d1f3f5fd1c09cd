"""External validation of a run's final models on BrEaST-Lesions_USG (notebook 08, docs/protocol.md §9).

Every exported final model (``reports/<run>/models/<name>.keras``, trained on all of BUSI) is
evaluated with :mod:`busi_study.studies.folder_evaluation` — the code behind ``python -m busi_study evaluate`` —
on the external images, with its temperature and thresholds fixed beforehand from the BUSI run's
validation predictions (:func:`~busi_study.evaluation.external.settings_from_validation`). The
same metrics on the BUSI out-of-fold predictions (each fold's settings from its own validation
part) stand beside them, with the drop. Nothing is chosen on the external set: no model, no
threshold, no temperature, no Grad-CAM threshold (IoU, which needs one, is not reported here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data.breast import ExternalData
from ..evaluation.bootstrap import bootstrap_mean_ci, resample_weights
from ..evaluation.external import busi_cv_table, paired_auc_difference, settings_from_validation, subgroup_auc, with_drop
from ..results import RECORD, TABLES, ResultsStore
from ..timing import timed
from .folder_evaluation import FolderEvaluation, LabelledFolder, evaluate_model

#: Metrics of the headline table, in order, with the label a reader sees.
HEADLINE = {
    "auc": "AUC (p_malignant)",
    "auc_ratio_score": "AUC (p_m / (p_b + p_m))",
    "sensitivity_spec90": "sensitivity @ BUSI-val spec90 threshold",
    "specificity_spec90": "specificity @ BUSI-val spec90 threshold",
    "sensitivity_sens90": "sensitivity @ BUSI-val sens90 threshold",
    "specificity_sens90": "specificity @ BUSI-val sens90 threshold",
    "sensitivity_argmax": "sensitivity @ argmax",
    "specificity_argmax": "specificity @ argmax",
    "log_loss": "log loss (3-class probabilities)",
    "log_loss_T": "log loss after BUSI temperature",
    "ece": "ECE (15 bins, top label)",
    "ece_T": "ECE after BUSI temperature",
}


@dataclass
class FinalModel:
    name: str
    path: Path
    card: dict
    results_dir: Path
    recipe: dict


@dataclass
class ExternalResults:
    evaluations: dict[str, FolderEvaluation]
    summary: pd.DataFrame          # model, metric, label, value, ci_low, ci_high, cv_value, cv_ci_low, cv_ci_high, drop
    settings: pd.DataFrame         # model, temperature, threshold_spec90, threshold_sens90, rule
    best: str | None               # by BUSI CV benign-vs-malignant AUC (never by the external result)
    skipped: list[str] = field(default_factory=list)


def final_models(report_dir: Path) -> tuple[list[FinalModel], list[str]]:
    """Exported final models that have a card and BUSI CV predictions; and why others are left out."""
    store = ResultsStore(report_dir)
    found, skipped = [], []
    for path in store.exported_models():
        card = path.with_suffix(".json")
        info = json.loads(card.read_text()) if card.exists() else {}
        base = info.get("results", path.stem)  # a fold ensemble reads its model's CV results
        res = store.model_dir(base)
        need = (card, res / RECORD, res / TABLES["oof"], res / TABLES["val"])
        missing = [str(f.relative_to(store.report_dir)) for f in need if not f.exists()]
        if missing:
            skipped.append(f"{path.stem}: missing {', '.join(missing)}")
            continue
        found.append(FinalModel(path.stem, path, info, res, store.load(base).recipe))
    return found, skipped


def labelled_folder(data: ExternalData) -> LabelledFolder:
    """The external table as the ``evaluate`` command's rows (one patient per group)."""
    t = data.table
    rows = pd.DataFrame({"row": np.arange(len(t)), "image": t["image_id"], "path": [str(data.root / p) for p in t["path"]],
                         "label": t["label"], "group": t["patient_id"]})
    rows = pd.concat([rows, t[["image_id", "birads", "birads_group", "image_type", "tumour_mask"]].reset_index(drop=True)], axis=1)
    return LabelledFolder(data.root, rows, pd.DataFrame(columns=["row", "image", "reason"]))


@timed("external evaluation of the final models")
def run_external(report_dir: Path, data: ExternalData, n_resamples: int = 2000, seed: int = 0,
                 progress: bool = True) -> ExternalResults:
    """Evaluate every final model of ``report_dir`` on ``data`` (benign vs malignant)."""
    import keras

    from ..predict import load_model

    models, skipped = final_models(report_dir)
    folder = labelled_folder(data)
    evs, rows, settings_rows, cv_auc = {}, [], [], {}
    for fm in tqdm(models, desc="external validation", disable=not progress):
        val, oof = pd.read_csv(fm.results_dir / TABLES["val"]), pd.read_csv(fm.results_dir / TABLES["oof"])
        s = settings_from_validation(val, "malignant", ("benign",))
        model, _ = load_model(fm.path)
        ev = evaluate_model(model, fm.name, folder, s, "malignant", ("benign",), n_resamples, seed)
        keras.backend.clear_session()
        ev.info["title"], ev.info["weights"] = fm.card.get("title", fm.name), fm.card.get("weights", "")
        ev.info["form"], ev.info["deployed_default"] = fm.card.get("form", "final"), fm.card.get("deployed_default", "")
        evs[fm.name] = ev
        cv = busi_cv_table(oof, val, "malignant", ("benign",), n_resamples, seed)
        cv_auc[fm.name] = float(cv.set_index("metric").loc["auc", "value"])
        t = with_drop(ev.table, cv)
        t.insert(0, "model", fm.name)
        rows.append(t)
        settings_rows.append({"model": fm.name, "temperature": s.temperature, **{f"threshold_{k}": v for k, v in s.thresholds.items()},
                              "n_validation": s.n_validation, "rule": s.rule})
    summary = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if len(summary):
        summary.insert(2, "label", summary["metric"].map(HEADLINE).fillna(summary["metric"]))
    best = max(cv_auc, key=cv_auc.get) if cv_auc else None
    return ExternalResults(evs, summary, pd.DataFrame(settings_rows), best, skipped)


def headline(res: ExternalResults, metrics: tuple[str, ...] = ("auc", "sensitivity_spec90", "specificity_spec90",
                                                                 "log_loss", "log_loss_T", "ece", "ece_T")) -> pd.DataFrame:
    """One row per model: ``metric`` as "value [lo, hi]" and ``metric (BUSI CV)`` beside it, plus the drop."""
    rows = []
    for model, g in res.summary.groupby("model", sort=False):
        g = g.set_index("metric")
        row = {"model": model}
        for m in metrics:
            r = g.loc[m]
            row[m] = f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            row[f"{m} (BUSI CV)"] = f"{r['cv_value']:.3f} [{r['cv_ci_low']:.3f}, {r['cv_ci_high']:.3f}]"
            row[f"{m} drop"] = round(float(r["drop"]), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def predicted_classes(res: ExternalResults) -> pd.DataFrame:
    """3-class predictions (argmax) against the true label, per model: rows model × label, columns predicted."""
    parts = []
    for name, ev in res.evaluations.items():
        t = pd.crosstab(ev.predictions["label"], ev.predictions["predicted"]).reindex(columns=["normal", "benign", "malignant"],
                                                                                      fill_value=0)
        parts.append(t.assign(model=name).reset_index().set_index(["model", "label"]))
    return pd.concat(parts) if parts else pd.DataFrame()


def normal_cases(res: ExternalResults) -> pd.DataFrame:
    """The external set's normal images (not in the binary task), with each model's probabilities."""
    parts = []
    for name, ev in res.evaluations.items():
        p = ev.predictions[ev.predictions["label"] == "normal"]
        parts.append(p[["image", "label", "p_normal", "p_benign", "p_malignant", "predicted"]].assign(model=name))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


@timed("AUC by subgroup (bootstrap)")
def subgroups(res: ExternalResults, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """AUC (p_malignant) by BI-RADS group and by image type, per model, with bootstrap CIs over patients."""
    parts = []
    for name, ev in res.evaluations.items():
        d = ev.predictions[ev.predictions["in_task"]]
        y = d["label"].map({"benign": 1, "malignant": 2}).to_numpy()
        for by in ("birads_group", "image_type"):
            t = subgroup_auc(y, d["p_malignant"].to_numpy(), d["group"].to_numpy(), d[by].replace("", "unknown").to_numpy(),
                             "malignant", n_resamples, seed)
            parts.append(t.assign(model=name, by=by).sort_values("subgroup"))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return out[["model", "by", "subgroup", "n", "n_positive", "n_negative", "auc", "ci_low", "ci_high", "note"]] if len(out) else out


@timed("paired AUC comparison (bootstrap)")
def paired(res: ExternalResults, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The BUSI-best model's external AUC minus each other model's, paired over the same patients."""
    if res.best is None or len(res.evaluations) < 2:
        return pd.DataFrame()
    ref = res.evaluations[res.best].predictions
    task = ref[ref["in_task"]]
    scores = {}
    for name, ev in res.evaluations.items():
        p = ev.predictions.set_index("image")
        scores[name] = p.loc[task["image"], "p_malignant"].to_numpy()
    y = task["label"].map({"benign": 1, "malignant": 2}).to_numpy()
    return paired_auc_difference(y, scores, task["group"].to_numpy(), res.best, "malignant", n_resamples, seed)


def forms_compared(res: ExternalResults, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A model's fold ensemble (``<name>.folds``) against its final model on the same patients: AUC of the
    ensemble minus the final model's, paired; which form the card deploys by default beside it."""
    rows = []
    for name, ev in res.evaluations.items():
        base = name.removesuffix(".folds")
        if name == base or base not in res.evaluations:
            continue
        task = ev.predictions[ev.predictions["in_task"]]
        y = task["label"].map({"benign": 1, "malignant": 2}).to_numpy()
        scores = {f: res.evaluations[f].predictions.set_index("image").loc[task["image"], "p_malignant"].to_numpy()
                  for f in (name, base)}
        t = paired_auc_difference(y, scores, task["group"].to_numpy(), name, "malignant", n_resamples, seed)
        rows.append(t.assign(model=base, deployed_default=ev.info.get("deployed_default", "")))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def outline_scores(fm: FinalModel, data: ExternalData) -> pd.DataFrame:
    """The outline of a model that segments (the multi-task network, its fold ensemble, a crop pipeline's
    segmenter) against each lesion image's tumour mask: Dice, IoU, HD95, found (testing only)."""
    from ..data.images import read_mask, read_rgb
    from ..models.segmentation import hd95, mask_scores
    from ..predict import CropPipelineModel, OutlineModel, load_model

    model, _ = load_model(fm.path)
    if not isinstance(model, (OutlineModel, CropPipelineModel)):
        return pd.DataFrame()
    d = data.lesions[data.lesions["tumour_mask"] != ""].reset_index(drop=True)
    rows = []
    for _, r in d.iterrows():
        rgb, ref = read_rgb(data.root / r["path"]), read_mask(data.root / r["tumour_mask"]) > 0
        if isinstance(model, OutlineModel):
            p, prob = model.predict_batch(model.prepare(rgb)[None])
            mask, _, found = model.outline(prob[0], rgb.shape[:2], p[0])
        else:
            full, _, found = model.lesion(rgb)
            from ..models.segmentation import largest_region

            mask = largest_region(full) if found else np.zeros(rgb.shape[:2], bool)
        dice, iou = mask_scores(mask, ref)
        rows.append({"model": fm.name, "image_id": r["image_id"], "patient_id": r["patient_id"], "label": r["label"],
                     "found": bool(found), "dice": dice if found else 0.0, "iou": iou if found else 0.0,
                     "hd95": hd95(mask, ref), "pred_area": float(mask.mean()), "true_area": float(ref.mean())})
    return pd.DataFrame(rows)


def summarise_outlines(per_image: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per model: mean Dice and IoU per lesion image (0 where nothing was found), "nothing found", HD95
    (found outlines), each with a 95 % bootstrap CI over patients."""
    rows = []
    for model, d in per_image.groupby("model", sort=False):
        w = resample_weights(d["patient_id"].to_numpy(), n_resamples, seed).astype(float)
        for measure, values in (("dice", d["dice"]), ("iou", d["iou"]), ("nothing found", (~d["found"]).astype(float)),
                                ("hd95 (% of diagonal)", d["hd95"])):
            n, value, lo, hi = bootstrap_mean_ci(w, values.to_numpy(dtype=float))
            rows.append({"model": model, "measure": measure, "n": n, "value": value, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def missed_malignancies(ev: FolderEvaluation, threshold: str = "spec90") -> pd.DataFrame:
    """Malignant images scored below the BUSI-validation threshold, lowest score first."""
    t = ev.settings["thresholds"].get(threshold, np.nan)
    p = ev.predictions
    missed = p[(p["label"] == "malignant") & (p["p_malignant"] < t)].sort_values("p_malignant")
    return missed.assign(threshold=t)


@timed("Grad-CAM pointing game {fm.name}")
def pointing_game(fm: FinalModel, data: ExternalData, layer: str | None, method: str = "gradcam", tolerance: float = 0.05,
                  batch_size: int = 16) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Grad-CAM (predicted class) of the final model on every lesion image with a tumour mask.

    Per image: pointing-game hit (map maximum within the mask dilated by ``tolerance`` × diagonal),
    energy inside the mask, and the same for a centred Gaussian map; plus a few maps for figures.
    """
    import keras

    from ..data.images import fit_square, read_mask, read_rgb, unfit_square
    from ..explain.gradcam import gradcam, upsample
    from ..explain.localisation import baseline_table, localisation_table
    from ..models.crops import crop, paste
    from ..predict import CropPipelineModel, OutlineModel, load_model

    model, _ = load_model(fm.path)
    pipeline = model if isinstance(model, CropPipelineModel) else None  # Grad-CAM of the crop, pasted into its box
    outline = model if isinstance(model, OutlineModel) else None  # its class path; a fold ensemble: the members' mean
    nets = outline.chains if outline else [pipeline.classifier if pipeline else model]
    fit = outline.fit if outline else "stretch"
    if len(nets[0].inputs) != 1:  # a two-stream model: Grad-CAM is defined here for one input only
        return pd.DataFrame(), {}
    size = int(nets[0].inputs[0].shape[1])
    d = data.lesions[data.lesions["tumour_mask"] != ""].reset_index(drop=True)
    rows, maps = [], {}
    for start in range(0, len(d), batch_size):
        part = d.iloc[start : start + batch_size]
        rgbs = [read_rgb(data.root / p) for p in part["path"]]
        boxes = [pipeline.lesion(im)[1] for im in rgbs] if pipeline else None
        x = np.stack([crop(im, b, size) for im, b in zip(rgbs, boxes)] if pipeline else
                     [fit_square(im, size, fit) for im in rgbs]).astype(np.float32)
        proba = np.mean([np.asarray(net(x, training=False)) for net in nets], axis=0)  # direct calls: no retracing
        masks = [read_mask(data.root / m) for m in part["tumour_mask"]]
        raw = np.mean([gradcam(net, x, proba.argmax(axis=1), layer, method) for net in nets], axis=0)
        cams = ([paste(c, b, m.shape) for c, b, m in zip(raw, boxes, masks)] if pipeline
                else [unfit_square(c, m.shape, fit) for c, m in zip(raw, masks)] if fit != "stretch"
                else upsample(raw, [m.shape for m in masks]))
        lt = localisation_table(cams, masks, 0.5, tolerance, list(part["image_id"]))
        lb = baseline_table(masks, 0.5, tolerance, ids=list(part["image_id"]))
        for k, (_, r) in enumerate(part.iterrows()):
            rows.append({"image_id": r["image_id"], "patient_id": r["patient_id"], "label": r["label"],
                         "predicted": ["normal", "benign", "malignant"][int(proba[k].argmax())],
                         "pointing_hit": lt.iloc[k]["pointing_hit"], "energy_inside": lt.iloc[k]["energy_inside"],
                         "baseline_pointing_hit": lb.iloc[k]["pointing_hit"], "baseline_energy_inside": lb.iloc[k]["energy_inside"]})
            if len(maps) < 64:
                maps[r["image_id"]] = cams[k]
    keras.backend.clear_session()
    return pd.DataFrame(rows), maps


def summarise_pointing(loc: pd.DataFrame, model: str, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean pointing-game hit rate and energy inside the mask (map and baseline), CIs over patients
    (no rows for a model without maps, e.g. a two-input model)."""
    rows = []
    if loc.empty:
        return pd.DataFrame(rows)
    for subset, d in (("all lesions", loc), ("correctly classified lesions", loc[loc["label"] == loc["predicted"]])):
        if d.empty:
            continue
        w = resample_weights(d["patient_id"].to_numpy(), n_resamples, seed).astype(float)
        for col, measure, mp in (("pointing_hit", "pointing_hit", "Grad-CAM (predicted class)"),
                                 ("baseline_pointing_hit", "pointing_hit", "centred Gaussian baseline"),
                                 ("energy_inside", "energy_inside", "Grad-CAM (predicted class)"),
                                 ("baseline_energy_inside", "energy_inside", "centred Gaussian baseline")):
            n, value, lo, hi = bootstrap_mean_ci(w, d[col].to_numpy(dtype=float))
            rows.append({"model": model, "subset": subset, "measure": measure, "map": mp, "n": n,
                         "value": value, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)
