"""One place that decides where MLflow runs go, and keeps credentials out of everything we store or print.

Every step calls `tracking_uri(cfg_value)`; when it returns a URI the step points MLflow at it explicitly. We do not rely
on `MLFLOW_TRACKING_URI` alone: MLflow caches the first URI a process sets, and transformers' MLflowCallback only sets
one when none is set yet, so a second step in the same process (tests, the KFP local runner) would log to the first
step's store.

Credentials in a tracking URI (``http://user:password@host:5000``) are accepted but never passed on: `tracking_uri`
moves them to ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (which MLflow reads for every request) and
returns the URI without them, so MLflow itself (its "View run … at" lines, its error messages) never sees them either.
`redact_uri` / `redact_text` strip or mask credentials in anything else that is written to a file, a log or a param.

`tracking_uri` also bounds MLflow's HTTP retries (unless the user set them): MLflow's own defaults retry an unreachable
server for about four minutes before saying so.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any
from urllib.parse import unquote

log = logging.getLogger(__name__)

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"

# Our defaults for MLflow's HTTP client, used unless the environment sets them. With MLflow's (7 retries, backoff
# factor 2) a refused connection takes ~250 s to report; 3 retries with factor 1 sleep ~0+2+4 s (+ jitter ≤ 1 s each).
# The per-request timeout stays MLflow's (120 s): a large artifact upload through the server's proxy only gets its
# reply after the server has stored the file, and a shorter read timeout would retry (re-send) big checkpoints.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_HOST_START = re.compile(r"[A-Za-z0-9\[]")


def _userinfo_end(scheme: str, rest: str) -> int | None:
    """Index of the ``@`` that ends the userinfo in ``rest`` (the URI after ``scheme://``), or None.

    RFC 3986 userinfo ends at the last ``@`` of the authority (which ends at the first ``/``, ``?`` or ``#``). Users
    do paste passwords with a raw ``/``, ``?``, ``#`` or ``@`` in them, which cut that authority short; so when the
    URI is http(s), or its authority already holds an ``@`` or a ``user:password`` pair (a non-numeric "port"), the
    userinfo runs to the LAST ``@`` that a host follows. That may mask an ``@`` in a path too — masking too much is
    the safe side."""
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    port = authority.rpartition(":")[2] if ":" in authority else ""
    suspicious = (scheme.lower() in ("http", "https") or "@" in authority or (port and not port.isdigit()))
    if not suspicious:
        return None
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] == "@" and _HOST_START.match(rest, i + 1):
            return i
    return None


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``scheme://user:pass@host/path`` → (``scheme://host/path``, user, password), percent-decoded; a URI without
    userinfo comes back unchanged with (None, None); userinfo without ``:`` is a user name with an empty password."""
    m = _SCHEME.match(uri or "")
    if not m:
        return uri, None, None
    head, rest = uri[:m.end()], uri[m.end():]
    at = _userinfo_end(head[:-3], rest)
    if at is None:
        return uri, None, None
    user, _, password = rest[:at].partition(":")
    return head + rest[at + 1:], unquote(user), unquote(password)


def redact_uri(uri: str) -> str:
    """The URI without its credentials (usable as is: credentials come from the environment)."""
    return split_credentials(uri)[0]


def redact_text(text: str) -> str:
    """Every URI in ``text`` with its credentials replaced by ``***`` (``http://***@host``): for log lines, error
    messages and params, where it helps to see that credentials were given."""
    def one(m: re.Match) -> str:
        token = m.group(0)
        head = _SCHEME.match(token).group(0)
        at = _userinfo_end(head[:-3], token[len(head):])
        return token if at is None else f"{head}***@{token[len(head) + at + 1:]}"

    return _URI_IN_TEXT.sub(one, text) if isinstance(text, str) and "://" in text else text


def redact_values(obj: Any) -> Any:
    """``redact_text`` applied to every string in a JSON-like value (a config dict written to run_info.json)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_values(v) for v in obj)
    return obj


def accept_credentials(uri: str | None) -> str | None:
    """Move the credentials of ``uri`` into ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` (for this process and the
    steps it starts) and return the URI without them. The URI's credentials win over those variables: they are the
    more specific setting."""
    if not uri:
        return uri
    clean, user, password = split_credentials(uri)
    if user is None:
        return uri
    if os.environ.get(USERNAME_ENV, user) != user or os.environ.get(PASSWORD_ENV, password) != password:
        log.warning("credentials in the tracking URI %s replace %s/%s from the environment", redact_text(uri),
                    USERNAME_ENV, PASSWORD_ENV)
    os.environ[USERNAME_ENV] = user
    os.environ[PASSWORD_ENV] = password or ""
    return clean


def accept_config_credentials(cfg: Any) -> Any:
    """A step config with the credentials of its ``tracking_uri`` / ``registry_uri`` moved to the environment
    (``accept_credentials``), so that the config the step records (run_info.json, params, hashes) holds none. MLflow
    has one set of credential variables: two URIs with different credentials are refused."""
    given = {name: getattr(cfg, name) for name in ("tracking_uri", "registry_uri")
             if getattr(cfg, name, None) and split_credentials(getattr(cfg, name))[1] is not None}
    if len({split_credentials(uri)[1:] for uri in given.values()}) > 1:
        from umeflow.errors import UserError

        raise UserError(f"tracking_uri and registry_uri carry different credentials "
                        f"({redact_text(cfg.tracking_uri)}, {redact_text(cfg.registry_uri)}); MLflow takes one "
                        f"pair from {USERNAME_ENV}/{PASSWORD_ENV}: put it there and leave it out of the URIs")
    changes = {name: accept_credentials(uri) for name, uri in given.items()}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def bound_http_retries() -> None:
    """Apply ``HTTP_RETRY_DEFAULTS`` where the environment does not set them (MLflow reads them on every request)."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def tracking_uri(configured: str | None = None) -> str | None:
    """The configured URI, else `MLFLOW_TRACKING_URI`, else None (tracking off) — always without credentials (see
    `accept_credentials`; a credentialed `MLFLOW_TRACKING_URI` is rewritten in place, so subprocesses inherit the
    clean URI and the credentials variables)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and split_credentials(env)[1] is not None:
        os.environ["MLFLOW_TRACKING_URI"] = env = accept_credentials(env)
    uri = accept_credentials(configured) or env or None
    if uri is not None:
        bound_http_retries()
    return uri


def use_tracking(configured: str | None = None) -> str | None:
    """Point this process's MLflow client (and child processes, via the env) at the URI; return it or None."""
    uri = tracking_uri(configured)
    if uri is None:
        return None
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri
