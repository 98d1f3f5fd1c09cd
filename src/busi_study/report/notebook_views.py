"""What the notebooks show and save, so that a notebook stays a sequence of calls.

:class:`StudyNotebook` opens a notebook's context once (its report folder, the processed data,
the results store, whether the data are demo phantoms) and offers the few things every notebook
does: show the DEMO banner, save a figure (PNG + PDF) and show it, save a table (CSV + LaTeX) and
show it, and display one model run (learning curves, confusion matrix, ROC, metrics with CIs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .. import plots, timing
from ..data.consistency import open_run_data
from ..data.store import ProcessedData
from ..errors import ParameterError
from ..info import DEMO_BANNER
from ..params import StudyParams, all_keys
from ..results import ResultsStore
from .export import save_figure, save_table, titled

if TYPE_CHECKING:  # imported where a model run is shown: the data and EDA notebooks never load Keras
    from ..studies.model_run import ModelRun


def _display(*objs) -> None:
    from IPython.display import display

    display(*objs)


def _markdown(text: str):
    from IPython.display import Markdown

    return Markdown(text)


def declared_parameters() -> dict:
    """The study parameters of the running notebook: every name of ``params/default.yaml`` defined in
    its namespace (its parameters cell, then papermill's injected values). Nothing else is read."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the notebook stack
        get_ipython = None  # noqa: N806
    shell = get_ipython() if get_ipython else None
    if shell is None:
        raise ParameterError("StudyNotebook.open outside a notebook needs the parameters: pass params={...} "
                             "(flat keys of params/default.yaml)")
    return {k: shell.user_ns[k] for k in all_keys() if k in shell.user_ns}


@dataclass
class StudyNotebook:
    """One notebook's context: where it writes, what data it reads, how it titles figures."""

    report_dir: Path
    store: ProcessedData
    params: StudyParams
    demo: bool = False

    @property
    def figure_dpi(self) -> int:
        return self.params.figure_dpi or 300

    @classmethod
    def open(cls, report_dir: str | Path, data_dir: str | Path, demo: bool = False, need_data: bool = True,
             params: dict | None = None) -> StudyNotebook:
        """The context of a notebook run with papermill (or by hand with the values of its parameters
        cell): its typed parameters (``nb.params``), report folder, processed data and results store.

        ``params``: the flat study parameters; by default those the notebook's parameters cell declared,
        read once from the notebook's namespace by their names in ``params/default.yaml`` (papermill's
        injected cell, which follows the parameters cell, has overridden them by then), so that a
        notebook lists its parameters once. Shows the DEMO banner on demo data; ``need_data`` prints
        what data it reads."""
        timing.time_cells()  # every later cell a timed step (run_all.py's kernels time them from the first cell)
        typed = StudyParams.from_flat(declared_parameters() if params is None else params, partial=True)
        demo = bool(demo or (typed.data is not None and typed.data.data_source == "demo"))
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        # this run's data, after checking manifest / splits / carried results against its hashes;
        # 00_download (need_data=False) makes the data and gets its store from prepare_data
        store = (open_run_data(report_dir, data_dir) if need_data
                 else ProcessedData(Path(data_dir) / "processed" / ("demo" if demo else "busi")))
        nb = cls(report_dir=report_dir, store=store, params=typed, demo=demo)
        if demo:
            nb.banner()
        if need_data:
            summary = store.read_summary()
            print(f"data: {summary['n_images']} images, manifest {summary['manifest_sha256'][:16]}…; "
                  f"Keras cache: {os.environ.get('KERAS_HOME', '~/.keras')}/models")
        return nb

    @property
    def results(self) -> ResultsStore:
        return ResultsStore(self.report_dir)

    # ---------- display and save ----------
    def banner(self) -> None:
        _display(_markdown(f"<div style='background:#b00020;color:white;padding:6px;font-weight:bold'>{DEMO_BANNER}</div>"))

    def title(self, text: str) -> str:
        """A figure title, with the DEMO mark on demo data."""
        return titled(text, self.demo)

    def figure(self, fig, name: str) -> None:
        """Save ``figures/<name>.png`` (at ``figure_dpi``) and ``.pdf``, then show the figure."""
        import matplotlib.pyplot as plt

        save_figure(fig, name, self.report_dir, dpi=self.figure_dpi)
        plt.show()

    def table(self, df: pd.DataFrame, name: str, show: bool = True, decimals: int = 3) -> None:
        """Save ``tables/<name>.csv`` and ``.tex``; show it rounded."""
        save_table(df, name, self.report_dir)
        if show:
            _display(df.round(decimals))

    def note(self, text: str) -> None:
        """A sentence of interpretation (Markdown) under a figure or table."""
        _display(_markdown(text))

    # ---------- one model run ----------
    def show_model_run(self, run: ModelRun, bootstrap_resamples: int) -> None:
        """Learning curves, confusion matrix, ROC and the metrics table (with CIs) of one model run;
        a skipped model shows its reason instead."""
        from ..studies.model_run import metrics_display

        if run.skipped:
            self.note(f"**SKIPPED {run.recipe.name}**: {run.skipped}")
            return
        r, ev, name = run.recipe, run.evaluation, run.recipe.name
        protocol = run.protocol
        self.figure(plots.learning_curves(run.cv.history, self.title(f"{r.title} — learning curves ({protocol})")),
                    f"{name}_learning_curves")
        self.figure(plots.confusion(ev.confusion_counts, ev.confusion_normalised,
                                    self.title(f"{r.title} — pooled out-of-fold ({protocol})")), f"{name}_confusion")
        auc = {c: ev.value(f"auc_{c}") for c in ("normal", "benign")} | {"malignant": ev.value("malignant_auc")}
        self.figure(plots.roc_one_vs_rest(run.cv.oof, self.title(f"{r.title}\nROC one-vs-rest ({protocol})"), auc), f"{name}_roc")
        self.note(f"**{r.title}** — pooled out-of-fold metrics, 95 % group-bootstrap CI ({bootstrap_resamples} resamples), "
                  f"per-fold mean ± sd; weights: **{r.weights_label}**")
        self.table(metrics_display(ev), f"{name}_metrics")
        for flag in ev.collapse:
            self.note(f"**⚠ COLLAPSE: {flag}**")
        if ev.tta is not None:
            self.note("Test-time augmentation (mean over the cached views), reported separately:")
            _display(ev.tta.set_index("metric").loc[["accuracy", "macro_auc", "malignant_auc", "ece"]].round(3))
        if ev.without_conflicts is not None:
            self.note(f"Secondary analysis without the label-conflict groups (n = {ev.extra['n_without_conflicts']}):")
            _display(ev.without_conflicts.set_index("metric").loc[["accuracy", "macro_auc", "malignant_auc"]].round(3))
        t = run.timing
        self.note(f"Wall time: prepare {t['prepare_s']} s (frozen outputs {t.get('frozen_outputs_s', '–')} s, "
                  f"cached: {t.get('frozen_outputs_cached', '–')}), CV {t['cv_s']} s (per fold {t['per_fold_s']}), "
                  f"final model {t.get('final_model_s', '–')} s. Exported: `{run.exported}`")
