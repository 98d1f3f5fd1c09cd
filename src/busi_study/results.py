"""Where model results live: ``reports/<run>/results/<model>/`` and ``reports/<run>/models/``.

One store writes them (the CV runner) and every reader (the comparison on the front page, the
error analysis, the explanations, the reference export) loads them through it, as
:class:`~busi_study.data.store.ProcessedData` does for the processed data.

A trained model's folder holds ``metrics.json`` (the record: recipe, protocol, pooled metrics
with CIs, timing, provenance), the prediction tables (``oof.csv``, ``val_predictions.csv``,
``oof_tta.csv``), ``history.csv``, ``metrics_pooled.csv``, ``metrics_per_fold.csv`` and one
``fold<k>.keras`` per outer fold. A skipped model's folder holds ``SKIPPED.json`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .data.store import atomic_path, write_json

RECORD = "metrics.json"
SKIPPED = "SKIPPED.json"

#: Table name → file name, for the tables a trained model writes.
TABLES = {
    "oof": "oof.csv",                       # pooled out-of-fold test predictions
    "val": "val_predictions.csv",           # validation predictions per fold (thresholds, temperature)
    "oof_tta": "oof_tta.csv",               # out-of-fold, mean over the cached views (optional)
    "history": "history.csv",               # learning curves per fold and phase
    "pooled": "metrics_pooled.csv",         # pooled metrics with CIs
    "per_fold": "metrics_per_fold.csv",     # metrics per fold
    "binary": "metrics_binary.csv",         # benign-vs-malignant metrics with CIs (binary models)
    "boxes": "crop_boxes.csv",              # crop pipeline: per fold and image, the box its crop was cut from
    "margins": "crop_margins.csv",          # crop pipeline: validation scores of each margin tried
    "per_image": "segmentation_per_image.csv",  # segmenter: Dice / IoU / areas per out-of-fold image
    "summary": "segmentation_summary.csv",  # segmenter: means with CIs
    "shortcut": "segmentation_shortcut.csv",  # segmenter: region found vs class
}


@dataclass
class ModelResults:
    """What one trained model left in a run: its record and its prediction tables."""

    name: str
    folder: Path
    record: dict
    oof: pd.DataFrame
    val: pd.DataFrame | None          # None when the model wrote no validation predictions

    @property
    def recipe(self) -> dict:
        return self.record.get("recipe", {})

    def metric(self, metric: str) -> float:
        """A pooled metric's value (e.g. ``macro_auc``)."""
        return next(float(m["value"]) for m in self.record["pooled"] if m["metric"] == metric)

    def fold_model_path(self, fold: int) -> Path:
        """The model of outer fold ``fold`` (it never saw that fold's test images)."""
        return self.folder / f"fold{int(fold)}.keras"

    def fold_model_paths(self) -> list[Path]:
        return sorted(self.folder.glob("fold*.keras"), key=lambda p: int(p.stem[4:]))

    def table(self, name: str) -> pd.DataFrame | None:
        path = self.folder / TABLES[name]
        return pd.read_csv(path) if path.exists() else None


class ResultsStore:
    """The results of one run folder (``report_dir``)."""

    def __init__(self, report_dir: Path | str, folder: str = "results") -> None:
        self.report_dir = Path(report_dir)
        self.root = self.report_dir / folder
        self.models_dir = self.report_dir / "models"

    @property
    def segmentation(self) -> ResultsStore:
        """Lesion segmenters (notebook 05): ``results_segmentation/<model>/``, measures per image and summary."""
        return ResultsStore(self.report_dir, "results_segmentation")

    @property
    def binary(self) -> ResultsStore:
        """Benign-vs-malignant models (S4's task): ``results_binary/<model>/``, the same layout, kept
        apart so that the three-class readers (comparison, error analysis, external) never mix them in."""
        return ResultsStore(self.report_dir, "results_binary")

    # ---------- writing ----------
    def model_dir(self, name: str) -> Path:
        return self.root / name

    def fold_model_path(self, name: str, fold: int) -> Path:
        d = self.model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        return d / f"fold{fold}.keras"

    def load_fold_paths(self, name: str) -> list[Path]:
        """The saved fold models of ``name``, in fold order (before its record is written)."""
        d = self.model_dir(name)
        return sorted(d.glob("fold*.keras"), key=lambda p: int(p.stem[4:]))

    def exported_model_path(self, name: str) -> Path:
        """Where the final model (trained on every image) goes; its model card sits beside it as ``.json``."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        return self.models_dir / f"{name}.keras"

    def exported_models(self) -> list[Path]:
        """The exported final models (``models/<name>.keras``); a crop pipeline's segmenter
        (``<name>.segmenter.keras``) is part of its model, not a model of its own."""
        if not self.models_dir.is_dir():
            return []
        return sorted(p for p in self.models_dir.glob("*.keras") if not p.name.endswith(".segmenter.keras"))

    def write_skipped(self, name: str, record: dict) -> Path:
        d = self.model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        write_json({"model": name, "skipped": True, **record}, d / SKIPPED)
        return d

    def write_trained(self, name: str, tables: dict[str, pd.DataFrame | None], record: dict) -> Path:
        """Write the tables (keys of :data:`TABLES`; None entries are left out) and the record, last."""
        unknown = set(tables) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown result table(s) {sorted(unknown)}")
        d = self.model_dir(name)
        d.mkdir(parents=True, exist_ok=True)
        (d / SKIPPED).unlink(missing_ok=True)
        for key, table in tables.items():
            if table is not None:
                with atomic_path(d / TABLES[key]) as tmp:  # never in place (an --only run may hard-link it)
                    table.to_csv(tmp, index=False)
        write_json(record, d / RECORD)  # written last: its presence means the folder is complete
        return d

    # ---------- reading ----------
    def trained_names(self) -> list[str]:
        return sorted(d.name for d in self.root.glob("*") if (d / RECORD).exists()
                      and ((d / TABLES["oof"]).exists() or (d / TABLES["per_image"]).exists()))

    def skipped(self) -> dict[str, dict]:
        """Skipped models: name → SKIPPED.json (reason, recipe)."""
        return {d.name: json.loads((d / SKIPPED).read_text()) for d in sorted(self.root.glob("*"))
                if (d / SKIPPED).exists() and not (d / RECORD).exists()}

    def load(self, name: str) -> ModelResults:
        d = self.model_dir(name)
        if not (d / RECORD).exists():
            raise FileNotFoundError(f"no results for model '{name}' in {self.root}")
        return ModelResults(
            name=name, folder=d, record=json.loads((d / RECORD).read_text()),
            oof=pd.read_csv(d / TABLES["oof"]).sort_values("image_id").reset_index(drop=True),
            val=pd.read_csv(d / TABLES["val"]) if (d / TABLES["val"]).exists() else None,
        )

    def load_trained(self) -> dict[str, ModelResults]:
        """Every trained model of the run, by name (skipped models are left out)."""
        return {name: self.load(name) for name in self.trained_names()}

    def records(self) -> dict[str, dict]:
        """metrics.json of every trained model, by name (no prediction tables read)."""
        return {name: json.loads((self.model_dir(name) / RECORD).read_text()) for name in self.trained_names()}
