# The documented commands. `make test` and `make demo` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# On a CPU-only machine, torch is pinned to the CPU build (a plain `torch` would pull several GB of CUDA).
TORCH ?= torch==2.13.0

.PHONY: setup test test-all lint format tiny sample-data

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ""

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

tiny: setup
	$(BIN)/python -m phi3v_recipe.tiny outputs/tiny-phi3v

sample-data: setup
	$(BIN)/python -m phi3v_recipe.synthetic --rows 3040 --seed 0 --out data/sample
