"""Explanations (docs/protocol.md §7): Grad-CAM / Grad-CAM++ maps, the randomisation sanity
check, and localisation measures against lesion masks with a centred-Gaussian baseline.

Importing this package does not import TensorFlow: ``gradcam`` imports Keras/TensorFlow inside
its functions, and ``localisation`` is pure numpy / scipy.
"""

from __future__ import annotations

from .gradcam import (
    GradCAM,
    find_layer,
    gradcam,
    last_conv_layer_name,
    randomise_top_layers,
    sanity_check,
    top_weighted_layers,
    upsample,
)
from .localisation import (
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

__all__ = [
    "GradCAM",
    "baseline_table",
    "centred_gaussian",
    "choose_iou_threshold",
    "dilate_mask",
    "energy_inside",
    "find_layer",
    "gradcam",
    "iou_at_threshold",
    "iou_by_threshold",
    "last_conv_layer_name",
    "localisation_table",
    "pointing_game",
    "randomise_top_layers",
    "sanity_check",
    "top_weighted_layers",
    "upsample",
]
