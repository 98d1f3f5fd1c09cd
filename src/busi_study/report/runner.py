"""Execute the numbered notebooks with papermill and assemble ``reports/<run-id>/``.

A run writes into a new folder; ``reports/latest`` is switched to it only when every notebook
succeeded, so a failed run never touches the previous complete report. ``--only``/``--from``
runs start from a copy of the latest complete report and replace the notebooks they rerun.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import provenance
from ..errors import ParameterError, StudyError
from ..info import DEMO_BANNER

NOTEBOOK_RE = re.compile(r"^(?P<num>\d\d)_[A-Za-z0-9_]+\.ipynb$")
KERNEL_NAME = "busi-study"


@dataclass
class RunConfig:
    """What to run and where. ``params`` is the merged profile + overrides."""

    repo: Path
    profile: str
    params: dict[str, Any]
    only: list[str] | None = None
    start_from: str | None = None
    reports_dir: Path | None = None
    data_dir: Path | None = None
    argv: list[str] = field(default_factory=list)
    kernel_name: str | None = None
    progress: bool = True

    @property
    def demo(self) -> bool:
        return self.params.get("data_source") == "demo"


def discover_notebooks(notebooks_dir: Path) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order."""
    return sorted(p for p in Path(notebooks_dir).glob("*.ipynb") if NOTEBOOK_RE.match(p.name))


def select_notebooks(all_nbs: list[Path], only: list[str] | None, start_from: str | None) -> list[Path]:
    """Pick notebooks by number or name prefix: ``--only 01 03`` or ``--from 02``."""

    def matches(nb: Path, key: str) -> bool:
        return nb.stem == key or nb.stem.startswith(key + "_") or nb.stem.split("_")[0] == key.zfill(2)

    if only:
        chosen = [nb for nb in all_nbs if any(matches(nb, k) for k in only)]
        missing = [k for k in only if not any(matches(nb, k) for nb in all_nbs)]
        if missing:
            raise ParameterError(f"no notebook matches {', '.join(missing)} (have: {', '.join(nb.stem for nb in all_nbs)})")
        return chosen
    if start_from:
        idx = [i for i, nb in enumerate(all_nbs) if matches(nb, start_from)]
        if not idx:
            raise ParameterError(f"no notebook matches --from {start_from}")
        return all_nbs[idx[0]:]
    return list(all_nbs)


def new_run_id(profile: str, demo: bool, reports_dir: Path) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}-{profile}{'-demo' if demo else ''}"
    run_id, k = base, 1
    while (reports_dir / run_id).exists():
        k += 1
        run_id = f"{base}-{k}"
    return run_id


def _kernel(preferred: str | None) -> str:
    """Our registered kernel if present, else the current interpreter's ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    for name in (preferred, KERNEL_NAME):
        if name and name in specs:
            return name
    return "python3"


def notebook_parameters(nb_path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``params`` that the notebook's ``parameters`` cell declares."""
    import papermill as pm

    declared = pm.inspect_notebook(str(nb_path))
    return {k: v for k, v in params.items() if k in declared}


def _short_error(exc: BaseException) -> str:
    """One line from a papermill error: the exception name and message of the failing cell."""
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    line = (str(evalue).strip().splitlines() or [""])[0]
    return f"{ename}: {line}"[:400]


