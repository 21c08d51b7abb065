"""``umeflow upload``, ``umeflow submit`` and ``umeflow schedule``: a compiled pipeline onto a KFP API server.

``upload`` registers the package as a named pipeline with a content-named version (idempotent). ``submit`` is
``kfp run create`` (``Client.create_run_from_pipeline_package``). ``schedule`` creates a recurring run (6-field cron
with seconds first, robfig syntax; ``max_concurrency=1``; no catch-up) and is idempotent by name: the job carries a
digest of everything that defines it (package, cron, parameters, policy) in its description, so a rerun with the
same inputs changes nothing, and a rerun with new inputs replaces the old job (the KFP v2 API has no update for
recurring runs) instead of adding a second one.

The endpoint and credentials come from the environment only: ``KFP_HOST`` (e.g. ``https://kfp.example.com`` or
``http://ml-pipeline.kubeflow.svc.cluster.local:8888``), ``KFP_TOKEN`` (a bearer token) or, in a pod, the projected
service-account token kfp.Client reads from ``KF_PIPELINES_SA_TOKEN_PATH``, and ``KFP_NAMESPACE`` (multi-user
installs). Nothing here prints or stores a token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from umeflow.errors import UserError

log = logging.getLogger(__name__)

SPEC_TAG = "umeflow-spec-sha256:"
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,#LW-]+$")


def client(host: str | None = None):
    """A ``kfp.Client`` for ``host`` (else ``KFP_HOST``) with ``KFP_TOKEN`` / ``KFP_NAMESPACE`` from the env."""
    import kfp

    host = host or os.environ.get("KFP_HOST")
    if not host:
        raise UserError("no KFP endpoint: set KFP_HOST (e.g. https://kfp.example.com) or pass --host")
    kwargs: dict[str, Any] = {"host": host}
    if os.environ.get("KFP_TOKEN"):
        kwargs["existing_token"] = os.environ["KFP_TOKEN"]
    if os.environ.get("KFP_NAMESPACE"):
        kwargs["namespace"] = os.environ["KFP_NAMESPACE"]
    return kfp.Client(**kwargs)


def check_cron(expr: str) -> str:
    """KFP takes robfig cron with **6** fields, seconds first (``0 0 3 * * *`` = 03:00 daily)."""
    fields = expr.split()
    if len(fields) != 6 or not all(_CRON_FIELD.match(f) for f in fields):
        hint = f" (did you mean '0 {expr}'? KFP cron has a seconds field first)" if len(fields) == 5 else ""
        raise UserError(f"cron {expr!r} must have 6 fields: second minute hour day-of-month month day-of-week{hint}")
    return " ".join(fields)


def pipeline_arguments(package: str | os.PathLike, params: list[str] | None = None, recipe_file: str | None = None,
                       overrides: list[str] | None = None) -> dict:
    """Run arguments: ``key=value`` params (values parsed as YAML, so lists and maps work), the recipe's *text*
    (so the run records exactly what it trained with) and ``section.key=value`` overrides. Unknown parameter names
    are errors, checked against the package's own inputs."""
    declared = declared_parameters(package)
    args: dict[str, Any] = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--param {item!r}: expected key=value")
        args[key.strip()] = yaml.safe_load(value) if value else ""
    if recipe_file:
        path = Path(recipe_file)
        if not path.is_file():
            raise UserError(f"recipe {path} does not exist")
        args["recipe"] = path.read_text()
    if overrides:
        args["overrides"] = list(overrides)
    unknown = sorted(set(args) - set(declared))
    if unknown:
        raise UserError(f"{package}: unknown pipeline parameter(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(declared))})")
    return args


