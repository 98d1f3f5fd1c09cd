"""Where processed data lives: one folder per dataset (``data/processed/busi``, ``…/demo``).

Each step of the data path writes one file that the next step (and every later notebook)
reads; nothing is recomputed downstream.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class ProcessedData:
    """The files of one processed dataset."""

    folder: Path

    @property
    def files(self) -> Path:
        return self.folder / "files.csv"            # every file seen, with hashes

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.csv"         # one row per usable image

    @property
    def issues(self) -> Path:
        return self.folder / "validation_issues.csv"

    @property
    def reference_check(self) -> Path:
        return self.folder / "reference_check.csv"

    @property
    def hashes(self) -> Path:
        return self.folder / "hashes.csv"

    @property
    def hash_histogram(self) -> Path:
        return self.folder / "hash_distance_histogram.csv"

    @property
    def pairs(self) -> Path:
        return self.folder / "near_duplicate_pairs.csv"

    @property
    def groups(self) -> Path:
        return self.folder / "groups.csv"

    @property
    def splits(self) -> Path:
        return self.folder / "splits.csv"

    @property
    def summary(self) -> Path:
        return self.folder / "data_summary.json"

    @property
    def source(self) -> Path:
        return self.folder / "source.json"          # where the raw root is (absolute path)

    def raw_root(self) -> Path:
        """The dataset root the processed files were made from."""
        return Path(json.loads(self.source.read_text())["root"])

    def read(self, name: str) -> pd.DataFrame:
        """Read one of the CSV tables by property name (``manifest``, ``groups``, …)."""
        path = getattr(self, name)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run notebooks/00_download first (run_all.py --only 00)")
        return pd.read_csv(path, keep_default_na=False, na_values=[""])

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text())


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes (the manifest hash recorded with every result)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_json(obj: dict, path: Path) -> None:
    """Write JSON atomically with sorted keys (stable bytes for stable input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
