"""Near-duplicate detection and grouping (docs/protocol.md §2).

Each image is reduced to greyscale with uniform borders trimmed, then hashed with pHash and
dHash (64 bits each). Two images are *linked* when either Hamming distance is at or below its
threshold (optionally confirmed by SSIM on 64×64 thumbnails); links are closed transitively with
union-find into groups, and every image gets a ``group_id`` (singletons included).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from .images import read_gray

HASHES = ("phash", "dhash")
THUMB = 64


def trim_uniform_border(gray: np.ndarray, tol: float = 8.0) -> np.ndarray:
    """Crop rows and columns at the edges whose pixel standard deviation is below ``tol``.

    Removes the black (or flat) frame that scanners and re-exports add, so that a cropped
    or re-framed copy hashes like the original. Returns the input if nothing would remain.
    """
    g = gray.astype(np.float32)
    rows = np.flatnonzero(g.std(axis=1) > tol)
    cols = np.flatnonzero(g.std(axis=0) > tol)
    if rows.size == 0 or cols.size == 0:
        return gray
    return gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def image_hashes(gray: np.ndarray) -> dict[str, str]:
    """pHash and dHash (8×8 = 64 bits each) of a trimmed greyscale image, as hex strings."""
    im = Image.fromarray(trim_uniform_border(gray))
    return {"phash": str(imagehash.phash(im)), "dhash": str(imagehash.dhash(im))}


def thumbnail(gray: np.ndarray, size: int = THUMB) -> np.ndarray:
    """Trimmed, area-downscaled ``size``×``size`` float32 thumbnail used for SSIM."""
    t = trim_uniform_border(gray)
    return cv2.resize(t, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


def compute_hashes(manifest: pd.DataFrame, root: Path, progress: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """Hash every image of the manifest.

    Returns a table (image_id, phash, dhash) and an array of thumbnails of shape (n, 64, 64)
    in manifest order.
    """
    rows, thumbs = [], []
    for image_id, rel in tqdm(list(zip(manifest["image_id"], manifest["path"])), desc="hashing images",
                              disable=not progress, mininterval=2):
        gray = read_gray(Path(root) / rel)
        rows.append({"image_id": image_id, **image_hashes(gray)})
        thumbs.append(thumbnail(gray))
    return pd.DataFrame(rows, columns=["image_id", *HASHES]), np.stack(thumbs) if thumbs else np.zeros((0, THUMB, THUMB), np.float32)


def hamming_matrix(hex_hashes: Sequence[str]) -> np.ndarray:
    """All pairwise Hamming distances of equal-length hex hashes, shape (n, n), uint8."""
    if len(hex_hashes) == 0:
        return np.zeros((0, 0), np.uint8)
    bits = np.array([np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8)) for h in hex_hashes])
    n = len(bits)
    out = np.zeros((n, n), dtype=np.uint8)
    for i in range(n):  # row by row keeps memory at n×bits, not n×n×bits
        out[i] = (bits[i] != bits).sum(axis=1)
    return out


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two equal-size greyscale images (Gaussian window, σ=1.5)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (7, 7), 1.5)

    ma, mb = blur(a), blur(b)
    saa = blur(a * a) - ma * ma
    sbb = blur(b * b) - mb * mb
    sab = blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma * ma + mb * mb + c1) * (saa + sbb + c2))
    return float(s.mean())


def candidate_pairs(
    hashes: pd.DataFrame,
    thumbs: np.ndarray,
    phash_threshold: int,
    dhash_threshold: int,
    margin: int = 6,
    ssim_min: float | None = None,
) -> pd.DataFrame:
    """Pairs of images within ``threshold + margin`` of either hash, with a ``linked`` flag.

    Pairs beyond the thresholds (but within the margin) are kept so the EDA can show what lies
    just past the cut. Columns: a, b (image ids), phash_dist, dhash_dist, ssim, linked.
    """
    ids = list(hashes["image_id"])
    dp = hamming_matrix(list(hashes["phash"]))
    dd = hamming_matrix(list(hashes["dhash"]))
    iu, ju = np.triu_indices(len(ids), k=1)
    near = (dp[iu, ju] <= phash_threshold + margin) | (dd[iu, ju] <= dhash_threshold + margin)
    rows = []
    for i, j in zip(iu[near], ju[near]):
        p, d = int(dp[i, j]), int(dd[i, j])
        s = ssim(thumbs[i], thumbs[j]) if len(thumbs) else float("nan")
        linked = p <= phash_threshold or d <= dhash_threshold
        if linked and ssim_min is not None:
            linked = s >= ssim_min
        rows.append({"a": ids[i], "b": ids[j], "phash_dist": p, "dhash_dist": d, "ssim": round(s, 4), "linked": linked})
    return pd.DataFrame(rows, columns=["a", "b", "phash_dist", "dhash_dist", "ssim", "linked"])


def distance_histogram(hashes: pd.DataFrame) -> pd.DataFrame:
    """Counts of all image pairs per Hamming distance, one column per hash (index 0…64)."""
    out = {}
    for h in HASHES:
        d = hamming_matrix(list(hashes[h]))
        iu = np.triu_indices(len(d), k=1)
        out[h] = np.bincount(d[iu], minlength=65)[:65]
    return pd.DataFrame(out).rename_axis("distance").reset_index()


class UnionFind:
    """Disjoint sets over 0…n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def group_images(manifest: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Close links transitively into groups.

    Returns one row per image (manifest order): image_id, label, group_id (``g0001``… numbered by
    first appearance in the manifest), group_size, group_labels (sorted, ``+``-joined) and
    label_conflict (the group's members carry different labels).
    """
    ids = list(manifest["image_id"])
    index = {k: i for i, k in enumerate(ids)}
    uf = UnionFind(len(ids))
    for a, b in pairs.loc[pairs["linked"], ["a", "b"]].itertuples(index=False):
        uf.union(index[a], index[b])
    roots = [uf.find(i) for i in range(len(ids))]
    numbering: dict[int, str] = {}
    for r in roots:
        numbering.setdefault(r, f"g{len(numbering) + 1:04d}")
    out = pd.DataFrame({"image_id": ids, "label": list(manifest["label"]), "group_id": [numbering[r] for r in roots]})
    out["group_size"] = out.groupby("group_id")["image_id"].transform("size")
    labels = out.groupby("group_id")["label"].agg(lambda s: "+".join(sorted(set(s))))
    out["group_labels"] = out["group_id"].map(labels)
    out["label_conflict"] = out["group_labels"].str.contains(r"\+", regex=True)
    return out


def label_conflicts(groups: pd.DataFrame) -> pd.DataFrame:
    """The label-conflict groups: group_id, size, labels and member image ids."""
    g = groups[groups["label_conflict"]]
    if g.empty:
        return pd.DataFrame(columns=["group_id", "group_size", "group_labels", "members"])
    return (
        g.groupby("group_id")
        .agg(group_size=("image_id", "size"), group_labels=("group_labels", "first"),
             members=("image_id", lambda s: " ".join(s)))
        .reset_index()
    )