def declared_parameters(package: str | os.PathLike) -> dict:
    path = Path(package)
    if not path.is_file():
        raise UserError(f"pipeline package {path} does not exist (run `umeflow compile`)")
    spec = next(yaml.safe_load_all(path.read_text()))
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def submit(package: str | os.PathLike, arguments: dict, experiment: str, run_name: str | None = None, kfp=None,
           pipeline_root: str | None = None, service_account: str | None = None) -> str:
    """Create one run; returns its id (the same as ``kfp run create -e EXPERIMENT -f PACKAGE key=value ...``)."""
    kfp = kfp or client()
    result = kfp.create_run_from_pipeline_package(
        pipeline_file=str(package), arguments=arguments, run_name=run_name, experiment_name=experiment,
        pipeline_root=pipeline_root or None, service_account=service_account or None)
    log.info("submitted run %s to experiment %s", result.run_id, experiment)
    return result.run_id


@dataclass
class ScheduleResult:
    action: str  # created | unchanged | replaced
    recurring_run_id: str


def spec_digest(package: str | os.PathLike, cron: str, arguments: dict, max_concurrency: int, no_catchup: bool) -> str:
    blob = json.dumps({"package": hashlib.sha256(Path(package).read_bytes()).hexdigest(), "cron": cron,
                       "arguments": arguments, "max_concurrency": max_concurrency, "no_catchup": no_catchup},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def find_recurring_runs(kfp, experiment_id: str, name: str) -> list:
    """Every recurring run in the experiment whose display name is ``name`` (all pages)."""
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found, token = [], ""
    while True:
        page = kfp.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment_id, filter=flt)
        found += [r for r in (page.recurring_runs or []) if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            return found


def schedule(package: str | os.PathLike, name: str, cron: str, experiment: str, arguments: dict, kfp=None,
             max_concurrency: int = 1, no_catchup: bool = True, service_account: str | None = None) -> ScheduleResult:
    """Create the recurring run ``name`` or leave/replace the existing one (see the module docstring)."""
    cron = check_cron(cron)
    kfp = kfp or client()
    digest = spec_digest(package, cron, arguments, max_concurrency, no_catchup)
    exp = kfp.create_experiment(name=experiment)  # returns the existing experiment when there is one
    existing = find_recurring_runs(kfp, exp.experiment_id, name)
    if len(existing) == 1 and SPEC_TAG + digest in (existing[0].description or ""):
        log.info("recurring run %s is up to date (%s)", name, existing[0].recurring_run_id)
        return ScheduleResult("unchanged", existing[0].recurring_run_id)
    for old in existing:
        log.info("replacing recurring run %s (%s): its definition changed", name, old.recurring_run_id)
        kfp.delete_recurring_run(old.recurring_run_id)
    job = kfp.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name, description=f"umeflow scheduled retraining; {SPEC_TAG}{digest}",
        cron_expression=cron, max_concurrency=max_concurrency, no_catchup=no_catchup, params=arguments,
        pipeline_package_path=str(package), enabled=True, service_account=service_account or None)
    return ScheduleResult("replaced" if existing else "created", job.recurring_run_id)


@dataclass
class UploadResult:
    action: str  # created | new-version | unchanged
    pipeline_id: str
    version_name: str


def upload(package: str | os.PathLike, name: str, kfp=None) -> UploadResult:
    """Upload the compiled pipeline as ``name`` with a version named by its content (``<name>-<sha256[:12]>``), so
    re-uploading the same package changes nothing and a new build adds exactly one version."""
    kfp = kfp or client()
    version = f"{name}-{hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]}"
    pipeline_id = kfp.get_pipeline_id(name)
    action = "new-version"
    if pipeline_id is None:
        pipeline_id = kfp.upload_pipeline(pipeline_package_path=str(package), pipeline_name=name,
                                          description="umeflow: UME-R1 training, evaluation and promotion").pipeline_id
        action = "created"
    else:
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": version}]})
        page = kfp.list_pipeline_versions(pipeline_id=pipeline_id, page_size=10, filter=flt)
        if any(v.display_name == version for v in page.pipeline_versions or []):
            return UploadResult("unchanged", pipeline_id, version)
    kfp.upload_pipeline_version(pipeline_package_path=str(package), pipeline_version_name=version,
                                pipeline_id=pipeline_id)
    log.info("%s pipeline %s version %s", action, name, version)
    return UploadResult(action, pipeline_id, version)
