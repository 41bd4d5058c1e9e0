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

# ONEDNN=1 (the default): also oneDNN's wheels (the `onednn` extra) and csrc/onednn_conv.cc built
# with g++ into csrc/build/libvae_onednn_conv.so, the convolutions the conv models use on the CPU
# (vae_jax.onednn_conv). ONEDNN=0 make install: without it; the conv models then run XLA's forms.
ONEDNN ?= 1
ifeq ($(ONEDNN),1)
EXTRAS := torch,tfds,tf,test,onednn
ONEDNN_LIB := csrc/build/libvae_onednn_conv.so
else
EXTRAS := torch,tfds,tf,test
ONEDNN_LIB :=
endif

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

csrc/build/libvae_onednn_conv.so: csrc/onednn_conv.cc vae_jax/onednn_build.py $(VENV)/.installed
	$(BIN)/python -m vae_jax.onednn_build

install: $(VENV)/.installed $(ONEDNN_LIB)

# Lint first, then the tests: a lint failure stops the run before pytest starts.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy vae_jax

test: install lint
	$(PYTEST) -q tests parity_tests

test-fast: install lint
	$(PYTEST) -q -m "not slow" tests parity_tests

# Rebuild the oneDNN convolution library (e.g. after editing csrc/onednn_conv.cc).
.PHONY: onednn
onednn: $(VENV)/.installed
	$(BIN)/pip install -q -c constraints.txt -e ".[onednn]"
	$(BIN)/python -m vae_jax.onednn_build

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
	rm -rf $(VENV) runs csrc/build parity-report
