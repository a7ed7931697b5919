# pillm — the paper repository. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= paper
KERNEL := pillm

.PHONY: help setup test test-fast experiments paper arxiv bench clean

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: PROFILE=smoke|paper  FORCE=1  ONLY=<experiment>"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (pillm)" >/dev/null
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install pillm with dev extras (idempotent; fast when done)

test: setup ## Run the test suite (pytest + nbval), CPU only
	$(PY) -m pytest -q

test-fast: setup ## Unit tests only (no notebooks, no end-to-end)
	$(PY) -m pytest -q -m "not slow"

experiments: setup ## Run experiments missing or stale for PROFILE (FORCE=1 reruns, ONLY=name filters)
	$(PY) -m pillm experiments --profile $(PROFILE) $(if $(FORCE),--force) $(if $(ONLY),--only $(ONLY))

paper: setup ## Build paper/build/main.pdf from committed results
	$(PY) -m pillm paper --profile $(PROFILE)

arxiv: paper ## Build paper/build/arxiv.tar.gz and prove it compiles
	$(PY) -m pillm arxiv --profile $(PROFILE)

bench: setup ## GPU benchmarks into results/bench/<device>.json
	$(PY) -m pillm bench

clean: ## Remove build outputs and caches (keeps results/ and .venv)
	rm -rf paper/build .cache .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
