# Easel — the two commands are `make run` and `make test`; everything else is a step they use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROTOS := $(shell find proto -name '*.proto')
MODELS_DIR ?= models
MODELS ?=
PYTEST_ARGS ?=

.PHONY: run test test-slow lint typecheck proto models fetch-models bench clean distclean help

help:
	@echo "make run     start the whole studio at http://127.0.0.1:8080 (embedded Postgres and NATS)"
	@echo "make test    set up whatever is missing and run the whole test suite"
	@echo "make lint    ruff, mypy and bandit"
	@echo "make models  build the bundled test models into ./models (MODELS=org/name fetches hub models)"

# The virtual environment is rebuilt when the dependency list changes. torch is installed first and
# pinned: a looser requirement would pull the CUDA build and gigabytes of packages.
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[local,dev]' --config-settings editable_mode=compat
	@touch $@

venv: $(VENV)/.installed

# Stubs are generated, never committed: easel/ is ignored by git.
easel/.generated: $(VENV)/.installed $(PROTOS)
	rm -rf easel
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. $(PROTOS)
	find easel -type d -exec touch {}/__init__.py \;
	@touch $@

proto: easel/.generated

$(MODELS_DIR)/.bundled: easel/.generated
	$(PY) -m services.inference.fetch --models-dir $(MODELS_DIR) --bundled
	@touch $@

models: $(MODELS_DIR)/.bundled
ifneq ($(MODELS),)
	$(PY) -m services.inference.fetch --models-dir $(MODELS_DIR) $(MODELS)
endif

setup: easel/.generated $(MODELS_DIR)/.bundled

run: setup
	$(PY) -m services.local run

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: easel/.generated
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/mypy services
	$(VENV)/bin/bandit -q -c pyproject.toml -r services

typecheck: easel/.generated
	$(VENV)/bin/mypy services

clean:
	rm -rf easel .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .run $(MODELS_DIR)