def render_html(executed: Path, html_path: Path, demo: bool) -> None:
    """nbconvert HTML (lab template) of an executed notebook, with a DEMO banner if needed."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(executed, as_version=4)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    if demo:
        banner = (f'<div style="background:#b00020;color:#fff;font:bold 18px sans-serif;padding:8px 16px;'
                  f'text-align:center">{DEMO_BANNER}</div>')
        body = re.sub(r"(<body[^>]*>)", r"\1" + banner, body, count=1)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")


def _say(msg: str) -> None:
    print(msg, flush=True)


def previous_complete_run(reports_dir: Path, demo: bool, profile: str, data_source: str) -> Path | None:
    """The newest complete run on the same data with the same profile (what --only/--from extend)."""
    best = None
    for meta_path in Path(reports_dir).glob("*/run.json"):
        if meta_path.parent.is_symlink():  # reports/latest is a link to one of the runs, not a run
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        same = (meta.get("ok") and bool(meta.get("demo")) == demo and meta.get("profile") == profile
                and meta.get("params", {}).get("data_source") == data_source)
        if same and (best is None or meta["started_utc"] > best[0]):
            best = (meta["started_utc"], meta_path.parent)
    return best[1].resolve() if best else None


def _switch_latest(reports_dir: Path, run_dir: Path) -> None:
    link = reports_dir / "latest"
    tmp = reports_dir / ".latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)


def run_study(cfg: RunConfig) -> int:
    """Run the selected notebooks; return 0 on success, 1 when a notebook failed."""
    import papermill as pm

    from .index import write_index

    repo = cfg.repo.resolve()
    reports_dir = (cfg.reports_dir or repo / "reports").resolve()
    data_dir = (cfg.data_dir or repo / "data").resolve()
    reports_dir.mkdir(parents=True, exist_ok=True)
    notebooks = select_notebooks(discover_notebooks(repo / "notebooks"), cfg.only, cfg.start_from)
    if not notebooks:
        raise StudyError(f"no notebooks found in {repo / 'notebooks'}")

    run_id = new_run_id(cfg.profile, cfg.demo, reports_dir)
    run_dir = reports_dir / run_id
    latest = reports_dir / "latest"
    previous = latest.resolve() if latest.exists() else None
    partial = bool(cfg.only or cfg.start_from)
    carried: dict[str, dict] = {}
    if partial:
        previous = previous_complete_run(reports_dir, cfg.demo, cfg.profile, cfg.params.get("data_source"))
        first = discover_notebooks(repo / "notebooks")[0]
        if previous is None and notebooks[0] != first:
            raise StudyError("--only/--from needs an earlier complete run with the same data and profile to "
                             "extend; run the whole study first")
    if partial and previous is not None:
        # start from the latest complete report; the notebooks rerun below replace their parts
        shutil.copytree(previous, run_dir, symlinks=True)
        for f in ("RUNNING", "FAILED.txt"):
            (run_dir / f).unlink(missing_ok=True)
        prev_meta = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        carried = {n["name"]: {**n, "from_run": n.get("from_run") or prev_meta.get("run_id")}
                   for n in prev_meta.get("notebooks", [])}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "RUNNING").write_text(f"started {dt.datetime.now(dt.timezone.utc).isoformat()}\n")

    kernel = _kernel(cfg.kernel_name)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # kernels inherit it: no TensorFlow banner in the notebooks
    base_params = {
        **cfg.params,
        "data_dir": str(data_dir),
        "report_dir": str(run_dir),
        "demo": cfg.demo,
        "profile": cfg.profile,
        "run_id": run_id,
    }
    meta = {
        "run_id": run_id,
        "profile": cfg.profile,
        "command": " ".join(cfg.argv) if cfg.argv else None,
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git": provenance.git_info(repo),
        "params": base_params,
        "packages": provenance.package_versions(),
        "hardware": provenance.hardware(),
        "kernel": kernel,
        "demo": cfg.demo,
        "partial_of": previous.name if (partial and previous) else None,
    }
    status: dict[str, dict] = dict(carried)
    t_run = time.perf_counter()
    _say(f"Run {run_id}: {len(notebooks)} notebook(s), profile '{cfg.profile}'"
         f"{' on DEMO data' if cfg.demo else ''}; output in {run_dir}")
    failed = None
    for i, nb in enumerate(notebooks, 1):
        executed = run_dir / "notebooks" / nb.name
        html = run_dir / "html" / f"{nb.stem}.html"
        executed.parent.mkdir(parents=True, exist_ok=True)
        params = notebook_parameters(nb, base_params)
        _say(f"[{i}/{len(notebooks)}] {nb.stem} …")
        t0 = time.perf_counter()
        error = None
        try:
            pm.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel,
                                cwd=str(nb.parent), progress_bar=cfg.progress, log_output=False,
                                request_save_on_cell_execute=True)
        except pm.PapermillExecutionError as exc:
            error = _short_error(exc)
        except Exception as exc:  # kernel died, dependency missing, …
            error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
        wall = round(time.perf_counter() - t0, 1)
        if executed.exists():
            try:
                render_html(executed, html, cfg.demo)
            except Exception as exc:  # the executed notebook stays the primary record
                _say(f"    (HTML export failed: {type(exc).__name__}: {exc})")
        status[nb.stem] = {"name": nb.stem, "ok": error is None, "wall_s": wall, "error": error,
                           "ipynb": f"notebooks/{nb.name}", "html": f"html/{nb.stem}.html", "from_run": None}
        if error:
            failed = (nb, error, executed)
            break
        _say(f"    done in {wall:.1f} s")

    meta["models"] = _model_summary(run_dir, base_params, cfg.demo)
    meta["notebooks"] = [status[k] for k in sorted(status)]
    meta["wall_s"] = round(time.perf_counter() - t_run, 1)
    meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta["ok"] = failed is None
    meta["data"] = _data_summary(run_dir, base_params)
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    write_index(run_dir, meta)
    (run_dir / "RUNNING").unlink(missing_ok=True)

    if failed:
        nb, error, executed = failed
        (run_dir / "FAILED.txt").write_text(f"{nb.stem}: {error}\n")
        keep = f"; the previous report is still at {latest} -> {previous.name}" if previous else ""
        print(f"FAILED: {nb.stem}: {error}\n  partial output: {executed}{keep}", file=sys.stderr, flush=True)
        return 1
    _switch_latest(reports_dir, run_dir)
    _say(f"Report ready in {meta['wall_s']:.0f} s: {run_dir / 'index.html'}  (also {latest / 'index.html'})")
    return 0


def _model_summary(run_dir: Path, params: dict, demo: bool) -> dict | None:
    """Comparison table, ROC overlay and paired differences from the model results, if any."""
    if not (run_dir / "results").is_dir():
        return None
    from .summary import build_summary

    try:
        s = build_summary(run_dir, demo=demo, n_resamples=int(params.get("bootstrap_resamples", 2000)),
                          seed=int(params.get("bootstrap_seed", 0)), dpi=int(params.get("figure_dpi", 300)))
    except Exception as exc:  # the report is still written; the summary says why it is missing
        _say(f"    (model summary failed: {type(exc).__name__}: {exc})")
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"best": s.get("best"), "skipped": s.get("skipped", [])}


def _data_summary(run_dir: Path, params: dict) -> dict | None:
    """The data summary the download notebook left in the report folder, if any."""
    path = run_dir / "data_summary.json"
    return json.loads(path.read_text()) if path.exists() else None
