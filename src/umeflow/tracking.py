"""One place that decides where MLflow runs go.

Every step calls `tracking_uri(cfg_value)`; when it returns a URI the step points MLflow at it explicitly. We do not rely
on `MLFLOW_TRACKING_URI` alone: MLflow caches the first URI a process sets, and transformers' MLflowCallback only sets
one when none is set yet, so a second step in the same process (tests, the KFP local runner) would log to the first
step's store.
"""
from __future__ import annotations

import os


def tracking_uri(configured: str | None = None) -> str | None:
    """The configured URI, else `MLFLOW_TRACKING_URI`, else None (tracking off)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or None


def use_tracking(configured: str | None = None) -> str | None:
    """Point this process's MLflow client (and child processes, via the env) at the URI; return it or None."""
    uri = tracking_uri(configured)
    if uri is None:
        return None
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri
