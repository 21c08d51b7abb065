"""Lineage tags: where a run or a model version came from, as flat ``lineage.*`` string tags.

Every MLflow run a step opens (``umeflow.registry.runs.step_run``) and every registered model version carries them:

==============================  ==========================================================================
``lineage.git_sha``             ``UMEFLOW_GIT_SHA`` (images have no ``.git``), else ``git rev-parse HEAD``
``lineage.git_dirty``           ``true`` when tracked files differ from that commit (working trees only)
``lineage.config_hash``         sha256 of the canonical JSON of the resolved step config, first 16 hex digits
                                (the same value as ``config_hash`` in the step's ``run_info.json``)
``lineage.dvc_rev``             ``UMEFLOW_DVC_REV``, else the last commit that changed ``dvc.lock``
``lineage.dvc_lock``            sha256 (16 hex) of ``dvc.lock``; ``lineage.dvc.<out path>`` its outputs' md5
``lineage.input.<field>``       fingerprint of each input the config names (data manifest content hash,
                                checkpoint fingerprint, DVC md5, or the file's sha256)
``lineage.image_digest``        ``UMEFLOW_IMAGE_DIGEST`` (set by the image build / the pod spec)
``lineage.kfp_run_id``          ``KFP_RUN_ID``: KFP v2 does not put the run id into a container's environment by
                                itself; components expose the pod label with the Downward API::

                                    kubernetes.use_field_path_as_env(task, env_name="KFP_RUN_ID",
                                        field_path="metadata.labels['pipeline/runid']")
``lineage.umeflow_version``     the installed umeflow package version
==============================  ==========================================================================

A value that cannot be determined is recorded as ``unknown``; computing lineage never fails a step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
PREFIX = "lineage."
# config fields that name a step's inputs (local paths or URIs); each gets a lineage.input.<field> tag
INPUT_FIELDS = ("model", "data", "data_root", "assets_dir", "eval_dir", "input", "embedder")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_sha(cwd: Path) -> str | None:
    return os.environ.get("UMEFLOW_GIT_SHA") or _git(["rev-parse", "HEAD"], cwd)


def git_dirty(cwd: Path) -> str | None:
    if os.environ.get("UMEFLOW_GIT_SHA"):
        return None  # an image build: its sha names the commit it was built from; no working tree to compare
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return None if status is None else str(bool(status)).lower()


def find_dvc_lock(start: Path) -> Path | None:
    """``dvc.lock`` in ``start`` or the nearest parent (stopping at a repository root)."""
    for d in [start, *start.parents]:
        if (d / "dvc.lock").is_file():
            return d / "dvc.lock"
        if (d / ".git").exists():
            return None
    return None


def dvc_outputs(lock: Path) -> dict[str, str]:
    """``{out path: md5}`` for every stage output recorded in ``dvc.lock`` (schema 2.0); {} when unreadable."""
    import yaml

    try:
        doc = yaml.safe_load(lock.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        log.warning("lineage: cannot read %s (%s); DVC hashes recorded as unknown", lock, e)
        return {}
    outs: dict[str, str] = {}
    stages = doc.get("stages") if isinstance(doc, dict) else None
    for stage in (stages or {}).values():
        for out in (stage or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("path") and (out.get("md5") or out.get("etag")):
                outs[str(out["path"]).rstrip("/")] = str(out.get("md5") or out.get("etag"))
    return outs


def dvc_rev(lock: Path | None) -> str | None:
    if os.environ.get("UMEFLOW_DVC_REV"):
        return os.environ["UMEFLOW_DVC_REV"]
    if lock is None:
        return None
    return _git(["log", "-1", "--format=%H", "--", lock.name], lock.parent) or None


def _manifest_hash(manifest: Path, subdir: str | None = None) -> str | None:
    """The content hash a step's ``manifest.json`` records (data build: content_hash; annotate: sft_sha256).
    With ``subdir``, only when the manifest lists files under it (the data manifest covers ``eval/`` and
    ``train/``)."""
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    if subdir is not None and not any(str(k).startswith(subdir + "/") for k in doc.get("files") or {}):
        return None
    value = doc.get("content_hash") or doc.get("sft_sha256")
    return f"sha256:{value}" if value else None


def input_fingerprint(location: str, dvc_outs: dict[str, str] | None = None, lock_dir: Path | None = None) -> str:
    """A content fingerprint of an input folder or file, cheap even for multi-GB checkpoints."""
    if not location or "://" in location:
        return UNKNOWN  # remote inputs are fingerprinted where they are produced (their step's run_info/manifest)
    path = Path(location)
    if lock_dir is not None and dvc_outs:
        try:
            rel = path.resolve().relative_to(lock_dir.resolve()).as_posix()
        except ValueError:
            rel = None
        if rel in dvc_outs:
            return f"md5:{dvc_outs[rel]}"
    try:
        if path.is_file():
            from umeflow.io import sha256_file

            return f"sha256:{sha256_file(path)}"
        if not path.is_dir():
            return UNKNOWN
        if (path / "manifest.json").is_file() and (found := _manifest_hash(path / "manifest.json")):
            return found
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            from umeflow.evaluate.cache import model_fingerprint

            return f"fp:{model_fingerprint(path)}"
        if (path / "manifest.lock.json").is_file():  # the assets cache
            from umeflow.io import sha256_file

            return f"sha256:{sha256_file(path / 'manifest.lock.json')}"
        if (path.parent / "manifest.json").is_file() and (
                found := _manifest_hash(path.parent / "manifest.json", subdir=path.name)):
            return found
    except OSError as e:
        log.warning("lineage: cannot fingerprint %s (%s)", path, e)
    return UNKNOWN


def config_inputs(cfg: Any) -> dict[str, str]:
    """The input locations a step config names (fields in ``INPUT_FIELDS`` with a non-empty value)."""
    if not dataclasses.is_dataclass(cfg):
        return {}
    return {f.name: str(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if f.name in INPUT_FIELDS and getattr(cfg, f.name)}


def lineage_tags(cfg: Any = None, inputs: dict[str, str | os.PathLike] | None = None,
                 cwd: str | os.PathLike | None = None) -> dict[str, str]:
    """The ``lineage.*`` tags for a step run with config ``cfg``; ``inputs`` adds to (and overrides) the input
    locations taken from the config. Never raises: anything unknown is ``"unknown"``."""
    from umeflow import __version__
    from umeflow.config import config_hash

    here = Path(cwd) if cwd else Path.cwd()
    lock = find_dvc_lock(here)
    outs = dvc_outputs(lock) if lock else {}
    tags = {
        "git_sha": git_sha(here),
        "git_dirty": git_dirty(here),
        "config_hash": config_hash(cfg) if dataclasses.is_dataclass(cfg) else None,
        "dvc_rev": dvc_rev(lock),
        "dvc_lock": hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock else None,
        "image_digest": os.environ.get("UMEFLOW_IMAGE_DIGEST"),
        "kfp_run_id": os.environ.get("KFP_RUN_ID"),
        "umeflow_version": __version__,
    }
    for path, md5 in sorted(outs.items()):
        tags[f"dvc.{path}"] = md5
    for name, location in {**config_inputs(cfg), **{k: str(v) for k, v in (inputs or {}).items()}}.items():
        tags[f"input.{name}"] = input_fingerprint(location, outs, lock.parent if lock else None)
    return {PREFIX + k: (str(v) if v not in (None, "") else UNKNOWN) for k, v in tags.items()}
