"""Registered-model helpers: alias validation, resolution by alias, MLflow errors as user errors."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from umeflow.errors import UserError

_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_RESERVED_ALIAS = re.compile(r"^(latest|[vV]\d+)$")


def validate_alias(alias: str, field: str) -> str:
    """MLflow's alias rules, checked before anything is logged (``field`` names the setting in errors)."""
    if not _ALIAS.match(alias or "") or _RESERVED_ALIAS.match(alias):
        raise UserError(f"{field}={alias!r}: an alias is 1-255 letters, digits, '_' or '-', and not 'latest' or "
                        "'v<number>'")
    return alias


def validate_model_name(name: str, field: str) -> str:
    if not name or not name.strip() or "/" in name or "@" in name or ":" in name:
        raise UserError(f"{field}={name!r}: a registered model name must be non-empty without '/', '@' or ':'")
    return name


def version_by_alias(client, name: str, alias: str):
    """The ``ModelVersion`` that ``name@alias`` points at, or None when the model or the alias does not exist.
    Resolution is by alias only — never by searching versions."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        code = getattr(e, "error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in e.message):
            return None
        raise


@contextlib.contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """An unreachable server, a denied request or a bad value becomes one line naming the store."""
    from mlflow.exceptions import MlflowException

    from umeflow.registry.runs import mask

    try:
        yield
    except MlflowException as e:
        raise UserError(f"MLflow at {mask(uri)}: {mask(e.message)}") from e
