"""MLflow run tree: one parent run per pipeline run, one child run per step.

``step_run(step, cfg)`` is what a step wraps around its work::

    with step_run("sft", cfg, tracking_uri=cfg.tracking_uri) as run:   # run is None when tracking is off
        ...                                                             # mlflow.log_* and HF's MLflowCallback
                                                                        # log into this run
Which run it opens, first match wins:

1. ``MLFLOW_RUN_ID`` is set (KFP's MLflow integration injects one run per task): log into that run.
2. An MLflow run is already active in this process (a notebook, a driver script): a nested child of it.
3. ``UMEFLOW_PARENT_RUN_ID`` is set (``pipeline_run`` sets it for the steps it drives, in-process or as
   subprocesses): a child of that run.
4. A pipeline run id is known (``UMEFLOW_PIPELINE_RUN_ID``, else ``KFP_RUN_ID``): a child of the parent run tagged
   ``umeflow.pipeline_run=<id>`` in the experiment, created by whichever step comes first (a race between parallel
   first steps is settled by keeping the oldest parent and deleting the others).
5. Otherwise a standalone run.

Only the main process logs (``RANK`` unset or 0). Every run gets the lineage tags (``umeflow.registry.lineage``),
``umeflow.step`` and the resolved config as params (``<section>.<key>``, credentials in URIs masked; a tracking URI's
credentials are moved to the environment before MLflow sees it, ``umeflow.tracking``) and as
``config/<step>.json``. A run is named after its step and the model its config reads (``evaluate · grpo/model``),
and the experiment it lands in is tagged as model training (``mlflow.experimentKind``), so MLflow's UI opens on runs
rather than GenAI traces. ``MLFLOW_RUN_ID`` is hidden from the environment while the step runs, so that libraries
that read it (transformers' MLflowCallback) log into the open run instead of trying to start it a second time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from umeflow.errors import UserError
from umeflow.registry.lineage import lineage_tags

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "umeflow"
PIPELINE_TAG = "umeflow.pipeline_run"
ROLE_TAG = "umeflow.role"
AUTO_PARENT_TAG = "umeflow.auto_parent"  # parents created by steps mirror their last step's status
# MLflow 3's UI reads this experiment tag to pick the experiment's layout; without it, it guesses and opens on GenAI
# traces. umeflow trains models, so its experiments say so (the value the UI offers as "custom model development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._:-]")


@dataclass(frozen=True)
class StepRun:
    """The MLflow run a step logs into."""

    run_id: str
    experiment_id: str
    parent_run_id: str | None
    tracking_uri: str
    lineage: dict[str, str]


# ------------------------------------------------------------------------------------------ tracking store

def embedded_tracking_uri() -> str:
    """The embedded default store: ``sqlite:///<state>/mlflow/mlflow.db`` (artifacts next to it)."""
    from umeflow.config import state_dir

    root = (state_dir() / "mlflow").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None = None, embedded_default: bool = False) -> str | None:
    """The configured URI, else ``MLFLOW_TRACKING_URI``, else the embedded store when ``embedded_default`` (the
    registry steps always need one), else None (tracking off)."""
    from umeflow.tracking import tracking_uri

    uri = tracking_uri(configured)
    if uri is None and embedded_default:
        uri = embedded_tracking_uri()
    return uri


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a ``sqlite:///`` store go next to the database, not into ``./mlruns`` of whatever cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()


def experiment_id(client, name: str, uri: str) -> str:
    """Get or create experiment ``name`` (safe against a concurrent creator), tagged as model training."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment '{name}' at {mask(uri)} is deleted; restore it or pick another name")
        ensure_experiment_kind(client, exp.experiment_id, exp.tags)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        ensure_experiment_kind(client, exp.experiment_id, exp.tags)
        return exp.experiment_id


def ensure_experiment_kind(client, exp_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag an experiment that umeflow logs into as model training, unless it already says what it is (a kind that
    someone chose in the UI stays)."""
    if tags is None:
        tags = client.get_experiment(exp_id).tags
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def mask(value: str) -> str:
    """``scheme://user:secret@host`` → ``scheme://***@host`` for every URI in ``value``: credentials never reach logs,
    params or tags (``umeflow.tracking.redact_text``, which also catches passwords with ``/``, ``@`` or ``:``)."""
    from umeflow.tracking import redact_text

    return redact_text(value)


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


