"""Recipes: everything that defines one model of the study, built from profile parameters.

Recipes take the typed parameter sections of :mod:`busi_study.params`. A recipe names the architecture (S2's CNN from scratch, S3's head on a frozen backbone, S0's
two-phase fine-tuning), the backbone and its weights, the input size, the training settings,
the number of cached augmented views and the augmentation. Results files record the recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..params import AugmentParams, ModelParams, S0Params, S2Params, S3Params, TrainParams
from .augment import AugmentConfig
from .registry import describe_weights, get_spec
from .training import TrainConfig

KINDS = ("scratch", "frozen_head", "finetune")


def gradcam_layer_of(backbone: str | None) -> str | None:
    """Grad-CAM layer of a recipe's backbone: S2's last convolution for the from-scratch CNN."""
    return "conv3" if backbone is None else get_spec(backbone).gradcam_layer


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str                                 # stable id, used in file names
    kind: str                                 # scratch | frozen_head | finetune
    input_size: int
    train: TrainConfig
    weights: str | None                       # imagenet | none | a weights file (scratch: None)
    n_views: int                              # cached views per image (view 0 = the image)
    augment: AugmentConfig
    preprocessing: str                        # one of S1's enhancement options ("none": the image as it is)
    head: str | None = None                   # s3 | gap (frozen_head / finetune)
    head_dropout: float | None = None
    finetune: TrainConfig | None = None       # phase 2 (finetune only)
    unfreeze_blocks: int | None = None        # finetune only
    backbone: str | None = None               # None: the from-scratch CNN
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    source_study: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        if self.kind != "scratch" and (self.head is None or self.head_dropout is None or self.backbone is None):
            raise ValueError(f"a {self.kind} recipe needs a backbone, a head and its dropout")
        if self.kind == "finetune" and (self.finetune is None or not self.unfreeze_blocks):
            raise ValueError("a finetune recipe needs its second phase (finetune) and unfreeze_blocks")

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
        what = {"scratch": "CNN from scratch", "frozen_head": f"{(self.head or '').upper()} head on frozen",
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


#: A phase that trains nothing and views that are the images themselves: what a recipe that only
#: computes frozen features (one view, no head trained) carries in its training fields.
NO_TRAINING = TrainConfig(epochs=0, batch_size=1, learning_rate=0.0, patience=None, class_weight=False)
NO_AUGMENT = AugmentConfig(flip=False, rotation_deg=0.0, zoom=0.0, shift=0.0, brightness=0.0, contrast=0.0)


def features_recipe(backbone: str, backbone_kw: dict, weights: str | None, input_size: int) -> Recipe:
    """A frozen backbone's last feature map of the images themselves (one view), for the frozen-feature
    heads that train outside :class:`~busi_study.models.experiment.Experiment`."""
    return Recipe(name="frozen_top", kind="frozen_head", input_size=input_size, train=NO_TRAINING, backbone=backbone,
                  backbone_kwargs=backbone_kw, weights=weights, head="gap", head_dropout=0.0, n_views=1, augment=NO_AUGMENT,
                  preprocessing="none")


def train_config(train: TrainParams, class_weight: bool) -> TrainConfig:
    """A training phase from its typed parameters."""
    return TrainConfig(epochs=train.epochs, batch_size=train.batch_size, learning_rate=train.learning_rate,
                       patience=train.patience, class_weight=class_weight)


def augment_config(aug: AugmentParams) -> AugmentConfig:
    return AugmentConfig(flip=aug.flip, rotation_deg=aug.rotation_deg, zoom=aug.zoom, shift=aug.shift,
                         brightness=aug.brightness, contrast=aug.contrast)


def backbone_kwargs(backbone: str, mobilenet_alpha: float) -> dict:
    return {"alpha": float(mobilenet_alpha)} if backbone == "mobilenet_v2" else {}


def s2_recipe(s2: S2Params, models: ModelParams, augment: AugmentParams) -> Recipe:
    """S2's small CNN from scratch."""
    return Recipe(name="s2_cnn", kind="scratch", input_size=s2.input_size, train=train_config(s2.train, models.class_weight),
                  source_study="S2", weights=None, n_views=models.n_views, augment=augment_config(augment), preprocessing="none")


def s3_recipe(s3: S3Params, models: ModelParams, augment: AugmentParams, backbone: str) -> Recipe:
    """S3's Flatten → dense head on a frozen backbone."""
    return Recipe(
        name=f"s3_head-{backbone}" + (f"-a{models.mobilenet_alpha}" if backbone == "mobilenet_v2" else ""),
        kind="frozen_head", input_size=s3.input_size, train=train_config(s3.train, models.class_weight), source_study="S3",
        backbone=backbone, backbone_kwargs=backbone_kwargs(backbone, models.mobilenet_alpha), weights=models.weights,
        head="s3", head_dropout=s3.dropout, n_views=models.n_views, augment=augment_config(augment), preprocessing="none",
    )


def s0_recipe(s0: S0Params, models: ModelParams, augment: AugmentParams) -> Recipe:
    """S0's MobileNetV2: head on the frozen base, then the top ``unfreeze_blocks`` blocks fine-tuned."""
    alpha = models.mobilenet_alpha
    return Recipe(
        name=f"s0_finetune-mobilenet_v2-a{alpha}-b{s0.unfreeze_blocks}", kind="finetune",
        input_size=s0.input_size, train=train_config(s0.head, models.class_weight), source_study="S0",
        backbone="mobilenet_v2", backbone_kwargs={"alpha": float(alpha)}, weights=models.weights, head="gap",
        head_dropout=s0.dropout, finetune=train_config(s0.finetune, models.class_weight),
        unfreeze_blocks=s0.unfreeze_blocks, n_views=models.n_views, augment=augment_config(augment), preprocessing="none",
    )
