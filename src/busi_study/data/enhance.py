"""S1's image-enhancement step as an option of the image pipeline (cached per option).

S1 enhances each ultrasound image before segmenting and classifying it ("adaptive thresholding,
filtering, histogram equalisation"). The study offers each step as one named option, applied to
the grey values at the image's original resolution before the plain resize to the model's input
size; the result is repeated to three channels (BUSI images are grey):

* ``none``      — the image as it is (RGB kept);
* ``histeq``    — global histogram equalisation (``cv2.equalizeHist``);
* ``clahe``     — contrast-limited adaptive histogram equalisation (clip 2.0, 8 × 8 tiles);
* ``median``    — 5 × 5 median filter (speckle reduction);
* ``bilateral`` — bilateral filter (diameter 9, sigma colour 75, sigma space 75);
* ``nlmeans``   — non-local means denoising (h 10, template 7, search 21).

The arrays are cached per option by :func:`busi_study.data.arrays.load_image_array`.
"""

from __future__ import annotations

import cv2
import numpy as np

ENHANCEMENTS: dict[str, str] = {
    "none": "none",
    "histeq": "global histogram equalisation",
    "clahe": "CLAHE (clip 2.0, 8×8 tiles)",
    "median": "median filter 5×5",
    "bilateral": "bilateral filter (d 9, σ 75 / 75)",
    "nlmeans": "non-local means (h 10)",
}


def check_option(option: str) -> str:
    """``option`` if it is a known enhancement, else ValueError naming the known ones."""
    if option not in ENHANCEMENTS:
        raise ValueError(f"unknown enhancement '{option}' — use one of: {', '.join(ENHANCEMENTS)}")
    return option


def enhance(rgb: np.ndarray, option: str) -> np.ndarray:
    """The enhanced image, uint8 (H, W, 3); ``none`` returns the input unchanged."""
    check_option(option)
    if option == "none":
        return rgb
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if option == "histeq":
        grey = cv2.equalizeHist(grey)
    elif option == "clahe":
        grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    elif option == "median":
        grey = cv2.medianBlur(grey, 5)
    elif option == "bilateral":
        grey = cv2.bilateralFilter(grey, 9, 75, 75)
    else:  # nlmeans
        grey = cv2.fastNlMeansDenoising(grey, None, h=10, templateWindowSize=7, searchWindowSize=21)
    return np.repeat(grey[..., None], 3, axis=2)
