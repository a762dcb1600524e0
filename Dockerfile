# modeldock: the inference server in a slim, non-root image.
#
#   docker build -t modeldock:0.1.0-cpu .
#   docker build -t modeldock:0.1.0-cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# The CUDA variant differs only in the torch wheel: CUDA wheels carry their own CUDA libraries,
# and the node's driver comes in through the NVIDIA container runtime.
#
# Offline builds: put wheels of torch, the project's dependencies and setuptools in build/wheels/
# (e.g. `pip wheel -w build/wheels torch==2.13.0 . setuptools`) and pass
#   --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/context/build/wheels
# PYTHON_IMAGE may be any Debian-like image with python3 and its venv module (3.10 or later).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment with pinned torch, then the project ----------------------
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Unset (the default): torch from TORCH_INDEX, the rest from PyPI. pip reads both from the
# environment; the build context is mounted at /context for a folder of wheels in it.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS

# pip compiles bytecode at install time, so the read-only runtime never needs to write any.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from its own index, so that the project's `torch>=2.4` is already satisfied and
# pip never resolves a different (multi-GB) build from PyPI.
RUN --mount=type=bind,target=/context \
    pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY model_store/ model_store/
COPY server/ server/
RUN --mount=type=bind,target=/context \
    pip install --no-cache-dir . \
    && python -I -c "import torch, server.cli; print('torch', torch.__version__)"

# ---- runtime: the environment only, no compilers, no sources --------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# The only place the server writes: its cache dir (metrics files) and multiprocessing's TMPDIR.
# In Kubernetes an emptyDir is mounted here and the root filesystem is read-only.
RUN groupadd --system --gid 10001 modeldock \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/cache/modeldock --shell /usr/sbin/nologin modeldock \
    && mkdir -p /models /etc/modeldock /var/cache/modeldock \
    && chown 10001:10001 /var/cache/modeldock

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/cache/modeldock \
    TMPDIR=/var/cache/modeldock \
    MODELDOCK_CACHE_DIR=/var/cache/modeldock

# /models: the store (mount it, read-only is enough).
# /etc/modeldock/config.yaml: optional config; pass `--config /etc/modeldock/config.yaml`
# or set MODELDOCK_CONFIG to use it.
WORKDIR /var/cache/modeldock
USER 10001:10001
EXPOSE 8000 8001

# Healthy once every model has a validated version (503 while loading or draining).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-I", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]

# Extra arguments are appended, e.g. `docker run IMAGE --config /etc/modeldock/config.yaml`.
# Flags win over the config file: the store, address and port are fixed by the image.
ENTRYPOINT ["modeldock", "serve", "--store", "/models", "--host", "0.0.0.0", "--port", "8000"]
