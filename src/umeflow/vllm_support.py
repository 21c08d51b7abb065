"""Refuse, before any step runs, a recipe whose GRPO asks for vLLM (``grpo.use_vllm: true``) where vLLM is missing.

vLLM is in the GPU image only (``images/train.Dockerfile``, installed from ``requirements-gpu-lock.txt``); the CPU
lock cannot hold it (it needs torchvision and an older transformers). Without this check a GPU preset run spends its
GPUs on SFT and then fails when TRL's GRPOTrainer starts. ``load_config`` stays a pure parse (tests load the GPU
recipes on CPU machines); the entry points that start steps call ``refuse_missing_vllm``: ``umeflow sft`` and
``umeflow grpo`` (and so every TrainJob node), ``umeflow run-local``, and the pipeline's SFT/GRPO tasks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from umeflow.config import GRPOConfig, load_config
from umeflow.errors import UserError
from umeflow.pipeline.images import TRAIN_IMAGE

GPU_DOCKERFILE = "images/train.Dockerfile"


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _is_bare(item: str) -> bool:
    return "." not in item.partition("=")[0]


def refuse_missing_vllm(recipe, overrides: list[str] | None = None, bare_keys_are_grpo: bool = False) -> None:
    """UserError when the resolved ``grpo.use_vllm`` is true and ``vllm`` is not importable here.

    ``recipe``: a recipe path or a list (recipe, then presets), as ``load_config`` takes. ``overrides``: ``--set``
    items; ``grpo.``-prefixed ones count, bare ``key=value`` ones only for the grpo step itself
    (``bare_keys_are_grpo``), since for ``umeflow sft`` they are SFT keys."""
    if vllm_importable():
        return
    overrides = [o for o in overrides or [] if bare_keys_are_grpo or not _is_bare(o)]
    if not load_config(GRPOConfig, recipe, overrides).use_vllm:
        return
    raise UserError(f"{_where_use_vllm_is_set(recipe, overrides)} asks for vLLM rollouts, but vllm is not installed "
                    f"in this environment; run it in the GPU image built from {GPU_DOCKERFILE} ({TRAIN_IMAGE}, "
                    f"which installs requirements-gpu-lock.txt with vLLM), or add --set grpo.use_vllm=false to "
                    f"generate rollouts with transformers")


def _where_use_vllm_is_set(recipe, overrides: list[str]) -> str:
    """The setting that won: the last override of use_vllm, else the last recipe file that sets it."""
    for item in reversed(overrides):
        if item.partition("=")[0].strip() in ("use_vllm", "grpo.use_vllm"):
            return f"--set {item}"
    paths = [p for p in (recipe if isinstance(recipe, (list, tuple)) else [recipe]) if p]
    for path in reversed(paths):
        section = (yaml.safe_load(Path(path).read_text()) or {}).get(GRPOConfig.SECTION) or {}
        if "use_vllm" in section:
            return f"recipe {path}: grpo.use_vllm={section['use_vllm']!r}"
    raise AssertionError("use_vllm is true but no recipe or override sets it")  # its default is False
