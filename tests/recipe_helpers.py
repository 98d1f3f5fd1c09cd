"""Training and augmentation settings for the tests: the default profile's values, a few overridden.

The package has no keyword defaults for study values (params/default.yaml is their only source), so
tests that build a small recipe by hand take the rest from the default profile here.
"""

from dataclasses import replace

from busi_study.cli import REPO
from busi_study.models.augment import AugmentConfig
from busi_study.models.recipes import augment_config, train_config
from busi_study.models.training import TrainConfig
from busi_study.params import StudyParams

DEFAULT = StudyParams.from_profile("default", REPO / "params", {"data_source": "demo"})


def train_cfg(**overrides) -> TrainConfig:
    """The default profile's S0 head phase (Adam 1e-3, batch 16, class weights) with ``overrides``."""
    return replace(train_config(DEFAULT.s0.head, DEFAULT.models.class_weight), **overrides)


def aug_cfg(**overrides) -> AugmentConfig:
    """The default profile's augmentation with ``overrides``."""
    return replace(augment_config(DEFAULT.augment), **overrides)
