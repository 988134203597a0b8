# The README's two commands: `make demo` (set up + main job on the embedded default) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
TINY = outputs/tiny

.PHONY: setup demo test test-fast test-latest lint clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is the local CPU wheel; any other torch spec would pull GBs of CUDA wheels.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# The whole Zephyr recipe on the embedded default: tiny model -> dSFT -> AIF -> dDPO -> eval (table + plot).
demo: setup
	$(BIN)/zephyr run recipes/tiny

# One pytest worker per core, up to 4 (pytest-xdist). Tests go to whichever worker is free, a file at a time except
# for the few heavy files tests/conftest.py spreads test by test, heaviest first. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto --maxprocesses 4
PYTEST = $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test: setup
	$(PYTEST)

# The inner loop: everything but the end-to-end runs marked slow (under 3 minutes on 2 cores).
test-fast: setup
	$(PYTEST) -m "not slow"

# The suite on the newest releases setup.cfg's ranges allow, in its own venv, without the lock (torch stays
# 2.13.0: any other torch spec pulls GBs of CUDA wheels here). Tells whether the ranges still hold.
# `make test-latest PYTEST_ARGS='-m "not slow"'` runs the fast tier there.
LATEST = .venv-latest
test-latest:
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet torch==2.13.0
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]" "torch==2.13.0"
	$(LATEST)/bin/python -m pip freeze --exclude-editable > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check zephyr scripts tests benchmarks

clean:
	rm -rf outputs $(LATEST)
