import subprocess
import sys

import pytest

from busi_study.cli import REPO


def test_ruff_clean():
    pytest.importorskip("ruff")
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "scripts", "run_all.py"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_package_imports_without_tensorflow():
    # the data layer and the runner must not pull in TensorFlow (fast start, CPU-only CI)
    code = "import busi_study.data.prepare, busi_study.report.runner, busi_study.eda, sys; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
