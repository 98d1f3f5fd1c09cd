"""Notebooks are committed clean and thin, and their parameters cells mirror params/default.yaml.

The parameters cell is what papermill overrides and what a student edits; default.yaml is the one
source of defaults. These tests keep the two equal: every key a notebook uses is declared in its
parameters cell with default.yaml's value, nothing declared is unused, and the typed parameter
object a notebook builds receives exactly the declared keys.
"""

import ast
import json

import pytest

from busi_study.cli import REPO
from busi_study.params import StudyParams, all_keys, load_profile
from busi_study.report.runner import discover_notebooks

NOTEBOOKS = discover_notebooks(REPO / "notebooks")
RUNNER_PARAMS = {"data_dir", "report_dir", "demo"}
DEFAULTS = load_profile("default", REPO / "params")
MAX_CELL_LINES = 25


def cells(nb):
    return json.loads(nb.read_text())["cells"]


def code_cells(nb):
    return [(c, "".join(c["source"])) for c in cells(nb) if c["cell_type"] == "code"]


def parameters_cell(nb) -> dict:
    """name → literal value of the cell tagged ``parameters``."""
    tagged = [src for c, src in code_cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name}: exactly one cell must be tagged 'parameters'"
    out = {}
    for node in ast.parse(tagged[0]).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"{nb.name}: the parameters cell holds only `name = literal` lines"
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def body_trees(nb):
    return [ast.parse(src) for c, src in code_cells(nb) if "parameters" not in c.get("metadata", {}).get("tags", [])]


def test_the_design_notebooks_exist():
    names = [nb.stem for nb in NOTEBOOKS]
    assert names[:5] == ["00_download", "01_eda_intensity", "02_baseline_cnn", "03_resnet50_head", "04_mobilenetv2_finetune"]
    assert "07_error_analysis" in names


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(nb):
    for cell, _ in code_cells(nb):
        assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{nb.name} has outputs"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_mirrors_default_yaml(nb):
    declared = parameters_cell(nb)
    study_keys = {k: v for k, v in declared.items() if k not in RUNNER_PARAMS}
    unknown = sorted(set(study_keys) - set(DEFAULTS))
    assert not unknown, f"{nb.name} declares parameters that are not in params/default.yaml: {unknown}"
    drift = {k: (v, DEFAULTS[k]) for k, v in study_keys.items() if v != DEFAULTS[k] or type(v) is not type(DEFAULTS[k])}
    assert not drift, f"{nb.name}: parameters cell value differs from default.yaml (cell, yaml): {drift}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_declares_exactly_what_the_notebook_uses(nb):
    declared = set(parameters_cell(nb))
    names = {n.id for tree in body_trees(nb) for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    used = names & (set(DEFAULTS) | RUNNER_PARAMS)
    assert used <= declared, f"{nb.name} uses parameters its parameters cell does not declare: {sorted(used - declared)}"
    assert declared <= used, f"{nb.name} declares parameters it never uses: {sorted(declared - used)}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_typed_parameters_get_exactly_the_declared_keys(nb):
    """Where a notebook builds StudyParams.from_flat(dict(k=k, …)), the dict holds every declared
    study key under its own name, and the typed object builds from default.yaml's values."""
    declared = {k for k in parameters_cell(nb) if k not in RUNNER_PARAMS}
    calls = [n for tree in body_trees(nb) for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "from_flat"]
    if not calls:
        return
    (call,) = calls
    arg = call.args[0]
    assert isinstance(arg, ast.Call) and arg.func.id == "dict", f"{nb.name}: from_flat(dict(key=key, …))"
    passed = {k.arg: k.value.id for k in arg.keywords}
    assert all(k == v for k, v in passed.items()), f"{nb.name}: pass each parameter under its own name"
    assert set(passed) == declared, f"{nb.name}: typed parameters differ from the parameters cell: {set(passed) ^ declared}"
    StudyParams.from_flat({k: DEFAULTS[k] for k in declared}, partial=True)  # whole sections, right types


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_thin(nb):
    for tree in body_trees(nb):
        for n in ast.walk(tree):
            assert not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), \
                f"{nb.name} defines {n.name}: functions belong in the package"
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                assert n.func.id not in {"globals", "locals", "vars"}, f"{nb.name} scrapes {n.func.id}()"
    for cell, src in code_cells(nb):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            continue  # a list of declarations that mirrors default.yaml, checked above
        n_lines = len(src.strip().splitlines())
        assert n_lines <= MAX_CELL_LINES, f"{nb.name}: a code cell of {n_lines} lines (at most {MAX_CELL_LINES})"


def test_every_default_key_is_typed():
    """default.yaml and the typed sections describe the same keys, and the profiles build."""
    assert set(DEFAULTS) == set(all_keys())
    for profile in ("default", "smoke", "reference"):
        flat = load_profile(profile, REPO / "params")
        assert StudyParams.from_profile(profile, REPO / "params").flat() == flat
