"""Typed parameters: built once from the YAML profile, defaults only in default.yaml, types checked."""

import dataclasses

import pytest

from busi_study.cli import REPO
from busi_study.errors import ParameterError
from busi_study.params import SECTIONS, StudyParams, TrainParams, all_keys, load_profile, section_keys

PARAMS = REPO / "params"


def test_profile_becomes_typed_sections():
    p = StudyParams.from_profile("smoke", PARAMS)
    flat = load_profile("smoke", PARAMS)
    assert p.seed == flat["seed"] and p.figure_dpi == flat["figure_dpi"]
    assert p.s0.head == TrainParams(flat["s0_head_epochs"], flat["s0_head_batch_size"], flat["s0_head_learning_rate"],
                                    flat["s0_head_patience"])
    assert p.s2.train.patience is None and isinstance(p.augment.rotation_deg, float)  # yaml 10 -> 10.0
    assert p.s3.backbones == ["resnet50", "mobilenet_v2"] and p.models.mobilenet_alpha == 0.35
    assert p.flat() == flat


def test_no_defaults_outside_default_yaml():
    for cls in [*SECTIONS.values(), TrainParams]:
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"


def test_nested_and_flat_keys():
    assert section_keys(SECTIONS["s0"])["s0_finetune_learning_rate"] == ("finetune", "learning_rate")
    assert section_keys(SECTIONS["s2"])["s2_epochs"] == ("train", "epochs")
    assert all_keys()["bootstrap_resamples"] == ("bootstrap", "resamples")
    assert all_keys()["seed"] == ("seed",)


@pytest.mark.parametrize("override, message", [
    ({"s2_epochs": 2.5}, "'s2_epochs' must be a whole number"),
    ({"s2_epochs": True}, "'s2_epochs' must be a whole number"),
    ({"tta": 1}, "'tta' must be true or false"),
    ({"weights": 3}, "'weights' must be text"),
    ({"s3_backbones": "resnet50"}, "'s3_backbones' must be a list"),
    ({"s0_head_patience": "x"}, "'s0_head_patience' must be a whole number"),
    ({"ssim_min": "high"}, "'ssim_min' must be a number"),
])
def test_wrong_types_are_one_line_errors(override, message):
    flat = {**load_profile("default", PARAMS), **override}
    with pytest.raises(ParameterError, match=message):
        StudyParams.from_flat(flat)


def test_partial_sections_from_a_notebook():
    flat = load_profile("default", PARAMS)
    p = StudyParams.from_flat({k: flat[k] for k in ("seed", "n_splits", "val_fraction", "repeats")}, partial=True)
    assert p.seed == 42 and p.splits.n_splits == 5 and p.s0 is None and p.figure_dpi is None
    with pytest.raises(ParameterError, match="section 's2' needs"):
        StudyParams.from_flat({"s2_epochs": 3}, partial=True)
    with pytest.raises(ParameterError, match="unknown parameter"):
        StudyParams.from_flat({"s2_epoch": 3}, partial=True)
    with pytest.raises(ParameterError, match="parameters missing for: s0"):
        p.require("splits", "s0")
    with pytest.raises(ParameterError, match="'seed' is missing"):
        StudyParams.from_flat({k: v for k, v in flat.items() if k != "seed"})
