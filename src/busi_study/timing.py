"""Where the time goes: named, nested wall-time steps of a run, written to the run's step log.

Three ways to time a step, each one line at the place it measures::

    with step("decode images 224px"):                     # a block
    @timed("cross-validation {self.recipe.name}")         # a function (the name may use its arguments)
    for fold in timed_iter(folds, "fold {}"):             # each pass of a loop

Steps nest: a step started while another is open records it as its ``parent`` (and ``depth``
one more); the records stay flat. In a notebook run by ``run_all.py`` every cell is a step of
depth 0 (:func:`time_cells`: IPython's pre/post-run-cell events, registered when the kernel starts
and again by ``StudyNotebook.open``), so a step inside a cell has that cell as its parent.

Where records go: the runner sets ``BUSI_STEP_LOG`` (a JSON-lines file per notebook under
``reports/<run>/logs/``) and ``BUSI_NOTEBOOK`` for the kernel it starts; each step appends one
line when it starts (what the console shows as the current step) and one when it ends. Without
``BUSI_STEP_LOG`` (plain Python, the tests, JupyterLab) every call is a no-op costing one
environment lookup. A step log that cannot be written never stops the study: timing is switched
off for the process with one warning. Steps in another thread share the stack (a step started
there gets the innermost open step as parent); another process starts its own stack.

This module imports nothing of the package (the bottom layer): data, models, studies and the
report all use it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

#: The JSON-lines step log of the running notebook (set by the runner for the kernel).
STEP_LOG_ENV = "BUSI_STEP_LOG"
#: The running notebook's name (``03_resnet50_head``), recorded in every step.
NOTEBOOK_ENV = "BUSI_NOTEBOOK"
#: The user's own PYTHONSTARTUP, run after the timing hooks are registered in a kernel.
USER_STARTUP_ENV = "BUSI_USER_PYTHONSTARTUP"
#: Name of a notebook cell's step until the runner gives it the cell's title (``cell 4 · …``).
CELL_PLACEHOLDER = "cell [{}]"

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_lock = threading.Lock()
_stack: list[tuple[str, str, int]] = []       # open steps: (id, name, depth), innermost last
_ids = itertools.count(1)
_broken: set[str] = set()                    # step logs that could not be written (warned once)


def log_path() -> str | None:
    """The step log of this run, or None outside a run (then nothing is recorded)."""
    return os.environ.get(STEP_LOG_ENV) or None


def active() -> bool:
    path = log_path()
    return path is not None and path not in _broken


def _write(path: str, record: dict) -> None:
    if path in _broken:
        return
    line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
    try:
        with open(path, "a", encoding="utf-8") as f:  # one write per record: lines of two processes never interleave
            f.write(line)
    except OSError as exc:
        _broken.add(path)
        print(f"(step timing switched off: cannot write {path}: {exc.strerror or exc})", file=sys.stderr, flush=True)


class step:  # noqa: N801 - used like a function: ``with step("…"):``
    """Time a block (``with step(name):``) or, as a decorator, every call of a function.

    ``cell``: the execution count of a notebook cell (set by :func:`time_cells` only)."""

    __slots__ = ("name", "cell", "_id", "_t0", "_c0", "_path")

    def __init__(self, name: str, *, cell: int | None = None) -> None:
        self.name, self.cell, self._id, self._path = str(name), cell, None, None

    def __enter__(self) -> step:
        path = log_path()
        if path is None or path in _broken:
            return self
        self._path, self._id = path, f"{os.getpid()}-{next(_ids)}"
        with _lock:
            parent = _stack[-1] if _stack else None
            depth = parent[2] + 1 if parent else 0
            _stack.append((self._id, self.name, depth))
        record = {"e": "start", "id": self._id, "parent_id": parent[0] if parent else None,
                  "notebook": os.environ.get(NOTEBOOK_ENV, ""), "step": self.name,
                  "parent": parent[1] if parent else None, "depth": depth, "t": round(time.time(), 3)}
        if self.cell is not None:
            record["cell"] = self.cell
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        _write(path, record)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._id is None:
            return False
        seconds, cpu = time.perf_counter() - self._t0, time.process_time() - self._c0
        with _lock:  # our own entry, wherever it is (a step of another thread may have started since)
            for k in range(len(_stack) - 1, -1, -1):
                if _stack[k][0] == self._id:
                    del _stack[k]
                    break
        _write(self._path, {"e": "end", "id": self._id, "seconds": round(seconds, 3), "cpu": round(cpu, 3),
                            "ok": exc_type is None})
        self._id = None
        return False

    def __call__(self, fn: F) -> F:
        name = self.name

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not active():
                return fn(*args, **kwargs)
            with step(name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


def timed(template: str) -> Callable[[F], F]:
    """Decorator: each call of the function is a step named by ``template`` formatted with the
    call's arguments (``"Grad-CAM {trained.name}"``, ``"cross-validation {self.recipe.name}"``);
    the template itself when an argument is missing or the formatting fails."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not active():
                return fn(*args, **kwargs)
            with step(_name(template, signature, args, kwargs)):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _name(template: str, signature: inspect.Signature, args: tuple, kwargs: dict) -> str:
    if "{" not in template:
        return template
    try:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return template.format(**bound.arguments)
    except Exception:  # a name is never worth a failed step
        return template


