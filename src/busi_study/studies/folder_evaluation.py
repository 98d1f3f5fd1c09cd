"""Evaluate exported models on any labelled folder of images (``python -m busi_study evaluate`` and notebook 08).

    python -m busi_study evaluate IMAGES_FOLDER --labels TABLE.csv --model reports/latest/models/NAME.keras \\
        [--image-column Image_filename --label-column Classification --group-column CaseID] \\
        [--positive malignant --negative benign] [--settings-from reports/latest/results/NAME] --out DIR

A row of the label table names an image (a path relative to the folder, or a file name found
anywhere below it) and its class (normal / benign / malignant, any case). Rows whose file is
missing, whose label is unknown or whose image cannot be decoded are listed in ``bad_rows.csv``
with the reason and skipped. The task is binary: ``--positive`` against ``--negative`` (default:
every other class), scored by the model's ``p_<positive>``. Thresholds and temperature are never
chosen on these images: they come from the training run's validation predictions
(``--settings-from``, :func:`busi_study.evaluation.external.settings_from_validation`) or are given
(``--threshold NAME=VALUE``, ``--temperature``); without either, only ``argmax`` and T = 1 apply.

Writes ``predictions.csv``, ``metrics.json``, ``metrics_table.csv`` (value and 95 % bootstrap CI
resampling ``--group-column``, one image per group when not given), ``bad_rows.csv``, ``roc.png``
and ``reliability.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import StudyError
from ..evaluation.calibration import apply_temperature, logits_from_proba, reliability_table
from ..evaluation.external import PROBA, TransferSettings, binary_arrays, binary_table, settings_from_validation
from ..info import CLASSES


@dataclass
class LabelledFolder:
    """rows: usable rows (row, image, path, label, group + the table's other columns); bad: row, image, reason."""

    root: Path
    rows: pd.DataFrame
    bad: pd.DataFrame


@dataclass
class FolderEvaluation:
    """One model on one labelled folder."""

    model: str
    predictions: pd.DataFrame       # one row per usable image: path, label, group, p_*, predicted, p_*_T
    table: pd.DataFrame             # metric, value, ci_low, ci_high, n_valid
    settings: dict
    bad: pd.DataFrame
    info: dict = field(default_factory=dict)


def read_label_table(path: Path) -> pd.DataFrame:
    """A CSV (or xlsx, first sheet) as strings."""
    path = Path(path)
    if not path.exists():
        raise StudyError(f"label table not found: {path}")
    if path.suffix.lower() in (".xlsx", ".xls"):
        return pd.read_excel(path, sheet_name=0, dtype=str).fillna("")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def resolve_rows(table: pd.DataFrame, root: Path, image_column: str, label_column: str,
                 group_column: str | None = None) -> LabelledFolder:
    """Match each row to a file under ``root`` and a known class; list the rows that cannot be used."""
    root = Path(root)
    for col in (image_column, label_column, group_column):
        if col and col not in table.columns:
            raise StudyError(f"column '{col}' not in the label table (columns: {', '.join(table.columns)})")
    by_name: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            by_name.setdefault(f.name.lower(), f)
    rows, bad = [], []
    for i, r in table.reset_index(drop=True).iterrows():
        image = str(r[image_column]).strip()
        label = str(r[label_column]).strip().lower()
        path = root / image if image and (root / image).is_file() else by_name.get(Path(image).name.lower())
        if not image or path is None:
            bad.append({"row": i, "image": image, "reason": "image file not found"})
        elif label not in CLASSES:
            bad.append({"row": i, "image": image, "reason": f"unknown label '{r[label_column]}' (expected one of {', '.join(CLASSES)})"})
        else:
            group = str(r[group_column]).strip() if group_column else f"row{i}"
            rows.append({**{k: r[k] for k in table.columns}, "row": i, "image": image, "path": str(path), "label": label,
                         "group": group or f"row{i}"})
    cols = ["row", "image", "path", "label", "group"]
    rows_df = pd.DataFrame(rows)
    rows_df = rows_df[cols + [c for c in rows_df.columns if c not in cols]] if len(rows_df) else pd.DataFrame(columns=cols)
    return LabelledFolder(root, rows_df, pd.DataFrame(bad, columns=["row", "image", "reason"]))


def evaluate_model(model, name: str, folder: LabelledFolder, settings: TransferSettings | None = None,
                   positive: str = "malignant", negatives: tuple[str, ...] | None = None, n_resamples: int = 2000,
                   seed: int = 0, batch_size: int = 16) -> FolderEvaluation:
    """Predict every usable row, drop unreadable images (listed), score the binary task with CIs."""
    from ..predict import predict_files

    if positive not in CLASSES:
        raise StudyError(f"--positive must be one of {', '.join(CLASSES)}")
    negatives = tuple(negatives) if negatives else tuple(c for c in CLASSES if c != positive)
    if positive in negatives or any(c not in CLASSES for c in negatives):
        raise StudyError(f"--negative must be classes other than {positive} among {', '.join(CLASSES)}")
    rows = folder.rows.reset_index(drop=True)
    pred = predict_files(model, [Path(p) for p in rows["path"]], batch_size)
    unreadable = pred["error"] != ""
    bad = pd.concat([folder.bad, pd.DataFrame({"row": rows.loc[unreadable, "row"], "image": rows.loc[unreadable, "image"],
                                               "reason": "unreadable image: " + pred.loc[unreadable, "error"]})],
                    ignore_index=True).sort_values("row").reset_index(drop=True)
    ok = ~unreadable.to_numpy()
    out = pd.concat([rows.loc[ok].reset_index(drop=True),
                     pred.loc[ok, [*PROBA, "predicted"]].reset_index(drop=True)], axis=1)
    temperature = settings.temperature if settings else 1.0
    thresholds = dict(settings.thresholds) if settings else {}
    scaled = apply_temperature(logits_from_proba(out[PROBA].to_numpy(dtype=float)), temperature)
    for k, c in enumerate(CLASSES):
        out[f"p_{c}_T"] = scaled[:, k]
    keep, y, p = binary_arrays(out["label"], out[PROBA].to_numpy(dtype=float), positive, negatives)
    if not (y == CLASSES.index(positive)).any() or (y == CLASSES.index(positive)).all():
        raise StudyError(f"need images of both {positive} and {'/'.join(negatives)} to evaluate; "
                         f"have {dict(out['label'].value_counts())}")
    table = binary_table(y, p, out.loc[keep, "group"].to_numpy(), temperature, thresholds, positive, n_resamples, seed)
    info = {"model": name, "positive": positive, "negatives": list(negatives), "score": f"p_{positive}",
            "n_rows": int(len(folder.rows) + len(folder.bad)), "n_usable": int(len(out)), "n_bad": int(len(bad)),
            "n_binary": int(keep.sum()), "n_positive": table.attrs["n_positive"], "n_negative": table.attrs["n_negative"],
            "n_groups": table.attrs["n_groups"], "other_classes": {k: int(v) for k, v in out.loc[~keep, "label"].value_counts().items()},
            "bootstrap": {"resamples": n_resamples, "seed": seed, "ci": 0.95, "unit": "group (patient)"}}
    out["in_task"] = keep
    return FolderEvaluation(name, out, table, settings.as_dict() if settings else
                            {"temperature": 1.0, "thresholds": {}, "rule": "none given: argmax only, T = 1"}, bad, info)


def write_outputs(ev: FolderEvaluation, out_dir: Path, dpi: int = 150) -> list[Path]:
    """predictions.csv, metrics.json, metrics_table.csv, bad_rows.csv, roc.png, reliability.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / n for n in ("predictions.csv", "metrics_table.csv", "bad_rows.csv", "metrics.json", "roc.png",
                                   "reliability.png")]
    ev.predictions.to_csv(paths[0], index=False)
    ev.table.to_csv(paths[1], index=False)
    ev.bad.to_csv(paths[2], index=False)
    paths[3].write_text(json.dumps({**ev.info, "settings": ev.settings, "metrics": ev.table.to_dict(orient="records"),
                                    "bad_rows": ev.bad.to_dict(orient="records"), "not_for_clinical_use": True},
                                   indent=2, default=float) + "\n")
    task = ev.predictions[ev.predictions["in_task"]]
    auc = ev.table.set_index("metric").loc["auc"]
    fig = plots.roc_overlay({f"{ev.model} (AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}])": task},
                            f"{ev.info['positive']} vs {'/'.join(ev.info['negatives'])}, n = {len(task)}",
                            positive=ev.info["positive"])
    fig.savefig(paths[4], dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    y = task["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    rel = {"before": reliability_table(y, task[PROBA].to_numpy(dtype=float)),
           f"after T = {ev.settings['temperature']:.2f}": reliability_table(y, task[[f"{c}_T" for c in PROBA]].to_numpy(dtype=float))}
    fig = plots.reliability(rel, f"{ev.model}: reliability (top label, 15 bins), n = {len(task)}")
    fig.savefig(paths[5], dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return paths


def settings_for(results_dir: Path | None, positive: str, negatives: tuple[str, ...] | None) -> TransferSettings | None:
    """Settings from a run's ``results/<model>/val_predictions.csv`` (None when no folder is given)."""
    if results_dir is None:
        return None
    f = Path(results_dir) / "val_predictions.csv"
    if not f.exists():
        raise StudyError(f"no val_predictions.csv in {results_dir} (give reports/<run>/results/<model>)")
    negs = negatives or tuple(c for c in CLASSES if c != positive)
    return settings_from_validation(pd.read_csv(f), positive, negs)
