# Two entry points for a fresh machine: `make demo` (install, then run the main job) and `make test` (install, then
# run the suite, notebooks included). Both install into ./.venv; torch and torchvision are pinned to the builds the machines carry on disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo toy-model lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

test: install
	$(PY) -m pytest -q --nbmake tests notebooks

# The main job in seconds: a generated brief-event clip through codec sampling and through uniform frames at the same
# token budget, the shipped toy model's two answers, and a picture of the selection (demo_output/).
# MODEL=/path/to/checkpoint VIDEO=/path/to/video [QUESTION="..."] run a real one.
demo: install
	$(PY) -m llava_onevision2.demo --output demo_output $(if $(MODEL),--model $(MODEL)) $(if $(VIDEO),--video $(VIDEO)) $(if $(QUESTION),--question "$(QUESTION)")

# Rebuild the demo's shipped toy model with the toy curriculum (about 11 minutes on 2 CPU cores).
toy-model: install
	$(PY) -m llava_onevision2.training.toy ship --output runs/toy --into demo/toy_model

lint: install
	$(PY) -m ruff check modeling processing training hub_upload tests bench

bench: install
	$(PY) bench/model_bench.py --preset tiny
