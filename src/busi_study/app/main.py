"""Streamlit entry script: ``streamlit run src/busi_study/app/main.py -- [--model PATH] [--reports DIR]``.

Use ``make app`` (or ``python -m busi_study.app``), which adds the server settings.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from busi_study.app.pages import run_app  # noqa: E402

_p = argparse.ArgumentParser(prog="busi_study app", add_help=False)
_p.add_argument("--model")
_p.add_argument("--reports")
_opts, _ = _p.parse_known_args(sys.argv[1:])
run_app(model=_opts.model, reports=_opts.reports)
