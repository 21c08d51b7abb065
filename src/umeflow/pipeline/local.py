"""``umeflow run-local``: ``train_and_promote`` on the KFP local runner, the embedded default behind ``make run``.

The same pipeline function a cluster runs, executed by ``kfp.local.SubprocessRunner(use_venv=False)``: every task
is a subprocess of this interpreter (so the project's venv is the "image"), artifacts land under
``<state>/kfp/<pipeline run>/``, checkpoints under ``<state>/runs/<run id>/`` and MLflow in the embedded
``sqlite:///<state>/mlflow/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` says otherwise.

What the local runner does with cluster settings (kfp 2.17): accelerator type/count are ignored with a warning;
kfp-kubernetes settings (PVC mount, secrets as env, tolerations, node selector, ``/dev/shm``) compile into the
platform spec, which the local runner never reads, so they are ignored silently; tasks inherit this process's
environment instead (credentials, ``MLFLOW_TRACKING_URI``). ``ParallelFor`` iterations run one after another.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from umeflow.errors import UserError

log = logging.getLogger(__name__)


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The checkout holding ``pipelines/`` and ``components/`` (``UMEFLOW_REPO``, else the cwd or a parent)."""
    candidates = [Path(os.environ["UMEFLOW_REPO"])] if os.environ.get("UMEFLOW_REPO") else []
    here = Path(start or os.getcwd()).absolute()
    candidates += [here, *here.parents]
    for d in candidates:
        if (d / "pipelines" / "__init__.py").is_file() and (d / "components" / "__init__.py").is_file():
            return d
    raise UserError("cannot find the umeflow checkout (pipelines/ and components/); run from it or set UMEFLOW_REPO")


def import_pipelines(root: Path | None = None):
    """The repository's ``pipelines`` package (components and pipelines are not part of the installed wheel)."""
    root = root or repo_root()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import pipelines

    return pipelines


def run_local(recipe_file: str, overrides: list[str] | None = None, state: str | os.PathLike = "state",
              eval_shards: int = 2) -> dict:
    """Run ``train_and_promote`` locally; returns where things went and how long it took."""
    from kfp import local

    from umeflow.tracking import redact_uri, tracking_uri

    recipe = Path(recipe_file).absolute()
    if not recipe.is_file():
        raise UserError(f"recipe {recipe} does not exist")
    root = repo_root()
    state = Path(state).absolute()
    state.mkdir(parents=True, exist_ok=True)
    os.environ["UMEFLOW_STATE"] = str(state)
    # credentials in MLFLOW_TRACKING_URI move to MLFLOW_TRACKING_USERNAME/_PASSWORD here, before any task inherits
    # the environment, so no task, log line or the returned summary ever holds them
    if not tracking_uri():
        from umeflow.registry.runs import embedded_tracking_uri

        os.environ["MLFLOW_TRACKING_URI"] = embedded_tracking_uri()
    pipeline_root = state / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=True)
    train_and_promote = import_pipelines(root).pipelines()["train_and_promote"]
    before = set(pipeline_root.iterdir()) if pipeline_root.is_dir() else set()
    t0 = time.perf_counter()
    cwd = os.getcwd()
    os.chdir(root)  # tasks resolve relative recipe paths (configs/…) against the checkout, as the image's WORKDIR
    try:
        # the recipe travels as a path (tasks share this filesystem); every step records its resolved config
        train_and_promote(recipe=str(recipe), overrides=list(overrides or []),
                          checkpoint_root=str(state / "runs"), work_dir=str(state), pvc_name="local",
                          s3_secret="", mlflow_secret="", eval_shards=eval_shards)
    finally:
        os.chdir(cwd)
    seconds = time.perf_counter() - t0
    new = sorted(set(pipeline_root.iterdir()) - before, key=lambda p: p.stat().st_mtime)
    run_dir = new[-1] if new else None
    report = run_dir / "merge-evaluation" / "evaluation" / "report.md" if run_dir else None
    return {"seconds": seconds, "pipeline_root": str(pipeline_root), "run_dir": str(run_dir) if run_dir else None,
            "report": str(report) if report and report.is_file() else None,
            "tracking_uri": redact_uri(os.environ["MLFLOW_TRACKING_URI"])}
