# Set-up and everyday commands. `make serve` and `make test` each work from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS_ROOT ?= models
# Pinned so that `pip install --group` (PEP 735) is available, whatever pip the venv starts with.
PIP_VERSION := 26.3

RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check --quiet -c constraints.txt

.PHONY: help install install-dev model serve test lint format bench lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet pip==$(PIP_VERSION)

$(RUNTIME_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e .
	touch $@

$(DEV_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e '.[train]' --group dev
	touch $(RUNTIME_STAMP) $@

install: $(RUNTIME_STAMP)  ## create the venv and install the service's dependencies

install-dev: $(DEV_STAMP)  ## also install the training extra and the dev tools

model: $(RUNTIME_STAMP)  ## build the default model if it is missing or stale (seconds when present)
	$(PY) -m training import-dlib --models-root $(MODELS_ROOT)

serve: model  ## install, build the default model if needed, and run the service
	$(PY) -m app

lint: $(DEV_STAMP)  ## ruff, ruff format --check, mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(DEV_STAMP)  ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: $(DEV_STAMP) model lint  ## install, build the default model if needed, lint and run the tests
	$(PY) -m pytest

bench: $(DEV_STAMP) model  ## run the benchmarks (prints their figures)
	$(PY) benchmarks/embedding_tower.py

lock: $(DEV_STAMP)  ## rewrite constraints.txt from the venv (after changing pins)
	$(PY) -m pip freeze --exclude-editable --disable-pip-version-check | grep -v '^pip==' > constraints.txt

clean:  ## remove the venv and caches (keeps built models)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
