# make help lists the targets. Every target sets up .venv first if it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.DEFAULT_GOAL := help

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

.PHONY: help setup train test test-all bench tensorboard clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv and install the project (torch 2.14.1, CPU or GPU)

train: $(VENV)/.installed  ## the main job: train mnist_fnn on the embedded MNIST subset
	$(PY) src/train.py $(ARGS)

test: $(VENV)/.installed  ## the default test suite (minutes on 2 cores)
	$(PY) -m pytest $(ARGS)

test-all: $(VENV)/.installed  ## every test, the slow ones too
	$(PY) -m pytest -m "" $(ARGS)

tensorboard: $(VENV)/.installed  ## browse every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean:  ## delete outputs/ (all runs!) and caches, keep .venv
	rm -rf outputs/runs outputs/sweeps .pytest_cache
