"""Execute the numbered notebooks with papermill and assemble ``reports/<run-id>/``.

A run writes into a new folder; ``reports/latest`` is switched to it only when every notebook
succeeded, so a failed run never touches the previous complete report.

A run is *complete* only when this runner has written ``COMPLETE.json`` in its folder, last and
atomically (temporary file + ``os.replace``), after every notebook succeeded and the data and
model results were checked to belong together (``data.consistency``). A failed or interrupted
run (Ctrl-C) never gets it, so it is never built on.

``--only``/``--from`` runs start from the newest complete run with the same data and profile
(or, failing that, of a profile it inherits; the console says which): its files are
*hard-linked* into the new folder (copied only where linking is impossible), so a rerun of one
notebook costs the disk space of what it rewrites. ``run.json`` records the files each notebook
wrote (``outputs``); those of the notebooks rerun are not carried over, so a model that the rerun
no longer makes does not linger. Every writer of report files replaces files atomically instead
of rewriting them in place, so the earlier run is never changed. ``run_all.py --clean-failed`` removes failed and incomplete runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import provenance, timing
from ..data.store import write_json, write_text
from ..errors import (
    EXIT_FAILED,
    WRITE_ERRNOS,
    ParameterError,
    ProvenanceError,
    StorageError,
    StudyError,
    first_line,
    from_os_error,
)
from ..info import DEMO_BANNER
from ..models.determinism import export_environment

NOTEBOOK_RE = re.compile(r"^(?P<num>\d\d)_[A-Za-z0-9_]+\.ipynb$")
KERNEL_NAME = "busi-study"
COMPLETE = "COMPLETE.json"           # written last, atomically, by the runner only
RUNNER_FILES = ("run.json", "index.html", COMPLETE, "FAILED.txt", "RUNNING")  # never carried over


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
    origins: dict[str, str] = field(default_factory=dict)  # parameter -> the option that set it (--set, --seed, …)

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
            raise ParameterError(f"no notebook matches {', '.join(missing)} — use one of: {', '.join(nb.stem for nb in all_nbs)}")
        return chosen
    if start_from:
        idx = [i for i, nb in enumerate(all_nbs) if matches(nb, start_from)]
        if not idx:
            raise ParameterError(f"no notebook matches --from {start_from} — use one of: {', '.join(nb.stem for nb in all_nbs)}")
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
    return f"{ename}: {first_line(str(evalue), 400)}"[:400]


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
    write_text(body, html_path)


def _say(msg: str) -> None:
    print(msg, flush=True)


def is_complete(run_dir: Path) -> bool:
    """A run is complete only when the runner wrote its ``COMPLETE.json`` (module docstring)."""
    run_dir = Path(run_dir)
    try:
        marker = json.loads((run_dir / COMPLETE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("run_id") == run_dir.name


def is_legacy_complete(run_dir: Path) -> bool:
    """A run finished by a runner from before completion markers: run.json says ok and neither
    RUNNING nor FAILED.txt is there. Never built on (its results carry no split hashes), never
    removed by ``--clean-failed``."""
    run_dir = Path(run_dir)
    if (run_dir / COMPLETE).exists() or (run_dir / "RUNNING").exists() or (run_dir / "FAILED.txt").exists():
        return False
    try:
        meta = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("ok")) and "interrupted" not in meta


def _runs(reports_dir: Path) -> list[Path]:
    """Run folders (not ``latest``, not ``reference``, not hidden)."""
    if not Path(reports_dir).is_dir():
        return []
    return sorted(p for p in Path(reports_dir).iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name not in ("latest", "reference")
                  and not p.name.startswith(".") and ((p / "run.json").exists() or (p / "RUNNING").exists()))


def _running_pid_alive(run_dir: Path) -> bool:
    try:
        pid = int(json.loads((run_dir / "RUNNING").read_text()).get("pid", 0))
    except (OSError, ValueError, AttributeError):
        return False
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def failed_runs(reports_dir: Path) -> list[Path]:
    """Failed or interrupted runs: no ``COMPLETE.json`` and not running now; never latest's target."""
    latest = Path(reports_dir) / "latest"
    keep = latest.resolve() if latest.exists() else None
    return [p for p in _runs(reports_dir)
            if not is_complete(p) and not is_legacy_complete(p) and p.resolve() != keep and not _running_pid_alive(p)]


