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
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.manifest import IMAGE_SUFFIXES
from ..data.store import atomic_path, write_text
from ..data.tables import read_table
from ..errors import StudyError, first_line
from ..evaluation.calibration import class_mask, class_probabilities, fill_absent, reliability_table, temperature_scale
from ..evaluation.external import PROBA, TransferSettings, binary_arrays, binary_table, settings_from_validation
from ..info import CLASSES
from ..timing import timed


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
    """A CSV (any common delimiter and encoding) or xlsx (first sheet) as strings
    (:func:`busi_study.data.tables.read_table`: one-line errors, malformed rows kept and marked)."""
    return read_table(path, "label table")


def _index_files(root: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Files below ``root`` by lower-case name, and image files by lower-case name without extension."""
    by_name: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts):
            by_name.setdefault(f.name.lower(), []).append(f)
            if f.suffix.lower() in IMAGE_SUFFIXES:
                by_stem.setdefault(f.stem.lower(), []).append(f)
    return by_name, by_stem


def _find(image: str, root: Path, by_name: dict[str, list[Path]], by_stem: dict[str, list[Path]]) -> tuple[Path | None, str]:
    """(file, "") for a row's image: a path relative to ``root``, else a file name found anywhere below
    it, else the same without its extension (``case_0001`` for ``case_0001.png``), each only when
    exactly one file matches; (None, reason) otherwise."""
    if not image:
        return None, "no image name in the row"
    direct = root / image
    if direct.is_file():
        return direct, ""
    name = Path(image.replace("\\", "/")).name.lower()
    for how, hits in (("named", by_name.get(name, [])), ("named (without extension)", by_stem.get(name, []))):
        if len(hits) == 1:
            return hits[0], ""
        if len(hits) > 1:
            shown = ", ".join(h.relative_to(root).as_posix() for h in hits[:3])
            return None, (f"ambiguous: {len(hits)} files {how} '{image}' below the folder ({shown}) — give the path "
                          "relative to the folder")
    return None, "image file not found"


def resolve_rows(table: pd.DataFrame, root: Path, image_column: str, label_column: str,
                 group_column: str | None = None) -> LabelledFolder:
    """Match each row to one file under ``root`` and a known class; list the rows that cannot be used.

    A row names its image by a path relative to ``root``, or by a file name found anywhere below it,
    with or without the extension, when exactly one file matches (otherwise: listed as ambiguous or
    not found). An image named by several rows is scored once: the first row is used when they give
    the same label, none when they give different labels (each listed). No usable row at all is a
    one-line error saying how many rows did not match, with examples of their names and of the files."""
    root = Path(root)
    for col in (image_column, label_column, group_column):
        if col and col not in table.columns:
            raise StudyError(f"column '{col}' not in the label table (columns: {', '.join(map(str, table.columns))}) — "
                             "choose it with --image-column / --label-column / --group-column")
    by_name, by_stem = _index_files(root)
    malformed = table.attrs.get("bad_lines", {})
    rows, bad = [], []
    for i, r in table.reset_index(drop=True).iterrows():
        image = str(r[image_column]).strip()
        label = str(r[label_column]).strip().lower()
        path, why = (None, malformed[i]) if i in malformed else _find(image, root, by_name, by_stem)
        if path is None:
            bad.append({"row": i, "image": image, "reason": why})
        elif label not in CLASSES:
            bad.append({"row": i, "image": image, "reason": f"unknown label '{r[label_column]}' (expected one of {', '.join(CLASSES)})"})
        else:
            group = str(r[group_column]).strip() if group_column else f"row{i}"
            rows.append({**{k: r[k] for k in table.columns}, "row": i, "image": image, "path": str(path), "label": label,
                         "group": group or f"row{i}"})
    if not rows:
        _no_usable_row(table, bad, root, image_column, label_column, by_name)
    rows, twice = _once_per_image(rows)
    cols = ["row", "image", "path", "label", "group"]
    rows_df = pd.DataFrame(rows)
    rows_df = rows_df[cols + [c for c in rows_df.columns if c not in cols]] if len(rows_df) else pd.DataFrame(columns=cols)
    bad_df = pd.DataFrame(bad + twice, columns=["row", "image", "reason"]).sort_values("row", kind="stable").reset_index(drop=True)
    return LabelledFolder(root, rows_df, bad_df)


def _once_per_image(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Rows naming one file once: (kept rows, the others as bad rows with the reason)."""
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    kept, bad = [], []
    for r in rows:
        same = by_path[r["path"]]
        if len(same) == 1:
            kept.append(r)
            continue
        labels = sorted({s["label"] for s in same})
        first = same[0]["row"]
        if len(labels) > 1:
            bad.append({"row": r["row"], "image": r["image"], "reason": f"listed more than once with two labels "
                        f"({', '.join(labels)}; rows {', '.join(str(s['row']) for s in same)}): left out"})
        elif r["row"] == first:
            kept.append(r)
        else:
            bad.append({"row": r["row"], "image": r["image"], "reason": f"listed again (the same image as row {first}): "
                        "scored once"})
    return kept, bad


def _no_usable_row(table: pd.DataFrame, bad: list[dict], root: Path, image_column: str, label_column: str,
                   by_name: dict[str, list[Path]]) -> None:
    n = len(table)
    if n == 0:
        raise StudyError(f"the label table has a header but no rows — give one row per image ({image_column}, {label_column})")
    missing = [b for b in bad if b["reason"] == "image file not found"]
    if missing:
        names = ", ".join(f"'{b['image']}'" for b in missing[:3])
        files = [f for fs in by_name.values() for f in fs if f.suffix.lower() in IMAGE_SUFFIXES][:3]
        have = ", ".join(f"'{f.relative_to(root).as_posix()}'" for f in files) or "no image file"
        raise StudyError(f"none of the {n} rows of the label table names an image below {root} ({len(missing)} not found, "
                         f"e.g. {names}; the folder holds e.g. {have}) — check the folder and --image-column "
                         f"(now '{image_column}')")
    reasons = sorted({b["reason"].split(" (")[0] for b in bad})
    raise StudyError(f"none of the {n} rows of the label table can be used ({'; '.join(reasons)[:200]}) — check "
                     f"--label-column (now '{label_column}') and the rows listed")


@timed("evaluate {name} on the folder")
def evaluate_model(model, name: str, folder: LabelledFolder, settings: TransferSettings | None = None,
                   positive: str = "malignant", negatives: tuple[str, ...] | None = None, n_resamples: int = 2000,
                   seed: int = 0, batch_size: int = 16) -> FolderEvaluation:
    """Predict every usable row, drop unreadable images (listed), score the binary task with CIs."""
    from ..predict import model_classes, predict_files

    if positive not in CLASSES:
        raise StudyError(f"--positive must be one of {', '.join(CLASSES)}")
    if negatives and (positive in negatives or any(c not in CLASSES for c in negatives)):
        raise StudyError(f"--negative must be classes other than {positive} among {', '.join(CLASSES)}")
    classes = model_classes(model)
    lacking = [c for c in (positive, *(negatives or ())) if c not in classes]
    if lacking:
        kind = " (a binary benign-vs-malignant model)" if len(classes) == 2 else ""
        raise StudyError(f"{name} gives only {' and '.join(f'p_{c}' for c in classes)}{kind}: it has no p_{lacking[0]} to "
                         f"score — choose among its classes, e.g. --positive {classes[-1]} --negative "
                         f"{' '.join(c for c in classes if c != classes[-1])} (images of other classes are left out of the task)")
    negatives = tuple(negatives) if negatives else tuple(c for c in classes if c != positive)
    rows = folder.rows.reset_index(drop=True)
    pred = predict_files(model, [Path(p) for p in rows["path"]], batch_size)
    unreadable = pred["error"] != ""
    bad = pd.concat([folder.bad, pd.DataFrame({"row": rows.loc[unreadable, "row"], "image": rows.loc[unreadable, "image"],
                                               "reason": "unreadable image: " + pred.loc[unreadable, "error"]})],
                    ignore_index=True).sort_values("row").reset_index(drop=True)
    ok = ~unreadable.to_numpy()
    out = pd.concat([rows.loc[ok].reset_index(drop=True),
                     pred.loc[ok, [*PROBA, "predicted"]].reset_index(drop=True)], axis=1)
    if out.empty:
        raise StudyError(f"no image could be read ({len(bad)} bad rows, see the reasons in bad_rows.csv of --out) — check "
                         "that the files are images (PNG, JPEG, BMP, TIFF)")
    temperature = settings.temperature if settings else 1.0
    thresholds = dict(settings.thresholds) if settings else {}
    # over the model's classes only: a binary model's empty p_normal stays empty, never gets probability
    raw = fill_absent(out[PROBA].to_numpy(dtype=float), PROBA)
    has = class_mask(raw)
    scaled = temperature_scale(raw, temperature, has)
    for k, c in enumerate(CLASSES):
        out[f"p_{c}_T"] = scaled[:, k] if has[k] else np.nan
    keep, y, p = binary_arrays(out["label"], raw, positive, negatives)
    if not (y == CLASSES.index(positive)).any() or (y == CLASSES.index(positive)).all():
        have = ", ".join(f"{n} {c}" for c, n in out["label"].value_counts().items()) or "none"
        raise StudyError(f"need images of both {positive} and {'/'.join(negatives)} to evaluate; the usable rows have {have} "
                         "— check --label-column and --positive/--negative")
    table = binary_table(y, p, out.loc[keep, "group"].to_numpy(), temperature, thresholds, positive, n_resamples, seed)
    info = {"model": name, "positive": positive, "negatives": list(negatives), "score": f"p_{positive}",
            "n_rows": int(len(folder.rows) + len(folder.bad)), "n_usable": int(len(out)), "n_bad": int(len(bad)),
            "n_binary": int(keep.sum()), "n_positive": table.attrs["n_positive"], "n_negative": table.attrs["n_negative"],
            "n_groups": table.attrs["n_groups"], "other_classes": {k: int(v) for k, v in out.loc[~keep, "label"].value_counts().items()},
            "bootstrap": {"resamples": n_resamples, "seed": seed, "ci": 0.95, "unit": "group (patient)"}}
    out["in_task"] = keep
    return FolderEvaluation(name, out, table, settings.as_dict() if settings else
                            {"temperature": 1.0, "thresholds": {}, "rule": "none given: argmax only, T = 1"}, bad, info)


def row_problems(folder: LabelledFolder) -> list[str]:
    """Console lines about the rows left out: how many, why, with a few examples (all in bad_rows.csv)."""
    if folder.bad.empty:
        return []
    n = len(folder.rows) + len(folder.bad)
    out = []
    for kind, test in (("name no image file below the folder", lambda r: r == "image file not found"),
                       ("name an image listed more than once", lambda r: r.startswith("listed")),
                       ("name an image ambiguously", lambda r: r.startswith("ambiguous")),
                       ("have an unknown label", lambda r: r.startswith("unknown label")),
                       ("are malformed", lambda r: r.startswith("line "))):
        hit = folder.bad[folder.bad["reason"].map(test)]
        if len(hit):
            examples = ", ".join(f"'{v}'" for v in hit["image"].astype(str).head(3))
            out.append(f"{len(hit)} of {n} rows {kind} (e.g. {examples}); left out, listed in bad_rows.csv")
    return out


def check_out_folder(out_dir: Path) -> None:
    """Fail before any prediction when ``--out`` cannot be the output folder (a file, not writable)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StudyError(f"--out {out_dir} is a file — give a folder (created if missing) for predictions.csv, metrics.json, …")
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise StudyError(f"--out {out_dir}: {existing} is a file, not a folder — choose another path")
    if existing is not None and not os.access(existing, os.W_OK):
        raise StudyError(f"--out {out_dir}: {existing} is not writable (read-only or no permission) — choose another path")


def write_outputs(ev: FolderEvaluation, out_dir: Path, dpi: int = 150) -> list[Path]:
    """predictions.csv, metrics.json, metrics_table.csv, bad_rows.csv, roc.png, reliability.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import plots

    out_dir = Path(out_dir)
    paths = [out_dir / n for n in ("predictions.csv", "metrics_table.csv", "bad_rows.csv", "metrics.json", "roc.png",
                                   "reliability.png")]
    # atomically, each: a full or read-only disk is a one-line error naming the file (data.store.atomic_path)
    for table, path in ((ev.predictions, paths[0]), (ev.table, paths[1]), (ev.bad, paths[2])):
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    write_text(json.dumps({**ev.info, "settings": ev.settings, "metrics": ev.table.to_dict(orient="records"),
                           "bad_rows": ev.bad.to_dict(orient="records"), "not_for_clinical_use": True},
                          indent=2, default=float) + "\n", paths[3])
    task = ev.predictions[ev.predictions["in_task"]]
    auc = ev.table.set_index("metric").loc["auc"]
    fig = plots.roc_overlay({f"{ev.model} (AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}])": task},
                            f"{ev.info['positive']} vs {'/'.join(ev.info['negatives'])}, n = {len(task)}",
                            positive=ev.info["positive"])
    with atomic_path(paths[4]) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    y = task["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    rel = {"before": reliability_table(y, class_probabilities(task[PROBA].to_numpy(dtype=float), PROBA)),
           f"after T = {ev.settings['temperature']:.2f}": reliability_table(
               y, class_probabilities(task[[f"{c}_T" for c in PROBA]].to_numpy(dtype=float)))}
    fig = plots.reliability(rel, f"{ev.model}: reliability (top label, 15 bins), n = {len(task)}")
    with atomic_path(paths[5]) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return paths


def settings_for(results_dir: Path | None, positive: str, negatives: tuple[str, ...] | None) -> TransferSettings | None:
    """Settings from a run's ``results/<model>/val_predictions.csv`` (None when no folder is given)."""
    if results_dir is None:
        return None
    f = Path(results_dir) / "val_predictions.csv"
    if not f.exists():
        raise StudyError(f"no val_predictions.csv in {results_dir} — give reports/<run>/results/<model>")
    try:
        val = pd.read_csv(f)
    except Exception as exc:  # empty, truncated, not a CSV
        raise StudyError(f"{f} is not readable ({type(exc).__name__}: {first_line(exc, 100)}) — rerun the model's notebook "
                         "or give another run's results folder") from None
    need = {"label", *PROBA}
    if not need <= set(val.columns):
        raise StudyError(f"{f} lacks column(s) {', '.join(sorted(need - set(val.columns)))} — give a results folder of the "
                         "study (reports/<run>/results/<model>)")
    negs = negatives or tuple(c for c in CLASSES if c != positive)
    try:
        return settings_from_validation(val, positive, negs)
    except ValueError as exc:
        raise StudyError(f"--settings-from {results_dir}: {first_line(exc)} — give the results folder of a model trained on "
                         f"{positive} and {'/'.join(negs)} images") from None
