"""Read a label table as people ship them: CSV (any common delimiter and encoding) or Excel.

Every reader of a user's table (``evaluate``'s ``--labels``, BrEaST's clinical table) goes
through :func:`read_table`, which returns the cells as text and never a traceback for a
foreseeable problem:

* missing, a folder, empty, not text (a PNG renamed ``.csv``), a damaged or password-protected
  workbook → one-line :class:`~busi_study.errors.StudyError` saying what to do;
* encoding: UTF-8 (with or without a byte-order mark), UTF-16 with a byte-order mark (Excel's
  "Unicode text"), else Windows-1252, else Latin-1 (both common for tables saved by Excel); the
  one used is in ``table.attrs["encoding"]``;
* delimiter: the one of ``,`` ``;`` tab ``|`` that the header line holds most (Excel in many
  locales writes ``;``), quotes as usual;
* a row with more fields than the header (an unquoted comma in a name) is kept as a row of empty
  cells and reported in ``table.attrs["bad_lines"]`` (row index → reason), so the rows keep their
  numbers and the caller lists it instead of reading shifted columns; a shorter row is padded.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from ..errors import StudyError, first_line

EXCEL_SUFFIXES = (".xlsx", ".xlsm", ".xls")
DELIMITERS = (",", ";", "\t", "|")
ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")


def read_table(path: Path | str, what: str = "label table") -> pd.DataFrame:
    """The table at ``path`` as strings (module docstring); ``what`` names it in messages."""
    path = Path(path)
    if not path.exists():
        raise StudyError(f"{what} not found: {path} — give the path of a CSV or xlsx file")
    if path.is_dir():
        raise StudyError(f"{what} {path} is a folder — give the CSV or xlsx file inside it")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StudyError(f"cannot read the {what} {path} ({exc.strerror or first_line(exc)}) — check its permissions") from None
    if not data.strip():
        raise StudyError(f"the {what} {path} is empty — give a table with a header row and one row per image")
    if path.suffix.lower() in EXCEL_SUFFIXES:
        return _read_excel(path, what)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with a byte-order mark (Excel's "Unicode text")
        try:
            data = data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            pass
    if b"\x00" in data[:4096]:
        raise StudyError(f"the {what} {path} is not a text table (it holds binary data) — export it as CSV, or give the "
                         "xlsx workbook itself")
    text, encoding = _decode(data)
    table = _parse(text, path, what)
    table.attrs.update(encoding=encoding, source=str(path))
    return table


def _read_excel(path: Path, what: str) -> pd.DataFrame:
    try:
        table = pd.read_excel(path, sheet_name=0, dtype=str).fillna("")
    except ImportError as exc:
        raise StudyError(f"cannot read {path.name}: {first_line(exc)} — pip install openpyxl, or save its first sheet as "
                         "CSV") from None
    except Exception as exc:  # a damaged, encrypted or mislabelled workbook fails in many ways inside the reader
        raise StudyError(f"the {what} {path} is not a readable Excel workbook ({type(exc).__name__}: {first_line(exc, 100)}) "
                         "— open and save it again in Excel, or export its first sheet as CSV") from None
    if table.empty and not len(table.columns):
        raise StudyError(f"the {what} {path} is empty (its first sheet has no header row) — put the table on the first sheet")
    table.columns = [str(c).strip() for c in table.columns]
    table.attrs.update(encoding="xlsx", source=str(path), bad_lines={})
    return table


def _decode(data: bytes) -> tuple[str, str]:
    for enc in ENCODINGS:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _parse(text: str, path: Path, what: str) -> pd.DataFrame:
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first)))
    except csv.Error as exc:
        raise StudyError(f"the {what} {path} is not a readable CSV ({first_line(exc)}) — export it again as CSV") from None
    numbered = [(i + 1, r) for i, r in enumerate(records) if any(c.strip() for c in r)]
    if not numbered:
        raise StudyError(f"the {what} {path} is empty — give a table with a header row and one row per image")
    (_, header), body = numbered[0], numbered[1:]
    header = [h.strip() for h in header]
    rows, bad = [], {}
    for k, (line, r) in enumerate(body):
        if len(r) > len(header):
            bad[k] = (f"line {line} of {path.name} has {len(r)} fields, the header {len(header)} (an unquoted delimiter "
                      "inside a field?): row skipped")
            r = [""] * len(header)
        rows.append(r + [""] * (len(header) - len(r)))
    table = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    table.attrs["bad_lines"] = bad
    return table
