"""Evaluation fan-out: ``plan_eval_shards`` → one ``evaluate_shard`` GPU pod per shard → ``merge_evaluation``."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Output

from umeflow.pipeline.images import light_image, train_image


@dsl.component(base_image=light_image(), install_kfp_package=False)
def plan_eval_shards(recipe: str, overrides: List[str], work_dir: str, data: Input[Dataset],
                     num_shards: int) -> List[str]:
    """The recipe's eval task set split into at most ``num_shards`` balanced ``--tasks`` lists."""
    from umeflow.pipeline import tasks

    return tasks.plan_eval_shards(recipe, overrides, work_dir, data.path, num_shards)


@dsl.component(base_image=train_image(), install_kfp_package=False)
def evaluate_shard(recipe: str, overrides: List[str], work_dir: str, run_id: str, model_uri: str,
                   data: Input[Dataset], tasks_spec: str, gpu_type: str, gpu_count: int,
                   scores: Output[Artifact], metrics: Output[Metrics]):
    """``umeflow evaluate --tasks <tasks_spec>`` for one shard; embeddings go to the shared cache on the work
    volume. ``gpu_type``/``gpu_count`` (the pod's accelerators) are recorded with the shard's metrics."""
    from umeflow.pipeline import tasks

    tasks.bind_run(run_id)
    result = tasks.evaluate_shard(recipe, overrides, work_dir, model_uri, data.path, tasks_spec, scores.path)
    scores.metadata.update({"tasks": tasks_spec, "gpu_type": gpu_type, "gpu_count": gpu_count})
    tasks.log_metrics(metrics, result)


@dsl.component(base_image=light_image(), install_kfp_package=False)
def merge_evaluation(recipe: str, overrides: List[str], work_dir: str, run_id: str, model_uri: str,
                     data: Input[Dataset], shards: Input[List[Artifact]], evaluation: Output[Artifact],
                     report: Output[Markdown], metrics: Output[Metrics]):
    """The shards merged into one evaluation (report.md, summary.json, categories.png, metrics.json), logged to
    MLflow once; ``report`` renders the table in the KFP UI."""
    import shutil

    from umeflow.pipeline import tasks

    tasks.bind_run(run_id)
    result = tasks.merge_evaluation(recipe, overrides, work_dir, model_uri, data.path, [s.path for s in shards],
                                    evaluation.path)
    evaluation.metadata["model_uri"] = model_uri
    shutil.copyfile(f"{evaluation.path}/report.md", report.path)
    tasks.log_metrics(metrics, result)
