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


# ---------------------------------------------------------------- defaults live in params/default.yaml only
import dataclasses as _dc  # noqa: E402
import importlib as _importlib  # noqa: E402
import inspect as _inspect  # noqa: E402

#: Where a recipe is defined or a model is built and trained. Their study settings come from the
#: profile; a keyword default here would be a second, silent source of a study value.
MACHINERY = ["busi_study.models.recipes", "busi_study.models.training", "busi_study.models.augment",
             "busi_study.models.builders", "busi_study.models.experiment", "busi_study.models.features",
             "busi_study.models.segmentation", "busi_study.models.lightweight", "busi_study.models.lesion_models",
             "busi_study.models.crops", "busi_study.studies.s1_pipeline", "busi_study.studies.lesion_aware",
             "busi_study.studies.model_run", "busi_study.studies.s4_study"]
#: Defaults that are not study values: display and plumbing switches, names of Keras objects, the
#: class count, inference batch sizes (no effect on a prediction), and a recipe's descriptive label.
STRUCTURAL = {"progress", "name", "n_classes", "batch_size", "on_fold", "cache", "augment_views", "restore_best",
              "steps_per_execution", "source_study", "backbone_kwargs", "weights_snapshot", "timing", "head", "metric",
              "tta", "view", "views"}  # tta, view: which prediction a call asks for (view 0, or the mean over the views);
# views: whether Experiment.prepare computes the cached views or builds the networks only
#: Keras's own Layer arguments (a custom layer inherits them).
KERAS_LAYER = {"activity_regularizer", "trainable", "dtype", "autocast"}


def _defaults_of(obj) -> dict:
    if _inspect.isclass(obj) and _dc.is_dataclass(obj):
        return {f.name: (f.default if f.default is not _dc.MISSING else f.default_factory())
                for f in _dc.fields(obj) if f.default is not _dc.MISSING or f.default_factory is not _dc.MISSING}
    fn = obj.__init__ if _inspect.isclass(obj) else obj
    try:
        sig = _inspect.signature(fn)
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in sig.parameters.values() if p.default is not _inspect.Parameter.empty}


def study_value_defaults() -> list[str]:
    """Every keyword default of the recipe and training code that could carry a study value."""
    out = []
    for mod_name in MACHINERY:
        mod = _importlib.import_module(mod_name)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            if not (_inspect.isfunction(obj) or _inspect.isclass(obj)):
                continue
            members = [(name, obj)] + ([(f"{name}.{m}", f) for m, f in vars(obj).items()
                                        if _inspect.isfunction(f) and not m.startswith("_")] if _inspect.isclass(obj) else [])
            for label, fn in members:
                for arg, value in _defaults_of(fn).items():
                    if value is None or arg in STRUCTURAL or arg in KERAS_LAYER or value in ({}, []):
                        continue
                    out.append(f"{mod_name}.{label}({arg}={value!r})")
    return out


def test_recipes_and_training_take_every_study_value_from_the_profile():
    found = study_value_defaults()
    assert not found, "keyword defaults outside params/default.yaml (pass the value from the typed parameters): " + "; ".join(found)


def test_the_default_check_sees_a_new_default(monkeypatch):
    """The check above fails when a recipe or training function gains a keyword default."""
    from busi_study.models import training

    def train_with_a_default(model, views, y, train_idx, val_idx, cfg, seed, epochs=None, learning_rate=1e-3):
        return None

    train_with_a_default.__module__ = "busi_study.models.training"
    monkeypatch.setattr(training, "train_with_a_default", train_with_a_default, raising=False)
    assert any("train_with_a_default(learning_rate=0.001)" in f for f in study_value_defaults())


@pytest.mark.parametrize("key, value", [("gradcam_method", "gradcam+"), ("s1_candidates", ["attention", "atention_ft"]),
                                        ("s1_enhancements", ["none", "clahee"]), ("s3_backbones", ["resnet5O"]),
                                        ("s4_export_variant", "early-stopped"), ("s1_seg_backbone", "mobilenetv2")])
def test_a_misspelt_choice_fails_when_the_profile_loads(key, value):
    with pytest.raises(ParameterError, match=rf"parameter '{key}'.*is not one of"):
        StudyParams.from_profile("smoke", REPO / "params", {key: value})


def test_the_closed_sets_are_what_the_code_implements():
    from busi_study.data.enhance import ENHANCEMENTS
    from busi_study.explain.gradcam import METHODS
    from busi_study.info import CHOICES
    from busi_study.models.lesion_models import CANDIDATES
    from busi_study.models.registry import REGISTRY

    assert set(CHOICES["backbone"]) == set(REGISTRY)
    assert set(CHOICES["enhancement"]) == set(ENHANCEMENTS)
    assert tuple(CHOICES["lesion_candidate"]) == tuple(CANDIDATES)
    assert tuple(CHOICES["gradcam_method"]) == tuple(METHODS)
