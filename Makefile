# pillm — the paper repository. `make` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= paper
KERNEL := pillm
# Idle OpenMP threads must not spin: on small CPU machines spinning threads slowed MKL's eigvalsh 300×.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help setup lock tex test test-fast experiments paper arxiv bench clean

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[1m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: PROFILE=smoke|paper  FORCE=1  ONLY=<experiment>"

# Exact versions from requirements.lock (pyproject.toml keeps the ranges): a fresh clone renders the committed
# figures byte for byte, which a newer matplotlib would not.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (pillm)" >/dev/null
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install pillm with the locked dependencies (idempotent; fast when done)

# fonttools stays at the version that embedded the committed figures' fonts (a newer one rewrites them).
lock: setup ## Re-resolve requirements.lock from pyproject.toml's ranges (then check `make paper`, commit)
	$(PY) -m pip install -q --upgrade -e '.[dev]' 'fonttools==4.66.1'
	{ sed -n '1,3p' requirements.lock; $(PY) -m pip freeze --exclude-editable | grep -v '^#' | grep -iv '^pillm' \
	  | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > requirements.lock.new && mv requirements.lock.new requirements.lock

test: setup ## Run the test suite (pytest + nbval), CPU only
	$(PY) -m pytest -q

test-fast: setup ## Unit tests only (no notebooks, no end-to-end)
	$(PY) -m pytest -q -m "not slow"

experiments: setup ## Run experiments missing or stale for PROFILE (FORCE=1 reruns, ONLY=name filters)
	$(PY) -m pillm experiments --profile $(PROFILE) $(if $(FORCE),--force) $(if $(ONLY),--only $(ONLY))

# TeX for the paper (Debian packages, no recommends); installed only when latexmk/pdflatex are missing.
TEX_PACKAGES := texlive-latex-extra texlive-fonts-recommended texlive-science latexmk
tex: ## Install TeX for the paper if missing (apt-get, --no-install-recommends; sudo when not root)
	@if command -v latexmk >/dev/null 2>&1 && command -v pdflatex >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: latexmk/pdflatex not found and apt-get is not available; install TeX Live with latexmk" \
	       "(packages: $(TEX_PACKAGES))" >&2; exit 1; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	  echo "error: latexmk/pdflatex not found; as root run: apt-get install --no-install-recommends" \
	       "$(TEX_PACKAGES)" >&2; exit 1; fi; \
	echo "installing TeX: $(TEX_PACKAGES)"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES) \
	  >/dev/null || { echo "error: installing TeX with apt-get failed" >&2; exit 1; }

paper: setup tex ## Build paper/build/main.pdf from committed results
	$(PY) -m pillm paper --profile $(PROFILE)

arxiv: paper ## Build paper/build/arxiv.tar.gz and prove it compiles
	$(PY) -m pillm arxiv --profile $(PROFILE)

bench: setup ## GPU benchmarks into results/bench/<device>.json
	$(PY) -m pillm bench

clean: ## Remove build outputs and caches (keeps results/ and .venv)
	rm -rf paper/build .cache .pytest_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
