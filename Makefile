# make demo: install, then run the whole pipeline on the embedded default (offline, CPU, minutes).
# make test: install, then run the test suite (it includes one end-to-end run of the demo pipeline).
# GPU machines: install the CUDA build of torch you need first, then `make install TORCH_SPEC=`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this torch release is small; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Stages call papermill and python: the venv's must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast ablation bench-retrieval bench-train check-params clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[demo,dev]"
	touch $@

# The demo is offline by construction: nothing it runs may reach the hub.
demo: install
	cd demo && python -m colbench.config params.yaml
	cd demo && HF_HUB_OFFLINE=1 dvc repro
	@echo "Report: demo/reports/README.md (executed notebooks rendered in demo/reports/html/)"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow"

# Two demo ablations, compared in the demo report (see README, "Ablations"). --temp runs each in a
# temporary copy, so the workspace keeps the demo's own params and results.
ablation: install
	cd demo && HF_HUB_OFFLINE=1 dvc exp run --temp -S train.loss.normalize_scores=false
	cd demo && HF_HUB_OFFLINE=1 dvc exp run --temp -S train.loss.masked_positions=exclude
	cd demo && python -m colbench.experiments --out reports/experiments.json
	cd demo && HF_HUB_OFFLINE=1 dvc repro

check-params: install
	$(BIN)/python -m colbench.config params.yaml
	cd demo && ../$(BIN)/python -m colbench.config params.yaml

bench-retrieval: install
	$(BIN)/python bench/retrieval.py

bench-train: install
	$(BIN)/python bench/train_cpu.py

clean-demo:
	cd demo && rm -rf data models reports/notebooks reports/html reports/figures reports/metrics reports/costs reports/per_query reports/train dvc.lock
