import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busi_study.data.manifest import scan_dataset
from busi_study.data.release_check import check_against_reference, load_reference, summarise_reference_check

from .conftest import SHARED_BUSI


def test_packaged_reference_describes_busi():
    ref = load_reference()
    assert len(ref) == 1578
    assert (ref["kind"] == "image").sum() == 780 and (ref["kind"] == "mask").sum() == 798
    images = ref[ref["kind"] == "image"]
    assert images["label"].value_counts().to_dict() == {"benign": 437, "malignant": 210, "normal": 133}


def test_all_five_outcomes(crafted_root):
    scan = scan_dataset(crafted_root, progress=False)
    files = scan.files.set_index("path")
    # a reference built from the copy, then changed so each outcome occurs once
    ref = scan.files[scan.files["readable"]].copy()
    ref = ref[["path", "kind", "label", "sha256", "pixel_sha256"]].reset_index(drop=True)
    # identical pixels: re-encode one image with other PNG settings (new bytes, same pixels)
    path = crafted_root / "benign" / "benign (1).png"
    arr = np.asarray(Image.open(path))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=0)
    assert buf.getvalue() != path.read_bytes()
    path.write_bytes(buf.getvalue())
    scan = scan_dataset(crafted_root, progress=False)
    # different: the reference's pixel hash of one file does not match
    ref.loc[ref["path"] == "malignant/malignant (1).png", ["sha256", "pixel_sha256"]] = ["0" * 64, "1" * 64]
    # missing: a file only the reference knows
    ref = pd.concat([ref, pd.DataFrame([{"path": "normal/normal (99).png", "kind": "image", "label": "normal",
                                         "sha256": "a" * 64, "pixel_sha256": "b" * 64}])], ignore_index=True)
    # unexpected: a file only the copy has
    ref = ref[ref["path"] != "normal/normal (1).png"]
    check = check_against_reference(scan.files, ref).set_index("path")["outcome"]
    assert check["benign/benign (1).png"] == "identical pixels"
    assert check["benign/benign (1)_mask.png"] == "identical bytes"
    assert check["malignant/malignant (1).png"] == "different"
    assert check["normal/normal (99).png"] == "missing"
    assert check["normal/normal (1).png"] == "unexpected"
    assert files.loc["benign/benign (2).png", "readable"] == False  # noqa: E712  (unreadable files are still listed)
    summary = summarise_reference_check(check_against_reference(scan.files, ref))
    assert summary["all_match"] is False
    assert summary["counts"]["missing"]["image"] == 1


@pytest.mark.skipif(not SHARED_BUSI.is_dir(), reason="shared BUSI copy not present")
def test_shared_copy_sample_is_pixel_identical():
    ref = load_reference()
    sample = ref[ref["path"].isin(["benign/benign (1).png", "benign/benign (100)_mask_1.png", "normal/normal (1).png",
                                   "malignant/malignant (145).png"])]
    from busi_study.data.images import file_sha256, pixel_sha256, read_rgb

    files = pd.DataFrame([{"path": p, "kind": k, "label": label, "sha256": file_sha256(SHARED_BUSI / p),
                           "pixel_sha256": pixel_sha256(read_rgb(SHARED_BUSI / p))}
                          for p, k, label in zip(sample["path"], sample["kind"], sample["label"])])
    check = check_against_reference(files, sample)
    assert set(check["outcome"]) <= {"identical bytes", "identical pixels"}
    assert (check["outcome"] == "identical bytes").sum() == 1  # the mask keeps the release's bytes
