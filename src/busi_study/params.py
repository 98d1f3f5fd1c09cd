"""Parameter profiles: YAML files in ``params/`` plus command-line overrides.

A profile may name another in ``inherits:``; its keys override the parent's. Every key must
exist in ``default.yaml``, so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ParameterError


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
        raise ParameterError(f"cannot parse {path}: {str(exc).splitlines()[0]} — fix the YAML syntax") from None
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
