"""Figures shared by the model notebooks and the report: learning curves, confusion matrices,
ROC curves, ROC overlay, reliability diagrams. Each returns a Matplotlib figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from .info import CLASSES, PROBA_COLUMNS


def learning_curves(history: pd.DataFrame, title: str):
    """Loss and accuracy per epoch, one line per fold (and per phase when there are two)."""
    phases = sorted(history["phase"].unique())
    fig, axes = plt.subplots(len(phases), 2, figsize=(10, 3.2 * len(phases)), squeeze=False)
    for i, ph in enumerate(phases):
        h = history[history["phase"] == ph]
        for j, metric in enumerate(("loss", "accuracy")):
            ax = axes[i, j]
            for fold, hf in h.groupby("fold"):
                line, = ax.plot(hf["epoch"], hf[metric], lw=1, label=f"fold {fold} train")
                if f"val_{metric}" in hf:
                    ax.plot(hf["epoch"], hf[f"val_{metric}"], lw=1, ls="--", color=line.get_color(), label=f"fold {fold} val")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.set_title(f"phase {ph}: {metric}" if len(phases) > 1 else metric, fontsize=9)
    axes[0, 1].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion(counts: pd.DataFrame, normalised: pd.DataFrame, title: str):
    """Counts and row-normalised confusion matrices side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, m, fmt in ((axes[0], counts, "{:.0f}"), (axes[1], normalised, "{:.2f}")):
        a = m.to_numpy(dtype=float)
        ax.imshow(np.nan_to_num(a), cmap="Blues")
        for (r, c), v in np.ndenumerate(a):
            ax.text(c, r, "" if np.isnan(v) else fmt.format(v), ha="center", va="center",
                    color="white" if v > np.nanmax(a) * 0.6 else "black")
        ax.set_xticks(range(len(CLASSES)), CLASSES)
        ax.set_yticks(range(len(CLASSES)), CLASSES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    axes[0].set_title("counts", fontsize=9)
    axes[1].set_title("row-normalised (recall on the diagonal)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def roc_one_vs_rest(pred: pd.DataFrame, title: str, auc: dict[str, float] | None = None):
    """One-vs-rest ROC curves of the pooled out-of-fold predictions, one per class."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    y = pred["label"].to_numpy()
    for c, col in zip(CLASSES, PROBA_COLUMNS):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, pred[col])
        label = c + (f" (AUC {auc[c]:.3f})" if auc and c in auc else "")
        ax.plot(fpr, tpr, lw=1.5, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def roc_overlay(preds: dict[str, pd.DataFrame], title: str, positive: str = "malignant"):
    """Malignant-vs-rest ROC of several models on their pooled out-of-fold predictions."""
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    for name, pred in preds.items():
        pos = pred["label"].to_numpy() == positive
        fpr, tpr, _ = roc_curve(pos, pred[f"p_{positive}"])
        ax.plot(fpr, tpr, lw=1.5, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _reliability_axes(ax, tables: dict[str, pd.DataFrame], title: str, legend_size: float = 7) -> None:
    for name, t in tables.items():
        t = t[t["count"] > 0]
        ax.plot(t["confidence"], t["accuracy"], marker="o", ms=3, lw=1.2, label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=legend_size)
    ax.set_title(title, fontsize=9)


def reliability(tables: dict[str, pd.DataFrame], title: str):
    """Reliability diagrams (accuracy vs confidence per bin) for one or more prediction sets
    (tables from :func:`busi_study.evaluation.calibration.reliability_table`)."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    _reliability_axes(ax, tables, title)
    fig.tight_layout()
    return fig


def reliability_before_after(before: dict[str, pd.DataFrame], after: dict[str, pd.DataFrame], title: str):
    """Two reliability panels: before and after temperature scaling, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    _reliability_axes(axes[0], before, "before", legend_size=6)
    _reliability_axes(axes[1], after, "after temperature scaling", legend_size=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def pointing_game(table: pd.DataFrame, title: str):
    """Pointing-game hit rate with 95 % CI per (model, map); baselines in red.
    ``table``: rows of the localisation summary for one measure and subset."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = []
    for k, ((model, mp), row) in enumerate(table.set_index(["model", "map"]).iterrows()):
        ax.errorbar(k, row["value"], yerr=[[row["value"] - row["ci_low"]], [row["ci_high"] - row["value"]]], fmt="o", capsize=3,
                    color="#c44e52" if "baseline" in mp else "#4c72b0")
        labels.append(f"{model}\n{mp}")
    ax.set_xticks(range(len(labels)), labels, fontsize=5.5, rotation=60, ha="right")
    ax.set_ylabel("pointing-game hit rate")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def image_gallery(items: list[dict], ncols: int = 4, title: str = ""):
    """A grid of images; each item: image (H, W) or (H, W, 3) uint8, caption, optional mask
    (contour in yellow) and optional cam (heat-map overlay, same size as the image)."""
    n = max(1, len(items))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, it in zip(axes.ravel(), items):
        img = it["image"]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        if it.get("cam") is not None:
            ax.imshow(it["cam"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        if it.get("mask") is not None and np.asarray(it["mask"]).any():
            ax.contour(np.asarray(it["mask"], dtype=float), levels=[0.5], colors="yellow", linewidths=0.8)
        ax.set_title(it.get("caption", ""), fontsize=6.5)
    if not items:
        axes[0, 0].text(0.5, 0.5, "none", ha="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def error_rates(table: pd.DataFrame, title: str):
    """Error rate with 95 % CI per level, one panel per factor (from error_analysis.error_rate_by)."""
    factors = list(dict.fromkeys(table["factor"]))
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 3.4), squeeze=False)
    for ax, f in zip(axes[0], factors):
        t = table[table["factor"] == f]
        x = np.arange(len(t))
        ax.errorbar(x, t["error_rate"], yerr=[t["error_rate"] - t["ci_low"], t["ci_high"] - t["error_rate"]], fmt="o", capsize=3)
        ax.set_xticks(x, [f"{lv}\n(n={n})" for lv, n in zip(t["level"], t["n"])], fontsize=6, rotation=30)
        ax.set_title(f, fontsize=8)
        ax.set_ylim(0, max(0.6, float(np.nanmax(t["ci_high"])) + 0.05))
    axes[0, 0].set_ylabel("error rate")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
