"""Command lines: ``run_all.py`` (the study) and ``python -m busi_study`` (tools)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import EXIT_USER_ERROR, WRITE_ERRNOS, StudyError, from_os_error


def one_line_errors(fn, *args, **kwargs) -> int:
    """Call ``fn``; a :class:`StudyError` (or a no-space / read-only / permission ``OSError``)
    ends with ``error: <what is wrong — what to do>`` on one line and exit code 2.

    Every other exception is a programming error and keeps its traceback.
    """
    try:
        return fn(*args, **kwargs)
    except StudyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        converted = from_os_error(exc) if exc.errno in WRITE_ERRNOS else None
        if converted is None:
            raise
        print(f"error: {converted}", file=sys.stderr)
        return EXIT_USER_ERROR

REPO = Path(__file__).resolve().parents[2]

RUN_ALL_EPILOG = """
examples:
  run_all.py --data ~/Downloads/Dataset_BUSI_with_GT     # a local copy (folder or .zip)
  run_all.py --demo --profile smoke                       # synthetic phantoms, a few minutes
  run_all.py --only 01                                    # rerun one notebook, reuse the rest
  run_all.py --from 00 --set phash_threshold=8            # rerun from 00 with one parameter changed
  run_all.py --clean-failed                               # remove failed / interrupted runs
  run_all.py --only 08 --external ~/BrEaST-Lesions_USG    # external validation of the last run's models

Parameters come from params/<profile>.yaml; --seed and --set override them. Each run writes
reports/<run-id>/ (executed notebooks, HTML, figures/, tables/, index.html); reports/latest
points to the newest complete run and is left alone when a run fails. A run is complete only
when the runner wrote reports/<run-id>/COMPLETE.json; --only/--from build on the newest complete
run with the same data and profile (hard links, not copies).
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
    p.add_argument("--external", metavar="PATH", help="BrEaST-Lesions_USG folder for the external validation (testing only; "
                                                      "docs/protocol.md §9); without it that notebook says so and skips")
    p.add_argument("--profile", default="default", help="parameter profile in params/ (default, smoke, …)")
    p.add_argument("--only", nargs="+", metavar="NB", help="run only these notebooks (numbers or names: 00 01)")
    p.add_argument("--from", dest="start_from", metavar="NB", help="run from this notebook to the end")
    p.add_argument("--seed", type=int, help="override the split seed (default from the profile: 42)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any profile parameter")
    p.add_argument("--reports-dir", help="where runs are written (default: reports/)")
    p.add_argument("--data-dir", help="where raw links and processed data live (default: data/)")
    p.add_argument("--strict", action="store_true", help="fail when a backbone's pretrained weights cannot be loaded (default: skip it, visibly)")
    p.add_argument("--check-reference", action="store_true",
                   help="after the run, say whether each model's pooled metrics fall inside the CIs in reports/reference/")
    p.add_argument("--list", action="store_true", help="list the notebooks and the resolved parameters, then exit")
    p.add_argument("--clean-failed", action="store_true",
                   help="remove failed and interrupted runs from the reports folder (never reports/latest's run "
                        "or reports/reference), then exit")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bars")
    return p


def run_all_main(argv: list[str] | None = None) -> int:
    """Entry point of ``run_all.py``; returns the process exit code."""
    return one_line_errors(_run_all, argv)


