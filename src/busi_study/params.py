"""Parameter profiles: YAML files in ``params/`` plus command-line overrides, turned into typed objects.

A profile may name another in ``inherits:``; its keys override the parent's. Every key must
exist in ``default.yaml``, so a typo is an error, not a silently ignored setting. ``default.yaml``
holds the only default values; :class:`StudyParams` (one frozen dataclass per concern) is built
from the flat keys once, checks their types and ranges (:func:`_range_rule`: epochs above 0,
fractions inside (0, 1), thresholds and seeds not negative, …), and is what recipes and the CV
runner take.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import ParameterError, first_line
from .info import CHOICES


def load_profile(name_or_path: str, params_dir: Path) -> dict[str, Any]:
    """Load a profile by name (``smoke``) or path, resolving ``inherits:`` chains."""
    params_dir = Path(params_dir)
    path = Path(name_or_path)
    if not path.suffix:
        path = params_dir / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in params_dir.glob("*.yaml")))
        raise ParameterError(f"unknown profile '{name_or_path}' — use one of: {known} (or a path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParameterError(f"cannot parse {path}: {first_line(exc)} — fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ParameterError(f"{path} must hold a mapping of parameter: value — write one `key: value` per line")
    parent = data.pop("inherits", None)
    if parent:
        base = load_profile(parent, params_dir)
        unknown = sorted(set(data) - set(base))
        if unknown:
            raise ParameterError(f"{path.name}: unknown parameter(s) {', '.join(unknown)} — every key must exist in {parent}.yaml")
        base.update(data)
        return base
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` → (key, value parsed as YAML: numbers, true/false, null, lists)."""
    if "=" not in text:
        raise ParameterError(f"override '{text}' must look like key=value — e.g. --set seed=7")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``params`` with ``overrides`` applied; unknown keys are an error.

    Types are checked loosely: an override of a number must be a number, of a bool a bool.
    """
    out = dict(params)
    for key, value in overrides.items():
        if key not in params:
            raise ParameterError(f"unknown parameter '{key}' — see params/default.yaml for the known ones")
        old = params[key]
        if isinstance(old, bool) and not isinstance(value, bool):
            raise ParameterError(f"parameter '{key}' must be true or false, got {value!r} — e.g. --set {key}=true")
        if isinstance(old, (int, float)) and not isinstance(old, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"parameter '{key}' must be a number, got {value!r} — e.g. --set {key}={old}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Typed parameters. ``params/default.yaml`` is the only place with default values: these classes
# have no defaults; they say which flat YAML key feeds which typed field, and check its type.
# A section's flat key is ``PREFIX + field name``; a nested section (e.g. a training phase) adds
# its field name and "_" to the prefix, unless the field is marked ``flat`` (same prefix).
# ---------------------------------------------------------------------------------------------


_FLAT = {"flat": True}


def _one_of(kind: str):
    """A field whose value (or each item of its list) must be one of ``CHOICES[kind]`` (info.py)."""
    return dataclasses.field(metadata={"choices": kind})


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """One training phase: epochs, batch size, Adam learning rate, early-stopping patience (None: off)."""

    epochs: int
    batch_size: int
    learning_rate: float
    patience: int | None


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the images come from and how near-duplicates are linked (docs/protocol.md §2)."""

    PREFIX: ClassVar[str] = ""
    data_source: str
    demo_seed: int
    phash_threshold: int
    dhash_threshold: int
    hash_margin: int
    ssim_min: float | None


@dataclasses.dataclass(frozen=True)
class SplitParams:
    """Grouped cross-validation (docs/protocol.md §3); its seed is the study's ``seed``."""

    PREFIX: ClassVar[str] = ""
    n_splits: int
    val_fraction: float
    repeats: int


