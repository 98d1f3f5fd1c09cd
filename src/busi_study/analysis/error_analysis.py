"""Error analysis of out-of-fold predictions: what errors go with, agreement, calibration.

Used by the error-analysis notebook. Inputs are the prediction tables the model notebooks wrote,
read through :class:`~busi_study.results.ResultsStore`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score
from tqdm import tqdm

from ..data.images import mask_paths, merged_mask, read_gray, read_rgb
from ..evaluation.bootstrap import group_bootstrap, resample_weights
from ..evaluation.calibration import (
    expected_calibration_error,
    fit_temperature_on,
    reliability_table,
    temperature_scale,
)
from ..evaluation.evaluate import arrays
from ..info import CLASSES, PROBA_COLUMNS
from ..results import ModelResults
from ..timing import timed


def with_predictions(oof: pd.DataFrame) -> pd.DataFrame:
    """Adds ``predicted``, ``confidence`` and ``correct`` columns."""
    out = oof.copy()
    p = out[PROBA_COLUMNS].to_numpy()
    out["predicted"] = [CLASSES[i] for i in p.argmax(axis=1)]
    out["confidence"] = p.max(axis=1)
    out["correct"] = out["predicted"] == out["label"]
    return out


@timed("annotation features")
def annotation_features(manifest: pd.DataFrame, root: Path, progress: bool = True) -> pd.DataFrame:
    """Burned-in annotations per image.

    colour_fraction: share of pixels whose channels differ by more than 30 grey levels
    (coloured overlays, Doppler); mark_pixels: pixels of thin bright marks (white top-hat of
    the grey image, 7×7 kernel, above 100: calipers, dotted lines, text); saturated_fraction:
    share of pixels at 250 or above. Flags: has_colour (colour_fraction > 0.1 %), has_marks
    (mark_pixels > 30).
    """
    rows = []
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (7, 7))
    for _, r in tqdm(manifest.iterrows(), total=len(manifest), desc="annotation features", disable=not progress, mininterval=2):
        rgb = read_rgb(Path(root) / r["path"]).astype(np.int16)
        spread = rgb.max(axis=2) - rgb.min(axis=2)
        grey = cv2.cvtColor(rgb.astype(np.uint8), cv2.COLOR_RGB2GRAY)
        tophat = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, kernel)
        rows.append({"image_id": r["image_id"], "colour_fraction": float((spread > 30).mean()),
                     "mark_pixels": int((tophat > 100).sum()), "saturated_fraction": float((grey >= 250).mean())})
    out = pd.DataFrame(rows)
    out["has_colour"] = out["colour_fraction"] > 0.001
    out["has_marks"] = out["mark_pixels"] > 30
    return out


def error_rate_by(pred: pd.DataFrame, factor: str, bins: list | None = None, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Error rate per level (or quantile bin) of ``factor`` with 95 % group-bootstrap CIs.

    pred: a prediction table with ``correct``, ``group_id`` and the factor column.
    bins: bin edges for a numeric factor (None: use the factor's values as levels, or
    quartiles if it has more than 8 distinct values).
    """
    d = pred.dropna(subset=[factor]).copy()
    if bins is not None:
        d["level"] = pd.cut(d[factor], bins=bins, include_lowest=True).astype(str)
    elif d[factor].nunique() > 8:
        d["level"] = pd.qcut(d[factor], q=4, duplicates="drop").astype(str)
    else:
        d["level"] = d[factor].astype(str)
    rows = []
    for level, part in d.groupby("level", sort=False):
        err = (~part["correct"]).to_numpy(dtype=float)
        w = resample_weights(part["group_id"].to_numpy(), n_resamples, seed).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (w * err).sum(axis=1) / w.sum(axis=1)
        boot = boot[np.isfinite(boot)]
        lo, hi = np.percentile(boot, [2.5, 97.5]) if boot.size else (np.nan, np.nan)
        rows.append({"factor": factor, "level": level, "n": len(part), "error_rate": err.mean(),
                     "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def pairwise_kappa(preds: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Cohen's kappa between every two models' predicted classes on the same images."""
    names = list(preds)
    m = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            k = cohen_kappa_score(preds[a]["predicted"], preds[b]["predicted"])
            m.loc[a, b] = m.loc[b, a] = k
    return m


def hard_cases(preds: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images every model gets wrong, with each model's predicted class."""
    base = next(iter(preds.values()))[["image_id", "label", "group_id"]].copy()
    wrong = np.ones(len(base), dtype=bool)
    for name, p in preds.items():
        base[name] = p["predicted"].to_numpy()
        wrong &= ~p["correct"].to_numpy()
    return base[wrong].reset_index(drop=True)


def temperature_scaled(oof: pd.DataFrame, val: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, float]]:
    """Temperature per fold fitted on that fold's validation predictions, applied to its test fold."""
    out, temps = [], {}
    for fold, t in oof.groupby("fold"):
        v = val[val["fold"] == fold]
        yv, pv, _ = arrays(v)
        temp = fit_temperature_on(pv, yv)
        temps[int(fold)] = temp
        scaled = t.copy()
        scaled[PROBA_COLUMNS] = temperature_scale(t[PROBA_COLUMNS].to_numpy(), temp)
        out.append(scaled)
    return pd.concat(out).sort_values("image_id").reset_index(drop=True), temps


def calibration_summary(name: str, oof: pd.DataFrame, val: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> dict:
    """ECE and log loss before and after temperature scaling, with group-bootstrap CIs."""
    scaled, temps = temperature_scaled(oof, val)
    row = {"model": name, "temperatures": ", ".join(f"{t:.2f}" for t in temps.values())}
    for tag, pred in (("before", oof), ("after", scaled)):
        y, p, g = arrays(pred)
        b = group_bootstrap(y, p, g, n_resamples=n_resamples, seed=seed).set_index("metric")
        for m in ("ece", "log_loss", "accuracy"):
            row[f"{m}_{tag}"] = b.loc[m, "value"]
            row[f"{m}_{tag}_ci_low"] = b.loc[m, "ci_low"]
            row[f"{m}_{tag}_ci_high"] = b.loc[m, "ci_high"]
    row["ece_check"] = expected_calibration_error(*arrays(oof)[:2])
    return {"row": row, "scaled": scaled}


def best_model(models: dict[str, ModelResults], metric: str = "macro_auc") -> str:
    """Name of the model with the highest pooled ``metric``."""
    return max(models, key=lambda n: models[n].metric(metric))


def confusion_pair_examples(pred: pd.DataFrame, per_pair: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Misclassified images per (true, predicted) pair, most confident first, at most ``per_pair`` each.
    Returns (pair counts, the chosen rows)."""
    wrong = pred[~pred["correct"]]
    pairs = wrong.groupby(["label", "predicted"]).size().sort_values(ascending=False)
    chosen = [wrong[(wrong["label"] == t) & (wrong["predicted"] == p)].sort_values("confidence", ascending=False).head(per_pair)
              for (t, p), _ in pairs.items()]
    rows = pd.concat(chosen) if chosen else wrong.iloc[:0]
    return pairs.rename("images").reset_index(), rows


def probability_caption(r: pd.Series) -> str:
    """``n0.10 b0.20 m0.70``: the class probabilities of a prediction row, by initial."""
    return " ".join(f"{c[0]}{r[col]:.2f}" for c, col in zip(CLASSES, PROBA_COLUMNS))


def outcome_examples(pred: pd.DataFrame, per_cell: int = 3) -> list[tuple[str, str, str | None]]:
    """(outcome, class, image_id or None) for TP / FP / FN of every class, ``per_cell`` each, padded
    with None so that a grid of classes × outcomes stays aligned."""
    p = pred.set_index("image_id")
    picked: list[tuple[str, str, str | None]] = []
    for c in CLASSES:
        for kind, sel in (("TP", (p["label"] == c) & (p["predicted"] == c)), ("FP", (p["label"] != c) & (p["predicted"] == c)),
                          ("FN", (p["label"] == c) & (p["predicted"] != c))):
            ids = sorted(p.index[sel])[:per_cell]
            picked += [(kind, c, i) for i in ids] + [(kind, c, None)] * (per_cell - len(ids))
    return picked


def factor_table(pred: pd.DataFrame, annotations: pd.DataFrame, groups: pd.DataFrame, stats: pd.DataFrame | None) -> pd.DataFrame:
    """Predictions joined with what errors may go with: annotations, lesion fraction, intensity, width,
    and membership in a near-duplicate or label-conflict group."""
    g = groups.set_index("image_id")
    d = pred.merge(annotations, on="image_id", how="left")
    if stats is not None:
        d = d.merge(stats[["image_id", "lesion_fraction", "mean_intensity", "width"]], on="image_id", how="left")
    d["in_duplicate_group"] = d["image_id"].map(g["group_size"]) > 1
    d["in_label_conflict_group"] = d["image_id"].map(g["label_conflict"]).astype(bool)
    return d


FACTORS = ("lesion_fraction", "mean_intensity", "width", "has_marks", "has_colour", "in_duplicate_group",
           "in_label_conflict_group")


@timed("error rates by factor (bootstrap)")
def error_rates_by_factor(d: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:func:`error_rate_by` for every factor of :data:`FACTORS` present in ``d`` (lesion size on
    lesion images only)."""
    tables = []
    for factor in FACTORS:
        if factor not in d:
            continue
        sub = d[d["label"] != "normal"] if factor == "lesion_fraction" else d
        tables.append(error_rate_by(sub, factor, n_resamples=n_resamples, seed=seed))
    return pd.concat(tables, ignore_index=True)


def operating_points_table(models: dict[str, ModelResults]) -> pd.DataFrame:
    """Sensitivity at 90 % specificity and specificity at 90 % sensitivity of every model, with CIs."""
    rows = []
    for name, m in models.items():
        pooled = {r["metric"]: r for r in m.record["pooled"]}
        for metric in ("sens_at_spec90", "spec_at_sens90"):
            rows.append({"model": name, "metric": metric, **{k: pooled[metric][k] for k in ("value", "ci_low", "ci_high")}})
    return pd.DataFrame(rows)


@timed("calibration (temperature scaling, bootstrap)")
def calibration_tables(models: dict[str, ModelResults], n_resamples: int = 2000, seed: int = 0):
    """(summary table, reliability tables before, after temperature scaling) for every model."""
    rows, before, after = [], {}, {}
    for name, m in models.items():
        out = calibration_summary(name, m.oof, m.val, n_resamples=n_resamples, seed=seed)
        rows.append(out["row"])
        before[name] = reliability_table(*arrays(m.oof)[:2])
        after[name] = reliability_table(*arrays(out["scaled"])[:2])
    return pd.DataFrame(rows).drop(columns=["ece_check"]), before, after


class GalleryImages:
    """Gallery items (image, caption, lesion mask, optional Grad-CAM map) of a processed dataset's images."""

    def __init__(self, manifest: pd.DataFrame, root: Path) -> None:
        self.manifest = manifest.set_index("image_id") if "image_id" in manifest else manifest
        self.root = Path(root)

    def item(self, image_id: str | None, caption: str, cam: np.ndarray | None = None) -> dict:
        if image_id is None:  # an empty cell that keeps a grid aligned
            return {"image": np.full((8, 8), 255, np.uint8), "caption": caption}
        r = self.manifest.loc[image_id]
        g = read_gray(self.root / r["path"])
        return {"image": g, "caption": caption, "mask": merged_mask(mask_paths(r, self.root), g.shape), "cam": cam}
