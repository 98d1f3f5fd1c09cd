"""Is an uploaded image like the training data? A simple, documented range check.

Five measures per image (:func:`image_measures`):

* ``height``, ``width`` in pixels and ``aspect`` (width / height) of the file as uploaded;
* ``grey_mean`` and ``grey_sd``: mean and standard deviation of the greyscale image (ITU-R 601
  luma, 0–255);
* ``colour_fraction``: share of pixels whose RGB channels differ by more than 30 grey levels
  (coloured overlays, Doppler, a photograph) — the measure of ``error_analysis``.

The training data's profile (:func:`build_profile`) records each measure's minimum, 1st, 50th
and 99th percentile and maximum over BUSI's 780 images; the profile shipped with the package
(``resources/busi_input_profile.json``) was made from the shared BUSI copy with
``python -m busi_study.app.ood PATH/TO/Dataset_BUSI_with_GT``.

An image is flagged as *unlike the training data* (:func:`unlike_training`) when a measure is
far outside BUSI's observed range [min, max]:

* sizes and aspect (ratio scale): below min / 1.5 or above max × 1.5;
* grey mean and sd: more than 25 % of BUSI's range (max − min) below the min or above the max;
* colour fraction: above max + 0.05 (five percentage points of coloured pixels; BUSI's most
  coloured image has about 1 %).

This is a guard against obvious misuse (a photograph, a tiny thumbnail, a near-black or
saturated export), not a novelty detector: an image inside every range can still be unlike
BUSI (another scanner, another body part), and the app says so.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

MEASURES: tuple[str, ...] = ("height", "width", "aspect", "grey_mean", "grey_sd", "colour_fraction")
#: measure -> (kind, margin): "ratio" divides/multiplies the range ends, "range" adds a share of
#: the range width, "absolute" adds a fixed amount above the max.
RULES: dict[str, tuple[str, float]] = {
    "height": ("ratio", 1.5), "width": ("ratio", 1.5), "aspect": ("ratio", 1.5),
    "grey_mean": ("range", 0.25), "grey_sd": ("range", 0.25), "colour_fraction": ("absolute", 0.05),
}
UNITS = {"height": "px", "width": "px", "aspect": "", "grey_mean": "grey levels", "grey_sd": "grey levels",
         "colour_fraction": ""}
PROFILE_RESOURCE = "busi_input_profile.json"


def image_measures(rgb: np.ndarray) -> dict[str, float]:
    """The six measures of one uint8 RGB image (H, W, 3); see the module docstring."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    c = rgb.astype(np.int16)
    spread = c.max(axis=2) - c.min(axis=2)
    # ITU-R 601 luma, as PIL's convert("L") (rounded there; the mean differs by < 0.5)
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return {"height": float(h), "width": float(w), "aspect": float(w) / float(h),
            "grey_mean": float(grey.mean()), "grey_sd": float(grey.std()),
            "colour_fraction": float((spread > 30).mean())}


def build_profile(measures: list[dict[str, float]], source: str) -> dict:
    """Per-measure min, p01, p50, p99 and max over the training images' measures."""
    if not measures:
        raise ValueError("no images to build a profile from")
    out = {"source": source, "n_images": len(measures), "rules": {k: list(v) for k, v in RULES.items()}, "measures": {}}
    for m in MEASURES:
        v = np.array([d[m] for d in measures], dtype=float)
        out["measures"][m] = {"min": float(v.min()), "p01": float(np.percentile(v, 1)), "p50": float(np.median(v)),
                              "p99": float(np.percentile(v, 99)), "max": float(v.max())}
    return out


def load_profile(path: Path | None = None) -> dict:
    """The profile at ``path``, or BUSI's, shipped with the package."""
    if path is not None:
        return json.loads(Path(path).read_text())
    return json.loads(resources.files("busi_study.resources").joinpath(PROFILE_RESOURCE).read_text())


def allowed_range(profile: dict, measure: str) -> tuple[float, float]:
    """(low, high) outside which ``measure`` counts as far from the training data."""
    lo, hi = profile["measures"][measure]["min"], profile["measures"][measure]["max"]
    kind, margin = RULES[measure]
    if kind == "ratio":
        return lo / margin, hi * margin
    if kind == "range":
        return lo - margin * (hi - lo), hi + margin * (hi - lo)
    return -np.inf, hi + margin


def unlike_training(measures: dict[str, float], profile: dict) -> list[str]:
    """One sentence per measure far outside the training range (empty list: nothing flagged)."""
    out = []
    for m in MEASURES:
        low, high = allowed_range(profile, m)
        v = measures[m]
        if v < low or v > high:
            p = profile["measures"][m]
            unit = f" {UNITS[m]}" if UNITS[m] else ""
            out.append(f"{m.replace('_', ' ')} {v:.3g}{unit} is far outside the training images' range "
                       f"{p['min']:.3g}–{p['max']:.3g}{unit}")
    return out


def profile_of_folder(root: Path) -> dict:
    """Profile of every image (masks left out) under a BUSI-layout folder."""
    from ..data.images import read_rgb
    from ..predict import list_images

    files = list_images([root])
    return build_profile([image_measures(read_rgb(f)) for f in files], source=f"{Path(root).name} ({len(files)} images)")


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m busi_study.app.ood PATH/TO/Dataset_BUSI_with_GT  (prints the profile JSON)")
    print(json.dumps(profile_of_folder(Path(sys.argv[1])), indent=1))
