# VFM-VAE + latent diffusion. `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Hub access off before any Python starts (timm/huggingface_hub ignore it when set later).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint format clean

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project (a no-op when done)

test: install ## Run the whole test suite (slow and multi-process tests included)
	$(PY) -m pytest -q

test-fast: install ## Run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

lint: install ## Ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install ## Ruff autofix and format
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean: ## Remove caches and demo outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache outputs/demo
