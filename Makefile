# skillstore developer commands. Every target does its own setup on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel keeps setup fast on machines without a GPU; a GPU user passes their own,
# e.g. `make setup TORCH_SPEC="torch==2.13.0 --index-url https://..."`, or installs torch first.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# Byte-compiling every installed file was most of a fresh setup (into new venvs, side by side:
# torch 86 s -> 25 s, transformers 84 s -> 40 s); Python compiles what it imports on first use.
PIP_FAST ?= --no-compile

# Nothing here ever downloads weights or datasets.
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_TELEMETRY=1

.PHONY: setup setup-dev demo experiment test test-reliability bench gpu-check lint screenshots clean

# `setup` installs what the service needs; `setup-dev` adds the test tools (schemathesis, moto,
# s3fs, flower, ruff), which take as long to install again as the service itself, so `make demo`
# on a fresh clone does not wait for them.
setup: $(VENV)/.setup-stamp
setup-dev: $(VENV)/.setup-dev-stamp

$(VENV)/.setup-stamp: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(PIP_FAST) $(TORCH_SPEC)
	$(PY) -m pip install -q $(PIP_FAST) -e .
	touch $@

$(VENV)/.setup-dev-stamp: $(VENV)/.setup-stamp
	$(PY) -m pip install -q $(PIP_FAST) -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/skillstore demo

# The full comparison (the built-in `full` spec: every method, three seeds) on one real worker;
# writes docs/reference-experiment.{md,html,json}, the committed reference result.
experiment: setup
	$(PY) -m bench.reference_experiment

# The reliability suite (tests/reliability: worker kills, broker restarts, database outages,
# corrupt files) has its own target; `make test` leaves it out to stay well inside 20 minutes.
test: setup-dev
	$(PY) -m pytest -m "not reliability" $(PYTEST_ARGS)

test-reliability: setup-dev
	$(PY) -m pytest -m reliability tests/reliability $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench

# Train, compress, apply and evaluate on one GPU in under 5 minutes; skips (exit 0) without CUDA.
gpu-check: setup
	PY=$(PY) bench/gpu_check.sh

# The console's screenshots in docs/ui (docs/ui.md), taken by the browser tests; a plain test run
# keeps its screenshots in pytest's temporary folders.
screenshots: setup-dev
	SKILLSTORE_UI_SHOTS=$(CURDIR)/docs/ui $(PY) -m pytest -q tests/ui/test_console.py

lint: setup-dev
	$(VENV)/bin/ruff check skillstore workers migrations tests bench

clean:
	rm -rf $(VENV) .skillstore .pytest_cache bench/out
