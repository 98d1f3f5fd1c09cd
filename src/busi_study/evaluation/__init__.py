"""Evaluation (docs/protocol.md §4–5): metrics, calibration and group-bootstrap uncertainty.

- :mod:`.metrics`: pooled classification metrics, confusion matrices, collapse flags,
  malignant operating points and per-fold summaries;
- :mod:`.calibration`: expected calibration error, reliability tables, temperature scaling;
- :mod:`.bootstrap`: group-bootstrap confidence intervals and paired model comparisons.
"""

from __future__ import annotations

from .bootstrap import group_bootstrap, paired_bootstrap_difference, resample_weights
from .calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    logits_from_proba,
    reliability_table,
)
from .metrics import (
    classification_metrics,
    classification_metrics_batch,
    collapse_flags,
    confusion_matrices,
    operating_points,
    per_fold_summary,
)

__all__ = [
    "apply_temperature",
    "classification_metrics",
    "classification_metrics_batch",
    "collapse_flags",
    "confusion_matrices",
    "expected_calibration_error",
    "fit_temperature",
    "group_bootstrap",
    "logits_from_proba",
    "operating_points",
    "paired_bootstrap_difference",
    "per_fold_summary",
    "reliability_table",
    "resample_weights",
]
