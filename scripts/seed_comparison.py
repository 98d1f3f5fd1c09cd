"""The multi-task U-Net against the S0 recipe over training seeds, on the data of a complete run.

    .venv/bin/python scripts/seed_comparison.py --report reports/latest --profile ablation --out reports/reference/ablation

Runs notebook 05's seed machinery (:func:`busi_study.studies.multitask_run.seed_comparison`) alone: both
models retrained with every seed of ``mt_seeds`` on the run's grouped splits (the split seed fixes the
folds and the augmented views), each seed's paired group-bootstrap difference of accuracy, macro AUC and
benign-vs-malignant AUC with its 95 % CI. Writes ``mt_seed_comparison.csv``, ``mt_seed_comparison_summary.csv``
and ``mt_seed_comparison.json`` (profile, seeds, commit, wall time) into ``--out``. The same tables come
out of notebook 05 when the profile's ``mt_seeds`` is not empty (the ablation profile); this script saves
rerunning the rest of that notebook.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    from busi_study import provenance
    from busi_study.data.consistency import open_run_data
    from busi_study.errors import StudyError
    from busi_study.params import StudyParams, apply_overrides, load_profile, parse_override
    from busi_study.studies.multitask_run import seed_comparison

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, default=REPO / "reports" / "latest")
    p.add_argument("--profile", default="ablation")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile parameter, e.g. --set mt_seeds=[42] (checked like run_all.py's --set)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        flat = load_profile(args.profile, REPO / "params")
        params = StudyParams.from_flat(apply_overrides(flat, dict(parse_override(o) for o in args.overrides)))
        store = open_run_data(args.report)
        if not params.mt.seeds:
            raise StudyError(f"profile {args.profile} has no mt_seeds — use the ablation profile or --set mt_seeds")
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    git, hardware = provenance.git_info(provenance.REPO), provenance.hardware()  # the code that runs, read before it runs
    t0 = time.perf_counter()
    per_seed, summary = seed_comparison(params.mt, params.s0, params.models, params.augment, store, split_seed=params.seed,
                                        bootstrap=params.bootstrap)
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed.round(4).to_csv(args.out / "mt_seed_comparison.csv", index=False)
    summary.round(4).to_csv(args.out / "mt_seed_comparison_summary.csv", index=False)
    meta = {"profile": args.profile, "overrides": args.overrides, "seeds": params.mt.seeds, "split_seed": params.seed, "report": str(args.report),
            "git": git, "hardware": hardware,
            "wall_s": round(time.perf_counter() - t0, 1)}
    (args.out / "mt_seed_comparison.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