def _run_all(argv: list[str] | None) -> int:
    from .params import StudyParams, apply_overrides, load_profile, parse_override
    from .report.runner import RunConfig, check_folder_path, discover_notebooks, run_study, select_notebooks

    args = build_run_all_parser().parse_args(argv)
    for option, value in (("--data", args.data), ("--external", args.external), ("--reports-dir", args.reports_dir),
                          ("--data-dir", args.data_dir)):
        if value is not None and not str(value).strip():
            raise StudyError(f"{option} is empty — give a path, or leave {option} out for the default")
    reports_dir = Path(args.reports_dir).expanduser() if args.reports_dir else None
    data_dir = Path(args.data_dir).expanduser() if args.data_dir else None
    if data_dir is not None:
        check_folder_path(data_dir, "--data-dir")
    try:
        if args.clean_failed:
            from .report.runner import clean_failed

            reports = (reports_dir or REPO / "reports").resolve()
            check_folder_path(reports, "--reports-dir")
            clean_failed(reports)
            return 0
        params = load_profile(args.profile, REPO / "params")
        overrides = dict(parse_override(s) for s in args.set)
        origins = dict.fromkeys(overrides, "--set")
        if args.seed is not None:
            overrides["seed"] = args.seed
            origins["seed"] = "--seed"
        if args.strict:
            overrides["strict"] = True
            origins["strict"] = "--strict"
        if args.demo:
            overrides["data_source"] = "demo"
        elif args.data:
            path = Path(args.data).expanduser()
            if not path.exists():
                raise StudyError(f"--data {args.data}: no such file or folder — give the path of Dataset_BUSI_with_GT "
                                 "(a folder or a .zip), or use --demo")
            overrides["data_source"] = str(path.resolve())
        if args.external:
            ext = Path(args.external).expanduser()
            if not ext.exists():
                raise StudyError(f"--external {args.external}: no such folder — give the BrEaST-Lesions_USG folder "
                                 "(caseNNN.png files and the clinical table)")
            overrides["external_data"] = str(ext.resolve())
            origins["external_data"] = "--external"
        params = apply_overrides(params, overrides)
        StudyParams.from_flat(params)  # every type and range, before anything runs (one line, exit 2)
        selected = select_notebooks(discover_notebooks(REPO / "notebooks"), args.only, args.start_from)
        if args.list:
            for nb in selected:
                print(nb.name)
            for k, v in sorted(params.items()):
                print(f"  {k}: {v}")
            return 0
        if params.get("external_data") and (args.external or any(nb.stem.startswith("08_") for nb in selected)):
            check_external(params["external_data"], "--external" if args.external else "external_data")
        cfg = RunConfig(
            repo=REPO, profile=args.profile, params=params, only=args.only, start_from=args.start_from,
            reports_dir=reports_dir, data_dir=data_dir, origins=origins,
            argv=["run_all.py", *(argv if argv is not None else sys.argv[1:])], progress=not args.no_progress,
        )
        code = run_study(cfg)
        if code == 0 and args.check_reference:
            code = check_reference_main(cfg.reports_dir or REPO / "reports")
        return code
    except KeyboardInterrupt:
        print("interrupted; the previous complete report (reports/latest) is untouched", file=sys.stderr)
        return 130


def check_external(path: str, option: str) -> None:
    """The external set given (``--external`` or ``external_data`` in a profile) must be a copy of
    BrEaST-Lesions_USG: a one-line error before any notebook runs, not a skipped notebook 08."""
    from .data.acquire import looks_like_dataset_root
    from .data.breast import CASE_RE, read_clinical

    root = Path(path).expanduser()
    hint = ("give the BrEaST-Lesions_USG folder (caseNNN.png images and the clinical xlsx or CSV), or leave the option "
            "out to skip the external validation")
    if not root.exists():
        raise StudyError(f"{option} {path}: no such folder — {hint}")
    if not root.is_dir():
        raise StudyError(f"{option} {path} is a file, not a folder (unzip the TCIA archive first) — {hint}")
    if not any(CASE_RE.match(f.name) for f in root.rglob("case*")):
        busi = looks_like_dataset_root(root) or any(looks_like_dataset_root(c) for c in root.iterdir() if c.is_dir())
        what = "BUSI (normal/ benign/ malignant/ folders), the training data — give BUSI with --data" if busi else \
            "no caseNNN.png images" + (" (the folder is empty)" if not any(root.iterdir()) else "")
        raise StudyError(f"{option} {path} is not BrEaST-Lesions_USG: {what} — {hint}")
    try:
        read_clinical(root)
    except StudyError as exc:
        raise StudyError(f"{option} {path}: {exc}") from None


