"""MLflow for umeflow: run tree and lineage, the servable model, registration and the promotion gate.

- ``runs``     ``step_run`` / ``pipeline_run``: one parent run per pipeline run, one child per step (an injected
               ``MLFLOW_RUN_ID`` wins), lineage tags on every run.
- ``lineage``  the ``lineage.*`` tags (git sha, config hash, DVC rev and data hashes, image digest, KFP run id).
- ``pyfunc``   the registered model: a pyfunc returning disc/gen embeddings for MMEB-style inputs.
- ``card``     evaluate output → gate snapshot, ``eval.*`` version tags, model card.
- ``gate``     ``decide(candidate, champion, policy)``: the pure promotion policy.

The steps that use them are ``umeflow.steps.register`` and ``umeflow.steps.promote``. Model versions are always
resolved by alias (``get_model_version_by_alias``), never by search: search results do not carry aliases reliably
(mlflow#16734).
"""

from umeflow.registry.gate import Decision, EvalSnapshot, PromotionPolicy, decide
from umeflow.registry.lineage import lineage_tags
from umeflow.registry.runs import StepRun, pipeline_run, step_run

__all__ = ["Decision", "EvalSnapshot", "PromotionPolicy", "StepRun", "decide", "lineage_tags", "pipeline_run",
           "step_run"]
