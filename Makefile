# make test: creates .venv when missing, installs the pinned versions, runs every test.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data lives beside the checkout in ../shared/data (never copied into the repo).
VAE_DATA_DIR ?= $(abspath ../shared/data)
export VAE_DATA_DIR
export JAX_PLATFORMS ?= cpu

.PHONY: install test train clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e ".[torch,tf,test]"
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/python -m pytest -q tests parity_tests

train: install
	$(BIN)/vae-jax train --workdir runs/train-$$(date +%Y%m%d-%H%M%S) $(ARGS)

clean:
	rm -rf $(VENV) runs
