# Two entry points for a fresh machine: `make test` (install, then run the suite) and, with the end-to-end work,
# `make demo`. Both install into ./.venv; torch and torchvision are pinned to the builds the machines carry on disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

test: install
	$(PY) -m pytest -q tests

lint: install
	$(PY) -m ruff check modeling processing training hub_upload tests bench

bench: install
	$(PY) bench/model_bench.py --preset tiny
