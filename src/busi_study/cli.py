"""Command lines: ``run_all.py`` (the study) and ``python -m busi_study`` (tools)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import StudyError

REPO = Path(__file__).resolve().parents[2]

RUN_ALL_EPILOG = """
examples:
  run_all.py --data ~/Downloads/Dataset_BUSI_with_GT     # a local copy (folder or .zip)
  run_all.py --demo --profile smoke                       # synthetic phantoms, a few minutes
  run_all.py --only 01                                    # rerun one notebook, reuse the rest
  run_all.py --from 01 --set phash_threshold=8            # rerun from 01 with one parameter changed

Parameters come from params/<profile>.yaml; --seed and --set override them. Each run writes
reports/<run-id>/ (executed notebooks, HTML, figures/, tables/, index.html); reports/latest
points to the newest complete run and is left alone when a run fails.
"""


def build_run_all_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_all.py",
        description="Run the study's notebooks in order with papermill and build the HTML report.",
        epilog=RUN_ALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="PATH", help="BUSI folder (Dataset_BUSI_with_GT or its parent) or a .zip of it")
    src.add_argument("--demo", action="store_true", help="run on synthetic phantoms (DEMO DATA, not clinical)")
    p.add_argument("--profile", default="default", help="parameter profile in params/ (default, smoke, …)")
    p.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks (numbers or names: 00 01)")
    p.add_argument("--from", dest="start_from", metavar="NB", help="run from this notebook to the end")
    p.add_argument("--seed", type=int, help="override the split seed (default from the profile: 42)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any profile parameter")
    p.add_argument("--reports-dir", type=Path, help="where runs are written (default: reports/)")
    p.add_argument("--data-dir", type=Path, help="where raw links and processed data live (default: data/)")
    p.add_argument("--strict", action="store_true", help="fail when a backbone's pretrained weights cannot be loaded (default: skip it, visibly)")
    p.add_argument("--check-reference", action="store_true",
                   help="after the run, say whether each model's pooled metrics fall inside the CIs in reports/reference/")
    p.add_argument("--list", action="store_true", help="list the notebooks and the resolved parameters, then exit")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bars")
    return p


def run_all_main(argv: list[str] | None = None) -> int:
    """Entry point of ``run_all.py``; returns the process exit code."""
    from .params import apply_overrides, load_profile, parse_override
    from .report.runner import RunConfig, discover_notebooks, run_study, select_notebooks

    args = build_run_all_parser().parse_args(argv)
    try:
        params = load_profile(args.profile, REPO / "params")
        overrides = dict(parse_override(s) for s in args.set)
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.strict:
            overrides["strict"] = True
        if args.demo:
            overrides["data_source"] = "demo"
        elif args.data:
            path = Path(args.data).expanduser()
            if not path.exists():
                raise StudyError(f"--data {args.data}: no such file or folder")
            overrides["data_source"] = str(path.resolve())
        params = apply_overrides(params, overrides)
        if args.list:
            for nb in select_notebooks(discover_notebooks(REPO / "notebooks"), args.only, args.start_from):
                print(nb.name)
            for k, v in sorted(params.items()):
                print(f"  {k}: {v}")
            return 0
        cfg = RunConfig(
            repo=REPO, profile=args.profile, params=params, only=args.only, start_from=args.start_from,
            reports_dir=args.reports_dir, data_dir=args.data_dir,
            argv=["run_all.py", *(argv if argv is not None else sys.argv[1:])], progress=not args.no_progress,
        )
        code = run_study(cfg)
        if code == 0 and args.check_reference:
            code = check_reference_main(cfg.reports_dir or REPO / "reports")
        return code
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the previous complete report (reports/latest) is untouched", file=sys.stderr)
        return 130


def check_reference_main(reports_dir: Path) -> int:
    """Compare reports/latest with reports/reference; print a table; 0 when every value is inside."""
    from .report.reference_results import check_against_reference

    ref = REPO / "reports" / "reference"
    if not (ref / "comparison_models.csv").exists():
        raise StudyError(f"no reference results in {ref}")
    latest = (Path(reports_dir) / "latest").resolve()
    table = check_against_reference(latest, ref)
    table.to_csv(latest / "tables" / "reference_check.csv", index=False)
    print(table.round(3).to_string(index=False))
    outside = table[~table["inside"]]
    print(f"{len(table) - len(outside)}/{len(table)} values inside the reference 95 % CIs"
          + ("" if outside.empty else f"; outside: {', '.join(outside['model'] + ':' + outside['metric'])}"))
    return 0 if outside.empty and len(table) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m busi_study {check-data,demo,predict} …``."""
    p = argparse.ArgumentParser(prog="python -m busi_study", description="Tools of the BUSI study.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check-data", help="scan, validate and reference-check a copy of BUSI; write data/processed")
    c.add_argument("source", help="folder, .zip, 'kaggle' or 'demo'")
    c.add_argument("--data-dir", type=Path, default=REPO / "data")
    c.add_argument("--profile", default="default", help="parameter profile for the hash thresholds and splits (default: default)")
    d = sub.add_parser("demo", help="write the synthetic demo dataset (BUSI layout) to a folder")
    d.add_argument("out", type=Path)
    d.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("predict", help="class probabilities for image files or folders with an exported .keras or .tflite model")
    q.add_argument("images", nargs="+", help="image files and/or folders (searched recursively, masks skipped)")
    q.add_argument("--model", required=True, type=Path, nargs="+",
                   help="an exported model, e.g. reports/latest/models/NAME.keras or NAME.full_int8.tflite; several files (e.g. "
                        "reports/latest/results/NAME/fold*.keras) give a fold ensemble, the mean of their probabilities")
    q.add_argument("--out", type=Path, help="CSV to write (default: print to stdout)")
    e = sub.add_parser("export-reference", help="copy a complete run's numbers to reports/reference/ and update the README")
    e.add_argument("run", nargs="?", type=Path, default=REPO / "reports" / "latest")
    args = p.parse_args(argv)
    try:
        if args.cmd == "export-reference":
            from .report.reference_results import export_reference

            files = export_reference(args.run, REPO / "reports" / "reference", REPO / "README.md")
            print(f"{len(files)} files written to {REPO / 'reports' / 'reference'}; README results section updated")
            return 0
        if args.cmd == "predict":
            import os

            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            from .predict import list_images, load_model, predict_ensemble

            loaded = [load_model(m) for m in args.model]
            card = loaded[0][1]
            files = list_images(args.images)
            if not files:
                raise StudyError("no image files found in the given paths")
            table = predict_ensemble([m for m, _ in loaded], files)
            if args.out:
                table.to_csv(args.out, index=False)
                print(f"{len(table)} rows ({int((table['error'] != '').sum())} errors) written to {args.out}", file=sys.stderr)
            else:
                table.to_csv(sys.stdout, index=False)
            if card:
                print(f"model: {card.get('title', args.model[0])}; weights: {card.get('weights')}; NOT FOR CLINICAL USE",
                      file=sys.stderr)
            if len(loaded) > 1:
                print(f"fold ensemble: mean of {len(loaded)} models", file=sys.stderr)
            return 0
        if args.cmd == "check-data":
            from .data.prepare import prepare_data, summary_lines
            from .params import StudyParams

            params = StudyParams.from_profile(args.profile, REPO / "params", {"data_source": args.source})
            result = prepare_data(params.data, params.splits, params.seed, args.data_dir)
            for line in summary_lines(result.summary):
                print(line)
            for w in result.warnings:
                print(f"WARNING: {w}")
            print(f"written to {result.store.folder}")
            return 0
        if args.cmd == "demo":
            from .data.demo import make_demo_dataset

            print(make_demo_dataset(args.out, seed=args.seed))
            return 0
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1
