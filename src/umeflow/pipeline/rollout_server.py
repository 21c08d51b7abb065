"""GRPO's vLLM server mode on a cluster: one ``trl vllm-serve`` pod on GPUs of its own, started beside the TrainJob.

TRL's server mode (trl 1.16): only the trainer's rank 0 talks to the server — it sends every prompt over HTTP and,
after each optimizer step, pushes the new weights through an NCCL group that the server's workers join at rank 0's
pod IP on ``vllm_group_port`` 51216 (trl/generation/vllm_generation.py:300-309, trl/generation/vllm_client.py:
726-777). The server needs GPUs no trainer process uses; on Kubernetes a pod's GPUs are its own, so the server is a
``batch/v1`` Job of one pod (its GPUs = ``grpo.vllm_server_gpus`` = its tensor-parallel size) and a ``Service`` the
trainer's ``vllm_server_base_url`` names. Both are owned by the TrainJob (deleting the TrainJob collects them), and the
launcher deletes them when the TrainJob completes or fails.

``trl vllm-serve`` (trl/scripts/vllm_serve.py:195-293) execs vLLM's own ``vllm serve`` with the flags TRL's client
relies on (the NCCL weight-transfer engine, processed logprobs) and ``VLLM_SERVER_DEV_MODE=1``; arguments it does not
know are forwarded to ``vllm serve`` as they are (trl/cli/commands/vllm_serve.py:34-37), so the command is built
here from TRL's own argument names only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from umeflow.errors import UserError

log = logging.getLogger(__name__)

CONTAINER = "vllm"
SERVER_LABEL = "umeflow.io/rollout-server"  # the Service selects the server pod by this label


@dataclass
class RolloutServerSpec:
    """One rollout server pod: the policy's initial checkpoint served by vLLM on ``gpus`` GPUs."""

    name: str  # the Job's and the Service's name
    namespace: str
    image: str
    model: str  # the SFT checkpoint on the shared work volume (trainer and server read the same path)
    gpus: int
    port: int
    dtype: str = "auto"
    accelerator_type: str = "nvidia.com/gpu"
    tolerations: list[dict] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    pvc_name: str = ""
    mount_path: str = ""
    shm_size: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    active_deadline_seconds: int = 0  # a server whose launcher died stops by itself

    @property
    def base_url(self) -> str:
        """What the trainer's rank 0 connects to (the Service's cluster DNS name)."""
        return f"http://{self.name}.{self.namespace}.svc:{self.port}"


def needed(cfg) -> bool:
    """A GRPO config in server mode with no server of its own: the pipeline must start one."""
    return bool(getattr(cfg, "use_vllm", False) and getattr(cfg, "vllm_mode", "") == "server"
                and not getattr(cfg, "vllm_server_base_url", ""))


def server_command(model: str, gpus: int, port: int, dtype: str = "auto") -> list[str]:
    """``trl vllm-serve`` on every interface of the pod; TRL's argument names (a misspelt one would be forwarded to
    ``vllm serve`` unread, so tests parse this with TRL's own parser)."""
    return ["trl", "vllm-serve", "--model", model, "--tensor_parallel_size", str(gpus),
            "--host", "0.0.0.0", "--port", str(port), "--dtype", dtype]


def trainer_overrides(spec: RolloutServerSpec) -> list[str]:
    """``--set`` values that point the trainer at the server (they come after the recipe's own overrides, so win)."""
    return [f"vllm_server_base_url={spec.base_url}"]


def split_gpus(num_nodes: int, gpus_per_node: int, server_gpus: int) -> int:
    """The trainer's GPUs per node. On one node the server's GPUs come out of the node's (TRL's single-node layout:
    the server on some GPUs, the trainer on the rest); with several nodes every node keeps its GPUs and the server
    pod asks for its own."""
    if num_nodes > 1:
        return gpus_per_node
    trainer = gpus_per_node - server_gpus
    if trainer < 1:
        raise UserError(f"grpo vLLM server mode on one node: {gpus_per_node} GPU(s) leave none for the trainer once "
                        f"the rollout server takes grpo.vllm_server_gpus={server_gpus}; give the GRPO task more "
                        f"accelerators (grpo_accelerator_count) or set grpo.vllm_mode=colocate")
    return trainer


