"""Recipes: everything that defines one model of the study, built from profile parameters.

A recipe names the architecture (S2's CNN from scratch, S3's head on a frozen backbone, S0's
two-phase fine-tuning), the backbone and its weights, the input size, the training settings,
the number of cached augmented views and the augmentation. Results files record the recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .augment import AugmentConfig
from .registry import describe_weights, get_spec
from .training import TrainConfig

KINDS = ("scratch", "frozen_head", "finetune")


def gradcam_layer_of(backbone: str | None) -> str | None:
    """Grad-CAM layer of a recipe's backbone: S2's last convolution for the from-scratch CNN."""
    return "conv3" if backbone is None else get_spec(backbone).gradcam_layer


@dataclass(frozen=True)
class Recipe:
    name: str                                 # stable id, used in file names
    kind: str                                 # scratch | frozen_head | finetune
    input_size: int
    train: TrainConfig
    source_study: str = ""
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = "imagenet"
    head: str = "s3"                          # s3 | gap
    head_dropout: float = 0.3
    finetune: TrainConfig | None = None       # phase 2 (finetune only)
    unfreeze_blocks: int = 0
    n_views: int = 8
    augment: AugmentConfig = AugmentConfig()
    preprocessing: str = "none"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")

    @property
    def weights_label(self) -> str:
        return "random init" if self.kind == "scratch" else describe_weights(self.weights)

    @property
    def backbone_label(self) -> str:
        if self.backbone is None:
            return "none (from scratch)"
        extra = ", ".join(f"{k} {v}" for k, v in self.backbone_kwargs.items())
        return f"{self.backbone}" + (f" ({extra})" if extra else "")

    @property
    def title(self) -> str:
        """Human-readable name used in figure titles: says backbone, alpha and weights."""
        what = {"scratch": "CNN from scratch", "frozen_head": f"{self.head.upper()} head on frozen",
                "finetune": "fine-tuned"}[self.kind]
        if self.backbone is None:
            return f"{self.name}: {what}, {self.input_size}px"
        return f"{self.name}: {what} {self.backbone_label}, {self.weights_label}, {self.input_size}px"

    def gradcam_layer(self) -> str | None:
        """The Grad-CAM layer (None: the backbone's last 4-D layer, found at run time)."""
        return gradcam_layer_of(self.backbone)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["weights_label"] = self.weights_label
        return d


def _train_cfg(params: dict, prefix: str) -> TrainConfig:
    return TrainConfig(
        epochs=int(params[f"{prefix}_epochs"]),
        batch_size=int(params[f"{prefix}_batch_size"]),
        learning_rate=float(params[f"{prefix}_learning_rate"]),
        patience=params.get(f"{prefix}_patience"),
        class_weight=bool(params.get("class_weight", True)),
    )


def augment_from(params: dict) -> AugmentConfig:
    return AugmentConfig(
        flip=bool(params.get("aug_flip", True)), rotation_deg=float(params.get("aug_rotation_deg", 10)),
        zoom=float(params.get("aug_zoom", 0.1)), shift=float(params.get("aug_shift", 0.05)),
        brightness=float(params.get("aug_brightness", 0.1)), contrast=float(params.get("aug_contrast", 0.1)),
    )


def s2_recipe(params: dict) -> Recipe:
    return Recipe(name="s2_cnn", kind="scratch", input_size=int(params["s2_input_size"]), train=_train_cfg(params, "s2"),
                  source_study="S2", weights=None, n_views=int(params["n_views"]), augment=augment_from(params))


def backbone_kwargs(params: dict, backbone: str) -> dict:
    return {"alpha": float(params["mobilenet_alpha"])} if backbone == "mobilenet_v2" else {}


def s3_recipe(params: dict, backbone: str) -> Recipe:
    return Recipe(
        name=f"s3_head-{backbone}" + (f"-a{params['mobilenet_alpha']}" if backbone == "mobilenet_v2" else ""),
        kind="frozen_head", input_size=int(params["s3_input_size"]), train=_train_cfg(params, "s3"), source_study="S3",
        backbone=backbone, backbone_kwargs=backbone_kwargs(params, backbone), weights=params["weights"], head="s3",
        head_dropout=float(params["s3_dropout"]), n_views=int(params["n_views"]), augment=augment_from(params),
    )


def s0_recipe(params: dict) -> Recipe:
    alpha = params["mobilenet_alpha"]
    return Recipe(
        name=f"s0_finetune-mobilenet_v2-a{alpha}-b{params['s0_unfreeze_blocks']}", kind="finetune",
        input_size=int(params["s0_input_size"]), train=_train_cfg(params, "s0_head"), source_study="S0",
        backbone="mobilenet_v2", backbone_kwargs={"alpha": float(alpha)}, weights=params["weights"], head="gap",
        head_dropout=float(params["s0_dropout"]), finetune=_train_cfg(params, "s0_finetune"),
        unfreeze_blocks=int(params["s0_unfreeze_blocks"]), n_views=int(params["n_views"]), augment=augment_from(params),
    )