def _hardware_of(run_dir: Path) -> dict:
    """``hardware`` of a run's run.json ({} when the file is missing or unreadable)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("hardware") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def check_reference_main(reports_dir: Path) -> int:
    """Compare reports/latest with reports/reference; print a table; 0 when every value is inside."""
    from .report.reference_results import check_against_reference, cpu_note

    ref = REPO / "reports" / "reference"
    if not (ref / "comparison_models.csv").exists():
        raise StudyError(f"no reference results in {ref} — use a checkout that includes reports/reference/")
    latest = (Path(reports_dir) / "latest").resolve()
    table = check_against_reference(latest, ref)
    table.to_csv(latest / "tables" / "reference_check.csv", index=False)
    print(table.round(3).to_string(index=False))
    outside = table[~table["inside"]]
    print(f"{len(table) - len(outside)}/{len(table)} values inside the reference 95 % CIs"
          + ("" if outside.empty else f"; outside: {', '.join(outside['model'] + ':' + outside['metric'])}"))
    note = cpu_note(_hardware_of(latest), _hardware_of(ref))
    if note:
        print(note)
    return 0 if outside.empty and len(table) else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m busi_study {check-data,demo,predict,evaluate,export-reference} …``."""
    try:
        return one_line_errors(_tools, argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


#: Path options of the tools: an empty value would silently mean the current folder.
TOOL_PATH_OPTIONS = ("--data-dir", "--model", "--out", "--masks", "--labels", "--settings-from")


def _refuse_empty_paths(argv: list[str]) -> None:
    """``--out ""`` and the like: one line, instead of writing into the current folder."""
    for i, a in enumerate(argv):
        option, eq, value = a.partition("=")
        if option in TOOL_PATH_OPTIONS and (eq and not value.strip() or not eq and i + 1 < len(argv) and not argv[i + 1].strip()):
            raise StudyError(f"{option} is empty — give a path")


def _tools(argv: list[str] | None) -> int:
    _refuse_empty_paths(list(sys.argv[1:] if argv is None else argv))
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
    q.add_argument("--masks", type=Path, help="folder for the predicted lesion masks (PNG) of a model that segments "
                                               "(notebook 05's crop pipeline); created if missing")
    v = sub.add_parser("evaluate", help="metrics with CIs of an exported model on a labelled folder of images (external validation)")
    v.add_argument("folder", type=Path, help="folder of images (searched recursively for the names in the label table)")
    v.add_argument("--labels", required=True, type=Path, help="label table (CSV or xlsx): one row per image")
    v.add_argument("--model", required=True, type=Path, help="an exported model, e.g. reports/latest/models/NAME.keras")
    v.add_argument("--out", required=True, type=Path, help="folder for predictions.csv, metrics.json, metrics_table.csv, figures")
    v.add_argument("--image-column", default="Image_filename", help="column naming the image file (default: Image_filename)")
    v.add_argument("--label-column", default="Classification", help="column with normal/benign/malignant (default: Classification)")
    v.add_argument("--group-column", help="column with the patient id (bootstrap unit; default: one image per patient)")
    v.add_argument("--positive", default="malignant", help="positive class (default: malignant); score p_<positive>")
    v.add_argument("--negative", nargs="+", help="negative class(es) (default: every other class)")
    v.add_argument("--settings-from", type=Path, help="reports/<run>/results/<model>: temperature and thresholds from its "
                                                      "validation predictions (never from these images)")
    v.add_argument("--threshold", action="append", metavar="NAME=VALUE", help="a fixed threshold on p_<positive> (repeatable)")
    v.add_argument("--temperature", type=float, help="a fixed temperature")
    v.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    v.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    e = sub.add_parser("export-reference", help="copy a complete run's numbers to reports/reference/ and update the README")
    e.add_argument("run", nargs="?", type=Path, default=REPO / "reports" / "latest")
    e.add_argument("--ablation", action="store_true",
                   help="export only the ablation profile's tables, to reports/reference/ablation/ (the rest is kept)")
    args = p.parse_args(argv)
    if args.cmd == "export-reference" and args.ablation:
        from .report.reference_results import export_ablation

        files = export_ablation(args.run, REPO / "reports" / "reference")
        print(f"{len(files)} files written to {files[0].parent}")
        return 0
    if args.cmd == "export-reference":
        from .report.reference_results import export_reference

        files = export_reference(args.run, REPO / "reports" / "reference", REPO / "README.md")
        print(f"{len(files)} files written to {REPO / 'reports' / 'reference'}; README results section updated")
        return 0
    if args.cmd == "evaluate":
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return evaluate_command(args)
    if args.cmd == "predict":
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from .predict import check_out_path, list_images, load_model, predict_ensemble, write_table

        if args.out:
            check_out_path(args.out)
        files = list_images(args.images)
        if not files:
            raise StudyError("no image files found in the given paths — give image files (.png, .jpg, .bmp, .tif) "
                             "or folders holding them")
        if args.masks:
            try:
                args.masks.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StudyError(f"--masks {args.masks}: cannot create the folder ({exc.strerror}) — choose another path") from None
        loaded = [load_model(m) for m in args.model]
        card = loaded[0][1]
        table = predict_ensemble([m for m, _ in loaded], files, masks_dir=args.masks)
        if args.out:
            write_table(table, args.out)
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
        from .report.runner import check_folder_path

        check_folder_path(args.data_dir, "--data-dir")
        params = StudyParams.from_profile(args.profile, REPO / "params", {"data_source": args.source})
        result = prepare_data(params.data, params.splits, params.seed, args.data_dir)
        for line in summary_lines(result.summary):
            print(line)
        for _, r in result.issues.head(30).iterrows():
            print(f"  {r['path']}: {r['problem']} ({r['action']})")
        if len(result.issues) > 30:
            print(f"  … {len(result.issues) - 30} more in {result.store.issues}")
        for w in result.warnings:
            print(f"WARNING: {w}")
        print(f"written to {result.store.folder}")
        return 0
    if args.cmd == "demo":
        from .data.demo import make_demo_dataset

        print(make_demo_dataset(args.out, seed=args.seed))
        return 0
    return 1


def evaluate_command(args) -> int:
    """The ``evaluate`` subcommand: one model on a labelled folder (see :mod:`busi_study.studies.folder_evaluation`)."""
    from .evaluation.external import TransferSettings
    from .predict import load_model
    from .studies.folder_evaluation import (
        check_out_folder,
        evaluate_model,
        read_label_table,
        resolve_rows,
        row_problems,
        settings_for,
        write_outputs,
    )

    root = Path(args.folder)
    if not root.is_dir():
        raise StudyError(f"image folder not found: {root} — give the folder holding the images named in --labels")
    check_out_folder(args.out)
    if args.resamples < 1:
        raise StudyError(f"--resamples {args.resamples}: need at least 1 bootstrap resample — e.g. --resamples 2000")
    if args.seed < 0:
        raise StudyError(f"--seed {args.seed}: the bootstrap seed must be 0 or more — e.g. --seed 0")
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise StudyError(f"--temperature {args.temperature}: must be a number above 0 (1 leaves the probabilities as they "
                         "are) — e.g. --temperature 1.2, or --settings-from reports/<run>/results/<model>")
    negatives = tuple(args.negative) if args.negative else None
    settings = settings_for(args.settings_from, args.positive, negatives)
    if args.threshold or args.temperature is not None:
        base = settings or TransferSettings(1.0, {}, 0, "given on the command line")
        thr = dict(base.thresholds)
        for item in args.threshold or []:
            k, _, v = item.partition("=")
            try:
                thr[k.strip()] = float(v)
            except ValueError:
                raise StudyError(f"--threshold {item}: expected NAME=NUMBER — e.g. --threshold spec90=0.42") from None
        settings = TransferSettings(float(args.temperature) if args.temperature is not None else base.temperature, thr,
                                    base.n_validation, base.rule + "; overridden on the command line")
    folder = resolve_rows(read_label_table(args.labels), root, args.image_column, args.label_column, args.group_column)
    for line in row_problems(folder):
        print(f"WARNING: {line}", file=sys.stderr)
    model, card = load_model(args.model)
    name = card.get("model", Path(args.model).stem)
    ev = evaluate_model(model, name, folder, settings, args.positive, negatives, args.resamples, args.seed)
    write_outputs(ev, args.out)
    t = ev.table.set_index("metric")
    print(f"{name}: {ev.info['n_binary']} images in the task ({ev.info['n_positive']} {args.positive}), "
          f"{ev.info['n_bad']} bad rows skipped (see {Path(args.out) / 'bad_rows.csv'})", file=sys.stderr)
    for m in t.index:
        print(f"  {m}: {t.loc[m, 'value']:.3f} [{t.loc[m, 'ci_low']:.3f}, {t.loc[m, 'ci_high']:.3f}]", file=sys.stderr)
    print(f"written to {args.out}; NOT FOR CLINICAL USE", file=sys.stderr)
    return 0

