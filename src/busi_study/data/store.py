"""Where processed data lives: one folder per dataset *and* per what produced it.

``data/processed/<dataset>/<manifest-sha12>-<key-sha8>/`` holds the tables of one data
path: the first part is the hash of the image manifest (which images, which bytes), the second
the hash of the lesion masks' bytes (:func:`masks_sha256`) and of the grouping and split
parameters. Two datasets, the same images with other masks, or one dataset with two
``phash_threshold`` values never share a folder, so a later run cannot overwrite (or read) what
another run's notebooks read. Caches (decoded image arrays and masks, frozen-network outputs)
live in ``data/processed/<dataset>/cache/``; their file names carry the hash of what they were
made from (the manifest for images, the manifest and the masks for mask arrays).

Each step of the data path writes one file that the next step (and every later notebook)
reads; nothing is recomputed downstream. Notebooks after 00 open the store of *their run*
with :func:`busi_study.data.consistency.open_run_data`, which checks the recorded hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import WRITE_ERRNOS, from_os_error


@dataclass(frozen=True)
class ProcessedData:
    """The files of one processed dataset. ``cache``: where manifest-level caches go (default: ``folder``)."""

    folder: Path
    cache: Path | None = None

    @classmethod
    def keyed(cls, data_dir: Path, dataset: str, key: str) -> ProcessedData:
        """The store ``data_dir/processed/<dataset>/<key>`` with the dataset's shared cache folder."""
        root = Path(data_dir) / "processed" / dataset
        return cls(root / key, root / "cache")

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache is not None else self.folder

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

    def masks_sha256(self) -> str:
        """The hash of this data's lesion masks (recorded by the data path; computed for older folders)."""
        try:
            recorded = self.read_summary().get("masks_sha256")
        except (OSError, ValueError):
            recorded = None
        return recorded or masks_sha256(self.read("manifest"), self.read("files"))

    def splits_of(self, seed: int) -> pd.DataFrame:
        """The rows of ``splits.csv`` of one split seed (train / val / test role of every image per
        outer fold); a seed the file does not hold is a one-line error naming the seeds it has."""
        splits = self.read("splits")
        out = splits[splits["seed"] == int(seed)].reset_index(drop=True)
        if out.empty:
            from ..errors import ParameterError

            have = ", ".join(str(s) for s in sorted(splits["seed"].unique()))
            raise ParameterError(f"no splits for seed {seed} in {self.splits} (it holds seed(s) {have}) — "
                                 f"rerun 00_download with --seed {seed}")
        return out


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes (the manifest hash recorded with every result)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def masks_sha256(manifest: pd.DataFrame, files: pd.DataFrame) -> str:
    """SHA-256 over every lesion mask of the manifest's images, in manifest order (relative path and
    the SHA-256 of its bytes, from the file table): the masks are an input of the notebooks as the
    images are (the manifest names the mask files, this hashes what they hold)."""
    sha = dict(zip(files["path"].astype(str), files["sha256"].astype(str))) if len(files) else {}
    lines = []
    for image, masks in zip(manifest["path"], manifest["mask_paths"]):
        for m in (str(masks).split(";") if isinstance(masks, str) and masks else []):
            lines.append(f"{image}\t{m}\t{sha.get(m, '')}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def data_key(manifest_sha256: str, params: dict) -> str:
    """``<manifest-sha12>-<key-sha8>``: the processed-data folder name; ``params`` holds the masks'
    hash and the grouping and split parameters (module docstring)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return f"{manifest_sha256[:12]}-{hashlib.sha256(blob).hexdigest()[:8]}"


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); on success it replaces ``path``.

    Every writer of report files and caches goes through this (or ``write_json`` / ``write_csv``), so a
    file is never rewritten in place: a report that hard-links files of an earlier run (``--only``)
    can replace them without changing the earlier run. A full, read-only or forbidden disk ends in a
    one-line :class:`~busi_study.errors.StorageError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only disk: one line naming the file (the OS often names none)
        if exc.errno not in WRITE_ERRNOS:
            raise
        raise from_os_error(exc, path) from None
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass


def write_text(text: str, path: Path | str) -> None:
    """Write a text file atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(obj: dict, path: Path) -> None:
    """Write JSON atomically with sorted keys (stable bytes for stable input)."""
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)