# -------------------------------------------------------------------------------------------- parent runs

def pipeline_run_key() -> str | None:
    """``UMEFLOW_PIPELINE_RUN_ID``, else ``KFP_RUN_ID``; characters outside ``[A-Za-z0-9._:-]`` become ``_`` so the
    key is safe in a search filter (lineage keeps the raw value)."""
    key = (os.environ.get("UMEFLOW_PIPELINE_RUN_ID") or os.environ.get("KFP_RUN_ID") or "").strip()
    return _UNSAFE_KEY_CHARS.sub("_", key)[:200] or None


def _parent_for_pipeline(client, exp_id: str, key: str, lineage: dict[str, str]) -> str:
    """The parent run of pipeline run ``key``: found by tag, else created (oldest wins a creation race)."""
    query = f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'pipeline'"

    def existing():
        return client.search_runs([exp_id], query, order_by=["attributes.start_time ASC"], max_results=10)

    found = existing()
    if found:
        return found[0].info.run_id
    shared = {k: v for k, v in lineage.items() if not k.startswith("lineage.input.") and k != "lineage.config_hash"}
    mine = client.create_run(exp_id, run_name=f"pipeline {key}",
                             tags={**shared, PIPELINE_TAG: key, ROLE_TAG: "pipeline", AUTO_PARENT_TAG: "true"})
    winner = existing()[0].info.run_id
    if winner != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return winner


def _parent_run_id(client, exp_id: str, lineage: dict[str, str]) -> str | None:
    explicit = os.environ.get("UMEFLOW_PARENT_RUN_ID")
    if explicit:
        from mlflow.exceptions import MlflowException

        try:
            client.get_run(explicit)
        except MlflowException as e:
            raise UserError(f"UMEFLOW_PARENT_RUN_ID={explicit} is not a run in this tracking store: {e}") from None
        return explicit
    key = pipeline_run_key()
    return _parent_for_pipeline(client, exp_id, key, lineage) if key else None


# --------------------------------------------------------------------------------------------- step runs

def model_label(model: str | os.PathLike | None) -> str:
    """A short name for a checkpoint: its folder and that folder's parent (``state/grpo/model`` → ``grpo/model``,
    since the last folder alone is ``model`` for every step's output); a hub id (``org/name``) stays as it is."""
    parts = [p for p in str(model or "").replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts[-2:])


def step_run_name(step: str, cfg: Any = None) -> str:
    """``evaluate · grpo/model``: the step and the model it read, so that two evaluations (the SFT and the GRPO
    model) are told apart in the run list; the bare step name when the config names no model."""
    label = model_label(getattr(cfg, "model", None)) if isinstance(getattr(cfg, "model", None), str) else ""
    return f"{step} · {label}" if label else step


def _config_params(step: str, cfg: Any) -> dict[str, str]:
    section = getattr(cfg, "SECTION", step)
    params = {}
    for key, value in dataclasses.asdict(cfg).items():
        text = mask(str(value))
        params[f"{section}.{key}"] = text if len(text) <= 6000 else text[:5997] + "..."
    return params


def _log_config(step: str, cfg: Any) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    if not dataclasses.is_dataclass(cfg):
        return
    from umeflow.tracking import redact_values

    mlflow.log_dict(redact_values(dataclasses.asdict(cfg)), f"config/{step}.json")
    try:
        mlflow.log_params(_config_params(step, cfg))
    except MlflowException as e:  # a resumed run (injected id, retried task) that logged other values before
        log.warning("config params not logged to run (already set with other values): %s", e)


