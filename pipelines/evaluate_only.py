"""``evaluate_only``: score an existing checkpoint on the recipe's task set (sharded), report to MLflow."""

from typing import List

from kfp import dsl

from components.data import prepare_data
from components.run import prepare_run
from pipelines.common import DEFAULT_ACCELERATOR, GPU_TOLERATION, WORK_MOUNT, pod
from pipelines.evaluation import sharded_evaluation


@dsl.pipeline(name="umeflow-evaluate-only",
              description="Sharded MMEB-style evaluation of one checkpoint; report and metrics to MLflow")
def evaluate_only(
    model_uri: str,
    recipe: str = "configs/tiny.yaml",
    overrides: List[str] = [],
    checkpoint_root: str = f"{WORK_MOUNT}/runs",
    work_dir: str = WORK_MOUNT,
    pvc_name: str = "umeflow-work",
    s3_secret: str = "umeflow-s3",
    mlflow_secret: str = "umeflow-mlflow",
    eval_accelerator_type: str = DEFAULT_ACCELERATOR,
    eval_accelerator_count: int = 1,
    eval_shards: int = 4,
    tolerations: List[dict] = [GPU_TOLERATION],
    node_selector: dict = {},
):
    """Evaluate the checkpoint at ``model_uri`` (a path on the work PVC or ``s3://…``); parameters as in
    ``train_and_promote``. The data comes from the recipe (cached across runs with the same recipe)."""
    common = dict(pvc_name=pvc_name, s3_secret=s3_secret, mlflow_secret=mlflow_secret)
    base = dict(recipe=recipe, overrides=overrides, work_dir=work_dir)
    run = pod(prepare_run(checkpoint_root=checkpoint_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **base),
              "prepare run", cache=False, **common)
    data = pod(prepare_data(run_id=run.outputs["run_id"], **base), "prepare data", cache=True, **common)
    sharded_evaluation(model_uri=model_uri, data=data.outputs["data"], run_id=run.outputs["run_id"],
                       num_shards=eval_shards, accelerator_type=eval_accelerator_type,
                       accelerator_count=eval_accelerator_count, tolerations=tolerations, node_selector=node_selector,
                       **base, **common).set_display_name("evaluate")
