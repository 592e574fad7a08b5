# syntax=docker/dockerfile:1.7
# Easel inference worker image: `services.inference.worker` on a CUDA PyTorch base. Build from the
# repository root (gRPC stubs are generated from proto/ in the build stage, never copied by hand):
#   docker build -f deploy/docker/inference-worker.Dockerfile -t easel/inference-worker:0.1.0 .
# The base must carry the torch version the project pins (torch==2.13.0): the project is installed
# against it without reinstalling torch. Pin both bases by digest in your registry mirror too.
# The chart's model-prefetch Job runs `python -m services.inference.fetch` from this image.
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie
ARG TORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime

# ---- build: stubs + wheel (pure Python, so it installs into the base image's Python) -------------
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

# ---- runtime: CUDA PyTorch ---------------------------------------------------------------------
FROM ${TORCH_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=build /wheels /wheels
# The constraint holds torch at the build already in the image (a CUDA wheel, e.g. 2.13.0+cu128,
# which satisfies the project's torch==2.13.0): pip fails rather than swap it for another build.
RUN pip list --format=freeze | grep -i '^torch==' > /tmp/torch-constraint.txt \
 && pip install --constraint /tmp/torch-constraint.txt /wheels/*.whl \
 && rm -rf /wheels /tmp/torch-constraint.txt \
 && python -c "import torch, diffusers; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__" \
 && groupadd --gid 10001 easel \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin easel
WORKDIR /tmp
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# Workers never reach a model hub (the prefetch Job, which also uses this image, sets HF_HUB_OFFLINE=0).
ENV EASEL_METRICS_HOST=0.0.0.0 EASEL_METRICS_PORT=9104 EASEL_MODELS_DIR=/models \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
EXPOSE 9104
# SIGTERM (Kubernetes stop) makes the worker stop fetching, finish the batch in hand and drain NATS.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "services.inference.worker"]
