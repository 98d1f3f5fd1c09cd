"""Choose the multi-task U-Net's settings of a profile on validation data only (docs/protocol.md §3).

    .venv/bin/python scripts/tune_multitask.py --profile reference --out params/tuning_multitask_reference.csv \
        --grid mt_input_size=224,288 --folds 0,1,2

Runs the multi-task model (models/multitask.py) under the study's grouped CV — on the outer folds named by
``--folds`` (all by default), to keep a CPU search affordable — for every combination of the grid on the
prepared data of a complete run (``--report``, default reports/latest; written by 00_download), and
scores each on the pooled *inner validation* predictions of those folds: class log loss (the rule of
the choice), accuracy, macro AUC, and the mean Dice of the validation lesion images' maps. The outer
test folds are never looked at. The validation parts also drive early stopping, so these numbers are
optimistic for every candidate alike and are not results of the study.
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
    import numpy as np
    import pandas as pd

    from busi_study.data.consistency import open_run_data
    from busi_study.errors import ParameterError, StudyError
    from busi_study.evaluation.evaluate import arrays
    from busi_study.evaluation.metrics import classification_metrics
    from busi_study.models.experiment import run_folds
    from busi_study.models.multitask import MultitaskExperiment
    from busi_study.models.segmentation import mask_scores, upsample
    from busi_study.params import StudyParams, apply_overrides, load_profile, parse_override
    from busi_study.studies.multitask_run import multitask_recipe

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="reference")
    p.add_argument("--report", type=Path, default=REPO / "reports" / "latest",
                   help="a run whose processed data (data_summary.json, written by 00) are used; default reports/latest")
    p.add_argument("--grid", nargs="+", default=[], help="KEY=V1,V2,... (profile keys)")
    p.add_argument("--folds", default="", help="outer folds to run, e.g. 0,1,2 (default: all)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    params = load_profile(args.profile, REPO / "params")
    grid = {}
    try:
        for item in args.grid:
            key, _, values = item.partition("=")
            grid[key] = [parse_override(f"{key}={v}")[1] for v in values.split(",")]
            for v in grid[key]:
                StudyParams.from_flat(apply_overrides(params, {key: v}))  # unknown key, type or choice: a clear error
        store = open_run_data(args.report)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seed = int(params["seed"])
    splits = store.splits_of(seed)
    if args.folds:
        try:
            folds = [int(f) for f in args.folds.split(",")]
        except ValueError:
            print(f"error: --folds {args.folds}: expected fold numbers such as 0,1,2", file=sys.stderr)
            return 2
        splits = splits[splits["fold"].isin(folds)]
    rows, table = [], None
    for combo in itertools.product(*grid.values()) if grid else [()]:
        setting = dict(zip(grid, combo))
        try:
            typed = StudyParams.from_flat(apply_overrides(params, setting))
        except ParameterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        recipe = multitask_recipe(typed.mt, typed.s0, typed.models, typed.augment)
        t0 = time.perf_counter()
        ex = MultitaskExperiment(recipe, store, seed=seed, progress=False).prepare()
        cv = run_folds(lambda fold, ex=ex: ex, splits, seed, False)
        y, proba, _ = arrays(cv.val)
        m = classification_metrics(y, proba)
        dice = []
        for fold, fm in zip(sorted(splits["fold"].unique()), cv.fold_models):
            val = ex.fold_indices(splits, fold)["val"]
            maps = upsample(ex.predict_masks(fm, val), recipe.input_size)
            dice += [mask_scores(mp >= recipe.threshold, ref > 0)[0] for mp, ref in zip(maps, ex.masks_full[val]) if ref.any()]
        row = {**setting, "recipe": recipe.name, "folds": args.folds or "all", "n_val": len(cv.val),
               **{f"val_{k}": round(float(m[k]), 4) for k in ("accuracy", "macro_auc", "auc_malignant", "log_loss")},
               "val_dice": round(float(np.nanmean(dice)), 4),
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
