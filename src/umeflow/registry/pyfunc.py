"""The registered model: an MLflow pyfunc that returns disc or gen embeddings for MMEB-style inputs.

Logged with ``log_embedding_model``:

- **artifacts**: the checkpoint folder as it is (safetensors weights, config, tokenizer, processor, chat template) under
  the artifact key ``checkpoint``; no pickled weights.
- **code**: the model is defined from code (``umeflow/registry/serving.py``, MLflow's models-from-code), and the
  umeflow package travels with it (``code_paths``), so a serving environment needs only the pinned requirements.
- **pip requirements**: explicit and pinned to what is installed here (``serving_requirements``): torch, transformers,
  tokenizers, safetensors, huggingface-hub, numpy, pillow, pandas, pyyaml, tqdm, mlflow. Never torchvision.
- **signature**: optional string columns ``text``, ``image`` (a file path, or base64 / ``data:`` URL image
  bytes) and ``mode`` (``disc`` | ``gen``, per row); params ``mode``, ``max_new_tokens``, ``batch_size``; output
  a float32 tensor (N, D), L2-normalised.

``predict`` returns exactly ``Embedder(checkpoint).encode(items, mode=...)``: gen mode decodes greedily, so it is
deterministic. Per row, the ``mode`` column wins over the ``mode`` param, which wins over the logged default. The
pixel keys of the evaluate step (``min_pixels``, ``max_pixels``, ``qwen_vl_utils_resize``, ``video_*_frame_pixels``)
may sit in the logged settings (model_config) and size the pixels as that evaluation did; absent = the checkpoint's.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from umeflow.errors import UserError
from umeflow.model.vision import VisionSizing, to_rgb_on_white

log = logging.getLogger(__name__)

ARTIFACT_KEY = "checkpoint"
MODES = ("disc", "gen")
# distributions the serving code imports (directly or through umeflow.model); their own dependencies follow from
# pip's resolution of these pins. torchvision is deliberately absent (no CPU build; it breaks transformers imports).
SERVING_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy", "pillow",
                         "pandas", "pyyaml", "tqdm", "mlflow")
FORBIDDEN_DISTRIBUTIONS = ("torchvision",)
CHECKPOINT_WEIGHTS = "*.safetensors"
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def serving_requirements() -> list[str]:
    """``name==version`` for every serving distribution, from the installed metadata (a local version label such
    as ``+cpu`` is dropped: the pin must resolve from PyPI on a GPU serving host too)."""
    pins = []
    for dist in SERVING_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(f"{dist} is not installed; it is needed to log a servable model") from None
        pins.append(f"{dist}=={version.split('+', 1)[0]}")
    return pins


def validate_checkpoint(path: str | os.PathLike) -> Path:
    """A umeflow Embedder checkpoint folder: config, safetensors weights, tokenizer and processor files."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"checkpoint {root} does not exist or is not a folder")
    if not (root / "config.json").is_file():
        raise UserError(f"checkpoint {root}: config.json is missing")
    if not list(root.glob(CHECKPOINT_WEIGHTS)):
        raise UserError(f"checkpoint {root}: no *.safetensors weights")
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in root.glob(pattern))
    if pickled:
        raise UserError(f"checkpoint {root}: pickled weight files {pickled}; only safetensors checkpoints are "
                        "registered (save with safe_serialization=True)")
    if not any((root / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        raise UserError(f"checkpoint {root}: no tokenizer (tokenizer.json / tokenizer_config.json)")
    if not any((root / n).is_file() for n in ("processor_config.json", "preprocessor_config.json")):
        raise UserError(f"checkpoint {root}: no processor_config.json / preprocessor_config.json")
    return root


def embedding_dim(checkpoint: str | os.PathLike) -> int:
    """The language model's hidden size (= embedding size) from ``config.json``; -1 when it does not say."""
    path = Path(checkpoint) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    size = (cfg.get("text_config") or {}).get("hidden_size") or cfg.get("hidden_size")
    return int(size) if size else -1


# ----------------------------------------------------------------------------------------------- inputs

def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def decode_image(value: Any, row: int):
    """A path (returned as is) or base64 image bytes (optionally a ``data:image/...;base64,`` URL) → PIL image."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str):
        raise UserError(f"row {row}, column 'image': expected a path or base64 string, got {type(value).__name__}")
    text = value.strip()
    if len(text) < 4096:
        try:
            if Path(text).is_file():
                return Path(text)
        except OSError:
            pass
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        raw = base64.b64decode(payload, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise UserError(f"row {row}, column 'image': {shown!r} is neither an existing file nor base64 image "
                        "data") from None
    return to_rgb_on_white(image)


def parse_inputs(model_input: Any, default_mode: str) -> tuple[list, list[str]]:
    """``(items, modes)`` from a DataFrame (or a dict of columns / list of records) of MMEB-style inputs."""
    from umeflow.model.items import Item

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    unknown = sorted(set(frame.columns) - {"text", "image", "mode"})
    if unknown:
        raise UserError(f"unknown input column(s) {unknown}; expected text, image, mode")
    if frame.empty:
        raise UserError("no rows to embed")
    items, modes = [], []
    for row, rec in enumerate(frame.to_dict("records")):
        text = rec.get("text")
        text = "" if _is_blank(text) else str(text)
        image = rec.get("image")
        images = () if _is_blank(image) else (decode_image(image, row),)
        if not text and not images:
            raise UserError(f"row {row}: needs a 'text' or an 'image'")
        mode = default_mode if _is_blank(rec.get("mode")) else str(rec["mode"]).strip()
        if mode not in MODES:
            raise UserError(f"row {row}, column 'mode': {mode!r} is not one of {list(MODES)}")
        items.append(Item(text=text, images=images))
        modes.append(mode)
    return items, modes


# ------------------------------------------------------------------------------------------------ model

class EmbeddingModel(PythonModel):
    """Serves a umeflow checkpoint: ``predict(frame, params={"mode": "gen"})`` → (N, D) float32 embeddings."""

    def __init__(self, checkpoint: str | os.PathLike | None = None, settings: dict | None = None):
        # checkpoint/settings are for local use (a smoke test before logging); MLflow passes them via the context
        self._checkpoint = checkpoint
        self._settings = dict(settings or {})
        self.embedder = None

    def load_context(self, context) -> None:
        import torch

        from umeflow.model.embedder import Embedder

        checkpoint = context.artifacts[ARTIFACT_KEY] if context is not None else self._checkpoint
        if context is not None and context.model_config:
            self._settings = {**self._settings, **context.model_config}
        device = self._settings.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.embedder = Embedder(checkpoint, device=device, sizing=VisionSizing.from_settings(self._settings),
                                 disc_readout=self._settings.get("disc_readout", "disc_emb"))

    # pd.DataFrame: MLflow takes the explicit signature logged with the model and does no type-hint inference
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        if self.embedder is None:
            self.load_context(context)
        params = {k: v for k, v in (params or {}).items() if v is not None}
        settings = {**{"mode": "disc", "max_new_tokens": 64, "batch_size": 8}, **self._settings}
        default_mode = params.get("mode", settings["mode"])
        if default_mode not in MODES:
            raise UserError(f"param 'mode': {default_mode!r} is not one of {list(MODES)}")
        max_new_tokens = int(params.get("max_new_tokens", settings["max_new_tokens"]))
        batch_size = int(params.get("batch_size", settings["batch_size"]))
        items, modes = parse_inputs(model_input, default_mode)
        out: np.ndarray | None = None
        for mode in MODES:
            rows = [i for i, m in enumerate(modes) if m == mode]
            if not rows:
                continue
            enc = self.embedder.encode([items[i] for i in rows], mode=mode, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=False)
            if out is None:
                out = np.zeros((len(items), enc.embeddings.shape[-1]), dtype=np.float32)
            out[rows] = enc.embeddings
        return out


def signature(dim: int, settings: dict):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "text", required=False), ColSpec("string", "image", required=False),
                     ColSpec("string", "mode", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, dim))])
    params = ParamSchema([ParamSpec("mode", "string", settings["mode"]),
                          ParamSpec("max_new_tokens", "long", int(settings["max_new_tokens"])),
                          ParamSpec("batch_size", "long", int(settings["batch_size"]))])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def log_embedding_model(checkpoint: str | os.PathLike, settings: dict, name: str = "model",
                        tags: dict[str, str] | None = None):
    """Log ``checkpoint`` as a pyfunc into the active MLflow run (``tags`` on the logged model); returns MLflow's
    ``ModelInfo``."""
    import mlflow

    import umeflow

    root = validate_checkpoint(checkpoint)
    with warnings.catch_warnings():
        # the signature is explicit; an input example would only make MLflow load the weights a second time
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("serving.py")),
            artifacts={ARTIFACT_KEY: str(root.resolve())},
            code_paths=[str(Path(umeflow.__file__).parent)],
            pip_requirements=serving_requirements(),
            signature=signature(embedding_dim(root), settings),
            model_config=dict(settings),
            tags=tags,
        )
