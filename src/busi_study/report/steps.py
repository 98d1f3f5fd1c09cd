"""The runner's side of step timing (:mod:`busi_study.timing`): names, console, estimate, table.

* :func:`cell_titles` names each cell step after the notebook's structure: ``cell 4 · Grouped
  5-fold cross-validation`` (the kernel's execution count, then the nearest ``##`` heading above
  the cell; ``parameters`` and ``setup`` before the first one);
* :func:`notebook_steps` turns a notebook's step log into the flat records of ``run.json``
  (``steps``: notebook, step, parent, depth, cell, start_s, seconds, ok, id, parent_id);
* :class:`Estimate` gives the time left from the last complete run of the same profile (its
  notebooks' wall times and, where it has them, its cells' times);
* :class:`StepWatcher` polls the step log while a notebook runs and prints its current step,
  one line per step that has run a few seconds (cells; and the steps directly inside a cell
  that run longer);
* :func:`steps_table`, :func:`slowest_steps` and :func:`notebook_totals` are the timing tables
  (``tables/timing_steps.csv`` and the front page's "Where the time goes").
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..timing import read_step_log

_HEADING = re.compile(r"^\s*#{2,6}\s+(.+?)\s*#*\s*$")
TITLE_CHARS = 70
#: Seconds a step of depth 0 (a cell) / depth 1 has run before the console names it.
SHOW_AFTER = {0: 3.0, 1: 15.0}
#: The runner's own step per notebook (not a cell): rendering the executed notebook as HTML.
HTML_STEP = "HTML export (runner)"


# ---------------------------------------------------------------- names
def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source or "")


def _clean(title: str) -> str:
    t = re.sub(r"[*`_]", "", title).strip()
    return t if len(t) <= TITLE_CHARS else t[: TITLE_CHARS - 1].rstrip() + "…"


def executed_code_cells(cells: list[dict]) -> list[dict]:
    """The code cells a kernel executes, in order (empty ones are skipped), with papermill's
    injected-parameters cell where papermill puts it (after the ``parameters`` cell, else first)
    unless ``cells`` already hold one (an executed notebook)."""
    code = [c for c in cells if c.get("cell_type") == "code" and _text(c.get("source")).strip()]
    tags = [set(c.get("metadata", {}).get("tags", [])) for c in code]
    if not any("injected-parameters" in t for t in tags):
        at = next((k + 1 for k, t in enumerate(tags) if "parameters" in t), 0)
        code.insert(at, {"cell_type": "code", "source": "", "metadata": {"tags": ["injected-parameters"]}})
    return code


def cell_titles(notebook: Path | dict) -> dict[int, str]:
    """Execution count → step name of each cell (see the module docstring). ``notebook``: a
    source or executed ``.ipynb`` (path or parsed JSON)."""
    nb = notebook if isinstance(notebook, dict) else json.loads(Path(notebook).read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    heading, titles_by_cell = None, {}
    for c in cells:
        if c.get("cell_type") == "markdown":
            found = [m.group(1) for line in _text(c.get("source")).splitlines() if (m := _HEADING.match(line))]
            if found:
                heading = found[-1]
        elif c.get("cell_type") == "code":
            titles_by_cell[id(c)] = heading
    out = {}
    for k, c in enumerate(executed_code_cells(cells), start=1):
        tags = set(c.get("metadata", {}).get("tags", []))
        if "injected-parameters" in tags:
            title = "parameters (injected by papermill)"
        elif "parameters" in tags:
            title = "parameters"
        else:
            title = titles_by_cell.get(id(c)) or "setup"
        out[k] = f"cell {k} · {_clean(title)}"
    return out


def notebook_steps(log: Path, notebook: Path | dict, t0: float | None = None) -> list[dict]:
    """The step records of one notebook's log, cells named by :func:`cell_titles`; ``start_s``:
    seconds from ``t0`` (Unix time the notebook started; default its first step). Ids are
    renumbered 1, 2, … in start order; ``parent_id`` refers to them."""
    raw = read_step_log(log)
    if not raw:
        return []
    try:
        titles = cell_titles(notebook)
    except (OSError, ValueError):
        titles = {}
    name, seq = {}, {}
    for k, r in enumerate(raw, start=1):
        if r["cell"] is not None:
            r["step"] = titles.get(int(r["cell"]), r["step"])
        name[r["id"]], seq[r["id"]] = r["step"], k
    t0 = min(r["start"] for r in raw) if t0 is None else t0
    return [{"notebook": r["notebook"], "step": r["step"], "parent": name.get(r["parent_id"], r["parent"]),
             "depth": r["depth"], "cell": r["cell"], "start_s": round(r["start"] - t0, 1),
             "seconds": None if r["seconds"] is None else round(float(r["seconds"]), 2),
             "cpu_s": None if r.get("cpu_s") is None else round(float(r["cpu_s"]), 2), "ok": r["ok"],
             "id": seq[r["id"]], "parent_id": seq.get(r["parent_id"])} for r in raw]


# ---------------------------------------------------------------- the time left
def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 05 min``."""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    m = s / 60
    if m < 90:
        return f"{m:.0f} min"
    return f"{int(m // 60)} h {int(round(m % 60)):02d} min"


