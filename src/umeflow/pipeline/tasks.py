"""One function per pipeline task: plain values in (recipe, overrides, locations), ``umeflow.steps.<step>.run`` out.

The KFP components in ``components/`` are thin shells around these functions (typed artifacts ↔ paths), so the
same code runs under ``kfp.local``, in a cluster pod and in a unit test without KFP.

- ``recipe`` is a recipe path (``configs/qwen2-vl-2b.yaml``, resolved in the task's working directory, i.e. the
  image's) or the recipe's YAML text itself (what ``umeflow submit --config FILE`` sends, so a run's parameters
  fully describe it).
- ``overrides`` are ``section.key=value`` strings (``sft.max_steps=2``); each step receives its own section's.
- ``work_dir`` is the task's scratch volume: registry assets, embedding and annotation caches, staged copies of
  ``s3://`` checkpoints, inline recipes. On a cluster it is the shared PVC, so tasks reuse each other's caches.
- Checkpoints (``*_uri``) live under ``<checkpoint_root>/<run id>/<step>`` (see ``umeflow.pipeline.staging``);
  small outputs (data, reports) are the components' own KFP artifacts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from umeflow.config import (AnnotateConfig, AssetsConfig, ConfigError, DataConfig, EvaluateConfig, ModelInitConfig,
                            SFTConfig, load_config)
from umeflow.errors import UserError
from umeflow.pipeline import staging

log = logging.getLogger(__name__)

TRAINER_STATE = ("checkpoints",)  # resumable trainer state stays on the scratch volume; never uploaded

# Kubernetes secrets → environment, the same keys for KFP pods and TrainJob nodes. Both secrets are optional: a
# PVC-only install needs no S3 credentials, and MLflow may be reachable without any.
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                  "AWS_DEFAULT_REGION")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                      "MLFLOW_TRACKING_TOKEN")


def bind_run(run_id: str) -> None:
    """Make the pipeline run id visible to lineage tags (``KFP_RUN_ID``) in this task's process."""
    if run_id:
        os.environ["KFP_RUN_ID"] = run_id


def multinode_options(run_id: str, num_nodes: int, gpus_per_node: int, accelerator_type: str, image: str,
                      work_dir: str, pvc_name: str, tolerations: list, node_selector: dict, shm_size: str,
                      s3_secret: str, mlflow_secret: str, runtime: str, timeout_s: float = 0) -> dict:
    """The ``multinode`` argument of ``sft``/``grpo``: the launcher pod's own settings, for its TrainJob's nodes."""
    secret_env = [{"secret": s3_secret, "key": k, "env": k} for k in S3_SECRET_KEYS if s3_secret]
    secret_env += [{"secret": mlflow_secret, "key": k, "env": k} for k in MLFLOW_SECRET_KEYS if mlflow_secret]
    env = {k: os.environ[k] for k in ("KFP_RUN_ID", "UMEFLOW_IMAGE_DIGEST", "UMEFLOW_GIT_SHA") if os.environ.get(k)}
    return {"run_id": run_id, "num_nodes": int(num_nodes), "gpus_per_node": int(gpus_per_node),
            "accelerator_type": accelerator_type, "image": image, "work_dir": work_dir, "pvc_name": pvc_name,
            "tolerations": list(tolerations or []), "node_selector": dict(node_selector or {}),
            "shm_size": shm_size, "secret_env": secret_env, "env": env, "runtime": runtime,
            "timeout_s": timeout_s}


# ----------------------------------------------------------------------------------------------- recipes

def recipe_path(recipe: str, work_dir: str | os.PathLike) -> str:
    """A file holding the recipe: ``recipe`` itself when it is a path, else its text written (content-addressed)
    under ``<work_dir>/recipes``."""
    text = recipe.strip()
    if "\n" not in text and text.endswith((".yaml", ".yml")):
        if not Path(text).is_file():
            raise UserError(f"recipe {text} does not exist in {os.getcwd()} (pass the YAML text instead: "
                            "`umeflow submit --config FILE` does)")
        return text
    path = Path(work_dir) / "recipes" / f"{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.yaml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(recipe)
    return str(path)


