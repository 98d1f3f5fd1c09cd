"""Tests of busi_study.explain.localisation with hand-made maps and masks (known answers)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from busi_study.explain.localisation import (
    baseline_table,
    centred_gaussian,
    choose_iou_threshold,
    dilate_mask,
    energy_inside,
    iou_at_threshold,
    iou_by_threshold,
    localisation_table,
    pointing_game,
)

# 100 × 100 image: diagonal 141.42, so the 5 % tolerance is a radius of 7.07 px
SQUARE = np.zeros((100, 100), bool)
SQUARE[40:60, 40:60] = True  # last mask row / column: 59


def peak_at(r: int, c: int, shape=(100, 100)) -> np.ndarray:
    cam = np.random.default_rng(0).random(shape) * 0.5
    cam[r, c] = 1.0
    return cam


def test_dilate_mask_is_an_exact_disk():
    mask = np.zeros((100, 100), bool)
    mask[30, 70] = True
    got = dilate_mask(mask, 0.05)
    yy, xx = np.mgrid[:100, :100]
    want = (yy - 30) ** 2 + (xx - 70) ** 2 <= (0.05 * np.hypot(100, 100)) ** 2
    np.testing.assert_array_equal(got, want)
    assert got.sum() == 161  # integer points with dy² + dx² <= 50
    np.testing.assert_array_equal(dilate_mask(SQUARE, 0.0), SQUARE)
    assert not dilate_mask(np.zeros((20, 30), bool)).any()
    # radius scales with the diagonal of non-square images: 0.1 × hypot(30, 40) = 5 px
    thin = np.zeros((30, 40), bool)
    thin[15, 0] = True
    row = dilate_mask(thin, 0.1)[15]
    assert row[:6].all() and not row[6:].any()


@pytest.mark.parametrize(
    ("r", "c", "hit"),
    [
        (50, 50, True),  # inside
        (50, 65, True),  # 6 px right of the mask: within 7.07
        (50, 66, True),  # 7 px
        (50, 67, False),  # 8 px
        (50, 75, False),
        (63, 64, True),  # diagonal: sqrt(4² + 5²) = 6.4
        (66, 66, False),  # sqrt(7² + 7²) = 9.9
        (5, 5, False),
    ],
)
def test_pointing_game_tolerance(r, c, hit):
    assert pointing_game(peak_at(r, c), SQUARE, tolerance_frac=0.05) is hit


def test_pointing_game_edge_cases():
    assert pointing_game(peak_at(50, 65), SQUARE, tolerance_frac=0.0) is False  # no tolerance: outside
    assert pointing_game(peak_at(50, 65), SQUARE, tolerance_frac=0.1) is True
    assert pointing_game(peak_at(50, 50), np.zeros((100, 100), bool)) is None  # empty mask
    assert pointing_game(np.zeros((100, 100)), SQUARE) is False  # constant map points nowhere
    with pytest.raises(ValueError, match="same shape"):
        pointing_game(np.zeros((10, 10)), np.zeros((10, 11), bool))


def test_energy_inside():
    left = np.zeros((10, 10), bool)
    left[:, :5] = True
    assert energy_inside(np.ones((10, 10)), left) == pytest.approx(0.5)
    cam = np.zeros((10, 10))
    cam[:, :5], cam[:, 5:] = 3.0, 1.0
    assert energy_inside(cam, left) == pytest.approx(0.75)
    # negative values are clipped: positive total 4, inside (0 + 1) -> 0.25
    small = np.array([[-1.0, 1.0], [1.0, 2.0]])
    assert energy_inside(small, np.array([[True, True], [False, False]])) == pytest.approx(0.25)
    assert np.isnan(energy_inside(np.zeros((10, 10)), left))
    assert np.isnan(energy_inside(np.ones((10, 10)), np.zeros((10, 10), bool)))


def test_iou_exact_values():
    cam = np.arange(16, dtype=float).reshape(4, 4)  # max 15
    mask = np.zeros((4, 4), bool)
    mask[1:3] = True  # rows 1–2
    # threshold 0.5: cam >= 7.5 selects rows 2–3 -> intersection 4, union 12
    assert iou_at_threshold(cam, mask, 0.5) == pytest.approx(1 / 3)
    # threshold 1.0: only the pixel (3, 3), outside the mask
    assert iou_at_threshold(cam, mask, 1.0) == 0.0
    bottom = np.zeros((4, 4), bool)
    bottom[2:] = True
    assert iou_at_threshold(cam, bottom, 0.5) == pytest.approx(1.0)
    # cam >= 0.25 * 15 = 3.75 selects 12 pixels, the mask's 8 among them
    assert iou_at_threshold(cam, mask, 0.25) == pytest.approx(8 / 12)
    assert iou_at_threshold(np.zeros((4, 4)), mask, 0.5) == 0.0  # no positive evidence selects nothing
    assert np.isnan(iou_at_threshold(cam, np.zeros((4, 4), bool), 0.5))


def test_choose_iou_threshold():
    ramp = np.arange(1, 101, dtype=float).reshape(10, 10)
    # the mask is exactly {cam >= 60}: only the candidate 0.60 reaches IoU 1
    assert choose_iou_threshold([ramp], [ramp >= 60]) == pytest.approx(0.60)
    assert choose_iou_threshold([ramp, ramp], [ramp >= 60, ramp >= 30]) in (pytest.approx(0.3), pytest.approx(0.6))
    # a binary map gives the same IoU at every threshold: ties go to the lowest candidate
    binary = (ramp >= 50).astype(float)
    assert choose_iou_threshold([binary], [ramp >= 50]) == pytest.approx(0.05)
    assert choose_iou_threshold([binary], [ramp >= 50], candidates=[0.9, 0.3, 0.6]) == pytest.approx(0.3)
    # empty masks are skipped, not counted as zeros
    scores = iou_by_threshold([ramp, ramp], [ramp >= 60, np.zeros((10, 10), bool)], [0.5, 0.6])
    assert scores.loc[0.6] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty"):
        choose_iou_threshold([ramp], [np.zeros((10, 10), bool)])


def test_centred_gaussian():
    g = centred_gaussian((41, 81), sigma_frac=0.25)
    assert g.shape == (41, 81) and g.max() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(g), g.shape) == (20, 40)
    np.testing.assert_allclose(g, g[::-1, ::-1])  # symmetric about the centre
    assert g[30, 40] == pytest.approx(np.exp(-0.5 * (10 / (0.25 * 41)) ** 2))
    assert g[20, 60] == pytest.approx(np.exp(-0.5 * (20 / (0.25 * 81)) ** 2))
    even = centred_gaussian((40, 60))
    assert even.max() == pytest.approx(1.0)
    assert np.allclose(even[19:21, 29:31], 1.0)  # the four central pixels share the maximum


def test_localisation_table_and_baseline():
    centre = np.zeros((100, 100), bool)
    centre[45:55, 45:55] = True
    corner = np.zeros((100, 100), bool)
    corner[:10, :10] = True
    cams = [peak_at(50, 50), peak_at(5, 5), peak_at(50, 50)]
    masks = [centre, centre, np.zeros((100, 100), bool)]
    t = localisation_table(cams, masks, threshold=0.9, ids=["a", "b", "c"])
    assert list(t.columns) == ["image", "pointing_hit", "energy_inside", "iou"]
    assert t["image"].tolist() == ["a", "b", "c"]
    assert t["pointing_hit"].iloc[:2].tolist() == [1.0, 0.0] and np.isnan(t["pointing_hit"].iloc[2])
    assert t["pointing_hit"].mean() == pytest.approx(0.5)  # NaN for the empty mask is skipped
    assert t["iou"].iloc[0] == pytest.approx(1 / 100)  # one selected pixel inside a 100-px mask
    assert np.isnan(t["energy_inside"].iloc[2])
    base = baseline_table([centre, corner], threshold=0.5)
    assert base["pointing_hit"].tolist() == [1.0, 0.0]
    assert base["energy_inside"].iloc[0] > base["energy_inside"].iloc[1]


def test_localisation_does_not_import_tensorflow():
    code = "import busi_study.explain.localisation, busi_study.explain, sys; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
