"""``umeflow promote``: the promotion gate between alias ``challenger`` and alias ``champion``.

1. Resolves both versions by alias (``get_model_version_by_alias``; never by search). With ``challenger_version``
   (what a pipeline run registered), a challenger alias that points elsewhere is an error and nothing changes.
2. Challenger already champion: nothing to do; says so and changes nothing (re-running is safe).
3. Otherwise ``umeflow.registry.gate.decide`` compares the two evaluation snapshots (version tag ``eval.snapshot``,
   written by ``umeflow register``) under the policy in ``PromoteConfig``.
4. The decision, its reasons and its inputs (both snapshots' numbers and the policy) become ``promotion.*`` tags on
   the challenger; on pass, and only then, alias ``champion`` moves to it (after checking that nobody moved it
   meanwhile) and the previous champion is tagged ``promotion.replaced_by``.

Outputs in ``out``: ``decision.json``, ``metrics.json`` (passed, promoted, scores, gain) and ``run_info.json``.
A rejection is a normal outcome (exit 0) unless ``fail_on_reject`` is set (exit 3).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from umeflow.config import PromoteConfig
from umeflow.errors import UserError
from umeflow.io import write_json, write_run_info
from umeflow.registry.gate import Decision, EvalSnapshot, PromotionPolicy, decide, resolve_required_tasks

log = logging.getLogger(__name__)


class GateRejected(UserError):
    """The challenger did not pass the gate and ``fail_on_reject`` asks for a failing exit status."""

    exit_code = 3


def policy_of(cfg: PromoteConfig) -> PromotionPolicy:
    floors = {"image": cfg.floor_image, "video": cfg.floor_video, "visdoc": cfg.floor_visdoc}
    for key, value in {"min_overall": cfg.min_overall, "max_modality_regression": cfg.max_modality_regression,
                       "max_reasoning_cosine": cfg.max_reasoning_cosine,
                       **{f"floor_{m}": v for m, v in floors.items()}}.items():
        if value < 0:
            raise UserError(f"promote.{key}={value}: must be ≥ 0")
    return PromotionPolicy(column=cfg.column, min_overall=cfg.min_overall,
                           modality_floors={m: v for m, v in floors.items() if v > 0}, min_gain=cfg.min_gain,
                           max_modality_regression=cfg.max_modality_regression,
                           require_complete=cfg.require_complete,
                           required_tasks=resolve_required_tasks(cfg.required_tasks, cfg.data_root),
                           require_same_tasks=cfg.require_same_tasks,
                           max_reasoning_cosine=cfg.max_reasoning_cosine)


def snapshot_of(version, name: str) -> EvalSnapshot:
    from umeflow.registry.card import SNAPSHOT_TAG

    text = (version.tags or {}).get(SNAPSHOT_TAG)
    where = f"model '{name}' version {version.version}"
    if not text:
        raise UserError(f"{where} has no '{SNAPSHOT_TAG}' tag; register it with `umeflow register` (which records "
                        "its evaluation)")
    return EvalSnapshot.from_json(text, source=f"{where}, tag '{SNAPSHOT_TAG}'")


def _decision_tags(decision: Decision, champion_before: str | None, run_id: str | None) -> dict[str, str]:
    return {"promotion.decision": "passed" if decision.passed else "rejected",
            "promotion.reasons": "; ".join(decision.reasons) or "all checks passed",
            "promotion.checks": json.dumps([c.__dict__ for c in decision.checks], separators=(",", ":")),
            "promotion.inputs": json.dumps(decision.inputs, sort_keys=True, separators=(",", ":")),
            "promotion.champion_before": champion_before or "none",
            "promotion.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "promotion.run_id": run_id or "unknown"}


def _write(cfg: PromoteConfig, result: dict) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "decision.json", result)
    inputs = (result.get("decision") or {}).get("inputs") or {}
    cand, champ = inputs.get("candidate") or {}, inputs.get("champion") or {}
    metrics = {"passed": int(result["status"] in ("promoted", "noop")), "promoted": int(result["status"] == "promoted")}
    if cand.get("overall") is not None:
        metrics["candidate_overall"] = cand["overall"]
    if champ.get("overall") is not None:
        metrics["champion_overall"] = champ["overall"]
        if cand.get("overall") is not None:
            metrics["gain"] = cand["overall"] - champ["overall"]
    write_json(out / "metrics.json", metrics)
    write_run_info(out, cfg, extra={"mlflow_run_id": result.get("run_id")})


def run(cfg: PromoteConfig) -> dict:
    import mlflow

    from umeflow.io import ensure_writable_dir
    from umeflow.registry.models import mlflow_errors, validate_alias, validate_model_name, version_by_alias
    from umeflow.registry.runs import resolve_tracking_uri, step_run
    from umeflow.tracking import accept_config_credentials

    ensure_writable_dir(cfg.out)  # fail before touching the registry, not after moving an alias
    cfg = accept_config_credentials(cfg)  # credentials go to the environment, never into what we record
    name = validate_model_name(cfg.model_name, "promote.model_name")
    validate_alias(cfg.challenger_alias, "promote.challenger_alias")
    validate_alias(cfg.champion_alias, "promote.champion_alias")
    if cfg.challenger_alias == cfg.champion_alias:
        raise UserError("promote.challenger_alias and promote.champion_alias must differ")
    policy = policy_of(cfg)
    uri = resolve_tracking_uri(cfg.tracking_uri, embedded_default=True)
    with mlflow_errors(uri), step_run("promote", cfg, tracking_uri=uri, experiment=cfg.experiment) as srun:
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=cfg.registry_uri or None)
        challenger = version_by_alias(client, name, cfg.challenger_alias)
        if challenger is None:
            raise UserError(f"no version of registered model '{name}' has alias '{cfg.challenger_alias}'; run "
                            "`umeflow register` first")
        if cfg.challenger_version and str(challenger.version) != str(cfg.challenger_version):
            raise UserError(f"{name}@{cfg.challenger_alias} is version {challenger.version}, not version "
                            f"{cfg.challenger_version} (promote.challenger_version): another registration came in "
                            "between; nothing was changed")
        champion = version_by_alias(client, name, cfg.champion_alias)
        cand_v, champ_v = str(challenger.version), (str(champion.version) if champion else None)
        run_id = srun.run_id if srun else None
        if cand_v == champ_v:
            result = {"status": "noop", "model_name": name, "challenger": cand_v, "champion": champ_v,
                      "message": f"{name}@{cfg.challenger_alias} (version {cand_v}) is already "
                                 f"{name}@{cfg.champion_alias}; nothing to do", "run_id": run_id}
        else:
            decision = decide(snapshot_of(challenger, name), snapshot_of(champion, name) if champion else None,
                              policy)
            for key, value in _decision_tags(decision, champ_v, run_id).items():
                client.set_model_version_tag(name, cand_v, key, value)
            if decision.passed:
                current = version_by_alias(client, name, cfg.champion_alias)
                if (str(current.version) if current else None) != champ_v:
                    raise UserError(f"{name}@{cfg.champion_alias} moved to version {current.version if current else None}"
                                    f" while version {cand_v} was being checked; re-run promote")
                client.set_registered_model_alias(name, cfg.champion_alias, cand_v)
                if champ_v:
                    client.set_model_version_tag(name, champ_v, "promotion.replaced_by", cand_v)
            status = "promoted" if decision.passed else "rejected"
            verb = (f"moved {name}@{cfg.champion_alias} from version {champ_v or 'none'} to {cand_v}" if decision.passed
                    else f"kept {name}@{cfg.champion_alias} at version {champ_v or 'none'}")
            result = {"status": status, "model_name": name, "challenger": cand_v, "champion_before": champ_v,
                      "champion": cand_v if decision.passed else champ_v, "decision": decision.to_dict(),
                      "message": f"gate {'passed' if decision.passed else 'rejected'} version {cand_v}: {verb}"
                                 + ("" if decision.passed else f" ({'; '.join(decision.reasons)})"),
                      "run_id": run_id}
        if srun is not None:
            mlflow.set_tags({"umeflow.promotion.status": result["status"], "umeflow.promotion.challenger": cand_v,
                             "umeflow.promotion.champion": str(result["champion"])})
            mlflow.log_dict(result, "decision.json")
    _write(cfg, result)
    log.info("%s", result["message"])
    print(result["message"])
    if result["status"] == "rejected" and cfg.fail_on_reject:
        raise GateRejected(result["message"])
    return result
