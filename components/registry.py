"""``register_model`` (MLflow model version + alias ``challenger``) and ``promote_model`` (the gate → ``champion``)."""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from umeflow.pipeline.images import light_image


@dsl.component(base_image=light_image(), install_kfp_package=False)
def register_model(recipe: str, overrides: List[str], work_dir: str, run_id: str, model_uri: str,
                   evaluation: Input[Artifact], registration: Output[Artifact]
                   ) -> NamedTuple("Registered", model_name=str, version=str):
    """``umeflow register``: the checkpoint as an MLflow pyfunc model version with its eval table, model card and
    lineage tags; ``registration`` holds registration.json and model_card.md."""
    from collections import namedtuple

    from umeflow.pipeline import tasks

    tasks.bind_run(run_id)
    result = tasks.register(recipe, overrides, work_dir, model_uri, evaluation.path, registration.path)
    registration.metadata.update({k: str(v) for k, v in result.items() if k in ("model_uri", "alias_uri", "run_id")})
    return namedtuple("Registered", "model_name version")(result["model_name"], str(result["version"]))


@dsl.component(base_image=light_image(), install_kfp_package=False)
def promote_model(recipe: str, overrides: List[str], work_dir: str, run_id: str, model_name: str, version: str,
                  decision: Output[Artifact], metrics: Output[Metrics]) -> str:
    """``umeflow promote``: the promotion policy decides whether ``version`` becomes ``champion``; returns the
    outcome (promoted | rejected | noop), with decision.json in ``decision``."""
    from umeflow.pipeline import tasks

    tasks.bind_run(run_id)
    result = tasks.promote(recipe, overrides, work_dir, model_name, version, decision.path)
    decision.metadata.update({"status": result["status"], "champion": str(result.get("champion"))})
    metrics.log_metric("promoted", float(result["status"] == "promoted"))
    return result["status"]
