import subprocess
import sys
from pathlib import Path

import pytest

from busi_study.cli import REPO


def test_ruff_clean():
    pytest.importorskip("ruff")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "scripts", "run_all.py"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_package_imports_without_tensorflow():
    # the data layer and the runner must not pull in TensorFlow (fast start, CPU-only CI)
    code = "import busi_study.data.prepare, busi_study.report.runner, busi_study.analysis.eda, busi_study.params, busi_study.results, sys; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_import_layers_hold():
    """The import contract in pyproject.toml: nothing imports from a layer above it."""
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    n_contracts = (REPO / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    assert n_contracts >= 1 and f"Contracts: {n_contracts} kept, 0 broken" in res.stdout
