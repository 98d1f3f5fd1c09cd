"""data/store (processed files) and data/arrays (images decoded once, cached)."""

import json

import numpy as np
import pytest
from PIL import Image

from busi_study.data import arrays
from busi_study.data.store import ProcessedData, sha256_of, write_json


def make_store(tmp_path, n=3, size=(20, 30)):
    root = tmp_path / "raw"
    rows = []
    for k in range(n):
        rel = f"benign/benign ({k}).png"
        (root / "benign").mkdir(parents=True, exist_ok=True)
        img = np.full((*size, 3), 40 * k, np.uint8)
        img[: size[0] // 2] = 200
        Image.fromarray(img).save(root / rel)
        rows.append(f"benign ({k}),benign,1,{rel}")
    store = ProcessedData(tmp_path / "processed" / "demo")
    store.folder.mkdir(parents=True)
    store.manifest.write_text("image_id,label,label_idx,path\n" + "\n".join(rows) + "\n")
    store.groups.write_text("image_id,group_id,label_conflict\n" + "\n".join(f"benign ({k}),g{k},False" for k in range(n)) + "\n")
    write_json({"root": str(root)}, store.source)
    return store


def test_write_json_is_atomic_and_stable(tmp_path):
    p = tmp_path / "a" / "x.json"
    write_json({"b": 1, "a": [1, 2]}, p)
    first = p.read_bytes()
    write_json({"a": [1, 2], "b": 1}, p)
    assert p.read_bytes() == first and json.loads(first) == {"a": [1, 2], "b": 1}
    assert not list(p.parent.glob("*.tmp"))
    assert sha256_of(p) == __import__("hashlib").sha256(first).hexdigest()


def test_store_reads_tables_and_says_what_to_run(tmp_path):
    store = make_store(tmp_path)
    assert store.raw_root() == tmp_path / "raw"
    assert list(store.read("manifest")["image_id"]) == ["benign (0)", "benign (1)", "benign (2)"]
    with pytest.raises(FileNotFoundError, match="run notebooks/00_download first"):
        store.read("splits")


def test_image_array_is_decoded_once_and_cached(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    a = arrays.load_image_array(store, 16, progress=False)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    assert a[0, 0, 0, 0] == 200 and a[2, -1, -1, 0] == 80  # top half bright, bottom half 40·k
    cached = list((store.folder / "arrays").glob("images_16_none_*.npy"))
    assert len(cached) == 1
    monkeypatch.setattr(arrays, "read_rgb", lambda p: (_ for _ in ()).throw(AssertionError("decoded again")))
    np.testing.assert_array_equal(arrays.load_image_array(store, 16, progress=False), a)
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        arrays.load_image_array(store, 16, preprocessing="sharpen")


def test_clahe_option_and_labels_and_groups(tmp_path):
    store = make_store(tmp_path)
    c = arrays.load_image_array(store, 16, preprocessing="clahe", progress=False)
    assert c.shape == (3, 16, 16, 3) and (c[..., 0] == c[..., 1]).all()  # greyscale after equalisation
    t = arrays.labels_and_groups(store)
    assert list(t.columns) == ["image_id", "label", "label_idx", "group_id", "label_conflict"]
    assert list(t["group_id"]) == ["g0", "g1", "g2"]