def recipe_on_volume(recipe: str, work_dir: str | os.PathLike) -> str:
    """The recipe as a file under ``<work_dir>/recipes`` even when it was given as a path, for pods (TrainJob nodes)
    that share the work volume but not this task's working directory."""
    text = recipe.strip()
    if "\n" not in text and text.endswith((".yaml", ".yml")):
        recipe = Path(recipe_path(recipe, work_dir)).read_text()
    return recipe_path(recipe, work_dir)


def section_overrides(overrides: list[str], section: str) -> list[str]:
    """The ``key=value`` overrides of one recipe section out of ``section.key=value`` strings."""
    out = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        sec, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override {item!r}: expected section.key=value (e.g. sft.max_steps=2)")
        if sec == section:
            out.append(f"{name}={value}")
    return out


def step_config(cls: type, recipe: str, overrides: list[str], work_dir: str, **explicit: Any):
    """``cls`` from the recipe's section plus its overrides; ``explicit`` (locations the pipeline decides) wins."""
    return load_config(cls, recipe_path(recipe, work_dir), section_overrides(overrides, cls.SECTION), **explicit)


def step_config_classes() -> list[type]:
    """Every step config a pipeline run resolves, so ``prepare_run`` can check them all before any GPU starts."""
    from umeflow.config import GRPOConfig, PromoteConfig, RegisterConfig

    return [AssetsConfig, DataConfig, ModelInitConfig, AnnotateConfig, SFTConfig, GRPOConfig, EvaluateConfig,
            RegisterConfig, PromoteConfig]


# ------------------------------------------------------------------------------------------ run bookkeeping

