# Two commands do all the set-up on a fresh machine:
#   make report   create .venv if missing, install, register the kernel, run the study
#   make test     same environment, run the test suite
#   make app      serve the Streamlit app on 127.0.0.1 (exported models of reports/latest)
# Pass run_all.py options with ARGS, e.g. make report ARGS="--data ~/Dataset_BUSI_with_GT".

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: report test lint env clean-env app

env: $(STAMP)

$(STAMP): env/requirements.txt env/requirements-dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r env/requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name busi-study --display-name "Python (busi-study)" >/dev/null
	@touch $(STAMP)
	@echo "environment ready: $(VENV)"

report: $(STAMP)
	$(PY) run_all.py $(ARGS)

app: $(STAMP)
	$(PY) -m busi_study.app $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests scripts run_all.py
	cd $(CURDIR) && $(VENV)/bin/lint-imports

clean-env:
	rm -rf $(VENV)