@contextlib.contextmanager
def step_run(step: str, cfg: Any = None, *, tracking_uri: str | None = None, experiment: str | None = None,
             inputs: dict[str, str | os.PathLike] | None = None, tags: dict[str, str] | None = None,
             embedded_default: bool = False) -> Iterator[StepRun | None]:
    """Open the MLflow run of one step (see the module docstring); yields None when tracking is off or on a
    non-zero rank. The run ends FINISHED, FAILED (an exception) or KILLED (KeyboardInterrupt)."""
    from umeflow.registry.models import mlflow_errors
    from umeflow.tracking import use_tracking

    uri = use_tracking(resolve_tracking_uri(tracking_uri, embedded_default)) if is_main_process() else None
    if uri is None:
        yield None
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    lineage = lineage_tags(cfg, inputs)
    run_tags = {**lineage, "umeflow.step": step, **(tags or {})}
    name = step_run_name(step, cfg)
    injected = os.environ.pop("MLFLOW_RUN_ID", None)
    parent = exp_id = None
    try:
        with mlflow_errors(uri):  # an unreachable or refusing server: one line naming it (no credentials), exit 2
            if injected:
                active = mlflow.start_run(run_id=injected, tags=run_tags)
            elif mlflow.active_run() is not None:
                parent = mlflow.active_run().info.run_id
                active = mlflow.start_run(run_name=name, nested=True, tags=run_tags)
            else:
                exp_id = experiment_id(client, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                       or DEFAULT_EXPERIMENT, uri)
                parent = _parent_run_id(client, exp_id, lineage)
                active = mlflow.start_run(experiment_id=exp_id, run_name=name, parent_run_id=parent, tags=run_tags)
            if exp_id is None:  # a run that someone else opened (KFP, a notebook): tag the experiment it is in
                ensure_experiment_kind(client, active.info.experiment_id)
        info = StepRun(active.info.run_id, active.info.experiment_id, parent, uri, lineage)
        status = "FAILED"
        try:
            _log_config(step, cfg)
            yield info
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if mlflow.active_run() is not None and mlflow.active_run().info.run_id == info.run_id:
                mlflow.end_run(status)
            _mirror_status_on_parent(client, parent, status)
    finally:
        if injected is not None:
            os.environ["MLFLOW_RUN_ID"] = injected


def _mirror_status_on_parent(client, parent: str | None, status: str) -> None:
    """A parent that steps created (no driver owns it) shows its last finished step's status and end time."""
    if not parent:
        return
    try:
        if client.get_run(parent).data.tags.get(AUTO_PARENT_TAG) == "true":
            client.set_terminated(parent, status)
    except Exception as e:  # bookkeeping on the parent must never turn a finished step into a failed one
        log.warning("could not update parent run %s: %s", parent, e)


@contextlib.contextmanager
def pipeline_run(name: str = "pipeline", *, tracking_uri: str | None = None, experiment: str | None = None,
                 embedded_default: bool = False) -> Iterator[str | None]:
    """The parent run of a pipeline that this process drives (a script, ``kfp.local``): every ``step_run``
    inside — in this process or in subprocesses, through ``UMEFLOW_PARENT_RUN_ID`` — becomes its child. Yields
    the parent's run id (None when tracking is off); ends it FINISHED or FAILED."""
    uri = resolve_tracking_uri(tracking_uri, embedded_default) if is_main_process() else None
    if uri is None:
        yield None
        return
    import mlflow

    from umeflow.registry.models import mlflow_errors

    client = mlflow.MlflowClient(tracking_uri=uri)
    lineage = lineage_tags()
    key = pipeline_run_key() or f"{name}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    with mlflow_errors(uri):
        exp_id = experiment_id(client, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
                               uri)
        parent = client.create_run(exp_id, run_name=name, tags={**lineage, PIPELINE_TAG: key, ROLE_TAG: "pipeline"})
    previous = os.environ.get("UMEFLOW_PARENT_RUN_ID")
    os.environ["UMEFLOW_PARENT_RUN_ID"] = parent.info.run_id
    status = "FAILED"
    try:
        yield parent.info.run_id
        status = "FINISHED"
    finally:
        if previous is None:
            os.environ.pop("UMEFLOW_PARENT_RUN_ID", None)
        else:
            os.environ["UMEFLOW_PARENT_RUN_ID"] = previous
        client.set_terminated(parent.info.run_id, status)
