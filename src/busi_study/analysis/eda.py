"""Exploratory analysis of the data: per-image statistics and the EDA figures.

Used by ``notebooks/01_eda_intensity.ipynb``; the per-image statistics are cached in
``data/processed/<dataset>/image_stats.csv`` for the error analysis.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm import tqdm

from ..data.images import mask_paths, merged_mask, read_gray
from ..info import CLASSES, S0_INTENSITY

CLASS_COLOURS = {"normal": "#4c72b0", "benign": "#55a868", "malignant": "#c44e52"}


def image_statistics(manifest: pd.DataFrame, root: Path, progress: bool = True) -> pd.DataFrame:
    """One row per image: normalised mean intensity and lesion size.

    Columns: image_id, label, mean_intensity (mean of the greyscale image / 255, in [0, 1]),
    median_intensity, lesion_area_px (pixels in the OR-merged mask), lesion_fraction
    (area / image area), aspect (width / height).
    """
    rows = []
    for _, r in tqdm(manifest.iterrows(), total=len(manifest), desc="image statistics", disable=not progress, mininterval=2):
        g = read_gray(Path(root) / r["path"])
        m = merged_mask(mask_paths(r, root), g.shape)
        area = int(m.sum())
        rows.append({
            "image_id": r["image_id"], "label": r["label"],
            "mean_intensity": float(g.mean() / 255.0), "median_intensity": float(np.median(g) / 255.0),
            "lesion_area_px": area, "lesion_fraction": area / g.size,
            "width": int(g.shape[1]), "height": int(g.shape[0]), "aspect": g.shape[1] / g.shape[0],
        })
    return pd.DataFrame(rows)


def intensity_vs_s0(stats: pd.DataFrame) -> pd.DataFrame:
    """Per class: our min / max / median of mean intensity beside S0's published numbers."""
    rows = []
    for c in CLASSES:
        s = stats.loc[stats["label"] == c, "mean_intensity"]
        if s.empty:
            continue
        rows.append({
            "class": c, "n": int(len(s)),
            "min": s.min(), "max": s.max(), "median": s.median(),
            "p05": s.quantile(0.05), "p95": s.quantile(0.95),
            "s0_min": S0_INTENSITY[c]["min"], "s0_max": S0_INTENSITY[c]["max"], "s0_median": S0_INTENSITY[c]["median"],
        })
    return pd.DataFrame(rows)


def counts_table(manifest: pd.DataFrame, quoted: dict[str, int] | None = None) -> pd.DataFrame:
    """Per class: images, masks, images + masks (what '1,578 images' counts), and a quoted count."""
    rows = []
    for c in CLASSES:
        m = manifest[manifest["label"] == c]
        row = {"class": c, "images": int(len(m)), "masks": int(m["n_masks"].sum())}
        row["images_plus_masks"] = row["images"] + row["masks"]
        if quoted:
            row["s0_quoted"] = quoted.get(c)
        rows.append(row)
    total = {"class": "total", "images": sum(r["images"] for r in rows), "masks": sum(r["masks"] for r in rows)}
    total["images_plus_masks"] = total["images"] + total["masks"]
    if quoted:
        total["s0_quoted"] = quoted.get("total")
    return pd.DataFrame([*rows, total])


def _show(ax, img: np.ndarray, title: str, mask: np.ndarray | None = None, colour: str = "yellow") -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=255)
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def sample_grid(manifest: pd.DataFrame, root: Path, per_class: int, seed: int = 0):
    """A grid of ``per_class`` random images per class (rows) with lesion-mask contours."""
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(1.9 * per_class, 2.0 * len(CLASSES)), squeeze=False)
    for i, c in enumerate(CLASSES):
        m = manifest[manifest["label"] == c]
        pick = m.iloc[sorted(rng.choice(len(m), size=min(per_class, len(m)), replace=False))] if len(m) else m
        for j in range(per_class):
            ax = axes[i, j]
            if j >= len(pick):
                ax.axis("off")
                continue
            r = pick.iloc[j]
            g = read_gray(Path(root) / r["path"])
            _show(ax, g, f"{c}\n{r['image_id']}", merged_mask(mask_paths(r, root), g.shape))
    fig.tight_layout()
    return fig


