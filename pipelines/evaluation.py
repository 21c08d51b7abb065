"""``sharded_evaluation``: the evaluation fan-out both pipelines share, as a sub-pipeline.

plan shards → one GPU pod per shard (``ParallelFor``) → merge. It is a sub-pipeline rather than inline tasks because
the kfp 2.17 local runner overwrites every loop-body input that comes from an upstream *task output* with the loop
item; inputs of an enclosing sub-pipeline are passed through untouched, on the local runner and on a cluster alike.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input

from components.evaluate import evaluate_shard, merge_evaluation, plan_eval_shards
from pipelines.common import gpu, pod


@dsl.pipeline(name="sharded-evaluation")
def sharded_evaluation(recipe: str, overrides: List[str], work_dir: str, run_id: str, model_uri: str,
                       data: Input[Dataset], num_shards: int, accelerator_type: str, accelerator_count: int,
                       tolerations: List[dict], node_selector: dict, pvc_name: str, s3_secret: str,
                       mlflow_secret: str) -> Artifact:
    """Score ``model_uri`` on the recipe's task set over at most ``num_shards`` GPU pods; returns the merged
    evaluation folder (report.md, summary.json, metrics.json, categories.png)."""
    common = dict(pvc_name=pvc_name, s3_secret=s3_secret, mlflow_secret=mlflow_secret)
    base = dict(recipe=recipe, overrides=overrides, work_dir=work_dir)
    plan = pod(plan_eval_shards(data=data, num_shards=num_shards, **base), "plan evaluation shards", cache=False,
               **common)
    with dsl.ParallelFor(items=plan.output, name="evaluation-shards") as shard_tasks:
        # gpu_type/gpu_count are passed as arguments too: kfp 2.17 leaves accelerator parameters that only
        # set_accelerator_* uses inside a ParallelFor out of the loop's inputs (the spec would not resolve)
        shard = evaluate_shard(run_id=run_id, model_uri=model_uri, data=data, tasks_spec=shard_tasks,
                               gpu_type=accelerator_type, gpu_count=accelerator_count, **base)
        gpu(pod(shard, "evaluate shard", cache=False, **common), accelerator_type, accelerator_count, tolerations,
            node_selector)
    merge = pod(merge_evaluation(run_id=run_id, model_uri=model_uri, data=data,
                                 shards=dsl.Collected(shard.outputs["scores"]), **base),
                "merge evaluation", cache=False, **common)
    return merge.outputs["evaluation"]
