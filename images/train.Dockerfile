# umeflow GPU training image: SFT, GRPO and evaluation on NVIDIA GPUs, single node or one node of a Kubeflow Trainer
# TrainJob. CUDA 13.0 toolkit (nvcc and g++ for DeepSpeed's JIT ops and Triton), Python 3.11, and exactly
# requirements-gpu-lock.txt (`make lock-gpu`): torch 2.13.0 built for CUDA 13.0, vLLM 0.31.0 for GRPO rollouts
# (grpo.use_vllm, the GPU presets), transformers 5.17.0, TRL, DeepSpeed; then flash-attn compiled for the target
# GPUs, umeflow and the recipes. This is the image to run configs/presets/*.yaml in: elsewhere `umeflow sft|grpo|
# run-local` refuse a recipe with grpo.use_vllm: true (umeflow/vllm_support.py).
#
#   docker build -f images/train.Dockerfile -t ghcr.io/umeflow/umeflow-train:0.1.0 .
#   docker build -f images/train.Dockerfile --build-arg FLASH_ATTN_CUDA_ARCHS="80;90;100" --build-arg MAX_JOBS=16 .
#
# flash-attn is compiled from source in the build stage (long: MAX_JOBS bounds the parallel nvcc jobs and so the
# build's memory); the runtime stage carries only the installed package.
#
# Base images are pinned by digest. The digests were taken from public projects and build logs that use them, not
# resolved against the registries from the project machine (it reaches no container registry); re-check before a
# release with
#   docker buildx imagetools inspect nvidia/cuda:13.0.0-devel-ubuntu24.04
#   docker buildx imagetools inspect python:3.11-slim-bookworm

# The uv the project's Makefile uses; its PyPI wheel is one self-contained binary (glibc >= 2.17), copied below.
FROM python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b AS uv
RUN pip install --no-cache-dir uv==0.13.9

# ---------------------------------------------------------------------------- base: CUDA toolkit + compiler + user
# torch 2.13.0's Linux wheels are built against CUDA 13.0 (cuda-toolkit 13.0.x), so the toolkit that compiles
# flash-attn and DeepSpeed's ops is 13.0 as well. The devel image (not runtime) is also the runtime base: DeepSpeed
# JIT-compiles its fused optimizers and Triton its kernels on the training node.
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04@sha256:1e8ac7a54c184a1af8ef2167f28fa98281892a835c981ebcddb1fad04bdd452d AS base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG UMEFLOW_UID=10001

# Ubuntu's archive keeps only the newest build of each package, so exact apt pins stop resolving within weeks; the
# OS is fixed by the base digest instead, and these are compiler/toolchain packages, not runtime dependencies.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid "${UMEFLOW_UID}" umeflow \
 && useradd --uid "${UMEFLOW_UID}" --gid umeflow --create-home --home-dir /home/umeflow \
        --shell /usr/sbin/nologin umeflow

# ------------------------------------------------------------------------ build: Python 3.11 + /opt/venv (all wheels)
FROM base AS build

COPY --from=uv /usr/local/bin/uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv

# The lock targets CPython 3.11 (Ubuntu 24.04 ships 3.12); uv installs a standalone 3.11 under /opt/python.
ARG PYTHON_VERSION=3.11
RUN uv python install "${PYTHON_VERSION}" && uv venv /opt/venv --python "${PYTHON_VERSION}"

# The image's own lock, not requirements-lock.txt: the CPU lock's transformers 5.23.0 is above what any vLLM that
# installs beside torch 2.13.0 accepts (vLLM 0.33.0 needs torch 2.14.0; 0.32.0 transformers<5.20 and TRL 1.16 allows
# vLLM<=0.31.0; 0.31.0 transformers<5.18), and vLLM pins torchvision/torchaudio, which the CPU lock never holds.
# requirements-gpu.in says why each pin differs; everything else keeps the CPU lock's version. torch comes from PyPI,
# whose Linux x86_64 torch 2.13.0 wheel is the CUDA 13.0 build (cuda-toolkit 13.0.x, matching the base image), so
# one index serves every package and no --torch-backend routing is needed. torchvision 0.28.0 is the CUDA build for
# this torch: here (CUDA torch) it imports, unlike on the CPU machines (DESIGN.md §4).
WORKDIR /src
COPY requirements-gpu-lock.txt ./
RUN uv pip install -r requirements-gpu-lock.txt \
 && /opt/venv/bin/python -c "import torch; v = torch.__version__; c = torch.version.cuda; \
        assert 'torch==' + v.split('+')[0] in open('requirements-gpu-lock.txt').read().split(), v; \
        assert c and c.startswith('13.'), ('not a CUDA 13 build', v, c)"

# flash-attn from source, against the torch just installed (no build isolation), for the GPU architectures named
# here (80 = A100, 90 = H100/H200, 100 = B200). FORCE_BUILD stops setup.py from fetching a prebuilt binary instead.
# The GPU lock constrains the build, so flash-attn's dependencies (torch, einops) cannot move off the lock.
ARG FLASH_ATTN_VERSION=2.8.3.post2
ARG FLASH_ATTN_CUDA_ARCHS="80;90"
ARG MAX_JOBS=8
RUN uv pip install "wheel==0.48.0" \
 && FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS="${FLASH_ATTN_CUDA_ARCHS}" MAX_JOBS="${MAX_JOBS}" \
    uv pip install --no-build-isolation --constraints requirements-gpu-lock.txt "flash-attn==${FLASH_ATTN_VERSION}"

COPY pyproject.toml README.md ./
COPY src ./src
# Nothing after the lock (flash-attn, umeflow) moved a locked version. vLLM is checked by find_spec (what umeflow's
# refusal checks) and its metadata, not imported: the build machine may have no GPU driver.
RUN uv pip install --no-deps . \
 && /opt/venv/bin/python -c "import umeflow, deepspeed, flash_attn, torchvision; \
        from importlib import metadata as m, util as u; \
        lock = dict(line.strip().split('==') for line in open('requirements-gpu-lock.txt') if '==' in line); \
        moved = {d: m.version(d) for d in lock if m.version(d).split('+')[0] != lock[d]}; \
        assert u.find_spec('vllm') and not moved, moved"

# ------------------------------------------------------------------------------------------------------- runtime
FROM base

ARG UMEFLOW_UID=10001
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="umeflow-train" \
      org.opencontainers.image.description="umeflow GPU training: CUDA 13.0, torch 2.13.0, vLLM 0.31.0, flash-attn, DeepSpeed" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/umeflow
COPY configs ./configs

# Caches that DeepSpeed, Triton and the hub write at run time go under the user's home (writable, and the place a
# pod mounts a cache volume).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/home/umeflow \
    UMEFLOW_STATE=/home/umeflow/state \
    HF_HOME=/home/umeflow/.cache/huggingface \
    TORCH_EXTENSIONS_DIR=/home/umeflow/.cache/torch_extensions \
    TRITON_CACHE_DIR=/home/umeflow/.cache/triton \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1

USER ${UMEFLOW_UID}:${UMEFLOW_UID}
CMD ["umeflow", "--help"]
