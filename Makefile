# densitylab: `make train` (set up + default experiment), `make test` (set up + test suite).
# Variables: PYTHON (interpreter that creates the venv), VENV, TORCH (pip spec for PyTorch; the
# default is the 2.13.0 release: its CPU wheel is on the project machines' disk, elsewhere pip
# fetches it from PyPI), ARGS (Hydra overrides for `make train`, e.g. ARGS="experiment=smoke").
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.densitylab-installed

.PHONY: setup train smoke lint format test test-fast bench clean help
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

train: setup            ## the default experiment (density_emergence) on the embedded synthetic corpus
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) train.py $(ARGS)

smoke: setup            ## the whole pipeline in under a minute
	WANDB_MODE=$${WANDB_MODE:-offline} $(PY) train.py experiment=smoke $(ARGS)

lint: setup             ## ruff: lint and format check (configured in pyproject.toml; lines <= 120)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup           ## ruff: fix what can be fixed and format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint              ## lint, then the whole test suite (fast unit tests + end-to-end runs marked slow)
	WANDB_MODE=offline $(PY) -m pytest -q

test-fast: setup        ## unit tests only
	WANDB_MODE=offline $(PY) -m pytest -q -m "not slow"

bench: setup            ## training throughput, plain PyTorch loop vs Lightning step
	$(PY) bench/throughput.py

clean:
	rm -rf outputs multirun .cache .pytest_cache

help:                   ## list the targets with what each does
	@echo 'usage: make [TARGET] [ARGS="hydra overrides"] [TORCH="pip spec"]; no TARGET: setup (.venv, torch, densitylab)'
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-10s %s\n", $$1, $$2 }'
