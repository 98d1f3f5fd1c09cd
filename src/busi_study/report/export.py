"""Export figures (PNG at 300 dpi + PDF) and tables (CSV + LaTeX) under stable names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..info import DEMO_BANNER


def titled(title: str, demo: bool = False) -> str:
    """A figure title that says DEMO DATA when the run is on phantoms."""
    return f"{title}\n[{DEMO_BANNER}]" if demo else title


def save_figure(fig, name: str, report_dir: Path | str, dpi: int = 300) -> list[Path]:
    """Save ``fig`` as ``figures/<name>.png`` (``dpi``) and ``figures/<name>.pdf``.

    Returns the written paths. ``name`` is a stable file stem such as ``eda_class_counts``.
    """
    out = Path(report_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"CreationDate": None})
    return paths


def round_table(df: pd.DataFrame, decimals: int = 3) -> pd.DataFrame:
    """Round float columns to ``decimals`` (PROTOCOL.md §8)."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(decimals)
    return out


def save_table(df: pd.DataFrame, name: str, report_dir: Path | str, decimals: int = 3) -> list[Path]:
    """Save ``df`` as ``tables/<name>.csv`` and ``tables/<name>.tex`` (one header row, rounded)."""
    out = Path(report_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    table = round_table(df.reset_index(drop=True), decimals)
    csv_path, tex_path = out / f"{name}.csv", out / f"{name}.tex"
    table.to_csv(csv_path, index=False, lineterminator="\n")
    tex = table.to_latex(index=False, escape=True, float_format=lambda v: f"{v:.{decimals}f}")
    tex_path.write_text(tex)
    return [csv_path, tex_path]