def clean_failed(reports_dir: Path, say=print) -> list[Path]:
    """Remove failed and incomplete runs (``run_all.py --clean-failed``); return what was removed."""
    removed = []
    for p in failed_runs(reports_dir):
        try:
            reason = (p / "FAILED.txt").read_text().strip() if (p / "FAILED.txt").exists() else "incomplete (interrupted)"
        except OSError:
            reason = "failed"
        say(f"removing {p.name}: {reason.splitlines()[0] if reason else 'incomplete'}")
        try:
            shutil.rmtree(p)
        except OSError as exc:  # a read-only or foreign folder: say what could not be removed, not "write"
            why = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}.get(exc.errno, exc.strerror or first_line(exc))
            raise StorageError(f"cannot remove the failed run {p.name} from {reports_dir} ({why}; {len(removed)} removed "
                               "before it) — make the reports folder writable, or remove the run by hand") from None
        removed.append(p)
    say(f"{len(removed)} failed or incomplete run(s) removed from {reports_dir}")
    return removed


#: Parameters the runner sets per run (never a reason to refuse carrying a notebook over).
RUNNER_PARAMS = ("data_dir", "report_dir", "demo", "profile", "run_id")


def profile_lineage(profile: str, params_dir: Path) -> list[str]:
    """``profile`` and the profiles it inherits from, nearest first (``ablation`` → reference → default)."""
    import yaml

    names, current = [], profile
    while current and current not in names:
        names.append(current)
        path = Path(current) if Path(current).suffix else Path(params_dir) / f"{current}.yaml"
        try:
            current = (yaml.safe_load(path.read_text()) or {}).get("inherits")
        except (OSError, yaml.YAMLError, AttributeError):
            break
    return names


def carried_parameter_differences(notebooks: list[Path], params: dict[str, Any], previous_params: dict[str, Any]) -> list[str]:
    """For each notebook about to be carried over, the declared parameters whose value here differs
    from the value in the run it comes from (runner-set keys aside): ``["01_splits: seed 7 ≠ 42"]``."""
    out = []
    for nb, keys in differing_parameters(notebooks, params, previous_params).items():
        out.append(f"{nb.stem}: {', '.join(f'{k} {params.get(k)!r} ≠ {previous_params.get(k)!r}' for k in keys)}")
    return out


def differing_parameters(notebooks: list[Path], params: dict[str, Any], previous_params: dict[str, Any]) -> dict[Path, list[str]]:
    """Notebook → its declared parameters whose value here differs from the run it would be carried from."""
    out = {}
    for nb in notebooks:
        here = notebook_parameters(nb, params)
        keys = [k for k in sorted(here) if k not in RUNNER_PARAMS and here[k] != previous_params.get(k)]
        if keys:
            out[nb] = keys
    return out


#: What to do about a parameter that differs from the run being built on, by the option that set it.
_OPTION_HINTS = {"--set": "drop --set {key}", "--seed": "drop --seed (that run used {old!r})",
                 "--strict": "drop --strict", "--external": "give --external {old} as that run did"}


def _difference_hint(keys: set[str], origins: dict[str, str], previous_params: dict[str, Any]) -> str:
    """How to make the parameters match the run being built on, naming the options actually given."""
    hints = []
    for key in sorted(keys):
        origin = origins.get(key)
        old = previous_params.get(key)
        if origin in _OPTION_HINTS:
            hints.append(_OPTION_HINTS[origin].format(key=key, old=old))
        else:  # the profile gives another value than that run had
            hints.append(f"--set {key}={old if old is not None else 'null'} as that run had")
    return "; ".join(dict.fromkeys(hints))


