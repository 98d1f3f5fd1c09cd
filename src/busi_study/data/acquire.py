"""Where the raw BUSI files come from: Kaggle, a local folder, a .zip, or demo phantoms.

Raw files are never modified. A folder or a Kaggle download is *linked* from ``data/raw/busi``;
a zip is unpacked once under ``data/raw/`` (keyed by the zip's hash) and linked the same way.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataSourceError, first_line, from_os_error
from ..info import BUSI, CLASSES

OFFLINE_HINT = (
    "point the study at a local copy with `run_all.py --data PATH` (a folder or a .zip of "
    "Dataset_BUSI_with_GT) or run on demo data with `run_all.py --demo`"
)


@dataclass(frozen=True)
class AcquiredData:
    """A dataset root ready to scan.

    root: the folder holding ``normal/ benign/ malignant/``.
    dataset: ``busi`` or ``demo`` (names the processed-data folder).
    source: what the user asked for (``kaggle``, a path, ``demo``).
    how: one sentence saying what was done (downloaded, linked, unpacked, generated).
    """

    root: Path
    dataset: str
    source: str
    how: str


def looks_like_dataset_root(path: Path) -> bool:
    """True when ``path`` holds at least one class folder (normal / benign / malignant)."""
    return path.is_dir() and any((path / c).is_dir() for c in CLASSES)


def find_dataset_root(path: Path, max_depth: int = 3) -> Path:
    """The folder below ``path`` (or ``path`` itself) that holds the class folders.

    Prefers a folder named ``Dataset_BUSI_with_GT``; searches breadth-first to ``max_depth``.
    """
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"data folder not found: {path} — {OFFLINE_HINT}")
    level = [path]
    for _ in range(max_depth + 1):
        hits = [p for p in level if looks_like_dataset_root(p)]
        if hits:
            preferred = [p for p in hits if p.name == BUSI["folder_name"]]
            return sorted(preferred or hits)[0]
        level = sorted(c for p in level for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))
    raise DataSourceError(
        f"no normal/ benign/ malignant/ folders found under {path} — point --data at a copy with the layout of "
        f"{BUSI['folder_name']}/ (normal/, benign/, malignant/)"
    )


def _link(link: Path, target: Path) -> Path:
    """Make ``link`` a symlink to ``target``; leave a real folder a user put there untouched."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if link.resolve() == target.resolve():
            return link
        link.unlink()
    elif link.exists():
        return target  # a real folder: the user's own copy, never replaced
    tmp = link.with_name(link.name + ".tmp-link")
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target.resolve(), target_is_directory=True)
    os.replace(tmp, link)
    return link


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unpack_zip(zip_path: Path, raw_dir: Path) -> Path:
    """Unpack a zip once into ``raw_dir/busi_zip-<sha12>/`` and return the dataset root in it."""
    try:
        digest = _sha256_file(zip_path)[:12]
        dest = raw_dir / f"busi_zip-{digest}"
        if not (dest / ".complete").exists():
            tmp = raw_dir / f".busi_zip-{digest}.partial"
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            with zipfile.ZipFile(zip_path) as zf:
                for member in zf.infolist():
                    target = (tmp / member.filename).resolve()
                    if not str(target).startswith(str(tmp.resolve())):
                        raise DataSourceError(f"unsafe path in zip: {member.filename} — unpack the zip yourself and pass the folder with --data")
                zf.extractall(tmp)
            (tmp / ".complete").write_text(str(zip_path) + "\n")
            if dest.exists():
                import shutil

                shutil.rmtree(dest)
            os.replace(tmp, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        _remove_partial(raw_dir)
        reason = first_line(exc)
        raise DataSourceError(f"not a readable zip file: {zip_path} is damaged ({reason}) — download it again, or unpack it "
                              f"yourself and pass the folder with --data") from None
    except OSError as exc:
        _remove_partial(raw_dir)
        converted = from_os_error(exc, raw_dir, "unpack the zip into")
        if converted is None:
            raise
        raise converted from None
    return find_dataset_root(dest)


def _remove_partial(raw_dir: Path) -> None:
    """Remove half-unpacked zips (``.busi_zip-*.partial``) so that nothing broken stays behind."""
    import shutil

    for tmp in Path(raw_dir).glob(".busi_zip-*.partial"):
        shutil.rmtree(tmp, ignore_errors=True)


def download_from_kaggle(handle: str = BUSI["kaggle_handle"]) -> Path:
    """Download BUSI with kagglehub (honours ~/.kaggle/kaggle.json or KAGGLE_* variables)."""
    try:
        import kagglehub

        return Path(kagglehub.dataset_download(handle))
    except Exception as exc:  # network, credentials, missing package: all say the same thing
        reason = first_line(exc)
        raise DataSourceError(
            f"could not download BUSI from Kaggle ({type(exc).__name__}: {reason}) — {OFFLINE_HINT}"
        ) from None


def acquire(source: str, data_dir: Path, *, demo_seed: int = 0) -> AcquiredData:
    """Resolve ``source`` to a dataset root under ``data_dir/raw``.

    source: ``kaggle`` (reuse ``data/raw/busi`` if it already holds the data, else download),
    ``demo`` (generate phantoms into ``data/raw/demo``), or a path to a folder or a ``.zip``.
    """
    data_dir = Path(data_dir)
    raw_dir = data_dir / "raw"
    link = raw_dir / "busi"
    if source == "demo":
        from .demo import make_demo_dataset

        root = make_demo_dataset(raw_dir / "demo", seed=demo_seed)
        return AcquiredData(root, "demo", "demo", f"generated demo phantoms in {root}")
    if source == "kaggle":
        existing = find_dataset_root_or_none(link) if link.exists() else None
        if existing is not None:
            return AcquiredData(existing, "busi", source, f"reused the copy at {link}")
        downloaded = download_from_kaggle()
        root = find_dataset_root(downloaded)
        _link(link, root)
        return AcquiredData(root, "busi", source, f"downloaded with kagglehub to {downloaded}; linked from {link}")
    path = Path(source).expanduser()
    if not path.exists():
        raise DataSourceError(f"data path not found: {path} — {OFFLINE_HINT}")
    if path.is_file():
        if path.suffix.lower() != ".zip":
            raise DataSourceError(f"--data must be a folder or a .zip, got the file {path} — pass the dataset folder or a .zip of it")
        root = unpack_zip(path, raw_dir)
        _link(link, root)
        return AcquiredData(root, "busi", str(path), f"unpacked {path.name} to {root}; linked from {link}")
    root = find_dataset_root(path)
    used = _link(link, root)
    how = f"linked {link} -> {root}" if used == link else f"used {root} ({link} is a real folder, left as is)"
    return AcquiredData(root, "busi", str(path), how)


def find_dataset_root_or_none(path: Path) -> Path | None:
    """``find_dataset_root`` that returns None instead of raising."""
    try:
        return find_dataset_root(path)
    except DataSourceError:
        return None