@dataclasses.dataclass(frozen=True)
class FigureParams:
    """Galleries of the exploratory analysis (the resolution is the study's ``figure_dpi``)."""

    PREFIX: ClassVar[str] = ""
    gallery_groups: int
    sample_grid_per_class: int


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Augmentation of the cached views (flip, rotation in degrees, zoom/shift/brightness/contrast as fractions)."""

    PREFIX: ClassVar[str] = "aug_"
    flip: bool
    rotation_deg: float
    zoom: float
    shift: float
    brightness: float
    contrast: float


@dataclasses.dataclass(frozen=True)
class BootstrapParams:
    """Group bootstrap of every CI (docs/protocol.md §5)."""

    PREFIX: ClassVar[str] = "bootstrap_"
    resamples: int
    seed: int


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """Settings shared by every model notebook."""

    PREFIX: ClassVar[str] = ""
    weights: str
    strict: bool
    mobilenet_alpha: float
    n_views: int
    class_weight: bool
    tta: bool
    export_models: bool


@dataclasses.dataclass(frozen=True)
class SourceProtocolParams:
    """The source studies' random image-level split (docs/protocol.md §6)."""

    PREFIX: ClassVar[str] = "source_"
    protocol_repeats: int
    test_fraction: float
    val_fraction: float


@dataclasses.dataclass(frozen=True)
class S2Params:
    """S2: small CNN from scratch."""

    PREFIX: ClassVar[str] = "s2_"
    input_size: int
    train: TrainParams = dataclasses.field(metadata=_FLAT)


@dataclasses.dataclass(frozen=True)
class S3Params:
    """S3: frozen backbone → Flatten → dense head; one run per backbone."""

    PREFIX: ClassVar[str] = "s3_"
    backbones: list[str] = _one_of("backbone")
    input_size: int
    dropout: float
    train: TrainParams = dataclasses.field(metadata=_FLAT)


@dataclasses.dataclass(frozen=True)
class BenchmarkParams:
    """Cached features vs frozen base in the loop (notebook 03)."""

    PREFIX: ClassVar[str] = "benchmark_"
    epochs: int
    timing_images: int


@dataclasses.dataclass(frozen=True)
class S0Params:
    """S0: MobileNetV2, head on the frozen base, then the top blocks fine-tuned."""

    PREFIX: ClassVar[str] = "s0_"
    input_size: int
    unfreeze_blocks: int
    dropout: float
    head: TrainParams
    finetune: TrainParams


@dataclasses.dataclass(frozen=True)
class ExplainParams:
    """Error analysis and explanations (notebook of the error analysis)."""

    PREFIX: ClassVar[str] = ""
    gradcam_method: str = _one_of("gradcam_method")
    gradcam_tolerance: float
    gradcam_max_per_fold: int | None
    sanity_layers: int
    sanity_images: int
    gallery_per_pair: int


@dataclasses.dataclass(frozen=True)
class S4Params:
    """S4: C4 + C5 features of a frozen backbone → SSDLite-style head, benign vs malignant (notebook 06).

    ``train`` is S4's faithful recipe (batch 1, fixed epochs, last weights); ``es`` our early-stopped
    variant; ``augmented_size`` the size of S4's augmented set; ``protocol_variant`` and
    ``export_variant`` (faithful | early_stopped) say which recipe runs S4's protocol and which
    final model is exported."""

    PREFIX: ClassVar[str] = "s4_"
    backbones: list[str] = _one_of("backbone")
    input_size: int
    head_channels: int
    dropout: float
    augmented_size: int
    protocol_variant: str = _one_of("s4_variant")
    export_variant: str = _one_of("s4_variant")
    train: TrainParams = dataclasses.field(metadata=_FLAT)
    es: TrainParams  # keys s4_es_*


@dataclasses.dataclass(frozen=True)
class SegmenterParams:
    """S1's lesion segmenter: frozen encoder from the registry, U-Net decoder, training phase."""

    backbone: str = _one_of("backbone")
    input_size: int
    decoder_channels: int
    views: int
    threshold: float
    min_area: float
    train: TrainParams = dataclasses.field(metadata=_FLAT)


