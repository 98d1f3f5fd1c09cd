"""Choose the S0 fine-tuning settings of a profile on validation data only (docs/protocol.md §3).

    .venv/bin/python scripts/tune_s0.py --profile reference --out reports/reference/tuning_s0.csv \
        --grid s0_unfreeze_blocks=4,8 s0_input_size=224,288

Runs grouped 5-fold CV for every combination of the grid on the prepared data
(those of a complete run, ``--report``, default reports/latest; written by 00_download) and scores each combination on the pooled
*inner validation* predictions (the validation groups of each outer training part). The outer
test folds are never looked at here: the table holds validation metrics only, so the choice it
supports does not leak into the cross-validated results the study reports. Validation sets also
drive early stopping, so these numbers are optimistic for every candidate alike.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from busi_study.data.consistency import open_run_data
    from busi_study.errors import ParameterError, StudyError
    from busi_study.evaluation.evaluate import arrays
    from busi_study.evaluation.metrics import classification_metrics
    from busi_study.models.experiment import Experiment
    from busi_study.models.recipes import s0_recipe
    from busi_study.params import StudyParams, apply_overrides, load_profile, parse_override

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="reference")
    p.add_argument("--report", type=Path, default=REPO / "reports" / "latest",
                   help="a run whose processed data (data_summary.json, written by 00) are used; default reports/latest")
    p.add_argument("--grid", nargs="+", default=[], help="KEY=V1,V2,... (profile keys)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    params = load_profile(args.profile, REPO / "params")
    grid = {}
    try:
        for item in args.grid:
            key, _, values = item.partition("=")
            grid[key] = [parse_override(f"{key}={v}")[1] for v in values.split(",")]
            for v in grid[key]:
                apply_overrides(params, {key: v})  # unknown key or wrong type: a clear error
    except ParameterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_run_data(args.report)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    splits = store.read("splits")
    splits = splits[splits["seed"] == int(params["seed"])]
    rows = []
    for combo in itertools.product(*grid.values()) if grid else [()]:
        setting = dict(zip(grid, combo))
        typed = StudyParams.from_flat(apply_overrides(params, setting))
        recipe = s0_recipe(typed.s0, typed.models, typed.augment)
        t0 = time.perf_counter()
        ex = Experiment(recipe, store, seed=int(params["seed"]), progress=False).prepare()
        cv = ex.cross_validate(splits, tta=False)
        y, proba, _ = arrays(cv.val)
        m = classification_metrics(y, proba)
        row = {**setting, "recipe": recipe.name, "n_val": len(cv.val),
               **{f"val_{k}": round(float(m[k]), 4) for k in ("accuracy", "macro_auc", "auc_malignant", "log_loss")},
               "best_epochs": json.dumps([fm.best_epochs for fm in cv.fold_models]),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        table = pd.DataFrame(rows).sort_values("val_log_loss")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    print(f"chosen on validation log loss: {table.iloc[0].to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
