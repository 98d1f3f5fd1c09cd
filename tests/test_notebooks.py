"""Notebooks are committed clean and thin, and their parameters cells mirror params/default.yaml.

The parameters cell is what papermill overrides and what a student edits; default.yaml is the one
source of defaults. These tests keep the two equal: every key a notebook uses is declared in its
parameters cell with default.yaml's value, nothing declared is unused, and after that cell the steps
read the typed parameters (``params = nb.params``) instead of restating the names.
"""

import ast
import json

import pytest

from busi_study.cli import REPO
from busi_study.params import SCALARS, SECTIONS, StudyParams, all_keys, load_profile, section_keys
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


def typed_uses(nb) -> set[str]:
    """The sections and scalars a notebook reads from its typed parameters (``params.s0``, ``params.seed``)."""
    return {n.attr for tree in body_trees(nb) for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "params"}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_declares_exactly_what_the_notebook_uses(nb):
    """Every study key of the parameters cell belongs to a section (or is a scalar) that the notebook's
    steps read through ``params``; every section they read is declared whole (its typed object builds)."""
    declared = {k for k in parameters_cell(nb) if k not in RUNNER_PARAMS}
    uses = typed_uses(nb)
    unknown = uses - set(SECTIONS) - set(SCALARS)
    assert not unknown, f"{nb.name} reads params.{unknown}, which is no section of StudyParams"
    needed = {k for k in SCALARS if k in uses} | {k for s in uses & set(SECTIONS) for k in section_keys(SECTIONS[s])}
    if any(isinstance(n, ast.Attribute) and n.attr in ("figure", "show_model_run") for tree in body_trees(nb) for n in ast.walk(tree)):
        needed.add("figure_dpi")  # nb.figure and nb.show_model_run save at the notebook's figure_dpi
    assert declared == needed, (f"{nb.name}: parameters cell and the sections its steps use differ: declared but unused "
                                f"{sorted(declared - needed)}, used but not declared {sorted(needed - declared)}")
    StudyParams.from_flat({k: DEFAULTS[k] for k in declared}, partial=True)  # whole sections, right types
    names = {n.id for tree in body_trees(nb) for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert RUNNER_PARAMS & set(parameters_cell(nb)) <= names | {"demo"}, f"{nb.name} declares a runner parameter it never uses"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_restates_the_parameters_cell(nb):
    """The parameters are read once: after the parameters cell the steps use ``params.<section>.<field>``
    (built by ``StudyNotebook.open`` from the declared names), never a parameter's bare name, and no
    cell rebuilds the typed object from a restated list of names."""
    declared = {k for k in parameters_cell(nb) if k not in RUNNER_PARAMS}
    bare = {n.id for tree in body_trees(nb) for n in ast.walk(tree)
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in declared}
    assert not bare, f"{nb.name} restates parameters by their bare names: {sorted(bare)} (use params.<section>.<field>)"
    calls = [n for tree in body_trees(nb) for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("from_flat", "from_profile")]
    assert not calls, f"{nb.name} builds StudyParams itself; StudyNotebook.open does (nb.params)"
    opens = [n for tree in body_trees(nb) for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "open"
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "StudyNotebook"]
    assert len(opens) == 1 and not any(k.arg == "params" for k in opens[0].keywords), f"{nb.name}: one StudyNotebook.open(...)"


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