@dataclasses.dataclass(frozen=True)
class S1Params:
    """S1's pipeline and the lesion-aware models (notebook 05): enhancement ablation, segmenter,
    classifier of the predicted lesion crop (margin chosen on validation), S1's own protocol,
    lesion-aware candidate heads (chosen on validation) and the seeds of the final comparison."""

    PREFIX: ClassVar[str] = "s1_"
    enhancements: list[str] = _one_of("enhancement")
    seg: SegmenterParams
    crop_margins: list[float]
    classifier_backbones: list[str] = _one_of("backbone")
    unfreeze_blocks: int | None
    protocol_epochs: int
    candidates: list[str] = _one_of("lesion_candidate")
    hires_size: int
    attention_weight: float
    head: TrainParams
    seeds: list[int]


@dataclasses.dataclass(frozen=True)
class MultitaskParams:
    """The multi-task U-Net of notebook 05 (models/multitask.py): the S0 recipe's network and training
    (``s0_*``: blocks fine-tuned, dropout, both phases) with a decoder; its own input size and fit, the
    decoder's width, the weight of the mask loss, lesion-keeping crops, the outline's candidate thresholds,
    smallest regions and gates (chosen on inner validation), the deployed form, and the training seeds of the
    comparison with S0."""

    PREFIX: ClassVar[str] = "mt_"
    input_size: int
    fit: str = _one_of("fit")
    decoder_channels: int
    mask_weight: float
    crop_prob: float
    crop_min_side: float
    thresholds: list[float]
    min_areas: list[float]
    outline_gates: list[str] = _one_of("outline_gate")
    deployed: str = _one_of("deployed")
    seeds: list[int]


@dataclasses.dataclass(frozen=True)
class TFLiteParams:
    """On-device export (notebook 06): full-int8 calibration images (from training data only),
    latency runs after a warm-up, and how many folds' out-of-fold images measure the agreement."""

    PREFIX: ClassVar[str] = "tflite_"
    representative_images: int
    latency_runs: int
    latency_warmup: int
    agreement_folds: int | None
    target_mb: float
    target_ms: float
    target_auc_drop: float


@dataclasses.dataclass(frozen=True)
class ExternalParams:
    """External validation (docs/protocol.md §9): the BrEaST-Lesions_USG folder (None: not given) and the gallery size."""

    PREFIX: ClassVar[str] = "external_"
    data: str | None
    gallery: int


#: Single values used across sections: the split seed (also seeds views, initialisation and
#: batch order) and the figure resolution.
SCALARS: dict[str, type] = {"seed": int, "figure_dpi": int}

#: The sections of :class:`StudyParams`, in the order of default.yaml.
SECTIONS: dict[str, type] = {
    "data": DataParams, "splits": SplitParams, "figures": FigureParams, "models": ModelParams,
    "augment": AugmentParams, "bootstrap": BootstrapParams, "source": SourceProtocolParams, "s2": S2Params,
    "s3": S3Params, "benchmark": BenchmarkParams, "s0": S0Params, "explain": ExplainParams, "s1": S1Params,
    "mt": MultitaskParams, "s4": S4Params,
    "tflite": TFLiteParams, "external": ExternalParams,
}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """``value`` as ``annotation`` (int → float allowed; bool never passes as a number), or ParameterError
    (one line, ending with what to do)."""
    try:
        return _typed(key, value, annotation)
    except ParameterError as exc:
        text = str(exc)
        if " — " in text:
            raise
        raise ParameterError(f"{text} — give it the type params/default.yaml shows for '{key}' "
                             f"(e.g. --set {key}=… in YAML syntax: 3, 0.5, true, text, [a, b])") from None