def timed_iter(items: Iterable[T], template: str) -> Iterator[T]:
    """Each pass of a loop over ``items`` as a step named ``template.format(item)``
    (``for fold in timed_iter(folds, "fold {}"):``)."""
    if not active():
        yield from items
        return
    for item in items:
        try:
            name = template.format(item)
        except Exception:
            name = template
        with step(name):
            yield item


# ---------------------------------------------------------------- notebook cells
def time_cells(shell=None) -> bool:
    """Make every cell of the running IPython kernel a step (depth 0, named by its execution
    count until the runner names it). Idempotent; False when there is no IPython shell."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - IPython ships with the notebook stack
            return False
        shell = get_ipython()
    if shell is None:
        return False
    if getattr(shell, "_busi_cell_timing", False):
        return True
    open_cell: list[step] = []
    # the execution count of the next cell: IPython increments it before or after pre_run_cell
    # depending on its version, so count here and take the exact number from each finished cell
    count = {"next": int(shell.execution_count)}

    def pre_run_cell(info=None) -> None:
        n = count["next"]
        count["next"] = n + 1
        if not active():
            return
        with _lock:
            _stack.clear()  # whatever a failed cell left open belongs to no later cell
        s = step(CELL_PLACEHOLDER.format(n), cell=n)
        s.__enter__()
        open_cell[:] = [s]

    def post_run_cell(result=None) -> None:
        done = getattr(result, "execution_count", None)
        if isinstance(done, int):
            count["next"] = done + 1
        if not open_cell:
            return
        s = open_cell.pop()
        ok = bool(getattr(result, "success", True))
        s.__exit__(None if ok else RuntimeError, None, None)
        with _lock:
            _stack.clear()

    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)
    shell._busi_cell_timing = True
    return True


def kernel_startup() -> None:
    """Run by a kernel the runner starts (``PYTHONSTARTUP``, :data:`STARTUP_FILE`): time every
    cell from the first, then run the user's own PYTHONSTARTUP file if there was one."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return
    shell = get_ipython()
    if shell is None:
        return
    time_cells(shell)
    user = os.environ.get(USER_STARTUP_ENV)
    if user and Path(user).is_file():
        shell.safe_execfile(user, shell.user_ns)


#: The file the runner gives a kernel as PYTHONSTARTUP.
STARTUP_FILE = Path(__file__).with_name("_kernel_startup.py")


def kernel_environment(log: Path | str, notebook: str) -> dict[str, str]:
    """Environment variables for a kernel whose steps go to ``log`` (the runner sets them)."""
    env = {STEP_LOG_ENV: str(log), NOTEBOOK_ENV: notebook, "PYTHONSTARTUP": str(STARTUP_FILE)}
    user = os.environ.get("PYTHONSTARTUP")
    if user and Path(user).resolve() != STARTUP_FILE.resolve():
        env[USER_STARTUP_ENV] = user
    return env


# ---------------------------------------------------------------- reading a step log
def read_step_log(path: Path | str) -> list[dict]:
    """The steps of a log, in the order they started: dicts with id, parent_id, notebook, step,
    parent, depth, start (Unix time), seconds (None while running or when the process died),
    cpu_s (CPU seconds of the process's threads meanwhile: about 2 × seconds when both cores of a
    2-core machine were busy), ok (None likewise) and cell (execution count of a cell step, else
    None). A torn last line
    (a log being written) is left out."""
    steps: dict[str, dict] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("e") == "start":
            steps[r["id"]] = {"id": r["id"], "parent_id": r.get("parent_id"), "notebook": r.get("notebook", ""),
                              "step": r.get("step", ""), "parent": r.get("parent"), "depth": int(r.get("depth", 0)),
                              "start": float(r.get("t", 0.0)), "seconds": None, "cpu_s": None, "ok": None,
                              "cell": r.get("cell")}
        elif r.get("e") == "end" and r.get("id") in steps:
            steps[r["id"]].update(seconds=r.get("seconds"), cpu_s=r.get("cpu"), ok=r.get("ok"))
    return list(steps.values())
