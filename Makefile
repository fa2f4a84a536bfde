# Two commands for a fresh machine that has python3 and pip:
#   make demo   set up .venv, then run the quickstart (train, evaluate, draw on synthetic data)
#   make test   set up .venv, then lint, type-check and run the test suite
# Setup is idempotent: once .venv is installed and pyproject.toml unchanged, it takes seconds.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.detforge-setup
# The torch build to install before detforge. On a machine without CUDA this is the CPU wheel
# (torch==2.13.0 resolves to the local +cpu wheel), so that detforge's `torch` requirement is
# already met and pip never pulls CUDA packages. Override, e.g. `make test TORCH=torch==2.5.1`.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup demo demo-ops test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install "$(TORCH)"
	$(VPY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m detforge.quickstart

demo-ops: $(STAMP)
	$(VPY) -m detforge.demo

lint: $(STAMP)
	$(VPY) -m ruff check detforge tests benchmarks configs
	$(VPY) -m ruff format --check detforge tests benchmarks configs
	$(VPY) -m mypy

test: lint
	@$(VPY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; the suite is broken" >&2; fi; \
	exit $$rc

bench: $(STAMP)
	$(VPY) benchmarks/bench_ops.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