@dataclass
class Estimate:
    """What the last complete run of the same profile took, per notebook and per cell."""

    run_id: str | None = None
    notebook_s: dict[str, float] = field(default_factory=dict)   # wall time + the runner's HTML export
    cells: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)  # nb → count → (start_s, seconds)
    tail_s: float = 0.0                                          # the runner's own steps after the notebooks

    @classmethod
    def from_run(cls, run_dir: Path | None) -> Estimate:
        """From ``run_dir/run.json`` (None or unreadable: no estimate)."""
        if run_dir is None:
            return cls()
        try:
            meta = json.loads((Path(run_dir) / "run.json").read_text())
        except (OSError, ValueError):
            return cls()
        return cls.from_meta(meta)

    @classmethod
    def from_meta(cls, meta: dict) -> Estimate:
        walls = {n["name"]: float(n["wall_s"]) for n in meta.get("notebooks", []) if n.get("ok") and n.get("wall_s") is not None}
        cells: dict[str, dict[int, tuple[float, float]]] = {}
        html, tail = {}, 0.0
        for s in meta.get("steps", []):
            if s.get("seconds") is None:
                continue
            if s.get("notebook") == "runner":
                tail += float(s["seconds"])
            elif s.get("step") == HTML_STEP and s.get("notebook") in walls:
                html[s["notebook"]] = float(s["seconds"])
            elif s.get("cell") is not None and s.get("notebook") in walls:
                cells.setdefault(s["notebook"], {})[int(s["cell"])] = (float(s.get("start_s") or 0.0), float(s["seconds"]))
        return cls(meta.get("run_id"), {k: v + html.get(k, 0.0) for k, v in walls.items()}, cells, tail)

    @property
    def known(self) -> bool:
        return bool(self.notebook_s)

    def left_in(self, notebook: str, elapsed: float, cell: int | None = None, cell_elapsed: float = 0.0) -> float | None:
        """Seconds left in ``notebook`` after ``elapsed`` seconds in it (``cell`` running for ``cell_elapsed``)."""
        wall = self.notebook_s.get(notebook)
        if wall is None:
            return None
        cells = self.cells.get(notebook)
        if cell is None or not cells or cell not in cells:
            return max(wall - elapsed, 0.0)
        last_start, last_s = cells[max(cells)]
        tail = max(wall - (last_start + last_s), 0.0)   # after the last cell: kernel shut-down
        later = sum(s for k, (_, s) in cells.items() if k > cell)
        return max(cells[cell][1] - cell_elapsed, 0.0) + later + tail

    def left(self, current: str | None, after: list[str], elapsed: float = 0.0, cell: int | None = None,
             cell_elapsed: float = 0.0) -> tuple[float, list[str]]:
        """(seconds left for ``current`` and the notebooks ``after`` it, the notebooks with no earlier time)."""
        total, unknown = self.tail_s, []
        for nb in ([current] if current else []) + list(after):
            left = self.left_in(nb, elapsed, cell, cell_elapsed) if nb == current else self.notebook_s.get(nb)
            if left is None:
                unknown.append(nb)
            else:
                total += left
        return total, unknown

    def text(self, current: str | None, after: list[str], elapsed: float = 0.0, cell: int | None = None,
             cell_elapsed: float = 0.0) -> str:
        """``about 14 min left`` (``+ 03_x not timed before``) or the reason there is no estimate."""
        if not self.known:
            return "no earlier complete run of this profile to estimate the time left"
        total, unknown = self.left(current, after, elapsed, cell, cell_elapsed)
        extra = f" + {', '.join(unknown)} (not in run {self.run_id})" if unknown else ""
        return f"about {duration(total)} left{extra}"


