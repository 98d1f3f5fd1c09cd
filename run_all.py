#!/usr/bin/env python3
"""Regenerate the whole study: run notebooks/NN_*.ipynb in order with papermill and build
reports/<run-id>/index.html. `python run_all.py --help` lists the options."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))  # usable before `pip install -e .`

from busi_study.cli import run_all_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_all_main())
