import cv2
import numpy as np
import pandas as pd
import pytest

from busi_study.data.demo import phantom
from busi_study.data.duplicates import (
    UnionFind,
    candidate_pairs,
    group_images,
    hamming_matrix,
    image_hashes,
    label_conflicts,
    thumbnail,
    trim_uniform_border,
)

PHASH_T, DHASH_T = 10, 8


def _hashes_of(images: dict[str, np.ndarray]) -> tuple[pd.DataFrame, np.ndarray]:
    rows = [{"image_id": k, **image_hashes(v)} for k, v in images.items()]
    return pd.DataFrame(rows), np.stack([thumbnail(v) for v in images.values()])


def _linked(images, **kw):
    h, t = _hashes_of(images)
    pairs = candidate_pairs(h, t, PHASH_T, DHASH_T, **kw)
    return {frozenset((a, b)) for a, b, ok in zip(pairs["a"], pairs["b"], pairs["linked"]) if ok}


@pytest.fixture(scope="module")
def originals():
    rng = np.random.default_rng(123)
    labels = ["benign", "malignant", "normal"] * 4
    return {f"img{i}": phantom(rng, label)[0] for i, label in enumerate(labels)}


def caliper(img):
    out = img.copy()
    h, w = out.shape
    for x, y in ((w // 3, h // 2), (2 * w // 3, h // 2)):
        cv2.line(out, (x - 6, y), (x + 6, y), 255, 1)
        cv2.line(out, (x, y - 6), (x, y + 6), 255, 1)
    return out


def test_near_copies_are_linked(originals):
    base = originals["img0"]
    h, w = base.shape
    copies = {
        "orig": base,
        "resized": cv2.resize(base, (int(w * 0.7), int(h * 0.7)), interpolation=cv2.INTER_AREA),
        "cropped": base[h // 25 : h - h // 25, w // 25 : w - w // 25],
        "caliper": caliper(base),
        "framed": cv2.copyMakeBorder(base, 20, 20, 30, 30, cv2.BORDER_CONSTANT, value=0),
    }
    links = _linked(copies)
    for name in ("resized", "cropped", "caliper", "framed"):
        assert frozenset(("orig", name)) in links, name


def test_distinct_images_are_not_linked(originals):
    assert _linked(originals) == set()


def test_ssim_confirmation_can_veto_a_link(originals):
    base = originals["img1"]
    images = {"a": base, "b": caliper(base)}
    assert _linked(images, ssim_min=0.5) == {frozenset(("a", "b"))}
    assert _linked(images, ssim_min=1.01) == set()


def test_trim_uniform_border():
    inner = np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8)
    framed = cv2.copyMakeBorder(inner, 5, 7, 9, 3, cv2.BORDER_CONSTANT, value=0)
    assert trim_uniform_border(framed).shape == inner.shape
    flat = np.zeros((10, 10), np.uint8)
    assert trim_uniform_border(flat).shape == flat.shape


def test_hamming_matrix():
    d = hamming_matrix(["00", "ff", "0f"])
    assert d.tolist() == [[0, 8, 4], [8, 0, 4], [4, 4, 0]]


def test_union_find_is_transitive_and_conflicts_are_found():
    manifest = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e"], "label": ["benign", "benign", "malignant", "normal", "normal"]})
    pairs = pd.DataFrame({"a": ["a", "b", "d"], "b": ["b", "c", "e"], "linked": [True, True, False]})
    g = group_images(manifest, pairs).set_index("image_id")
    assert g.loc["a", "group_id"] == g.loc["c", "group_id"] != g.loc["d", "group_id"]
    assert g.loc["d", "group_id"] != g.loc["e", "group_id"]  # unlinked pair stays apart
    assert g.loc["a", "group_size"] == 3 and g.loc["a", "label_conflict"]
    assert not g.loc["d", "label_conflict"]
    conflicts = label_conflicts(g.reset_index())
    assert len(conflicts) == 1 and conflicts.iloc[0]["members"] == "a b c"
    assert conflicts.iloc[0]["group_labels"] == "benign+malignant"
    uf = UnionFind(3)
    uf.union(0, 1)
    assert uf.find(0) == uf.find(1) != uf.find(2)


def test_demo_dataset_planted_duplicates_are_found(demo_root):
    from busi_study.data.duplicates import compute_hashes
    from busi_study.data.manifest import scan_dataset

    scan = scan_dataset(demo_root, progress=False)
    h, t = compute_hashes(scan.manifest, demo_root, progress=False)
    pairs = candidate_pairs(h, t, PHASH_T, DHASH_T)
    groups = group_images(scan.manifest, pairs).set_index("image_id")
    same = lambda a, b: groups.loc[a, "group_id"] == groups.loc[b, "group_id"]  # noqa: E731
    assert same("benign_0001", "benign_0017")       # resized copy
    assert same("benign_0002", "benign_0018")       # cropped copy
    assert same("malignant_0001", "malignant_0015")  # caliper copy
    assert same("benign_0003", "malignant_0016")     # label conflict
    assert label_conflicts(groups.reset_index())["members"].tolist() == ["benign_0003 malignant_0016"]
    assert groups["group_id"].nunique() == len(groups) - 4  # nothing else linked
