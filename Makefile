# Two entry points for a fresh machine: `make demo` (install, then run the main job) and `make test` (install, then
# run the suite, notebooks included). Both install into ./.venv; torch and torchvision are pinned to the builds the machines carry on disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test demo lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[dev]" $(TORCH_PINS)
	touch $@

test: install
	$(PY) -m pytest -q --nbmake tests notebooks

# The whole pipeline on a generated video: codec sampling, processor, model, answer, visualisation PNG.
# Default model: the toy curriculum's, trained on first use (about 5 minutes on CPU) and cached in
# ~/.cache/llava_onevision2 (LLAVA_OV2_CACHE). MODEL=/path/to/checkpoint VIDEO=/path/to/video run a real one.
demo: install
	$(PY) -m llava_onevision2.hub_upload demo --output demo_output $(if $(MODEL),--model $(MODEL)) $(if $(VIDEO),--video $(VIDEO))

lint: install
	$(PY) -m ruff check modeling processing training hub_upload tests bench

bench: install
	$(PY) bench/model_bench.py --preset tiny
