"""A tiny synthetic folder in the BrEaST-Lesions_USG release layout, for tests and offline demos.

Not clinical data: the BUSI demo phantoms (:func:`busi_study.data.demo.phantom`) written as
``caseNNN.png`` (RGBA, like the release; some with a translucent corner and a coloured mark),
``caseNNN_tumor.png`` masks and a ``clinical.csv`` with the release's column names, BI-RADS
categories and labels. No file matches the release's reference list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .demo import phantom

DEFAULT_COUNTS = {"normal": 2, "benign": 10, "malignant": 8}


def make_demo_external(out_dir: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ``out_dir/BrEaST-demo/`` (flat, as the TCIA zip unpacks) and return it."""
    counts = counts or DEFAULT_COUNTS
    rng = np.random.default_rng(seed)
    root = Path(out_dir) / "BrEaST-demo"
    root.mkdir(parents=True, exist_ok=True)
    rows, case = [], 0
    birads = {"normal": ["1"], "benign": ["2", "3", "4a", "4b"], "malignant": ["4b", "4c", "5"]}
    for label in ("benign", "malignant", "normal"):
        for _ in range(counts.get(label, 0)):
            case += 1
            name = f"case{case:03d}"
            img, mask = phantom(rng, label)
            rgba = np.dstack([img, img, img, np.full(img.shape, 255, np.uint8)])
            if case % 3 == 0:  # a coloured mark (colour overlay) on some images
                rgba[5:12, 5:30, 0], rgba[5:12, 5:30, 1] = 255, 40
            if case % 4 == 0:  # a translucent corner (non-opaque alpha, as in 31 release images)
                rgba[-10:, -10:, 3] = 0
            Image.fromarray(rgba, "RGBA").save(root / f"{name}.png")
            has_mask = label != "normal"
            if has_mask:
                Image.fromarray(np.dstack([mask] * 3 + [np.full(mask.shape, 255, np.uint8)]), "RGBA").save(root / f"{name}_tumor.png")
            rows.append({"CaseID": case, "Image_filename": f"{name}.png", "Mask_tumor_filename": f"{name}_tumor.png" if has_mask else "",
                         "Mask_other_filename": "", "Pixel_size": 0.0078125, "BIRADS": str(rng.choice(birads[label])),
                         "Verification": "synthetic", "Diagnosis": "DEMO DATA", "Classification": label})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    (root / "README.md").write_text("Synthetic phantoms in the BrEaST-Lesions_USG layout. DEMO DATA — NOT CLINICAL.\n")
    return root
