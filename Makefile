# Each target bootstraps .venv on a fresh machine: CPU torch first (pip takes the wheel on disk;
# a bare `torch` requirement would pull a multi-GB CUDA build), then the package with its dev extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ymn-installed
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= runs/demo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export WANDB_MODE ?= offline

.PHONY: install demo test test-slow test-gpu bench lint format clean tiny-base

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m ymn.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

test-gpu: $(STAMP)  # on a CUDA machine (the CPU torch of `make install` sees none)
	$(BIN)/python -m pytest -q -m gpu

bench: $(STAMP)
	$(BIN)/python -m experiments.bench.run_all

tiny-base: $(STAMP)
	$(BIN)/python -m ymn.model.tiny_base

lint: $(STAMP)
	$(BIN)/ruff check ymn tests experiments
	$(BIN)/ruff format --check ymn tests experiments

format: $(STAMP)
	$(BIN)/ruff check --fix ymn tests experiments
	$(BIN)/ruff format ymn tests experiments

clean:
	rm -rf $(VENV) runs outputs multirun wandb .pytest_cache .ruff_cache *.egg-info
