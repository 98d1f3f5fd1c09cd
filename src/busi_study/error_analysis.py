"""Error analysis of out-of-fold predictions: what errors go with, agreement, calibration.

Used by ``notebooks/05_error_analysis.ipynb``. Inputs are the prediction tables the model
notebooks wrote (``results/<model>/oof.csv`` and ``val_predictions.csv``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score
from tqdm import tqdm

from .data.images import read_rgb
from .evaluation.bootstrap import group_bootstrap, resample_weights
from .evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature, logits_from_proba
from .evaluation.evaluate import PROBA, arrays
from .info import CLASSES


def load_model_results(report_dir: Path) -> dict[str, dict]:
    """Trained models of a run: name → {"oof", "val", "metrics"} (skipped models are left out)."""
    out = {}
    for d in sorted((Path(report_dir) / "results").glob("*")):
        if (d / "metrics.json").exists() and (d / "oof.csv").exists():
            out[d.name] = {"oof": pd.read_csv(d / "oof.csv").sort_values("image_id").reset_index(drop=True),
                           "val": pd.read_csv(d / "val_predictions.csv"),
                           "metrics": json.loads((d / "metrics.json").read_text()), "dir": d}
    return out


def with_predictions(oof: pd.DataFrame) -> pd.DataFrame:
    """Adds ``predicted``, ``confidence`` and ``correct`` columns."""
    out = oof.copy()
    p = out[PROBA].to_numpy()
    out["predicted"] = [CLASSES[i] for i in p.argmax(axis=1)]
    out["confidence"] = p.max(axis=1)
    out["correct"] = out["predicted"] == out["label"]
    return out


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
        temp = fit_temperature(logits_from_proba(pv), yv)
        temps[int(fold)] = temp
        scaled = t.copy()
        scaled[PROBA] = apply_temperature(logits_from_proba(t[PROBA].to_numpy()), temp)
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
