import sys
import types
import zipfile

import pytest

from busi_study.data.acquire import acquire, find_dataset_root
from busi_study.errors import DataSourceError


def test_folder_is_linked_not_copied(tmp_path, demo_root):
    got = acquire(str(demo_root.parent), tmp_path / "data")
    assert got.dataset == "busi" and got.root == demo_root
    link = tmp_path / "data" / "raw" / "busi"
    assert link.is_symlink() and link.resolve() == demo_root.resolve()
    # a second source replaces the link, never a real folder
    other = tmp_path / "other" / "Dataset_BUSI_with_GT"
    (other / "benign").mkdir(parents=True)
    acquire(str(other), tmp_path / "data")
    assert link.resolve() == other.resolve()


def test_real_folder_at_link_is_left_alone(tmp_path, demo_root):
    real = tmp_path / "data" / "raw" / "busi"
    (real / "normal").mkdir(parents=True)
    (real / "keep.txt").write_text("mine")
    got = acquire(str(demo_root), tmp_path / "data")
    assert got.root == demo_root and (real / "keep.txt").read_text() == "mine" and not real.is_symlink()


def test_zip_is_unpacked_once(tmp_path, demo_root):
    z = tmp_path / "busi.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(demo_root.rglob("*.png"))[:6]:
            zf.write(f, f"Dataset_BUSI_with_GT/{f.parent.name}/{f.name}")
    a = acquire(str(z), tmp_path / "data")
    assert a.root.name == "Dataset_BUSI_with_GT" and any(a.root.rglob("*.png"))
    stamp = a.root.parent / ".complete"
    mtime = stamp.stat().st_mtime_ns
    b = acquire(str(z), tmp_path / "data")
    assert b.root == a.root and stamp.stat().st_mtime_ns == mtime


def test_bad_sources_give_actionable_errors(tmp_path):
    with pytest.raises(DataSourceError, match="--data PATH"):
        acquire(str(tmp_path / "missing"), tmp_path / "data")
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_text("nope")
    with pytest.raises(DataSourceError, match="not a readable zip"):
        acquire(str(bad_zip), tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no normal/ benign/ malignant/"):
        find_dataset_root(tmp_path / "empty")
    txt = tmp_path / "x.txt"
    txt.write_text("x")
    with pytest.raises(DataSourceError, match="folder or a .zip"):
        acquire(str(txt), tmp_path / "data")


def test_kaggle_offline_says_how_to_continue(tmp_path, monkeypatch):
    fake = types.ModuleType("kagglehub")

    def fail(handle):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'\nmore lines of noise")

    fake.dataset_download = fail
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    with pytest.raises(DataSourceError) as err:
        acquire("kaggle", tmp_path / "data")
    msg = str(err.value)
    assert "\n" not in msg and "ConnectionError" in msg and "--data PATH" in msg and "--demo" in msg


def test_kaggle_download_is_linked_and_reused(tmp_path, monkeypatch, demo_root):
    calls = []
    fake = types.ModuleType("kagglehub")
    fake.dataset_download = lambda handle: calls.append(handle) or str(demo_root.parent)
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    a = acquire("kaggle", tmp_path / "data")
    assert calls == ["aryashah2k/breast-ultrasound-images-dataset"] and a.root == demo_root
    b = acquire("kaggle", tmp_path / "data")
    assert len(calls) == 1 and "reused" in b.how
