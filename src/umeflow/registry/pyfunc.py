"""The registered model: an MLflow pyfunc that returns disc or gen embeddings for MMEB-style inputs.

Logged with ``log_embedding_model``:

- **artifacts**: the checkpoint folder as it is (safetensors weights, config, tokenizer, processor, chat template) under
  the artifact key ``checkpoint``; no pickled weights.
- **code**: the model is defined from code (``umeflow/registry/serving.py``, MLflow's models-from-code), and the
  umeflow package travels with it (``code_paths``), so a serving environment needs only the pinned requirements.
- **pip requirements**: explicit and pinned to what is installed here (``serving_requirements``): torch, transformers,
  tokenizers, safetensors, huggingface-hub, numpy, pillow, pandas, pyyaml, tqdm, mlflow. Never torchvision.
- **signature**: optional string columns ``text``, ``image`` (base64 image bytes or a ``data:image/…;base64,`` URL)
  and ``mode`` (``disc`` | ``gen``, per row); params ``mode``, ``max_new_tokens``, ``batch_size``; output a float32
  tensor (N, D), L2-normalised.

``predict`` returns exactly ``Embedder(checkpoint).encode(items, mode=...)``: gen mode decodes greedily, so it is
deterministic. Per row, the ``mode`` column wins over the ``mode`` param, which wins over the logged default. The
pixel keys of the evaluate step (``min_pixels``, ``max_pixels``, ``qwen_vl_utils_resize``, ``video_*_frame_pixels``)
may sit in the logged settings (model_config) and size the pixels as that evaluation did; absent = the checkpoint's.

Served input never names server files: a caller could otherwise read any image on the serving host, and tell
from the error whether a path exists. An ``image`` is decoded from its base64 bytes only, unless the serving
process has the environment variable ``UMEFLOW_SERVE_MEDIA_ROOT`` (an existing folder, read when the model loads):
then a value that is not base64 image data may also be a path relative to (or absolute inside) that folder;
symlinks out of it are refused. Every image that cannot be used gets the same message, whatever the reason, and the
value is not echoed.

Errors: a bad input or param raises ``ServingInputError`` (a ``UserError`` and an ``MlflowException`` with
``INVALID_PARAMETER_VALUE``): MLflow's scoring server answers HTTP 400 with its one-line message. Anything else is a
server fault: logged here with its traceback, answered as HTTP 500 ``INTERNAL_ERROR`` with a fixed message (no
traceback, no paths). MLflow itself prefixes the message with ``Failed to predict data '<the request's frame>'``.
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
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from umeflow.errors import UserError
from umeflow.model.vision import PixelBudgetError, VisionSizing, open_bounded, to_rgb_on_white

log = logging.getLogger(__name__)

ARTIFACT_KEY = "checkpoint"
MODES = ("disc", "gen")
# distributions the serving code imports (directly or through umeflow.model); their own dependencies follow from
# pip's resolution of these pins. torchvision is deliberately absent (no CPU build; it breaks transformers imports).
SERVING_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "safetensors", "huggingface-hub", "numpy", "pillow",
                         "pandas", "pyyaml", "tqdm", "mlflow")
FORBIDDEN_DISTRIBUTIONS = ("torchvision",)
COLUMNS = ("text", "image", "mode")
MEDIA_ROOT_ENV = "UMEFLOW_SERVE_MEDIA_ROOT"
INTERNAL_FAULT = "internal error while embedding; the server log has the details"


class ServingInputError(MlflowException, UserError):
    """A request the caller can fix. A ``UserError`` (the CLI prints it as one line: register's smoke test calls
    ``predict`` directly) and an ``MlflowException`` with ``INVALID_PARAMETER_VALUE``, which MLflow's scoring server
    answers with HTTP 400 and this message only."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


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
    """A umeflow Embedder checkpoint folder: config, complete safetensors weights (no pickles), tokenizer and
    processor files (``backbone.check_model_files`` is the rule every step that loads a model applies)."""
    from umeflow.model.backbone import check_model_files

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"checkpoint {root} does not exist or is not a folder")
    if not (root / "config.json").is_file():
        raise UserError(f"checkpoint {root}: config.json is missing")
    check_model_files(root)
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


def media_root() -> Path | None:
    """The folder served ``image`` paths may name (module docstring); None: paths are not accepted. Set by whoever
    runs the server (an environment variable), never by a request or by the registered model."""
    value = os.environ.get(MEDIA_ROOT_ENV)
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{MEDIA_ROOT_ENV}={value!r} is not a folder")
    return root


def _open_image(source, row: int):
    """A fully decoded RGB image from a file-like object or a path, or None when it is not a usable image."""
    try:
        with open_bounded(source) as im:
            im.load()  # decode every pixel now: a file whose header is fine can still hold garbage pixel data
            return to_rgb_on_white(im)
    except PixelBudgetError as e:
        raise ServingInputError(f"row {row}, column 'image': the image {e}") from None
    except Exception:  # noqa: BLE001 — PIL raises many types (OSError, SyntaxError, EOFError, struct.error, …)
        # on malformed bytes; to the caller all of them are one thing: not an image
        return None


def _from_base64(text: str, row: int):
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.endswith(";base64"):
            return None
    else:
        payload = text
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _open_image(io.BytesIO(raw), row) if raw else None


def _from_media_root(text: str, root: Path, row: int):
    try:
        root = root.resolve()
        path = (root / text).resolve()  # an absolute text replaces root here; the containment check below decides
        if not path.is_relative_to(root) or not path.is_file():
            return None
    except (OSError, ValueError, RuntimeError):  # NUL bytes, over-long names, symlink loops
        return None
    return _open_image(path, row)


