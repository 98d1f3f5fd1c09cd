"""Late fusion of the S0 recipe with another model of a complete run (saved predictions, no training).

    .venv/bin/python scripts/late_fusion.py reports/latest \
        --other s1_crop-mobilenet_v2-a0.35-b12 lesion_aware-attention-mobilenet_v2-a0.35 --out fusion.csv

For each other model: p = w·p_S0 + (1 − w)·p_other, w chosen on the folds' inner-validation
predictions (``val_predictions.csv``, lowest pooled log loss; the outer test folds are never used to
choose), then the out-of-fold predictions fused with that w are compared with S0 alone by a paired
group bootstrap (fused − S0). No training: it reads the run's saved predictions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    sys.path.insert(0, str(REPO / "src"))
    from busi_study.evaluation.fusion import late_fusion

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a complete run folder (reports/<run-id> or reports/latest)")
    ap.add_argument("--base", default=None, help="base model (default: the run's s0_finetune-* model)")
    ap.add_argument("--other", nargs="+", required=True, help="models fused with the base, one at a time")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="CSV: every weight's validation scores and the chosen weight's paired CI")
    args = ap.parse_args(argv)
    results = args.run / "results"
    base = args.base or next((d.name for d in sorted(results.glob("s0_finetune-*")) if (d / "oof.csv").exists()), None)
    if base is None:
        print(f"error: no trained s0_finetune-* model in {results} — pass --base", file=sys.stderr)
        return 2
    rows = []
    for other in args.other:
        missing = [f for m in (base, other) for f in ("oof.csv", "val_predictions.csv") if not (results / m / f).exists()]
        if missing:
            print(f"skipped {other}: {results} lacks {', '.join(missing)}", file=sys.stderr)
            continue
        read = lambda m, f: pd.read_csv(results / m / f)  # noqa: E731
        fu = late_fusion(read(base, "val_predictions.csv"), read(base, "oof.csv"), read(other, "val_predictions.csv"),
                         read(other, "oof.csv"), n_resamples=args.resamples, seed=args.seed)
        print(f"{base} + {other}: w_base chosen on validation = {fu.weight:g}")
        print(fu.validation.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        for _, r in fu.paired.iterrows():
            print(f"  fused − base {r['metric']}: {r['a']:.3f} − {r['b']:.3f} = {r['diff']:+.3f} "
                  f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
        v = fu.validation.assign(base=base, other=other, kind="validation")
        p = fu.paired.assign(base=base, other=other, kind="test folds, fused − base", w_base=fu.weight)
        rows += [v, p]
    if args.out and rows:
        pd.concat(rows, ignore_index=True).to_csv(args.out, index=False)
        print(f"written {args.out}")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
