# The README's two commands: `make demo` (set up + main job on the embedded default) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin
TINY = outputs/tiny

.PHONY: setup demo test lint clean

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

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check zephyr scripts tests

clean:
	rm -rf outputs