def group_gallery(manifest: pd.DataFrame, groups: pd.DataFrame, root: Path, max_groups: int, max_members: int = 5):
    """Near-duplicate groups, label conflicts first, then the largest groups; one row per group."""
    multi = groups[groups["group_size"] > 1]
    order = (multi.groupby("group_id").agg(size=("image_id", "size"), conflict=("label_conflict", "first"))
             .sort_values(["conflict", "size"], ascending=[False, False]).head(max_groups))
    if order.empty:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.text(0.5, 0.5, "no near-duplicate groups", ha="center")
        ax.axis("off")
        return fig
    by_id = manifest.set_index("image_id")
    fig, axes = plt.subplots(len(order), max_members, figsize=(1.9 * max_members, 2.0 * len(order)), squeeze=False)
    for i, (gid, info) in enumerate(order.iterrows()):
        members = list(groups.loc[groups["group_id"] == gid, "image_id"])[:max_members]
        for j in range(max_members):
            ax = axes[i, j]
            if j >= len(members):
                ax.axis("off")
                continue
            r = by_id.loc[members[j]]
            g = read_gray(Path(root) / r["path"])
            tag = "CONFLICT " if info["conflict"] else ""
            _show(ax, g, f"{tag}{gid} ({info['size']})\n{members[j]}", None)
            ax.title.set_color("#b00020" if info["conflict"] else "black")
    fig.tight_layout()
    return fig


def pair_gallery(manifest: pd.DataFrame, pairs: pd.DataFrame, root: Path, rows: list[tuple[str, pd.Series]]):
    """Show chosen pairs side by side; ``rows`` is a list of (caption, pair row)."""
    by_id = manifest.set_index("image_id")
    fig, axes = plt.subplots(max(1, len(rows)), 2, figsize=(4.2, 2.1 * max(1, len(rows))), squeeze=False)
    for i, (caption, p) in enumerate(rows):
        for j, key in enumerate(("a", "b")):
            r = by_id.loc[p[key]]
            g = read_gray(Path(root) / r["path"])
            title = f"{p[key]}"
            if j == 0:
                title = f"{caption}\npH {p['phash_dist']} dH {p['dhash_dist']} SSIM {p['ssim']:.2f}\n{p[key]}"
            _show(axes[i, j], g, title)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no pairs near the threshold", ha="center")
        for ax in axes.ravel():
            ax.axis("off")
    fig.tight_layout()
    return fig


def pairs_around_threshold(pairs: pd.DataFrame, threshold: int, n_each: int = 3) -> list[tuple[str, pd.Series]]:
    """Linked pairs at the pHash threshold (and just under) and unlinked pairs just beyond it."""
    out = []
    at = pairs[pairs["linked"] & (pairs["phash_dist"] <= threshold)].sort_values(["phash_dist", "dhash_dist"], ascending=False)
    beyond = pairs[~pairs["linked"]].sort_values(["phash_dist", "dhash_dist"])
    for _, p in at.head(n_each).iterrows():
        out.append(("linked (at threshold)", p))
    for _, p in beyond.head(n_each).iterrows():
        out.append(("NOT linked (just beyond)", p))
    return out


def intensity_interpretation(intensity: pd.DataFrame, stats: pd.DataFrame) -> str:
    """Markdown: our per-class intensity ranges beside S0's, which of our summaries S0's ranges
    resemble, a Kruskal–Wallis test across classes and each class's one-vs-rest AUC of mean intensity."""
    from scipy.stats import kruskal
    from sklearn.metrics import roc_auc_score

    lines = []
    for _, r in intensity.iterrows():
        lines.append(f"- **{r['class']}**: ours {r['min']:.2f}–{r['max']:.2f} (median {r['median']:.2f}, 5th–95th percentile "
                     f"{r['p05']:.2f}–{r['p95']:.2f}); S0 {r['s0_min']:.2f}–{r['s0_max']:.2f} (median {r['s0_median']:.2f})")
    median_gap = (intensity["median"] - intensity["s0_median"]).abs().max()
    range_gap = ((intensity["min"] - intensity["s0_min"]).abs() + (intensity["max"] - intensity["s0_max"]).abs()).mean() / 2
    pct_gap = ((intensity["p05"] - intensity["s0_min"]).abs() + (intensity["p95"] - intensity["s0_max"]).abs()).mean() / 2
    groups_by_class = [stats.loc[stats["label"] == c, "mean_intensity"] for c in CLASSES if (stats["label"] == c).any()]
    h_stat, p_value = kruskal(*groups_by_class)
    auc = {c: roc_auc_score(stats["label"] == c, stats["mean_intensity"]) for c in CLASSES if (stats["label"] == c).any()}
    closer = "our 5th–95th percentiles" if pct_gap < range_gap else "our full min–max ranges"
    explanation = ("S0 most likely left out extreme images or summarised a central range" if pct_gap < range_gap
                   else "the same images were most likely summarised the same way")
    return ("\n".join(lines) + "\n\n"
            f"Medians agree with S0's to within {median_gap:.3f}. S0's ranges lie closer to {closer} "
            f"(mean absolute gap {min(pct_gap, range_gap):.3f} vs {max(pct_gap, range_gap):.3f}), so {explanation}. The classes "
            f"do differ in distribution (Kruskal–Wallis H = {h_stat:.1f}, p = {p_value:.2g}), but mean intensity alone is a weak "
            "feature: as a one-vs-rest score its ROC AUC is " + ", ".join(f"{c} {a:.2f}" for c, a in auc.items())
            + " (0.5 = chance; values below 0.5 mean the class is darker).")
