"""``grpo``: the RL stage on one GPU pod, or on ``num_nodes`` nodes through a Kubeflow Trainer TrainJob."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from umeflow.pipeline.images import train_image

IMAGE = train_image()  # also handed to a multi-node TrainJob, whose nodes run the same image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def grpo(recipe: str, overrides: List[str], work_dir: str, run_id: str, run_root: str, model_uri: str,
         data: Input[Dataset], num_nodes: int, gpus_per_node: int, accelerator_type: str,
         tolerations: List[dict], node_selector: dict, pvc_name: str, shm_size: str, s3_secret: str,
         mlflow_secret: str, trainjob_runtime: str, image: str, model: Output[Model],
         metrics: Output[Metrics]) -> str:
    """``umeflow grpo`` from the SFT checkpoint ``model_uri`` on ``data``'s training pairs into
    ``<run_root>/grpo``; returns the checkpoint URI (``…/grpo/model``). ``num_nodes > 1``: as ``sft``."""
    from umeflow.pipeline import staging, tasks

    tasks.bind_run(run_id)
    multinode = tasks.multinode_options(run_id, num_nodes, gpus_per_node, accelerator_type, image, work_dir,
                                        pvc_name, tolerations, node_selector, shm_size, s3_secret, mlflow_secret,
                                        trainjob_runtime)
    out = staging.join(run_root, "grpo")
    result = tasks.grpo(recipe, overrides, work_dir, model_uri, data.path, out, multinode)
    uri = staging.join(out, "model")
    tasks.describe_checkpoint(model, uri, model_fingerprint=result["model_fingerprint"])
    tasks.log_metrics(metrics, result)
    return uri
