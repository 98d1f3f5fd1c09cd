"""Shared fixtures: demo phantoms, a crafted folder of bad files, repository paths."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_BUSI = (REPO / ".." / "shared" / "data" / "busi" / "Dataset_BUSI_with_GT").resolve()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    from busi_study.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def crafted_root(tmp_path) -> Path:
    """A BUSI-like folder with one example of every problem the scan must report."""
    rng = np.random.default_rng(1)
    root = tmp_path / "Dataset_BUSI_with_GT"
    img = lambda h=40, w=50: rng.integers(0, 255, (h, w), dtype=np.uint8)  # noqa: E731
    mask = lambda h=40, w=50: (rng.random((h, w)) > 0.7).astype(np.uint8) * 255  # noqa: E731
    # good images with masks (one with two masks)
    _png(root / "benign" / "benign (1).png", img())
    _png(root / "benign" / "benign (1)_mask.png", mask())
    _png(root / "benign" / "benign (1)_mask_1.png", mask())
    _png(root / "malignant" / "malignant (1).png", img())
    _png(root / "malignant" / "malignant (1)_mask.png", mask())
    _png(root / "normal" / "normal (1).png", img())
    _png(root / "normal" / "normal (1)_mask.png", np.zeros((40, 50), np.uint8))
    # problems
    (root / "benign" / "benign (2).png").write_bytes(b"")                          # empty file
    good = root / "benign" / "benign (1).png"
    (root / "benign" / "benign (3).png").write_bytes(good.read_bytes()[:60])       # truncated
    (root / "benign" / "benign (4).png").write_text("not an image at all")         # not an image
    _png(root / "benign" / "benign (5).png", img())
    _png(root / "benign" / "benign (5)_mask.png", mask(20, 20))                   # wrong-size mask
    _png(root / "malignant" / "malignant (2)_mask.png", mask())                    # orphan mask
    _png(root / "malignant" / "malignant (3).png", img())                          # image without mask
    _png(root / "normal" / "normal (2).png", img())
    (root / "normal" / "normal (2)_mask.png").write_bytes(b"\x89PNG garbage")     # unreadable mask
    (root / "normal" / "notes.txt").write_text("hello")                            # unexpected file type
    (root / "normal" / "extra").mkdir()                                             # nested folder
    (root / "other_class").mkdir()                                                  # unexpected folder
    (root / "README.md").write_text("top-level file")                               # unexpected file
    return root


@pytest.fixture()
def copy_of(tmp_path):
    def _copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy
