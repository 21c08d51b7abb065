"""``umeflow register``: a checkpoint and its evaluation become a model version with alias ``challenger``.

1. Checks the checkpoint (safetensors, tokenizer, processor), the evaluate output, and that the evaluation scored
   this checkpoint (model fingerprint, else path; ``check_eval_model``); embeds one text with the pyfunc. The
   pyfunc embeds as the evaluation did: its pixel sizing and disc read-out (``EVAL_INPUT_KEYS`` of the evaluation's
   ``run_info.json`` config) join the serving settings.
2. In the step's MLflow run (``step_run``: child of the pipeline run, lineage tags): logs the pyfunc
   (``umeflow.registry.pyfunc``), the evaluation files and aggregates, and the model card ``model_card.md``.
3. Registers a version of ``model_name`` with tags: lineage (``lineage.*``), the training run
   (``train.*``), the evaluation (``eval.*``, including ``eval.snapshot`` that ``umeflow promote`` reads); the short
   model card becomes the version description; alias ``alias`` (``challenger``) moves to it.

Outputs in ``out``: ``registration.json`` (name, version, ``models:/`` URI, run id), ``model_card.md``,
``metrics.json`` and ``run_info.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from umeflow.config import EmbeddingInputs, RegisterConfig
from umeflow.errors import UserError
from umeflow.io import write_json, write_run_info

log = logging.getLogger(__name__)


def _settings(cfg: RegisterConfig) -> dict:
    from umeflow.registry.pyfunc import MODES

    if cfg.default_mode not in MODES:
        raise UserError(f"register.default_mode={cfg.default_mode!r}: expected one of {list(MODES)}")
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise UserError("register.max_new_tokens and register.batch_size must be ≥ 1")
    return {"mode": cfg.default_mode, "max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size}


# How the evaluation fed the model (pixel sizing, disc read-out): the served model embeds the same way, so what it
# serves is what was scored.
EVAL_INPUT_KEYS = tuple(f.name for f in dataclasses.fields(EmbeddingInputs))


def _eval_input_settings(ev) -> dict:
    config = ev.run_info.get("config") or {}
    return {k: config[k] for k in EVAL_INPUT_KEYS if k in config}


def _check_eval_matches(checkpoint: Path, ev) -> None:
    """The evaluation must be of this checkpoint: same fingerprint, or (without one) the same folder."""
    from umeflow.evaluate.cache import model_fingerprint

    where = ev.root / "run_info.json"
    if ev.model_fingerprint:
        mine = model_fingerprint(checkpoint)
        if ev.model_fingerprint != mine:
            raise UserError(f"{where}: the evaluation scored model fingerprint {ev.model_fingerprint}, but checkpoint "
                            f"{checkpoint} has {mine}; evaluate this checkpoint (or set register.check_eval_model=false)")
    elif ev.evaluated_model:
        if Path(ev.evaluated_model).resolve() != checkpoint.resolve():
            raise UserError(f"{where}: the evaluation scored {ev.evaluated_model}, not {checkpoint} (no fingerprint "
                            "recorded to compare; set register.check_eval_model=false if they are the same weights)")
    else:
        raise UserError(f"{where}: records neither the model fingerprint nor the model path; cannot tell what was "
                        "evaluated (set register.check_eval_model=false to register anyway)")


def _training_tags(checkpoint: Path) -> dict[str, str]:
    """What trained the checkpoint, from its step's run_info.json (SFT/GRPO write it next to ``model/``)."""
    for path in (checkpoint / "run_info.json", checkpoint.parent / "run_info.json"):
        if path.is_file():
            try:
                info = json.loads(path.read_text())
            except ValueError:
                log.warning("%s is not valid JSON; training lineage recorded as unknown", path)
                break
            return {f"train.{k}": str(info.get(k) or "unknown") for k in ("config_hash", "git_sha", "mlflow_run_id")}
    return {f"train.{k}": "unknown" for k in ("config_hash", "git_sha", "mlflow_run_id")}


