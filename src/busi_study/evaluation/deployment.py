"""What a deployed model needs besides its weights: a temperature and decision thresholds.

Both are fitted on *validation* predictions only (``results/<model>/val_predictions.csv``: each
CV fold's validation part predicted by that fold's model), pooled over the folds — never on test
folds and never on a user's images. The final model (trained on every image) has no held-out
data of its own, so these are estimates borrowed from its fold models, trained the same way.

* temperature: :func:`~busi_study.evaluation.calibration.fit_temperature` on the pooled
  validation pseudo-logits (log-probabilities); T > 1 softens the probabilities.
* malignant thresholds on the *raw* ``p_malignant`` (the scale on which the study's operating
  points are defined, ``metrics.operating_points``): ``threshold_spec90`` (call malignant at or
  above it: ≥ 90 % specificity on validation) and ``threshold_sens90`` (≥ 90 % sensitivity).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..info import CLASS_INDEX, CLASSES, PROBA_COLUMNS
from .calibration import class_probabilities, fit_temperature_on
from .metrics import operating_points

PROBA = PROBA_COLUMNS


def decision_settings(val: pd.DataFrame) -> dict:
    """Temperature and malignant thresholds from pooled validation predictions.

    val: a table with ``label`` and ``p_normal, p_benign, p_malignant`` (one row per validation
    image and fold). Returns a JSON-ready dict: ``temperature``, ``threshold_spec90``,
    ``threshold_sens90`` (None where undefined), ``n_validation`` and ``fitted_on``.
    """
    if val.empty:
        raise ValueError("no validation predictions")
    y = val["label"].map(CLASS_INDEX).to_numpy()
    if np.isnan(y.astype(float)).any():
        raise ValueError("validation labels must be one of " + ", ".join(CLASSES))
    p = class_probabilities(val[PROBA].to_numpy(dtype=np.float64), PROBA)
    op = operating_points(y, p, y, p)

    def finite(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return {
        "temperature": float(fit_temperature_on(p, y)),
        "threshold_spec90": finite(op["threshold_spec90"]),
        "threshold_sens90": finite(op["threshold_sens90"]),
        "n_validation": int(len(val)),
        "fitted_on": "validation predictions of the CV fold models, pooled over folds (never test folds)",
    }