def _typed(key: str, value: Any, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _typed(key, value, opt)
            except ParameterError as exc:
                errors.append(str(exc))
        raise ParameterError(errors[0] if errors else f"parameter '{key}' has an unsupported type")
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ParameterError(f"parameter '{key}' must be a list, got {value!r}")
        return [_typed(key, v, item) for v in value]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParameterError(f"parameter '{key}' must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(f"parameter '{key}' must be a whole number, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"parameter '{key}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ParameterError(f"parameter '{key}' must be text, got {value!r}")
        return value
    raise ParameterError(f"parameter '{key}': unsupported type {annotation!r}")


# Ranges, by field name (the same rule in every section, so a new section gets it too): a value out
# of range is a one-line ParameterError when the profile loads, before any notebook runs.
_POSITIVE = {"epochs", "batch_size", "learning_rate", "n_views", "views", "repeats", "resamples", "protocol_repeats",
             "head_channels", "decoder_channels", "representative_images", "latency_runs", "figure_dpi",
             "mobilenet_alpha", "agreement_folds", "protocol_epochs", "sample_grid_per_class"}
_UNIT_OPEN = {"threshold", "thresholds"}                     # (0, 1)
_UNIT_HALF_OPEN = {"dropout", "zoom", "shift", "brightness", "contrast", "min_area", "min_areas"}  # [0, 1)
_UNIT_CLOSED = {"ssim_min", "crop_prob"}                     # [0, 1]
#: Input sizes of networks with a U-Net decoder: a multiple of the encoder's output stride (32).
_STRIDE_32 = {"s1_seg_input_size", "mt_input_size"}


def _range_rule(field: str) -> tuple[str, object] | None:
    """(what the value must be, check) for a numeric field, or None when any number is fine."""
    if field == "n_splits":
        return "a whole number of at least 2", lambda v: v >= 2
    if field in _POSITIVE or field.endswith("_size"):
        return "above 0", lambda v: v > 0
    if field.endswith("_fraction"):
        return "a fraction strictly between 0 and 1", lambda v: 0 < v < 1
    if field in _UNIT_OPEN:
        return "strictly between 0 and 1", lambda v: 0 < v < 1
    if field in _UNIT_HALF_OPEN:
        return "at least 0 and below 1", lambda v: 0 <= v < 1
    if field in _UNIT_CLOSED:
        return "between 0 and 1", lambda v: 0 <= v <= 1
    if field == "crop_min_side":
        return "above 0 and at most 1", lambda v: 0 < v <= 1
    return "0 or more", lambda v: v >= 0  # seeds, thresholds of Hamming distances, counts, margins, patience, degrees


def _check_range(key: str, field: str, value: Any) -> Any:
    """``value`` (already type-checked) if inside its field's range (:func:`_range_rule`), else ParameterError."""
    if key in _STRIDE_32 and isinstance(value, int) and value % 32:
        raise ParameterError(f"parameter '{key}' must be a multiple of 32 (the encoder's output stride), got {value!r} "
                             f"— e.g. --set {key}=224")
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        what, ok = _range_rule(field)
        if v != v or v in (float("inf"), float("-inf")) or not ok(v):
            example = {"above 0": 1, "0 or more": 0}.get(what, "")
            raise ParameterError(f"parameter '{key}' must be {what}, got {value!r} — e.g. --set {key}="
                                 f"{example if example != '' else 'a value in that range'} (see params/default.yaml)")
    return value


def section_keys(cls: type, prefix: str | None = None) -> dict[str, tuple[str, ...]]:
    """Flat YAML key → path of field names inside ``cls`` (e.g. ``s0_head_epochs`` → ("head", "epochs"))."""
    prefix = cls.PREFIX if prefix is None else prefix
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            sub_prefix = prefix if f.metadata.get("flat") else f"{prefix}{f.name}_"
            out.update({k: (f.name, *path) for k, path in section_keys(t, sub_prefix).items()})
        else:
            out[f"{prefix}{f.name}"] = (f.name,)
    return out


def _build(cls: type, flat: dict[str, Any], prefix: str | None = None) -> Any:
    prefix = cls.PREFIX if prefix is None else prefix
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            kwargs[f.name] = _build(t, flat, prefix if f.metadata.get("flat") else f"{prefix}{f.name}_")
        else:
            key = f"{prefix}{f.name}"
            if key not in flat:
                raise ParameterError(f"parameter '{key}' is missing")
            kwargs[f.name] = _check_choice(key, _check_range(key, f.name, _check_type(key, flat[key], t)),
                                           f.metadata.get("choices"))
    return cls(**kwargs)


def _check_choice(key: str, value: Any, kind: str | None) -> Any:
    """``value`` (or each item of a list) must be one of ``CHOICES[kind]``: a misspelt choice fails
    when the profile loads, with the allowed values, instead of hours into a run."""
    if kind is None or value is None:
        return value
    allowed = CHOICES[kind]
    bad = [v for v in (value if isinstance(value, list) else [value]) if v not in allowed]
    if bad:
        raise ParameterError(f"parameter '{key}': {', '.join(repr(b) for b in bad)} is not one of "
                             f"{', '.join(allowed)} — fix the value in the profile or the --set")
    return value


def all_keys() -> dict[str, tuple[str, ...]]:
    """Every flat key of the study → (section, field path); a scalar maps to (its own name,)."""
    out: dict[str, tuple[str, ...]] = {k: (k,) for k in SCALARS}
    for name, cls in SECTIONS.items():
        out.update({k: (name, *path) for k, path in section_keys(cls).items()})
    return out


@dataclasses.dataclass(frozen=True)
class StudyParams:
    """All parameters of a run, typed, built once from a profile (+ overrides) or from a notebook's
    parameters cell. A section is ``None`` when built from a notebook that declares none of its keys."""

    seed: int | None = None
    figure_dpi: int | None = None
    data: DataParams | None = None
    splits: SplitParams | None = None
    figures: FigureParams | None = None
    models: ModelParams | None = None
    augment: AugmentParams | None = None
    bootstrap: BootstrapParams | None = None
    source: SourceProtocolParams | None = None
    s2: S2Params | None = None
    s3: S3Params | None = None
    benchmark: BenchmarkParams | None = None
    s0: S0Params | None = None
    explain: ExplainParams | None = None
    s1: S1Params | None = None
    mt: MultitaskParams | None = None
    s4: S4Params | None = None
    tflite: TFLiteParams | None = None
    external: ExternalParams | None = None

    @classmethod
    def from_flat(cls, flat: dict[str, Any], partial: bool = False) -> StudyParams:
        """Typed parameters from flat YAML keys. Unknown keys are an error; with ``partial`` a section
        none of whose keys is given stays ``None`` (a notebook declares only what it uses), while a
        section given in part is an error naming the missing keys."""
        keys = all_keys()
        unknown = sorted(set(flat) - set(keys))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {', '.join(unknown)} (see params/default.yaml)")
        sections: dict[str, Any] = {}
        for key, t in SCALARS.items():
            if key in flat:
                sections[key] = _check_range(key, key, _check_type(key, flat[key], t))
            elif not partial:
                raise ParameterError(f"parameter '{key}' is missing")
        for name, scls in SECTIONS.items():
            wanted = section_keys(scls)
            given = [k for k in wanted if k in flat]
            if partial and not given:
                continue
            missing = [k for k in wanted if k not in flat]
            if missing:
                raise ParameterError(f"section '{name}' needs {', '.join(missing)} as well")
            sections[name] = _build(scls, flat)
        return cls(**sections)

    @classmethod
    def from_profile(cls, name_or_path: str, params_dir: Path, overrides: dict[str, Any] | None = None) -> StudyParams:
        """The whole typed parameter set of a profile, overrides applied."""
        flat = apply_overrides(load_profile(name_or_path, params_dir), overrides or {})
        return cls.from_flat(flat)

    def flat(self) -> dict[str, Any]:
        """Back to flat YAML keys (what papermill passes and run.json records)."""
        out: dict[str, Any] = {}
        for key, (section, *path) in all_keys().items():
            obj = getattr(self, section)
            if obj is None:
                continue
            for p in path:
                obj = getattr(obj, p)
            out[key] = obj
        return out

    def require(self, *sections: str) -> None:
        """ParameterError naming the sections (or scalars) a notebook needs but did not declare."""
        missing = [s for s in sections if getattr(self, s) is None]
        if missing:
            raise ParameterError(f"parameters missing for: {', '.join(missing)} (declare their keys in the parameters cell)")
