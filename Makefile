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

.PHONY: run test test-slow lint typecheck proto models fetch-models bench clean distclean help browser setup venv

help:
	@echo "make run     start the whole studio at http://127.0.0.1:8080 (embedded Postgres and NATS)"
	@echo "make test    set up whatever is missing and run the whole test suite"
	@echo "make lint    ruff, mypy and bandit"
	@echo "make models  build the bundled test models into ./models (MODELS=org/name fetches hub models)"

# The virtual environment is rebuilt when the dependency list changes. torch is installed first and
# pinned: a looser requirement would pull the CUDA build and gigabytes of packages. `make run` installs
# only what running needs (.installed-run); `make test`, `lint` and the chart checks add the test tools
# (.installed). PYTHONWARNINGS hides setuptools' notice about the transitional compat editable mode,
# which this project uses on purpose (a plain path entry: the generated ./easel is found without a
# reinstall).
PIP_INSTALL := PYTHONWARNINGS=ignore $(PIP) install -q --disable-pip-version-check
$(VENV)/.installed-run: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[local,proto]' --config-settings editable_mode=compat
	@touch $@

$(VENV)/.installed: $(VENV)/.installed-run
	$(PIP_INSTALL) -e '.[local,proto,dev]' --config-settings editable_mode=compat
	@touch $@

venv: $(VENV)/.installed

# Stubs are generated, never committed: easel/ is ignored by git.
easel/.generated: $(VENV)/.installed-run $(PROTOS)
	rm -rf .easel.tmp && mkdir .easel.tmp
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -I proto --python_out=.easel.tmp \
		--grpc_python_out=.easel.tmp --mypy_out=.easel.tmp --mypy_grpc_out=.easel.tmp $(PROTOS)
	find .easel.tmp/easel -type d -exec touch {}/__init__.py \;
	@touch .easel.tmp/easel/.generated
	# Swapped in whole, so a running process never imports a half-written package.
	rm -rf easel && mv .easel.tmp/easel easel && rmdir .easel.tmp

proto: easel/.generated

# The marker depends on the builders: when bundled models are added (or rebuilt differently), the next
# `make models` runs the builder again, which builds the ones missing and leaves the others as they are.
$(MODELS_DIR)/.bundled: easel/.generated services/inference/testmodel.py services/inference/testmodel_flow.py
	$(PY) -m services.inference.fetch --models-dir $(MODELS_DIR) --bundled
	@touch $@

models: $(MODELS_DIR)/.bundled
ifneq ($(MODELS),)
	$(PY) -m services.inference.fetch --models-dir $(MODELS_DIR) $(MODELS)
endif

setup: easel/.generated $(MODELS_DIR)/.bundled

run: setup
	$(PY) -m services.local run

# The browser tests drive Debian's Chromium (a browser download is not possible on every machine).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium for the browser tests"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "make test needs chromium for the browser tests: sudo apt-get install chromium"; exit 1; \
		fi; }

test: setup venv browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Checks too slow for `make test` (long soak and load runs); CI runs them too.
test-slow: setup venv browser
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) || test $$? -eq 5  # 5: no slow test selected

bench: setup venv
	$(PY) bench/auth_throughput.py
	@if [ -f bench/control_plane.py ]; then $(PY) bench/control_plane.py; fi
	@if [ -f bench/contract_overhead.py ]; then $(PY) bench/contract_overhead.py; fi
	@if [ -f bench/gpu_throughput.py ]; then $(PY) bench/gpu_throughput.py; fi

lint: easel/.generated venv
	$(VENV)/bin/ruff check services tests bench
	$(VENV)/bin/ruff format --check services tests bench
	$(VENV)/bin/mypy services
	$(VENV)/bin/bandit -q -c pyproject.toml -r services

typecheck: easel/.generated venv
	$(VENV)/bin/mypy services

clean:
	rm -rf easel .pytest_cache .mypy_cache .ruff_cache

distclean: clean
	rm -rf $(VENV) .run $(MODELS_DIR)

# ---- deploy: container images and the Helm chart (deploy/, tests/chart/) -------------------------
IMAGES := gateway auth gallery inference-api inference-worker
IMAGE_PREFIX ?= easel
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' deploy/helm/easel/Chart.yaml)

.PHONY: images helm-lint test-chart

# Builds every image from the repository root where a Docker engine runs (IMAGE_PREFIX=registry/easel).
images:
	@if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then \
		echo "make images: no Docker engine on this machine (docker info failed): nothing was built."; \
		echo "The Dockerfiles are deploy/docker/<image>.Dockerfile; build them from the repository root where Docker runs."; \
		exit 1; \
	fi
	@set -e; for image in $(IMAGES); do \
		echo "docker build -f deploy/docker/$$image.Dockerfile -t $(IMAGE_PREFIX)/$$image:$(IMAGE_TAG) ."; \
		docker build -f deploy/docker/$$image.Dockerfile -t $(IMAGE_PREFIX)/$$image:$(IMAGE_TAG) .; \
	done

# Helm's own linter (strict) plus schema validation of every rendered manifest; no helm binary needed.
helm-lint: $(VENV)/.installed
	$(PY) -m tests.chart.lint

test-chart: $(VENV)/.installed
	$(PY) -m pytest -q tests/chart
