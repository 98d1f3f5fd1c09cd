"""Export figures (PNG at 300 dpi + PDF) and tables (CSV + LaTeX) under stable names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.store import atomic_path
from ..data.store import write_text as _write_text
from ..info import DEMO_BANNER
from ..timing import timed


def titled(title: str, demo: bool = False) -> str:
    """A figure title that says DEMO DATA when the run is on phantoms."""
    return f"{title}\n[{DEMO_BANNER}]" if demo else title


@timed("figure {name}")
def save_figure(fig, name: str, report_dir: Path | str, dpi: int = 300) -> list[Path]:
    """Save ``fig`` as ``figures/<name>.png`` (``dpi``) and ``figures/<name>.pdf``.

    Returns the written paths. ``name`` is a stable file stem such as ``eda_class_counts``.
    """
    out = Path(report_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    with atomic_path(paths[0]) as tmp:  # never in place: an --only run may hard-link the earlier file
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    with atomic_path(paths[1]) as tmp:
        fig.savefig(tmp, bbox_inches="tight", metadata={"CreationDate": None})
    return paths


def round_table(df: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """Round float columns to ``decimals`` (docs/protocol.md §8)."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(decimals)
    return out


@timed("table {name}")
def save_table(df: pd.DataFrame, name: str, report_dir: Path | str, decimals: int = 3) -> list[Path]:
    """Save ``df`` as ``tables/<name>.csv`` and ``tables/<name>.tex`` (one header row, rounded)."""
    out = Path(report_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    table = round_table(df.reset_index(drop=True), decimals)
    csv_path, tex_path = out / f"{name}.csv", out / f"{name}.tex"
    _write_text(table.to_csv(index=False, lineterminator="\n"), csv_path)
    tex = table.to_latex(index=False, escape=True, float_format=lambda v: f"{v:.{decimals}f}")
    _write_text(tex, tex_path)
    return [csv_path, tex_path]