def previous_complete_run(reports_dir: Path, demo: bool, profile: str | list[str], data_source: str) -> Path | None:
    """The newest complete run on the same data with the same profile (what --only/--from extend).
    With a list of profiles (a profile's lineage), the first profile that has one wins."""
    if not isinstance(profile, str):
        for name in profile:
            found = previous_complete_run(reports_dir, demo, name, data_source)
            if found is not None:
                return found
        return None
    best = None
    for run in _runs(reports_dir):
        if not is_complete(run):  # failed, interrupted or from before completion markers
            continue
        try:
            meta = json.loads((run / "run.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        same = (meta.get("ok") and bool(meta.get("demo")) == demo and meta.get("profile") == profile
                and meta.get("params", {}).get("data_source") == data_source)
        # runs started in the same second are told apart by the number new_run_id appended (-2, -3, …)
        order = (meta["started_utc"], _same_second_number(run.name))
        if same and (best is None or order > best[0]):
            best = (order, run)
    return best[1].resolve() if best else None


def _same_second_number(run_id: str) -> int:
    """1 for ``<stamp>-<profile>[-demo]``, k for the k-th run of that second (``…-k``, :func:`new_run_id`)."""
    m = re.match(r"^\d{8}T\d{6}Z-.*-(\d+)$", run_id)
    return int(m.group(1)) if m else 1


def _file_ids(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run folder: relative path → (inode, mtime in ns) — what tells a file a notebook wrote."""
    out = {}
    for f in run_dir.rglob("*"):
        if f.is_file():
            st = f.stat()
            out[f.relative_to(run_dir).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return out


def written_since(before: dict[str, tuple[int, int]], run_dir: Path) -> list[str]:
    """The files of ``run_dir`` that are new or were rewritten since the snapshot ``before`` (the
    outputs of the notebook run in between), runner files aside."""
    return sorted(rel for rel, ident in _file_ids(run_dir).items()
                  if before.get(rel) != ident and rel not in RUNNER_FILES)


def outputs_of(prev_meta: dict, names: set[str]) -> tuple[set[str], list[str]]:
    """(files the notebooks ``names`` wrote in the run ``prev_meta`` describes, the names of those
    among them whose outputs that run did not record — runs from before the record existed)."""
    files, unknown = set(), []
    for n in prev_meta.get("notebooks", []):
        if n["name"] in names:
            if "outputs" in n:
                files |= set(n["outputs"])
            else:
                unknown.append(n["name"])
    return files, unknown


def carry_over(previous: Path, run_dir: Path, skip: set[str]) -> dict:
    """Hard-link every file of ``previous`` into ``run_dir`` except the runner's own files and
    ``skip`` (relative paths: the outputs of the notebooks about to rerun); copy where a link
    is impossible (another file system). Returns counts and bytes linked / copied."""
    stats = {"linked": 0, "copied": 0, "linked_bytes": 0, "copied_bytes": 0}
    for src in sorted(previous.rglob("*")):
        rel = src.relative_to(previous)
        if src.is_dir() or rel.as_posix() in skip or (len(rel.parts) == 1 and rel.name in RUNNER_FILES):
            continue
        dst = run_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
            continue
        try:
            os.link(src, dst)
            kind = "linked"
        except OSError:
            shutil.copy2(src, dst)
            kind = "copied"
        stats[kind] += 1
        stats[f"{kind}_bytes"] += src.stat().st_size
    return stats


def _switch_latest(reports_dir: Path, run_dir: Path) -> None:
    link = reports_dir / "latest"
    tmp = reports_dir / ".latest.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)


def _data_lines(run_dir: Path) -> list[str]:
    """The data check's counts and warnings of this run, for the console."""
    from ..data.prepare import summary_lines

    path = run_dir / "data_summary.json"
    if not path.exists():
        return []
    try:
        summary = json.loads(path.read_text())
        lines = [f"data: {summary_lines(summary)[0]}"]
    except (OSError, ValueError, KeyError):
        return []
    lines += [f"WARNING: {w}" for w in summary.get("warnings", [])]
    return lines


def _external_lines(run_dir: Path) -> list[str]:
    """Why notebook 08 skipped the external validation (its first sentence), for the console."""
    try:
        skipped = json.loads((run_dir / "external_summary.json").read_text()).get("skipped")
    except (OSError, ValueError, AttributeError):
        return []
    if not skipped:
        return []
    return [f"external validation skipped: {str(skipped).split('. ')[0]} (run_all.py --external PATH; see the notebook)"]


def _mkdir(path: Path, option: str = "--reports-dir") -> None:
    check_folder_path(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        converted = from_os_error(exc, path, "create the folder")
        if converted is None:
            raise
        raise converted from None


def check_folder_path(path: Path, option: str) -> None:
    """A folder the study writes to (``--reports-dir``, ``--data-dir``) must not be a file, nor lie below one."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies below {p}, which is a file"
                raise StudyError(f"{option} {path} {what}, not a folder — choose a folder (it is created if missing)")
            return


@contextlib.contextmanager
def kernel_output_to(log: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2, which the kernel papermill starts
    inherits) to ``log`` while a notebook runs: Jupyter's "Kernel is running over TCP without
    encryption" warning and TensorFlow's oneDNN / absl lines go to the run's log, not the console.
    Yields a text stream on the console's stderr for what the user should see (the progress bar)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no console descriptors (a daemon): nothing to keep apart
        yield sys.stderr
        return
    log.unlink(missing_ok=True)  # a new file: never append to a log hard-linked from the run this one builds on
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    console = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield console
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)
        console.close()


@contextlib.contextmanager
def kernel_steps_to(step_log: Path, notebook: str):
    """The environment the kernel papermill starts inherits while one notebook runs: where its
    steps go (``busi_study.timing``) and the startup file that times every cell."""
    env = timing.kernel_environment(step_log, notebook)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _console_line(console, progress: bool):
    """One line on the console stream (over the progress bar's line when there is one)."""

    def say(line: str) -> None:
        try:
            console.write(("\r" + line.ljust(100) if progress else line) + "\n")
            console.flush()
        except (OSError, ValueError):
            pass

    return say


def runner_step(notebook: str, name: str, seconds: float, start_s: float, cpu_s: float | None = None) -> dict:
    """A step the runner itself timed (HTML export of a notebook, the model comparison)."""
    return {"notebook": notebook, "step": name, "parent": None, "depth": 0, "cell": None, "start_s": round(start_s, 1),
            "seconds": round(seconds, 2), "cpu_s": None if cpu_s is None else round(cpu_s, 2), "ok": True, "id": None,
            "parent_id": None}


def carried_steps(prev_meta: dict, carried: dict[str, dict]) -> list[dict]:
    """The step records of the notebooks carried over, marked with the run they come from."""
    return [{**s, "from_run": carried[s["notebook"]].get("from_run") or prev_meta.get("run_id")}
            for s in prev_meta.get("steps", []) if s.get("notebook") in carried]


def write_timing_table(run_dir: Path, steps: list[dict]) -> None:
    """``tables/timing_steps.csv`` (+ LaTeX): every timed step of the run."""
    from .export import save_table
    from .steps import steps_table

    save_table(steps_table(steps), "timing_steps", run_dir, decimals=2)


def run_study(cfg: RunConfig) -> int:
    """Run the selected notebooks; return 0 on success, 1 when a notebook failed.

    KeyboardInterrupt: the run is recorded as interrupted (never complete) and re-raised.
    """
    import papermill as pm

    from . import steps as step_view
    from .index import write_index

    repo = cfg.repo.resolve()
    reports_dir = (cfg.reports_dir or repo / "reports").resolve()
    data_dir = (cfg.data_dir or repo / "data").resolve()
    check_folder_path(data_dir, "--data-dir")
    _mkdir(reports_dir)
    notebooks = select_notebooks(discover_notebooks(repo / "notebooks"), cfg.only, cfg.start_from)
    if not notebooks:
        raise StudyError(f"no notebooks found in {repo / 'notebooks'} — run from a complete checkout of the study")

    failed_before = failed_runs(reports_dir)
    if failed_before:
        _say(f"{len(failed_before)} failed or incomplete run(s) kept in {reports_dir}: "
             f"{', '.join(p.name for p in failed_before[:5])}{' …' if len(failed_before) > 5 else ''} "
             "(remove them with run_all.py --clean-failed)")

    run_id = new_run_id(cfg.profile, cfg.demo, reports_dir)
    run_dir = reports_dir / run_id
    latest = reports_dir / "latest"
    previous = latest.resolve() if latest.exists() else None
    latest_target = previous  # what reports/latest points to: never changed by a failed run
    partial = bool(cfg.only or cfg.start_from)
    carried: dict[str, dict] = {}
    if partial:
        # the same profile first, then the profiles it inherits from (ablation builds on reference)
        lineage = profile_lineage(cfg.profile, repo / "params")
        previous = previous_complete_run(reports_dir, cfg.demo, lineage, cfg.params.get("data_source"))
        first = discover_notebooks(repo / "notebooks")[0]
        if previous is None and notebooks[0] != first:
            raise StudyError("--only/--from needs an earlier complete run with the same data and profile to "
                             f"extend (or of a profile it inherits: {', '.join(lineage[1:]) or 'none'}) — run the "
                             "whole study first (run_all.py without --only/--from)")
        if previous is not None:
            # a carried-over notebook must have been run with the parameters this run would give it
            carried_nbs = [nb for nb in discover_notebooks(repo / "notebooks")
                           if nb not in notebooks and (previous / "notebooks" / nb.name).exists()]
            prev_params = json.loads((previous / "run.json").read_text()).get("params", {})
            _keep_external_set(cfg, previous, prev_params)
            differing = differing_parameters(carried_nbs, cfg.params, prev_params)
            if differing:
                diffs = carried_parameter_differences(list(differing), cfg.params, prev_params)
                keys = {k for ks in differing.values() for k in ks}
                first_nb = min(differing).stem.split("_")[0]
                raise StudyError(f"cannot build on run {previous.name}: notebooks it would carry over ran with other "
                                 f"parameters ({'; '.join(diffs)[:300]}) — rerun them too (--from {first_nb}) or "
                                 f"{_difference_hint(keys, cfg.origins, prev_params)}")
            check_carried_external(previous, carried_nbs, cfg.params.get("external_data"))
            prev_profile = json.loads((previous / "run.json").read_text()).get("profile")
            if prev_profile != cfg.profile:
                _say(f"No complete '{cfg.profile}' run to extend: building on the '{prev_profile}' run {previous.name} "
                     f"('{cfg.profile}' inherits it; the carried notebooks' parameters are identical)")
    _mkdir(run_dir)
    write_json({"pid": os.getpid(), "started_utc": dt.datetime.now(dt.timezone.utc).isoformat()}, run_dir / "RUNNING")
    try:
        if partial and previous is not None:
            # build on the newest complete run: hard links, minus the outputs of the notebooks rerun here
            prev_meta = json.loads((previous / "run.json").read_text())
            rerun = {nb.stem for nb in notebooks}
            skip = {f"notebooks/{nb.name}" for nb in notebooks} | {f"html/{nb.stem}.html" for nb in notebooks}
            # what the rerun notebooks wrote there (results, models, tables, figures) is not carried: a model
            # that a rerun no longer makes must not linger in this run's comparison, report or app
            stale, unknown = outputs_of(prev_meta, rerun)
            skip |= stale
            if unknown:
                _say(f"Run {previous.name} does not record what {', '.join(unknown)} wrote (it predates that record): its "
                     "files are carried over and replaced where this run writes them again; a model the rerun no longer "
                     "makes would stay — check the comparison table")
            link_stats = carry_over(previous, run_dir, skip)
            carried = {n["name"]: {**n, "from_run": n.get("from_run") or prev_meta.get("run_id")}
                       for n in prev_meta.get("notebooks", []) if n["name"] not in rerun}
            _say(f"Building on complete run {previous.name}: carrying over {', '.join(sorted(carried)) or 'nothing'} "
                 f"({link_stats['linked']} files hard-linked, {link_stats['copied']} copied, "
                 f"{link_stats['copied_bytes'] / 1e6:.1f} MB of new disk space)")

        kernel = _kernel(cfg.kernel_name)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # kernels inherit it: no TensorFlow banner in the notebooks
        determinism_env = export_environment()  # PYTHONHASHSEED, TF_DETERMINISTIC_OPS for the kernels
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
            "determinism_environment": determinism_env,
        }
        status: dict[str, dict] = dict(carried)
        # steps of the notebooks carried over come with them; this run's are collected after each notebook
        run_steps: list[dict] = carried_steps(prev_meta, carried) if partial and previous is not None else []
        t_run = time.perf_counter()
        _say(f"Run {run_id}: {len(notebooks)} notebook(s), profile '{cfg.profile}'"
             f"{' on DEMO data' if cfg.demo else ''}; output in {run_dir}")
        # the time left, from the last complete run of this very profile on the same data
        estimate = step_view.Estimate.from_run(previous_complete_run(reports_dir, cfg.demo, cfg.profile,
                                                                     cfg.params.get("data_source")))
        stems = [nb.stem for nb in notebooks]
        _say(f"Time: {estimate.text(None, stems)}" + (f" (from run {estimate.run_id})" if estimate.known else ""))
        failed = None
        failed_log = None
        interrupted = False
        try:
            for i, nb in enumerate(notebooks, 1):
                executed = run_dir / "notebooks" / nb.name
                html = run_dir / "html" / f"{nb.stem}.html"
                executed.parent.mkdir(parents=True, exist_ok=True)
                params = notebook_parameters(nb, base_params)
                last = estimate.notebook_s.get(nb.stem)
                _say(f"[{i}/{len(notebooks)}] {nb.stem} …" + (f" (last run {step_view.duration(last)}; "
                                                              f"{estimate.text(nb.stem, stems[i:])})" if last is not None else ""))
                t0 = time.perf_counter()
                started = time.time()
                error = None
                before = _file_ids(run_dir)
                status[nb.stem] = {"name": nb.stem, "ok": False, "wall_s": None, "error": "running",
                                   "ipynb": f"notebooks/{nb.name}", "html": f"html/{nb.stem}.html", "from_run": None}
                log = run_dir / "logs" / f"{nb.stem}.log"
                step_log = run_dir / "logs" / f"{nb.stem}.steps.jsonl"
                step_log.unlink(missing_ok=True)  # never append to a log hard-linked from the run this one builds on
                titles = step_view.cell_titles(nb)
                try:  # the kernel's own noise (Jupyter, TensorFlow) goes to the log, the progress bar to the console
                    with kernel_output_to(log) as console, kernel_steps_to(step_log, nb.stem), \
                            step_view.StepWatcher(step_log, nb.stem, titles, _console_line(console, cfg.progress),
                                                  lambda cell, cell_s, nb_s, _nb=nb.stem, _after=stems[i:]:
                                                  estimate.text(_nb, _after, nb_s, cell, cell_s), started=started):
                        pm.execute_notebook(str(nb), str(executed), parameters=params, kernel_name=kernel,
                                            cwd=str(nb.parent), progress_bar={"file": console} if cfg.progress else False,
                                            log_output=False, request_save_on_cell_execute=True)
                except pm.PapermillExecutionError as exc:
                    error = _short_error(exc)
                except KeyboardInterrupt:
                    error = "interrupted (KeyboardInterrupt): the notebook did not finish"
                    interrupted = True
                except OSError as exc:  # e.g. the executed notebook cannot be saved: a full or read-only reports folder
                    converted = from_os_error(exc, executed) if exc.errno in WRITE_ERRNOS else None
                    error = f"{type(converted or exc).__name__}: {first_line(converted or exc, 300)}"
                except Exception as exc:  # kernel died, dependency missing, …
                    error = f"{type(exc).__name__}: {first_line(exc, 300)}"
                wall = round(time.perf_counter() - t0, 1)
                run_steps += step_view.notebook_steps(step_log, nb, started)
                if executed.exists() and not interrupted:
                    t_html, c_html = time.perf_counter(), time.process_time()
                    try:
                        render_html(executed, html, cfg.demo)
                    except Exception as exc:  # the executed notebook stays the primary record
                        _say(f"    (HTML export failed: {type(exc).__name__}: {exc})")
                    run_steps.append(runner_step(nb.stem, step_view.HTML_STEP, time.perf_counter() - t_html, wall,
                                                 time.process_time() - c_html))
                status[nb.stem].update(ok=error is None, wall_s=wall, error=error, outputs=written_since(before, run_dir))
                if error:
                    failed = (nb, error, executed)
                    failed_log = log
                    break
                _say(f"    done in {wall:.1f} s")
                if nb.stem.startswith("00_"):  # the data check, on the console as well as on the front page
                    for line in _data_lines(run_dir):
                        _say(f"    {line}")
                if nb.stem.startswith("08_"):  # a skipped external validation, on the console as well
                    for line in _external_lines(run_dir):
                        _say(f"    {line}")
        except KeyboardInterrupt:  # between notebooks
            interrupted = True
            failed = (notebooks[0], "interrupted (KeyboardInterrupt)", run_dir)

        hashes = None
        if failed is None:
            try:  # the report's data, splits and model results must belong together
                hashes = check_report_data(run_dir)
            except ProvenanceError as exc:
                failed = (notebooks[-1], f"ProvenanceError: {exc}", run_dir)

        t_summary, c_summary = time.perf_counter(), time.process_time()
        meta["models"] = None if interrupted else _model_summary(run_dir, base_params, cfg.demo)
        run_steps.append(runner_step("runner", "model comparison (summary, paired bootstrap)",
                                     time.perf_counter() - t_summary, t_summary - t_run, time.process_time() - c_summary))
        meta["notebooks"] = [status[k] for k in sorted(status)]
        meta["steps"] = run_steps
        if run_steps and not interrupted:
            write_timing_table(run_dir, run_steps)
        meta["wall_s"] = round(time.perf_counter() - t_run, 1)
        meta["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        meta["ok"] = failed is None
        meta["interrupted"] = interrupted
        meta["data"] = _data_summary(run_dir, base_params)
        meta["data_hashes"] = hashes
        write_json(meta, run_dir / "run.json")
        if not interrupted:
            write_index(run_dir, meta)

        if failed:
            nb, error, executed = failed
            write_text(f"{nb.stem}: {error}\n", run_dir / "FAILED.txt")
            (run_dir / "RUNNING").unlink(missing_ok=True)
            keep = f"; the previous report is still at {latest} -> {latest_target.name}" if latest_target else ""
            if interrupted:
                print(f"INTERRUPTED: {nb.stem}: run {run_id} is incomplete and will never be built on{keep}",
                      file=sys.stderr, flush=True)
                raise KeyboardInterrupt
            log_line = f"\n  kernel log: {failed_log}" if failed_log is not None and failed_log.exists() else ""
            print(f"FAILED: {nb.stem}: {error}\n  partial output: {executed}{keep}{log_line}", file=sys.stderr, flush=True)
            for line in _data_lines(run_dir):
                print(line, file=sys.stderr, flush=True)
            return EXIT_FAILED
        # complete: the marker is the last file written, atomically; only then does latest move
        (run_dir / "RUNNING").unlink(missing_ok=True)
        write_json({"run_id": run_id, "finished_utc": meta["finished_utc"], "data_hashes": hashes}, run_dir / COMPLETE)
        _switch_latest(reports_dir, run_dir)
        for line in _data_lines(run_dir):
            _say(line)
        _say(f"Report ready in {meta['wall_s']:.0f} s: {run_dir / 'index.html'}  (also {latest / 'index.html'})")
        return 0
    except OSError as exc:  # a full or read-only reports folder: one line naming it, never a traceback
        converted = from_os_error(exc, run_dir) if exc.errno in WRITE_ERRNOS else None
        if converted is None:
            raise
        _failed_note(run_dir, str(converted))
        raise converted from None
    except StorageError as exc:
        _failed_note(run_dir, str(exc))
        raise
    finally:  # never a stale RUNNING marker, whatever happened
        try:
            (run_dir / "RUNNING").unlink(missing_ok=True)
        except OSError:
            pass


def _failed_note(run_dir: Path, reason: str) -> None:
    """Best effort: FAILED.txt saying why the runner itself stopped (the disk may be full)."""
    try:
        if not (run_dir / "FAILED.txt").exists():
            write_text(f"runner: {reason}\n", run_dir / "FAILED.txt")
    except (OSError, StudyError):
        pass


def _keep_external_set(cfg: RunConfig, previous: Path, prev_params: dict[str, Any]) -> None:
    """An --only/--from run without --external keeps the external set of the run it builds on (its
    carried notebook 08 was made with it), and says so; --external or --set external_data change it."""
    if cfg.params.get("external_data") or "external_data" in cfg.origins or not prev_params.get("external_data"):
        return
    cfg.params["external_data"] = prev_params["external_data"]
    _say(f"Keeping the external set of run {previous.name}: {prev_params['external_data']} "
         "(give --external PATH to use another)")


def check_carried_external(previous: Path, carried: list[Path], external_data: str | None) -> None:
    """A carried-over external validation must describe the external set as it is now: its recorded
    files hash (``external_summary.json``) against the folder's (``data.breast.external_digest``)."""
    if not external_data or not any(nb.stem.startswith("08_") for nb in carried):
        return
    try:
        recorded = json.loads((previous / "external_summary.json").read_text()).get("data", {}).get("files_sha256")
    except (OSError, ValueError, AttributeError):
        return
    if not recorded or not Path(external_data).is_dir():
        return
    from ..data.breast import external_digest

    now = external_digest(Path(external_data))
    if now != recorded:
        nb = next(nb.stem for nb in carried if nb.stem.startswith("08_"))
        raise StudyError(f"the external set at {external_data} changed since run {previous.name} ran {nb} (files hash "
                         f"{now[:12]}, recorded {recorded[:12]}): its results would describe other images — rerun it "
                         f"too (add {nb.split('_')[0]} to --only, or --from)")


def check_report_data(run_dir: Path) -> dict | None:
    """Data summary vs processed files vs model results of a finished run (``data.consistency``)."""
    from ..data.consistency import check_report

    return check_report(run_dir)


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
