# syntax=docker/dockerfile:1.7
# Easel inference-api image: `services.inference.api`. Build from the repository root (the whole distribution is installed,
# with gRPC stubs generated from proto/ in the build stage, never copied by hand):
#   docker build -f deploy/docker/inference-api.Dockerfile -t easel/inference-api:0.1.0 .
# Base images are pinned by version; pin them by digest too in your registry mirror
# (--build-arg PYTHON_IMAGE=python:3.11.14-slim-trixie@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# ---- build: stubs + wheel ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install grpcio-tools==1.85.1
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY services/ services/
RUN python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. proto/easel/*/v1/*.proto \
 && find easel -type d -exec touch {}/__init__.py \; \
 && pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# torch is a dependency of the distribution: take the CPU build first (PyPI's default is the CUDA one,
# gigabytes this service never uses); the project install below then finds it satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
 && groupadd --gid 10001 easel \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin easel
WORKDIR /tmp
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
ENV EASEL_GRPC_HOST=0.0.0.0 EASEL_GRPC_PORT=50053 EASEL_METRICS_HOST=0.0.0.0 EASEL_METRICS_PORT=9103 \
    EASEL_MODELS_DIR=/models HF_HUB_OFFLINE=1
EXPOSE 50053 9103
ENTRYPOINT ["python", "-m", "services.inference.api"]
