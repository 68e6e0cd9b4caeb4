# The usual tasks, one command each (CONTRIBUTING.md explains the loop). Run inside the project's virtual
# environment, or set PYTHON=.venv/bin/python.
PYTHON ?= python

.PHONY: setup lint format types fast test bench graph

setup:  ## a virtual environment with the project and its dev tools (torch from this machine's disk)
	python3 -m venv .venv
	.venv/bin/python -m pip install --upgrade pip
	.venv/bin/python -m pip install torch==2.14.1 torchvision==0.29.1
	.venv/bin/python -m pip install -e ".[dev]"
	.venv/bin/pre-commit install

lint:  ## ruff's lint and format checks
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## apply ruff's fixes and formatting
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

types:  ## mypy over embedding/ (settings in pyproject.toml)
	$(PYTHON) -m mypy

fast:  ## the inner loop: every test that starts no Ray and no job subprocess
	$(PYTHON) -m pytest -q -m "not slow"

test:  ## the full suite: what CI runs
	$(PYTHON) -m pytest -q

graph:  ## the package's import graph: cycles, longest chain, modules per folder
	$(PYTHON) tools/import_graph.py --chain

bench:  ## list the benchmark scripts (each writes its figures for docs/benchmarks.md)
	@ls benchmarks/*.py | grep -v __init__ | sed 's|benchmarks/\(.*\)\.py|python -m benchmarks.\1 --help|'
