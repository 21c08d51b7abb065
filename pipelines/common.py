"""Pod settings every pipeline applies the same way: the work volume, secrets, accelerators, caching.

Accelerator type and count, tolerations, node selector, PVC name and secret names are pipeline parameters (resolved
at run time). The PVC's mount path and the ``/dev/shm`` size are compile-time constants: kfp-kubernetes takes them
as literals only.
"""

from __future__ import annotations

from kfp import dsl, kubernetes

from umeflow.pipeline.tasks import MLFLOW_SECRET_KEYS, S3_SECRET_KEYS

WORK_MOUNT = "/mnt/umeflow"  # the shared ReadWriteMany PVC: caches, staged checkpoints, multi-node inputs
SHM_SIZE = "16Gi"  # memory-backed /dev/shm for NCCL and dataloader workers on GPU pods
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
DEFAULT_ACCELERATOR = "nvidia.com/gpu"


def pod(task: dsl.PipelineTask, name: str, pvc_name, s3_secret, mlflow_secret, cache: bool) -> dsl.PipelineTask:
    """Every task: display name, the work volume, S3 and MLflow credentials from (optional) secrets, caching."""
    task.set_display_name(name)
    task.set_caching_options(cache)
    kubernetes.mount_pvc(task, pvc_name=pvc_name, mount_path=WORK_MOUNT)
    kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env={k: k for k in S3_SECRET_KEYS},
                                 optional=True)
    kubernetes.use_secret_as_env(task, secret_name=mlflow_secret,
                                 secret_key_to_env={k: k for k in MLFLOW_SECRET_KEYS}, optional=True)
    return task


def gpu(task: dsl.PipelineTask, accelerator_type, count, tolerations, node_selector) -> dsl.PipelineTask:
    """A GPU pod: accelerator type/count, tolerations and node selector (JSON parameters), ``/dev/shm``."""
    task.set_accelerator_type(accelerator_type).set_accelerator_limit(count)
    kubernetes.add_toleration_json(task, tolerations)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE)
    return task

