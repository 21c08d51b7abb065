"""Container images the pipeline's tasks run in, pinned by digest or exact version tag.

``images/train.Dockerfile`` (CUDA, torch, DeepSpeed, umeflow) runs the GPU steps; ``images/light.Dockerfile``
(kfp, mlflow, boto3, umeflow without CUDA) runs data preparation, planning, aggregation, registry and promotion.
Both are tagged with the project version, so the compiled pipeline of a release names exactly the images built from
it. A digest is better still: set ``UMEFLOW_TRAIN_IMAGE`` / ``UMEFLOW_LIGHT_IMAGE`` to ``repo@sha256:…`` when
compiling (``umeflow compile`` / ``umeflow submit`` compile with the environment in force). A floating reference
(``:latest``, no tag) is refused: the same pipeline must run the same code next month.
"""

from __future__ import annotations

import os
import re

from umeflow.errors import UserError

REGISTRY = "ghcr.io/umeflow"
VERSION = "0.1.0"  # the project version (pyproject.toml); images are built and pushed with this tag
TRAIN_IMAGE = f"{REGISTRY}/umeflow-train:{VERSION}"
LIGHT_IMAGE = f"{REGISTRY}/umeflow-light:{VERSION}"

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_TAG = re.compile(r":(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
FLOATING_TAGS = {"latest", "main", "master", "dev", "edge", "nightly", "stable"}


def is_pinned(ref: str) -> bool:
    """True for ``repo@sha256:<64 hex>`` or ``repo:<exact tag>`` (not a floating tag such as ``latest``)."""
    if "@" in ref:
        return bool(_DIGEST.search(ref))
    name = ref.rsplit("/", 1)[-1]  # a registry port (host:5000/…) is not a tag
    m = _TAG.search(name)
    return bool(m) and m.group("tag") not in FLOATING_TAGS


def _image(env: str, default: str) -> str:
    ref = os.environ.get(env, "").strip() or default
    if not is_pinned(ref):
        raise UserError(f"{env}={ref!r} is not pinned: use an exact version tag or @sha256:<digest>")
    return ref


def train_image() -> str:
    """The GPU training image (``UMEFLOW_TRAIN_IMAGE`` overrides)."""
    return _image("UMEFLOW_TRAIN_IMAGE", TRAIN_IMAGE)


def light_image() -> str:
    """The CPU image for light tasks (``UMEFLOW_LIGHT_IMAGE`` overrides)."""
    return _image("UMEFLOW_LIGHT_IMAGE", LIGHT_IMAGE)
