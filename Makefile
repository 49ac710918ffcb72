# `make train` sets up a local virtual environment and runs the main job;
# `make test` sets it up and runs the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch: an unpinned `torch` can pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup train test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

train: setup
	$(VENV)/bin/learnloop train

test: setup
	$(PY) -m pytest -q
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/optimizer.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