def _smoke_test(checkpoint: Path, settings: dict) -> None:
    import numpy as np
    import pandas as pd

    from umeflow.registry.pyfunc import EmbeddingModel, embedding_dim

    model = EmbeddingModel(checkpoint, settings)
    out = model.predict(None, pd.DataFrame({"text": ["umeflow registration smoke test"]}), params={"mode": "disc"})
    dim = embedding_dim(checkpoint)
    if out.shape != (1, dim) or not np.isfinite(out).all():
        raise UserError(f"checkpoint {checkpoint}: the pyfunc returned {out.shape} (finite: "
                        f"{bool(np.isfinite(out).all())}), expected (1, {dim}) finite values")


def run(cfg: RegisterConfig) -> dict:
    import mlflow

    from umeflow.io import ensure_writable_dir
    from umeflow.registry.card import eval_metrics, eval_tags, model_card, read_eval_dir
    from umeflow.registry.models import mlflow_errors, validate_alias, validate_model_name
    from umeflow.registry.pyfunc import log_embedding_model, validate_checkpoint
    from umeflow.registry.runs import mask, resolve_tracking_uri, step_run
    from umeflow.tracking import accept_config_credentials

    ensure_writable_dir(cfg.out)  # fail before logging and registering a version, not after
    cfg = accept_config_credentials(cfg)  # credentials go to the environment, never into what we record
    validate_model_name(cfg.model_name, "register.model_name")
    validate_alias(cfg.alias, "register.alias")
    checkpoint = validate_checkpoint(cfg.model)
    ev = read_eval_dir(cfg.eval_dir)
    settings = {**_settings(cfg), **_eval_input_settings(ev)}
    if cfg.check_eval_model:
        _check_eval_matches(checkpoint, ev)
    if cfg.smoke_test:
        _smoke_test(checkpoint, settings)

    uri = resolve_tracking_uri(cfg.tracking_uri, embedded_default=True)
    with mlflow_errors(uri), step_run("register", cfg, tracking_uri=uri, experiment=cfg.experiment,
                                      inputs={"eval_dir": ev.root / "summary.json"}) as srun:
        if srun is None:
            raise UserError("register runs on the main process only (RANK is set to a non-zero rank)")
        if cfg.registry_uri:
            mlflow.set_registry_uri(cfg.registry_uri)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=cfg.registry_uri or None)
        info = log_embedding_model(checkpoint, settings, tags=srun.lineage)
        for name in ("summary.json", "report.md"):
            mlflow.log_artifact(str(ev.root / name), artifact_path="evaluation")
        mlflow.log_metrics(eval_metrics(ev))
        training = _training_tags(checkpoint)
        tags = {**srun.lineage, **training, **eval_tags(ev),
                "umeflow.checkpoint": mask(str(checkpoint.resolve())), "umeflow.step_run_id": srun.run_id}
        version = str(mlflow.register_model(info.model_uri, cfg.model_name, tags=tags).version)
        card_args = (cfg.model_name, version, checkpoint, ev, srun.lineage, training, settings)
        card = model_card(*card_args, full=True)
        mlflow.log_text(card, "model_card.md")
        client.update_model_version(cfg.model_name, version, description=model_card(*card_args, full=False))
        client.set_registered_model_alias(cfg.model_name, cfg.alias, version)
        mlflow.set_tags({"umeflow.registered_model": cfg.model_name, "umeflow.registered_version": version})
        run_id = srun.run_id

    result = {"model_name": cfg.model_name, "version": version, "alias": cfg.alias,
              "model_uri": f"models:/{cfg.model_name}/{version}",
              "alias_uri": f"models:/{cfg.model_name}@{cfg.alias}", "run_id": run_id, "tracking_uri": mask(uri)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "registration.json", result)
    (out / "model_card.md").write_text(card)
    write_json(out / "metrics.json", {"version": int(version), **eval_metrics(ev)})
    write_run_info(out, cfg, inputs={"model": srun.lineage.get("lineage.input.model", "unknown"),
                                     "eval_dir": srun.lineage.get("lineage.input.eval_dir", "unknown")},
                   extra={"mlflow_run_id": run_id})
    log.info("registered %s version %s (alias %s) from %s", cfg.model_name, version, cfg.alias, checkpoint)
    print(f"registered {result['model_uri']} as {result['alias_uri']}")
    return result
