# umeflow light image: the CPU steps (assets, data, annotate, register, promote), the KFP launcher and glue tasks,
# the Helm chart's pipeline bootstrap Job and its MLflow tracking server. Python 3.11, the project's lock file as is
# (CPU torch 2.13.0+cpu, no CUDA, never torchvision), umeflow, the recipes and the compiled pipelines.
#
#   docker build -f images/light.Dockerfile -t ghcr.io/umeflow/umeflow-light:0.1.0 .
#
# Base images are pinned by digest. The digests were taken from public projects that build on them, not resolved
# against the registries from the project machine (it reaches no container registry); re-check before a release with
#   docker buildx imagetools inspect python:3.11-slim-bookworm

# ------------------------------------------------------------------------------------------------ build: /opt/venv
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS build

# The uv the project's Makefile uses (its PyPI wheel is a single self-contained binary).
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/venv

WORKDIR /src
RUN uv venv /opt/venv --python /usr/local/bin/python3.11

# The lock pins torch==2.13.0+cpu; that wheel lives on the PyTorch CPU index, which --torch-backend routes torch to
# (and only torch: everything else comes from PyPI exactly as locked).
COPY requirements-lock.txt ./
RUN uv pip install --torch-backend cpu -r requirements-lock.txt

COPY pyproject.toml README.md ./
COPY src ./src
RUN uv pip install --no-deps . \
 && /opt/venv/bin/python -c "import torch, umeflow; assert torch.__version__ == '2.13.0+cpu', torch.__version__" \
 && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is not None)"

# ------------------------------------------------------------------------------------------------------- runtime
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

ARG UMEFLOW_UID=10001
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="umeflow-light" \
      org.opencontainers.image.description="umeflow CPU steps, KFP launcher, pipeline bootstrap and MLflow server" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID so that Kubernetes' runAsNonRoot can verify it and volumes can be chowned to it.
RUN groupadd --gid "${UMEFLOW_UID}" umeflow \
 && useradd --uid "${UMEFLOW_UID}" --gid umeflow --create-home --home-dir /home/umeflow \
        --shell /usr/sbin/nologin umeflow

COPY --from=build /opt/venv /opt/venv
# Recipes and compiled pipelines: tasks resolve `configs/<recipe>.yaml` in the working directory, and the chart's
# bootstrap Job uploads pipelines/compiled/train_and_promote.yaml from here (one image = one pipeline version).
WORKDIR /opt/umeflow
COPY configs ./configs
COPY pipelines/compiled ./pipelines/compiled

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/home/umeflow \
    UMEFLOW_STATE=/home/umeflow/state \
    HF_HOME=/home/umeflow/.cache/huggingface \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1

USER ${UMEFLOW_UID}:${UMEFLOW_UID}
CMD ["umeflow", "--help"]