# ---------------------------------------------------------------- the console
class StepWatcher:
    """Polls a notebook's step log from a thread and prints its current step (module docstring).

    ``say(line)`` prints one line; ``eta(cell, cell_elapsed, elapsed)`` says the time left."""

    def __init__(self, log: Path, notebook: str, titles: dict[int, str], say, eta=None, *, started: float | None = None,
                 interval: float = 1.0, show_after: dict[int, float] | None = None) -> None:
        self.log, self.notebook, self.titles, self.say, self.eta = Path(log), notebook, titles, say, eta
        self.started = time.time() if started is None else started
        self.interval, self.show_after = interval, dict(SHOW_AFTER if show_after is None else show_after)
        self._offset, self._buffer = 0, ""
        self._open: dict[str, dict] = {}
        self._cell: dict | None = None
        self._shown: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StepWatcher:
        self._thread = threading.Thread(target=self._run, name=f"steps-{self.notebook}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the console is a courtesy: never let it stop a run
                pass

    def _read(self) -> list[dict]:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except OSError:
            return []
        text = self._buffer + chunk
        lines = text.split("\n")
        self._buffer = lines.pop()  # a line still being written
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def poll(self, now: float | None = None) -> list[str]:
        """Read what the log gained; print (and return) the lines for steps now worth naming."""
        for r in self._read():
            if r.get("e") == "start":
                self._open[r["id"]] = r
                if r.get("cell") is not None:
                    self._cell = r
            elif r.get("e") == "end":
                self._open.pop(r.get("id"), None)
        now = time.time() if now is None else now
        printed = []
        for sid, r in sorted(self._open.items(), key=lambda kv: kv[1].get("t", 0.0)):
            wait = self.show_after.get(int(r.get("depth", 0)))
            if wait is None or sid in self._shown or now - float(r.get("t", now)) < wait:
                continue
            self._shown.add(sid)
            line = self.line(r, now)
            self.say(line)
            printed.append(line)
        return printed

    def line(self, r: dict, now: float) -> str:
        cell = self._cell
        if r.get("cell") is not None:
            where = self.titles.get(int(r["cell"]), r.get("step", ""))
        else:
            parent = self.titles.get(int(cell["cell"]), "") if cell is not None else (r.get("parent") or "")
            where = f"{parent} › {r.get('step', '')}" if parent else r.get("step", "")
        elapsed = now - self.started
        tail = f"{_clock(elapsed)} into {self.notebook}"
        if self.eta is not None:
            cell_no = int(cell["cell"]) if cell is not None else None
            cell_elapsed = now - float(cell.get("t", now)) if cell is not None else 0.0
            tail += f"; {self.eta(cell_no, cell_elapsed, elapsed)}"
        return f"    › {where}  ({tail})"


def _clock(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# ---------------------------------------------------------------- tables
STEP_COLUMNS = ["notebook", "step", "parent", "depth", "cell", "start_s", "seconds", "cpu_s", "ok", "from_run"]


def steps_table(steps: list[dict]) -> pd.DataFrame:
    """Every step of a run, in run order (``tables/timing_steps.csv``)."""
    t = pd.DataFrame(steps)
    for c in STEP_COLUMNS:
        if c not in t:
            t[c] = None
    return t[STEP_COLUMNS]


def slowest_steps(steps: list[dict], n: int = 15, covered: float = 0.9) -> pd.DataFrame:
    """The ``n`` slowest steps of any depth (a step's time includes the steps inside it); a step that
    is almost all (``covered``) one step inside it, such as a cell that makes one call, is left to
    that step, which says more."""
    inner: dict[tuple, float] = {}
    for s in steps:
        if s.get("parent_id") is not None and s.get("seconds") is not None:
            key = (s.get("notebook"), s.get("from_run"), s["parent_id"])
            inner[key] = max(inner.get(key, 0.0), float(s["seconds"]))
    steps = [s for s in steps if s.get("seconds") is None or s.get("id") is None
             or inner.get((s.get("notebook"), s.get("from_run"), s["id"]), 0.0) < covered * float(s["seconds"])]
    t = steps_table(steps)
    t = t[pd.to_numeric(t["seconds"], errors="coerce").notna()].copy()
    t["seconds"] = t["seconds"].astype(float)
    return t.sort_values("seconds", ascending=False, kind="stable").head(n).reset_index(drop=True)


def notebook_totals(meta: dict) -> pd.DataFrame:
    """Per notebook: wall time, time in its cells, the slowest cell and what the kernel start,
    papermill and the HTML export took besides (``other_s``)."""
    steps = meta.get("steps", [])
    rows = []
    for n in meta.get("notebooks", []):
        cells = [s for s in steps if s.get("notebook") == n["name"] and s.get("cell") is not None and s.get("seconds") is not None]
        extra = [s for s in steps if s.get("notebook") == n["name"] and s.get("step") == HTML_STEP and s.get("seconds") is not None]
        in_cells = sum(float(s["seconds"]) for s in cells)
        slowest = max(cells, key=lambda s: s["seconds"], default=None)
        wall = n.get("wall_s")
        rows.append({"notebook": n["name"], "wall_s": wall, "cells": len(cells), "in_cells_s": round(in_cells, 1),
                     "other_s": None if wall is None or not cells else
                     round(float(wall) - in_cells + sum(float(s["seconds"]) for s in extra), 1),
                     "slowest_cell": slowest["step"] if slowest else "", "slowest_cell_s": slowest["seconds"] if slowest else None,
                     "from_run": n.get("from_run")})
    return pd.DataFrame(rows)
