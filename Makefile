# Fresh machine, two commands:  `make run` (environment + default experiment), `make test` (environment + tests).
PYTHON ?= python3
VENV ?= .venv
# CPU build by default; a GPU user passes their CUDA build, e.g. make run TORCH_INDEX="--index-url <your CUDA wheel index>"
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin

.PHONY: install install-dev run test test-slow bench lint format clean

# `make run` installs what a run needs; the tests' tools (pytest, ruff, notebook, SLURM, PEFT) come
# with the first `make test`, so a fresh machine's first run does not wait for them.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

install-dev: $(BIN)/.installed-dev

run: install
	$(BIN)/python -m rtd_lab $(ARGS)

test: install-dev
	$(BIN)/ruff check rtd_lab tests benchmarks
	$(BIN)/ruff format --check rtd_lab tests benchmarks
	$(BIN)/python -m pytest -m "not slow and not gpu" $(ARGS)

test-slow: install-dev
	$(BIN)/python -m pytest -m "slow" $(ARGS)

bench: install
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/step_time.py
	$(BIN)/python benchmarks/decoding.py
	$(BIN)/python benchmarks/parsing.py
	$(BIN)/python benchmarks/kd_memory.py

lint: install-dev
	$(BIN)/ruff check rtd_lab tests benchmarks
	$(BIN)/ruff format --check rtd_lab tests benchmarks

format: install-dev
	$(BIN)/ruff format rtd_lab tests benchmarks
	$(BIN)/ruff check --fix rtd_lab tests benchmarks

clean:
	rm -rf outputs multirun .pytest_cache