def prepare_run(recipe: str, overrides: list[str], checkpoint_root: str, work_dir: str, run_id: str) -> dict:
    """Fail in seconds, not after hours of GPU time: every step's config resolves (unknown keys and sections are
    errors), the checkpoint root is reachable. Returns the run's checkpoint folder and the recipe's hash."""
    if not run_id.strip():
        raise UserError("run_id is empty")
    classes = step_config_classes()
    sections = {cls.SECTION for cls in classes}
    for item in overrides or []:
        section = item.partition("=")[0].partition(".")[0].strip()
        if section not in sections:
            raise ConfigError(f"override {item!r}: unknown section {section!r} (known: {', '.join(sorted(sections))})")
    path = recipe_path(recipe, work_dir)
    for cls in classes:
        step_config(cls, recipe, overrides, work_dir)
    run_root = staging.join(checkpoint_root, run_id)
    if staging.is_s3(checkpoint_root):
        from umeflow.storage import _s3_error, s3_client, split_s3_uri

        bucket, _ = split_s3_uri(checkpoint_root)
        try:
            s3_client().head_bucket(Bucket=bucket)
        except Exception as e:
            raise _s3_error(e, checkpoint_root) from None
    else:
        Path(run_root).mkdir(parents=True, exist_ok=True)
    return {"run_root": run_root, "recipe_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "overrides": list(overrides or [])}


def log_metrics(metrics_artifact, values: dict, prefix: str = "") -> None:
    """Numbers into a KFP ``Metrics`` artifact (KFP rejects anything else)."""
    for key, value in sorted(values.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics_artifact.log_metric(f"{prefix}{key}", float(value))


def describe_checkpoint(model_artifact, uri: str, **metadata: Any) -> None:
    """Point a KFP ``Model`` artifact at a checkpoint that lives at ``uri`` (the weights are not copied)."""
    model_artifact.metadata.update({"uri": uri, **metadata})
    Path(model_artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(model_artifact.path).write_text(json.dumps({"uri": uri, **metadata}, indent=1, sort_keys=True) + "\n")


def checkpoint_uri(model_artifact) -> str:
    uri = model_artifact.metadata.get("uri")
    if not uri:
        raise UserError(f"model artifact {model_artifact.uri} names no checkpoint (metadata 'uri' is missing)")
    return uri


# ----------------------------------------------------------------------------------------------- the steps

def prepare_data(recipe: str, overrides: list[str], work_dir: str, out: str) -> dict:
    """``umeflow assets fetch`` (into the shared ``<work_dir>/assets``) then ``umeflow data build`` into ``out``."""
    from umeflow import assets
    from umeflow.steps import data

    assets_cfg = step_config(AssetsConfig, recipe, overrides, work_dir, cache_dir=str(Path(work_dir) / "assets"))
    assets.fetch(assets_cfg)
    cfg = step_config(DataConfig, recipe, overrides, work_dir, assets_dir=assets_cfg.cache_dir, out=out)
    return data.run(cfg)


def init_model(recipe: str, overrides: list[str], work_dir: str, out_uri: str) -> dict:
    """``umeflow model init-tiny`` into the checkpoint location ``out_uri``."""
    from umeflow import assets
    from umeflow.evaluate.cache import model_fingerprint
    from umeflow.model.tiny import init_tiny

    assets_cfg = step_config(AssetsConfig, recipe, overrides, work_dir, cache_dir=str(Path(work_dir) / "assets"))
    assets.fetch(assets_cfg)
    with staging.output_dir(out_uri, work_dir) as out:
        cfg = step_config(ModelInitConfig, recipe, overrides, work_dir, assets_dir=assets_cfg.cache_dir, out=str(out))
        init_tiny(cfg)
        fingerprint = model_fingerprint(out)
    return {"model_fingerprint": fingerprint}


def annotate(recipe: str, overrides: list[str], work_dir: str, data_dir: str, out: str) -> dict:
    from umeflow.steps import annotate as step

    cfg = step_config(AnnotateConfig, recipe, overrides, work_dir, data=data_dir, out=out,
                      cache_dir=str(Path(work_dir) / "cache" / "annotate"))
    return step.run(cfg)


def _train(step: str, cfg_cls: type, recipe: str, overrides: list[str], work_dir: str, model_uri: str,
           data: str, out_uri: str, multinode: dict | None) -> dict:
    """SFT and GRPO alike: one process here, or a TrainJob that runs the same CLI under torchrun on every node (and,
    for GRPO in vLLM server mode, the rollout server beside it)."""
    import importlib

    from umeflow.evaluate.cache import model_fingerprint
    from umeflow.vllm_support import refuse_missing_vllm

    # in the image that runs SFT too: a train image without vLLM must not spend its GPUs on SFT before GRPO fails
    refuse_missing_vllm(recipe_path(recipe, work_dir), overrides)
    model_dir = staging.local_copy(model_uri, work_dir)
    with staging.output_dir(out_uri, work_dir, skip=TRAINER_STATE) as out:
        cfg = step_config(cfg_cls, recipe, overrides, work_dir, model=str(model_dir), data=data, out=str(out))
        from umeflow.pipeline import trainjob

        if trainjob.uses_trainjob(cfg, multinode):  # several nodes, or GRPO with a rollout server to start
            trainjob.run_step(step, cfg, recipe_on_volume(recipe, work_dir),
                              section_overrides(overrides, cfg_cls.SECTION), multinode)
            metrics = json.loads((out / "metrics.json").read_text())
        else:
            metrics = importlib.import_module(f"umeflow.steps.{step}").run(cfg)
        metrics = {**metrics, "model_fingerprint": model_fingerprint(out / "model")}
    return metrics


def sft(recipe: str, overrides: list[str], work_dir: str, model_uri: str, annotate_dir: str, out_uri: str,
        multinode: dict | None = None) -> dict:
    """Cold-start SFT from ``annotate_dir`` (whose manifest names the data's media root) into ``out_uri``."""
    return _train("sft", SFTConfig, recipe, overrides, work_dir, model_uri, annotate_dir, out_uri, multinode)


def grpo(recipe: str, overrides: list[str], work_dir: str, model_uri: str, data_dir: str, out_uri: str,
         multinode: dict | None = None) -> dict:
    """GRPO from the SFT checkpoint on the data build's training pairs (``<data>/train``) into ``out_uri``."""
    from umeflow.config import GRPOConfig

    return _train("grpo", GRPOConfig, recipe, overrides, work_dir, model_uri, str(Path(data_dir) / "train"),
                  out_uri, multinode)


def _evaluate_config(recipe: str, overrides: list[str], work_dir: str, data_dir: str, **explicit: Any):
    return step_config(EvaluateConfig, recipe, overrides, work_dir, data_root=str(Path(data_dir) / "eval"),
                       cache_dir=str(Path(work_dir) / "cache" / "embeddings"), **explicit)


def plan_eval_shards(recipe: str, overrides: list[str], work_dir: str, data_dir: str, num_shards: int) -> list[str]:
    """The recipe's eval task set split into ``num_shards`` balanced ``--tasks`` lists (fewer if there are fewer
    tasks)."""
    from umeflow.steps.evaluate import plan_shards

    cfg = _evaluate_config(recipe, overrides, work_dir, data_dir)
    return plan_shards(cfg.data_root, cfg.tasks, num_shards)


def evaluate_shard(recipe: str, overrides: list[str], work_dir: str, model_uri: str, data_dir: str, tasks: str,
                   out: str) -> dict:
    """Score one shard's tasks; the shared embedding cache lives on the work volume. Not logged to MLflow: the
    merge logs the whole evaluation once."""
    from umeflow.steps import evaluate

    model_dir = staging.local_copy(model_uri, work_dir)
    cfg = _evaluate_config(recipe, overrides, work_dir, data_dir, model=str(model_dir), tasks=tasks, out=out)
    summary = evaluate.run(cfg, log_to_mlflow=False)
    return json.loads((Path(out) / "metrics.json").read_text()) | {"tasks": len(summary["tasks"])}


def merge_evaluation(recipe: str, overrides: list[str], work_dir: str, model_uri: str, data_dir: str,
                     shard_dirs: list[str], out: str) -> dict:
    """The shards' outputs merged into one report over the recipe's whole task set (logged to MLflow once)."""
    from umeflow.steps import evaluate

    cfg = _evaluate_config(recipe, overrides, work_dir, data_dir, model=model_uri, out=out)
    evaluate.merge_shards(cfg, shard_dirs)
    return json.loads((Path(out) / "metrics.json").read_text())


def register(recipe: str, overrides: list[str], work_dir: str, model_uri: str, eval_dir: str, out: str) -> dict:
    """``umeflow register``: the checkpoint + its (merged) evaluation → MLflow model version, alias ``challenger``."""
    from umeflow.config import RegisterConfig
    from umeflow.steps import register as step

    model_dir = staging.local_copy(model_uri, work_dir)
    return step.run(step_config(RegisterConfig, recipe, overrides, work_dir, model=str(model_dir),
                                eval_dir=eval_dir, out=out))


def promote(recipe: str, overrides: list[str], work_dir: str, model_name: str, version: str, out: str) -> dict:
    """``umeflow promote``: the gate on ``model_name@challenger``, which must still be the ``version`` this run
    registered (a concurrent run that registered later would make this run judge the wrong model)."""
    from umeflow.config import PromoteConfig
    from umeflow.steps import promote as step

    # the step refuses before judging (and before any alias moves) when the alias points elsewhere
    cfg = step_config(PromoteConfig, recipe, overrides, work_dir, model_name=model_name, out=out,
                      challenger_version=str(version))
    return step.run(cfg)
