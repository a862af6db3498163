# make demo: install, then run the whole pipeline on the embedded default (offline, CPU, minutes).
# make test: install, then run the test suite (it runs the README's commands as a user would).
# make study: the full study (GPU and internet; offline it says what is missing and computes nothing).
# GPU machines: install the CUDA build of torch you need into .venv first, then `make install TORCH_SPEC=`
# (README, "Run the full study").

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# torch==2.13.0 is the small CPU wheel only where pip finds that wheel (this repository's machine: a local wheel, pip's
# find-links); from PyPI on Linux it is the multi-GB CUDA build. TORCH_INDEX, when set, is the index torch alone is
# installed from: `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` gets the CPU wheel anywhere.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Stages call papermill and python: the venv's must come first on PATH.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
# Demo experiments (`make ablation`, `make seeds`, `make encoders`): each setting is one `dvc exp run --temp` of
# the demo up to its evaluation (demo/params.yaml; EXP_FLAGS adds -S settings to every one of them).
ABLATIONS ?= train.loss.normalize_scores=false train.loss.masked_positions=exclude
SEEDS ?= 1 2 3
# The tiny random ModernBERT and BERT of the tests: the same recipe on two architectures, at toy scale.
ENCODERS ?= ../tests/fixtures/pylate/modernbert/base ../tests/fixtures/pylate/bert/base
EXP_FLAGS ?=

.PHONY: install demo study test test-fast ablation seeds encoders check-params docs bench-retrieval bench-train bench-prepare bench-gpu clean-demo

install: $(VENV)/.installed

# torch through pip, which honours the machine's pip configuration (on this repository's machine, where the local
# CPU wheel lies); the rest through uv (from PyPI, into the venv), which installs them in half pip's time (75 s
# instead of 160 on this repository's machine), and keeps the torch already there. Both compile bytecode ahead:
# where Python writes none on import (PYTHONDONTWRITEBYTECODE, set on this repository's machine), every process
# would compile torch and transformers.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) )"$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e ".[demo,dev]"
	touch $@

# The demo is offline by construction: nothing it runs may reach the hub.
demo: install
	python -m colbench.config demo/params.yaml
	HF_HUB_OFFLINE=1 dvc repro report@demo
	@echo "Report: demo/reports/README.md (executed notebooks rendered in demo/reports/html/)"

# The study: its resources are checked first (offline, this lists what is missing and stops).
study: install
	python -m colbench.config params.yaml
	python -m colbench.preflight params.yaml
	dvc repro report@study
	@echo "Report: reports/README.md"

# Two test processes (pytest-xdist); `make demo`, which the demo's journeys share, builds beside the other tests
# (tests/conftest.py), which run in a session of their own to leave it the CPU (tests/own_session.sh; exec: the
# SIGTERM make passes on, a CI runner's, reaches that script, not a shell between that would die of it).
PYTEST = python -m pytest -n 2 --dist worksteal

test: install
	HF_HUB_OFFLINE=1 exec bash tests/own_session.sh $(PYTEST) --durations=15

test-fast: install
	HF_HUB_OFFLINE=1 $(PYTEST) -m "not slow"

# Each runs its experiments (--temp: in a temporary copy, the workspace keeps the demo's own params and results),
# snapshots them into demo/reports/experiments.json and refreshes the demo's report (see README, "Ablations").
define demo_experiments
	for setting in $(1); do \
	  HF_HUB_OFFLINE=1 dvc exp run --temp $(EXP_FLAGS) -S "demo/params.yaml:$$setting" evaluate@demo || exit 1; \
	done
	cd demo && python -m colbench.experiments --out reports/experiments.json
	HF_HUB_OFFLINE=1 dvc repro report@demo
endef

ablation: install
	$(call demo_experiments,$(ABLATIONS))

seeds: install
	$(call demo_experiments,$(foreach seed,$(SEEDS),train.seed=$(seed)))

encoders: install
	$(call demo_experiments,$(foreach encoder,$(ENCODERS),train.base_model=$(encoder)))

check-params: install
	python -m colbench.config params.yaml
	python -m colbench.config demo/params.yaml

# docs/input-errors.md is generated from the code's raise sites.
docs: install
	python -m colbench.errors docs/input-errors.md

bench-retrieval: install
	python bench/retrieval.py
	python bench/index_threads.py

bench-train: install
	python bench/train_cpu.py
	python bench/packing_cpu.py

# The prepare stage and the train stage beside its steps at the study's size (CPU, about 10 minutes, 8 GB of disk).
bench-prepare: install
	python bench/prepare_cpu.py

# The GPU benchmarks (training levers, the study's other stages): one command, at most 7.5 minutes on one H200 (it ends itself by 450 s).
bench-gpu: install
	bash bench/gpu.sh

# Removes the demo's outputs (DVC keeps them in its cache: `dvc checkout` brings them back).
clean-demo:
	cd demo && rm -rf data models reports/notebooks reports/html reports/figures reports/metrics reports/costs \
	  reports/per_query reports/train reports/study_table.md reports/study_table.csv reports/costs.csv \
	  reports/seeds.csv reports/encoders.csv reports/README.md reports/provenance.json
