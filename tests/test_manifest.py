from busi_study.data.demo import demo_expected_counts
from busi_study.data.manifest import count_check, image_id_for, scan_dataset


def problems_by_path(issues):
    return dict(zip(issues["path"], issues["problem"]))


def test_crafted_folder_lists_every_problem_and_keeps_going(crafted_root):
    scan = scan_dataset(crafted_root, progress=False)
    p = problems_by_path(scan.issues)
    assert p["benign/benign (2).png"] == "empty file (0 bytes)"
    assert p["benign/benign (3).png"].startswith(("truncated image", "not a readable image"))
    assert p["benign/benign (4).png"].startswith("not a readable image")
    assert "differs from image" in p["benign/benign (5)_mask.png"]
    assert p["malignant/malignant (2)_mask.png"].startswith("orphan mask")
    assert p["malignant/malignant (3).png"] == "image without a usable mask"
    assert p["normal/normal (2)_mask.png"].startswith("not a readable image")
    assert p["normal/normal (2).png"] == "image without a usable mask"
    assert p["normal/notes.txt"].startswith("unexpected file type")
    assert p["normal/extra/"] == "unexpected folder"
    assert p["other_class/"] == "unexpected folder"
    assert p["README.md"].startswith("unexpected file")
    # the usable images are all there, bad ones are not
    ids = set(scan.manifest["image_id"])
    assert ids == {"normal_0001", "normal_0002", "benign_0001", "benign_0005", "malignant_0001", "malignant_0003"}
    b1 = scan.manifest.set_index("image_id").loc["benign_0001"]
    assert b1["n_masks"] == 2 and b1["mask_paths"] == "benign/benign (1)_mask.png;benign/benign (1)_mask_1.png"
    assert scan.manifest.set_index("image_id").loc["benign_0005", "n_masks"] == 0  # wrong-size mask dropped
    # manifest order: class index, then natural number order
    assert list(scan.manifest["label"]) == ["normal", "normal", "benign", "benign", "malignant", "malignant"]


def test_manifest_columns_and_hashes(demo_root):
    scan = scan_dataset(demo_root, progress=False)
    m = scan.manifest
    for col in ("image_id", "label", "path", "mask_paths", "sha256", "pixel_sha256", "width", "height", "mode", "is_greyscale"):
        assert col in m.columns
    assert m["image_id"].is_unique
    assert (m["sha256"].str.len() == 64).all() and (m["pixel_sha256"].str.len() == 64).all()
    assert m["is_greyscale"].all()
    assert scan.issues.empty
    exp = demo_expected_counts()
    assert count_check(m, int(m["n_masks"].sum()), exp) == []


def test_count_check_reports_busi_mismatch(demo_root):
    m = scan_dataset(demo_root, progress=False).manifest
    problems = count_check(m, int(m["n_masks"].sum()))
    assert any(p.startswith("normal:") and "BUSI has 133" in p for p in problems)
    assert any(p.startswith("masks:") for p in problems)


def test_image_ids():
    assert image_id_for("benign", "benign (12)") == "benign_0012"
    assert image_id_for("benign", "malignant (3)") == "benign_malignant-3"
    assert image_id_for("normal", "Scan #7 copy") == "normal_scan-7-copy"
