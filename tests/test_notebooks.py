"""Notebooks are committed clean, declare their parameters, and only use known parameters."""

import json

import papermill as pm
import pytest

from busi_study.cli import REPO
from busi_study.params import load_profile
from busi_study.report.runner import discover_notebooks

NOTEBOOKS = discover_notebooks(REPO / "notebooks")
RUNNER_PARAMS = {"data_dir", "report_dir", "demo", "profile", "run_id"}


def test_the_design_notebooks_exist():
    names = [nb.stem for nb in NOTEBOOKS]
    assert names[:2] == ["00_download", "01_eda_intensity"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(nb):
    data = json.loads(nb.read_text())
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{nb.name} has outputs"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_and_known_parameters(nb):
    declared = pm.inspect_notebook(str(nb))
    assert declared, f"{nb.name} has no cell tagged 'parameters'"
    known = set(load_profile("default", REPO / "params")) | RUNNER_PARAMS
    unknown = set(declared) - known
    assert not unknown, f"{nb.name} declares parameters the runner never sets: {unknown}"
