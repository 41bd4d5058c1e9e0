# make test:      creates .venv when missing, installs the pinned versions, runs every test (tests/ + parity_tests/).
# make test-fast: the same minus the tests marked `slow` (tests/conftest.py lists them).
# make parity:    the JAX/PyTorch parity suite alone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest
# Real data lives beside the checkout in ../shared/data (never copied into the repo). Exported only
# when that folder exists, and never over a VAE_DATA_DIR set by the user (environment or command
# line): without it the tests that need real data skip with a reason.
SHARED_DATA := $(abspath ../shared/data)
ifeq ($(origin VAE_DATA_DIR),undefined)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export VAE_DATA_DIR := $(SHARED_DATA)
endif
endif
export JAX_PLATFORMS ?= cpu

.PHONY: install test test-fast parity train clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[torch,tf,test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PYTEST) -q tests parity_tests

test-fast: install
	$(PYTEST) -q -m "not slow" tests parity_tests

parity: install
	$(PYTEST) -q parity_tests

# The main job: the chapter's VAE on the embedded digits, long enough (150 epochs of 47 steps, about a
# minute here) for its samples to look like digits. ARGS come last and win, e.g. ARGS="--epochs 10".
train: install
	$(BIN)/vae-jax train --epochs 150 --batch-size 32 --workdir runs/train-$$(date +%Y%m%d-%H%M%S) $(ARGS)

clean:
	rm -rf $(VENV) runs