def decode_image(value: Any, row: int, root: Path | None = None):
    """Base64 image bytes (optionally a ``data:image/...;base64,`` URL) or, only with a media ``root``, an image
    file inside it → RGB PIL image. One message for every value that does not give an image (module docstring)."""
    image = None
    if isinstance(value, str):
        text = value.strip()
        image = _from_base64(text, row)
        if image is None and root is not None:
            image = _from_media_root(text, root, row)
    if image is None:
        accepted = "base64 image bytes or a data:image/...;base64, URL"
        if root is not None:
            accepted += " or the path of an image file under the serving media root"
        raise ServingInputError(f"row {row}, column 'image': not a usable image; expected {accepted}")
    return image


def parse_inputs(model_input: Any, default_mode: str, root: Path | None = None) -> tuple[list, list[str]]:
    """``(items, modes)`` from a DataFrame (or a dict of columns / list of records) of MMEB-style inputs; ``root``:
    the media root image paths may name (None: base64 only)."""
    from umeflow.model.items import Item

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    accepted = ", ".join(COLUMNS)
    unknown = [str(c) for c in frame.columns if c not in COLUMNS]
    if unknown:
        raise ServingInputError(f"unknown input column(s) {unknown}; the accepted columns are {accepted}")
    if len(frame.columns) == 0:
        # what a served model sees when every column was unknown: MLflow's signature check drops them (and logs
        # their names) before predict is called
        raise ServingInputError(f"the input has none of the accepted columns {accepted} (MLflow drops any other "
                                "column before the model sees it)")
    if frame.empty:
        raise ServingInputError("no rows to embed")
    items, modes = [], []
    for row, rec in enumerate(frame.to_dict("records")):
        text = rec.get("text")
        text = "" if _is_blank(text) else str(text)
        image = rec.get("image")
        images = () if _is_blank(image) else (decode_image(image, row, root),)
        if not text and not images:
            raise ServingInputError(f"row {row}: needs a 'text' or an 'image'")
        mode = default_mode if _is_blank(rec.get("mode")) else str(rec["mode"]).strip()
        if mode not in MODES:
            raise ServingInputError(f"row {row}, column 'mode': {mode!r} is not one of {list(MODES)}")
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
        self.media_root: Path | None = None

    def load_context(self, context) -> None:
        import torch

        from umeflow.model.embedder import Embedder

        checkpoint = context.artifacts[ARTIFACT_KEY] if context is not None else self._checkpoint
        if context is not None and context.model_config:
            self._settings = {**self._settings, **context.model_config}
        device = self._settings.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.media_root = media_root()
        self.embedder = Embedder(checkpoint, device=device, sizing=VisionSizing.from_settings(self._settings),
                                 disc_readout=self._settings.get("disc_readout", "disc_emb"))

    # pd.DataFrame: MLflow takes the explicit signature logged with the model and does no type-hint inference
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """Embeddings; a bad request raises ``ServingInputError`` (HTTP 400), a server fault an ``MlflowException``
        ``INTERNAL_ERROR`` (HTTP 500) whose message says nothing of the fault (module docstring)."""
        if self.embedder is None:
            self.load_context(context)
        try:
            return self._predict(model_input, params)
        except ServingInputError:
            raise
        except UserError as e:  # from the Embedder (e.g. an input over the token budget): the caller's to fix
            raise ServingInputError(str(e)) from None
        except Exception as e:
            log.exception("umeflow pyfunc predict failed")
            raise MlflowException(INTERNAL_FAULT, error_code=INTERNAL_ERROR) from e

    def _predict(self, model_input: Any, params: dict[str, Any] | None) -> np.ndarray:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        settings = {**{"mode": "disc", "max_new_tokens": 64, "batch_size": 8}, **self._settings}
        default_mode = params.get("mode", settings["mode"])
        if default_mode not in MODES:
            raise ServingInputError(f"param 'mode': {default_mode!r} is not one of {list(MODES)}")
        max_new_tokens = _int_param(params, settings, "max_new_tokens")
        batch_size = _int_param(params, settings, "batch_size")
        items, modes = parse_inputs(model_input, default_mode, self.media_root)
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


def _int_param(params: dict, settings: dict, name: str) -> int:
    value = params.get(name, settings[name])
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ServingInputError(f"param {name!r}: expected an integer, got {value!r}") from None


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

    with warnings.catch_warnings():
        # the signature is explicit; an input example would only make MLflow load the weights a second time
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(name=name, tags=tags, **_model_files(checkpoint, settings))


def save_embedding_model(checkpoint: str | os.PathLike, settings: dict, path: str | os.PathLike) -> None:
    """The same model as ``log_embedding_model``, saved to a local folder (no tracking server); load it with
    ``mlflow.pyfunc.load_model(path)``."""
    import mlflow

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        mlflow.pyfunc.save_model(str(path), **_model_files(checkpoint, settings))


def _model_files(checkpoint: str | os.PathLike, settings: dict) -> dict:
    """What a logged or saved umeflow model consists of (module docstring)."""
    import umeflow

    root = validate_checkpoint(checkpoint)
    return dict(python_model=str(Path(__file__).with_name("serving.py")),
                artifacts={ARTIFACT_KEY: str(root.resolve())},
                code_paths=[str(Path(umeflow.__file__).parent)],
                pip_requirements=serving_requirements(),
                signature=signature(embedding_dim(root), settings),
                model_config=dict(settings))
