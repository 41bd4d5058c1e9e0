# make test:      creates .venv when missing, installs the pinned versions, runs `make lint`, then every
#                 test (tests/ + parity_tests/).
# make test-fast: the same minus the tests marked `slow` (marked in each test file).
# make lint:      ruff (lint and format check) on the whole tree and mypy on vae_jax/, configured in
#                 pyproject.toml; ruff and mypy come with the `test` extra (versions in constraints.txt).
# make parity:    the JAX/PyTorch parity suite alone; writes parity-report/parity.md and junit.xml.
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

.PHONY: install lint test test-fast parity train clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# `pip install -e .` builds vae_jax/onednn_conv.cc into the package (CMakeLists.txt, by scikit-build-core
# in an isolated build environment): the oneDNN convolutions the conv models use on the CPU.
# ONEDNN=0 make install: without them (the conv models then run XLA's forms).
ONEDNN ?= 1
EXTRAS := dev
ifeq ($(ONEDNN),0)
BUILD_OPTS := -C cmake.define.VAE_JAX_ONEDNN=OFF
endif
# The build environment gets the pinned versions too (pip's -c does not reach it; PIP_CONSTRAINT does).
PIP_INSTALL := PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/pip install -q -c constraints.txt

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt CMakeLists.txt
	$(PIP_INSTALL) $(BUILD_OPTS) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# Lint first, then the tests: a lint failure stops the run before pytest starts.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy vae_jax

test: install lint
	$(PYTEST) -q tests parity_tests

test-fast: install lint
	$(PYTEST) -q -m "not slow" tests parity_tests

# Rebuild the oneDNN kernels after editing vae_jax/onednn_conv.cc (the editable install rebuilds them in build/).
.PHONY: onednn
onednn: $(VENV)/.installed
	$(PIP_INSTALL) $(BUILD_OPTS) --no-deps -e .

# The parity suite alone, in one run that also writes its artifact: parity-report/parity.md (the largest
# JAX-vs-torch error per model, direction, dtype and quantity, with its bound) and parity-report/junit.xml.
PARITY_REPORT_DIR ?= parity-report
parity: install
	$(PYTEST) -q parity_tests --parity-report $(PARITY_REPORT_DIR) --junitxml=$(PARITY_REPORT_DIR)/junit.xml

# The main job: `vae-jax train` with no options (vae_jax/configs/digits.py: the chapter's VAE on the
# embedded digits, 150 epochs of batch 32). ARGS are passed on, e.g. ARGS="--dataset mnist --data-dir DIR"
# (the chapter's setting, vae_jax/configs/mnist.py) or ARGS="--config NAME".
train: install
	$(BIN)/vae-jax train --workdir runs/train-$$(date +%Y%m%d-%H%M%S) $(ARGS)

clean:
	rm -rf $(VENV) runs build parity-report
