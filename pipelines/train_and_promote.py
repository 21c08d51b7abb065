"""``train_and_promote``: data → annotate → SFT → GRPO → sharded evaluation → register → promotion gate.
Locally: ``make run`` (``umeflow run-local``) on the KFP local runner. On a cluster: ``umeflow submit`` /
``umeflow schedule`` with ``pipelines/compiled/train_and_promote.yaml``.
"""


from typing import List

from kfp import dsl

from components.annotate import annotate
from components.data import prepare_data
from components.grpo import grpo
from components.model import init_model
from components.registry import promote_model, register_model
from components.run import prepare_run
from components.sft import IMAGE as TRAIN_IMAGE, sft
from pipelines.common import DEFAULT_ACCELERATOR, GPU_TOLERATION, SHM_SIZE, WORK_MOUNT, gpu, pod
from pipelines.evaluation import sharded_evaluation


@dsl.pipeline(name="umeflow-train-and-promote",
              description="UME-R1 training: data, annotation, SFT, GRPO, MMEB evaluation, MLflow registry + gate")
def train_and_promote(
    recipe: str = "configs/tiny.yaml",
    overrides: List[str] = [],
    checkpoint_root: str = f"{WORK_MOUNT}/runs",
    work_dir: str = WORK_MOUNT,
    pvc_name: str = "umeflow-work",
    s3_secret: str = "umeflow-s3",
    mlflow_secret: str = "umeflow-mlflow",
    sft_accelerator_type: str = DEFAULT_ACCELERATOR,
    sft_accelerator_count: int = 1,
    sft_num_nodes: int = 1,
    grpo_accelerator_type: str = DEFAULT_ACCELERATOR,
    grpo_accelerator_count: int = 1,
    grpo_num_nodes: int = 1,
    eval_accelerator_type: str = DEFAULT_ACCELERATOR,
    eval_accelerator_count: int = 1,
    eval_shards: int = 4,
    tolerations: List[dict] = [GPU_TOLERATION],
    node_selector: dict = {},
    trainjob_runtime: str = "torch-distributed",
):
    """Train a reasoning-driven embedding model and promote it when it passes the gate.

    Args:
        recipe: recipe path in the image (configs/…) or the recipe YAML itself (``umeflow submit --config`` sends it).
        overrides: ``section.key=value`` recipe overrides, e.g. ``["sft.max_steps=2000"]``.
        checkpoint_root: where checkpoints go: a path on the work PVC or ``s3://bucket/prefix``.
        work_dir: the work PVC's mount path (caches, staged checkpoints); keep the default on a cluster.
        pvc_name: a ReadWriteMany PVC shared by all tasks (evaluation shards share its embedding cache).
        s3_secret: secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL (optional keys).
        mlflow_secret: secret with MLFLOW_TRACKING_URI and MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN.
        sft_accelerator_type: accelerator resource name for SFT pods (``nvidia.com/gpu``).
        sft_accelerator_count: accelerators per SFT pod (per node when multi-node).
        sft_num_nodes: >1 runs SFT as a Kubeflow Trainer TrainJob over that many nodes.
        grpo_accelerator_type: as for SFT.
        grpo_accelerator_count: as for SFT.
        grpo_num_nodes: as for SFT.
        eval_accelerator_type: accelerator resource name for evaluation shard pods.
        eval_accelerator_count: accelerators per evaluation shard pod.
        eval_shards: evaluation fan-out: at most this many shard pods.
        tolerations: tolerations (Kubernetes JSON) for GPU pods.
        node_selector: node selector for GPU pods, e.g. ``{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}``.
        trainjob_runtime: the ClusterTrainingRuntime multi-node jobs use.
    """
    common = dict(pvc_name=pvc_name, s3_secret=s3_secret, mlflow_secret=mlflow_secret)
    base = dict(recipe=recipe, overrides=overrides, work_dir=work_dir)
    run = pod(prepare_run(checkpoint_root=checkpoint_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **base),
              "prepare run", cache=False, **common)
    run_id, run_root = run.outputs["run_id"], run.outputs["run_root"]
    data = pod(prepare_data(run_id=run_id, **base), "prepare data", cache=True, **common)
    initial = pod(init_model(run_id=run_id, run_root=run_root, **base), "initial model", cache=False, **common)
    annotated = pod(annotate(run_id=run_id, data=data.outputs["data"], **base), "annotate", cache=True, **common)
    trainjob = dict(tolerations=tolerations, node_selector=node_selector, pvc_name=pvc_name, shm_size=SHM_SIZE,
                    s3_secret=s3_secret, mlflow_secret=mlflow_secret, trainjob_runtime=trainjob_runtime,
                    image=TRAIN_IMAGE)
    sft_task = sft(run_id=run_id, run_root=run_root, model_uri=initial.outputs["Output"],
                   annotated=annotated.outputs["annotated"], num_nodes=sft_num_nodes,
                   gpus_per_node=sft_accelerator_count, accelerator_type=sft_accelerator_type, **trainjob, **base)
    gpu(pod(sft_task, "sft", cache=False, **common), sft_accelerator_type, sft_accelerator_count, tolerations,
        node_selector)
    grpo_task = grpo(run_id=run_id, run_root=run_root, model_uri=sft_task.outputs["Output"],
                     data=data.outputs["data"], num_nodes=grpo_num_nodes, gpus_per_node=grpo_accelerator_count,
                     accelerator_type=grpo_accelerator_type, **trainjob, **base)
    gpu(pod(grpo_task, "grpo", cache=False, **common), grpo_accelerator_type, grpo_accelerator_count, tolerations,
        node_selector)
    merged = sharded_evaluation(model_uri=grpo_task.outputs["Output"], data=data.outputs["data"], run_id=run_id,
                                num_shards=eval_shards, accelerator_type=eval_accelerator_type,
                                accelerator_count=eval_accelerator_count, tolerations=tolerations,
                                node_selector=node_selector, **base, **common).set_display_name("evaluate")
    registered = pod(register_model(run_id=run_id, model_uri=grpo_task.outputs["Output"],
                                    evaluation=merged.output, **base), "register", cache=False, **common)
    pod(promote_model(run_id=run_id, model_name=registered.outputs["model_name"],
                      version=registered.outputs["version"], **base), "promote", cache=False, **common)
