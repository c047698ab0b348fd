# Two commands from a fresh clone: `make demo` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.leanjax-setup
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-slow clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c requirements/lock.txt -e '.[experiments,test]'
	$(PY) -m pip install -q --no-deps -r requirements/assets.txt
	touch $(STAMP)

# The project's main job on embedded data: the lean pipeline when it exists, else the baseline.
demo: setup
	$(PY) -m leanjax.experiments.$(shell test -f leanjax/experiments/pipeline.py && echo pipeline || echo baseline)

# The linter first (ruff, configured in pyproject.toml), then the suite.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

# Tests marked slow (long end-to-end runs); kept out of CI.
test-slow: setup
	$(PY) -m pytest -m slow

clean-venv:
	rm -rf $(VENV)