def _owner(owner: dict | None) -> list[dict]:
    meta = (owner or {}).get("metadata") or {}
    if not meta.get("uid"):
        return []
    return [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"]}]


def build_manifests(spec: RolloutServerSpec, owner: dict | None = None) -> tuple[dict, dict]:
    """The server's ``batch/v1`` Job and its ``v1`` Service (owned by ``owner``, the created TrainJob, when given).

    The server pod gets no S3/MLflow credentials: it only reads the checkpoint from the work volume."""
    if spec.gpus < 1:
        raise UserError(f"rollout server {spec.name}: needs at least one GPU")
    labels = {"app.kubernetes.io/part-of": "umeflow", "app.kubernetes.io/component": "rollout-server",
              **spec.labels, SERVER_LABEL: spec.name}
    meta: dict[str, Any] = {"name": spec.name, "namespace": spec.namespace, "labels": labels}
    if _owner(owner):
        meta["ownerReferences"] = _owner(owner)
    count = str(spec.gpus)
    container: dict[str, Any] = {
        "name": CONTAINER, "image": spec.image,
        "command": server_command(spec.model, spec.gpus, spec.port, spec.dtype),
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],  # the checkpoint is a local folder; never the hub
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        # vLLM answers /health once the model is loaded; the Service routes to the pod only from then on
        "readinessProbe": {"httpGet": {"path": "/health", "port": spec.port}, "periodSeconds": 10},
        "resources": {"limits": {spec.accelerator_type: count}, "requests": {spec.accelerator_type: count}},
    }
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    volumes, mounts = [], []
    if spec.pvc_name:
        volumes.append({"name": "work", "persistentVolumeClaim": {"claimName": spec.pvc_name, "readOnly": True}})
        mounts.append({"name": "work", "mountPath": spec.mount_path, "readOnly": True})
    if spec.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if volumes:
        pod["volumes"], container["volumeMounts"] = volumes, mounts
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.node_selector:
        pod["nodeSelector"] = {str(k): str(v) for k, v in spec.node_selector.items()}
    job_spec: dict[str, Any] = {"backoffLimit": 0,  # a restarted server has lost the trainer's NCCL group anyway
                                "template": {"metadata": {"labels": labels}, "spec": pod}}
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": dict(meta),
               "spec": {"selector": {SERVER_LABEL: spec.name},
                        "ports": [{"name": "http", "port": spec.port, "targetPort": spec.port, "protocol": "TCP"}]}}
    return job, service


# --------------------------------------------------------------------------------------------- cluster calls

def kube_apis():
    """``(BatchV1Api, CoreV1Api)`` from the pod's service account, else the local kubeconfig."""
    from kubernetes import client

    from umeflow.pipeline.trainjob import load_kube_config

    load_kube_config()
    return client.BatchV1Api(), client.CoreV1Api()


def start(spec: RolloutServerSpec, owner: dict | None, batch_api, core_api) -> None:
    """Create the server's Job and Service; ones that exist (a retried launcher) are adopted."""
    from kubernetes.client.exceptions import ApiException

    job, service = build_manifests(spec, owner)
    for what, create in (("Job", lambda: batch_api.create_namespaced_job(spec.namespace, job)),
                         ("Service", lambda: core_api.create_namespaced_service(spec.namespace, service))):
        try:
            create()
        except ApiException as e:
            if e.status != 409:
                hint = (" (the launcher's service account needs the chart's rbac.trainJobLauncher.rolloutServer)"
                        if e.status == 403 else "")
                raise UserError(f"creating the rollout server {what} {spec.namespace}/{spec.name} failed: "
                                f"{e.status} {e.reason}{hint}") from None
            log.info("rollout server %s %s/%s already exists (retried task); using it", what, spec.namespace,
                     spec.name)
    log.info("rollout server %s/%s: %d GPU(s), %s", spec.namespace, spec.name, spec.gpus, spec.base_url)


def stop(spec: RolloutServerSpec, batch_api, core_api) -> None:
    """Delete the server's Job (with its pod) and Service; already gone is fine, other errors are logged only (the
    TrainJob's result matters more, and the owner reference collects them with the TrainJob)."""
    from kubernetes.client.exceptions import ApiException

    for what, delete in (("Job", lambda: batch_api.delete_namespaced_job(spec.name, spec.namespace,
                                                                          propagation_policy="Background")),
                         ("Service", lambda: core_api.delete_namespaced_service(spec.name, spec.namespace))):
        try:
            delete()
        except ApiException as e:
            if e.status != 404:
                log.warning("could not delete the rollout server %s %s/%s: %s %s", what, spec.namespace, spec.name,
                            e.status, e.reason)
