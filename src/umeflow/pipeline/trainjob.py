"""Multi-node SFT/GRPO: a Kubeflow Trainer ``TrainJob`` that runs the step's own CLI under ``torchrun`` on N nodes.

The sft/grpo component stays the single KFP task; with ``num_nodes > 1`` it builds a ``TrainJob``
(``trainer.kubeflow.org/v1alpha1``, runtime ``torch-distributed`` by default, which sets torchrun's ``PET_*``
variables on every node), validates it offline against the vendored schema (``umeflow/schemas``, generated from
the ``kubeflow-trainer-api`` models), creates it with the Kubernetes ``CustomObjectsApi`` and follows it until it
completes, fails or runs out of time. The name is derived from the pipeline run and step, so a retried launcher pod
adopts the job it already started instead of starting a second one.

The nodes see what the launcher sees through the shared work volume (a ReadWriteMany PVC mounted at the same path):
inputs are copied there first, checkpoints are written there, and the launcher publishes them afterwards. Pods get
the launcher's image, accelerators, tolerations, node selector, ``/dev/shm`` and the S3/MLflow secrets as env.

GRPO in vLLM server mode (``grpo.use_vllm`` + ``vllm_mode: server`` without a ``vllm_server_base_url``) goes through a
TrainJob on one node too: the launcher starts the rollout server beside it (``umeflow.pipeline.rollout_server``) and
points the trainer at it. Nodes always run ``torchrun``, never ``trl``/``accelerate launch``: torchrun reads the
runtime's ``PET_NNODES``/``PET_NPROC_PER_NODE``/``PET_NODE_RANK``/``PET_MASTER_ADDR`` as its defaults
(torch/distributed/argparse_util.py:15-34); the other launchers ignore them and silently run at world size 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from umeflow.errors import UserError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
CONTAINER = "node"  # the trainer container / replicated job name in Kubeflow Trainer's torch runtimes
PATCH_MANAGER = "umeflow.io/pipeline"
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class TrainJobFailed(RuntimeError):
    """The TrainJob reached ``Failed`` (message carries the controller's reason) or did not finish in time."""


class TrainJobTimeout(TrainJobFailed):
    """The TrainJob did not finish in time; it is left running (with its rollout server) for inspection."""


@dataclass
class TrainJobSpec:
    """Everything a TrainJob's pods need to look like the launcher's own pod."""

    name: str
    namespace: str
    image: str
    command: list[str]
    num_nodes: int
    gpus_per_node: int = 1
    accelerator_type: str = "nvidia.com/gpu"  # the resource name, as in KFP's set_accelerator_type
    runtime: str = "torch-distributed"
    runtime_kind: str = "ClusterTrainingRuntime"
    env: dict[str, str] = field(default_factory=dict)
    secret_env: list[dict] = field(default_factory=list)  # [{"secret": s, "key": k, "env": VAR}]
    tolerations: list[dict] = field(default_factory=list)
    node_selector: dict[str, str] = field(default_factory=dict)
    pvc_name: str = ""
    mount_path: str = ""
    shm_size: str = ""  # e.g. "16Gi": a memory-backed /dev/shm (NCCL, dataloader workers)
    labels: dict[str, str] = field(default_factory=dict)
    active_deadline_seconds: int = 0


def job_name(run_id: str, step: str) -> str:
    """A DNS-1035 label, stable for one pipeline run and step (≤ 40 characters: JobSet appends pod suffixes)."""
    digest = hashlib.sha256(f"{run_id}/{step}".encode()).hexdigest()[:10]
    return f"umeflow-{re.sub(r'[^a-z0-9-]', '', step.lower())[:16]}-{digest}"


def build_manifest(spec: TrainJobSpec) -> dict:
    """The TrainJob object for ``spec`` (validate it with ``validate_manifest``)."""
    if spec.num_nodes < 1 or spec.gpus_per_node < 0:
        raise UserError(f"TrainJob {spec.name}: num_nodes must be >= 1 and gpus_per_node >= 0")
    env = [{"name": k, "value": str(v)} for k, v in sorted(spec.env.items())]
    env += [{"name": s["env"], "valueFrom": {"secretKeyRef": {"name": s["secret"], "key": s["key"], "optional": True}}}
            for s in spec.secret_env]
    trainer: dict[str, Any] = {"image": spec.image, "command": list(spec.command), "numNodes": spec.num_nodes}
    if env:
        trainer["env"] = env
    if spec.gpus_per_node:
        trainer["numProcPerNode"] = spec.gpus_per_node
        count = str(spec.gpus_per_node)
        trainer["resourcesPerNode"] = {"limits": {spec.accelerator_type: count},
                                       "requests": {spec.accelerator_type: count}}
    pod: dict[str, Any] = {}
    volumes, mounts = [], []
    if spec.pvc_name:
        if not spec.mount_path:
            raise UserError(f"TrainJob {spec.name}: pvc_name {spec.pvc_name} needs a mount_path")
        volumes.append({"name": "work", "persistentVolumeClaim": {"claimName": spec.pvc_name}})
        mounts.append({"name": "work", "mountPath": spec.mount_path})
    if spec.shm_size:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if volumes:
        pod["volumes"] = volumes
        pod["containers"] = [{"name": CONTAINER, "volumeMounts": mounts}]
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.node_selector:
        pod["nodeSelector"] = {str(k): str(v) for k, v in spec.node_selector.items()}
    job_spec: dict[str, Any] = {
        "runtimeRef": {"name": spec.runtime, "apiGroup": GROUP, "kind": spec.runtime_kind},
        "trainer": trainer,
    }
    if pod:
        job_spec["runtimePatches"] = [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": CONTAINER, "template": {"spec": {"template": {"spec": pod}}}}]}}}}]
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = int(spec.active_deadline_seconds)
    labels = {"app.kubernetes.io/part-of": "umeflow", **spec.labels}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels}, "spec": job_spec}


@cache
def schema() -> dict:
    """The TrainJob JSON Schema vendored from ``kubeflow-trainer-api`` (see tools/vendor_trainjob_schema.py)."""
    return json.loads(resources.files("umeflow.schemas").joinpath("trainjob.v1alpha1.schema.json").read_text())


def validate_manifest(manifest: dict) -> None:
    """Raise ``UserError`` listing every schema violation (unknown fields included) with its JSON path."""
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(schema()).iter_errors(manifest), key=lambda e: list(e.absolute_path))
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]
    name = manifest.get("metadata", {}).get("name", "")
    if not isinstance(name, str) or len(name) > 63 or not _DNS_LABEL.match(name):
        problems.append(f"metadata/name: {name!r} is not a DNS-1035 label (a-z, 0-9, '-', starts with a letter)")
    if problems:
        raise UserError("invalid TrainJob manifest:\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------------------------- cluster calls

def load_kube_config() -> None:
    """The pod's service account, else the local kubeconfig; neither is a ``UserError`` saying why one is needed."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise UserError(f"no Kubernetes API to start a TrainJob on (multi-node training, or GRPO's vLLM server "
                            f"mode, runs on a cluster): {e}") from None


def custom_objects_api():
    """A ``CustomObjectsApi`` from the pod's service account, else the local kubeconfig."""
    from kubernetes import client

    load_kube_config()
    return client.CustomObjectsApi()


def current_namespace(default: str = "kubeflow") -> str:
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else default


def _condition(obj: dict, kind: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and str(c.get("status")) == "True":
            return c
    return None


def submit(manifest: dict, api) -> dict:
    """Create the TrainJob; if one with this name exists (a retried launcher), adopt it."""
    from kubernetes.client.exceptions import ApiException

    meta = manifest["metadata"]
    try:
        return api.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, manifest)
    except ApiException as e:
        if e.status != 409:
            raise TrainJobFailed(f"creating TrainJob {meta['namespace']}/{meta['name']} failed: "
                                 f"{e.status} {e.reason}: {e.body}") from None
        log.info("TrainJob %s/%s already exists (retried task); following it", meta["namespace"], meta["name"])
        return api.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"])


def follow(namespace: str, name: str, api, timeout_s: float, poll_s: float = 15.0,
           sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> dict:
    """Poll until ``Complete`` (return the object) or ``Failed`` / timeout (raise ``TrainJobFailed``)."""
    deadline = clock() + timeout_s
    last = None
    while True:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        if _condition(obj, "Complete"):
            log.info("TrainJob %s/%s complete", namespace, name)
            return obj
        failed = _condition(obj, "Failed")
        if failed:
            raise TrainJobFailed(f"TrainJob {namespace}/{name} failed: {failed.get('reason', '')}: "
                                 f"{failed.get('message', '')} (kubectl -n {namespace} describe trainjob {name})")
        state = sorted(c.get("type") for c in (obj.get("status") or {}).get("conditions") or []
                       if str(c.get("status")) == "True")
        if state != last:
            log.info("TrainJob %s/%s: %s", namespace, name, ", ".join(state) or "pending")
            last = state
        if clock() >= deadline:
            raise TrainJobTimeout(f"TrainJob {namespace}/{name} did not finish within {timeout_s:.0f}s "
                                 f"(state: {', '.join(state) or 'pending'}); it was left running for inspection")
        sleep(poll_s)


def launch(spec: TrainJobSpec, api=None, timeout_s: float = 48 * 3600, poll_s: float = 15.0,
           sleep: Callable[[float], None] = time.sleep, server=None, server_apis=None) -> dict:
    """Build, validate, create (or adopt) and follow a TrainJob to completion.

    ``server`` (a ``RolloutServerSpec``): start GRPO's rollout server, owned by the TrainJob, once the TrainJob exists,
    and delete it when the TrainJob completes or fails (on a timeout, or an API error while following, both are left
    running; the owner reference collects the server with the TrainJob).
    ``server_apis``: ``(BatchV1Api, CoreV1Api)``."""
    manifest = build_manifest(spec)
    validate_manifest(manifest)
    api = api or custom_objects_api()
    created = submit(manifest, api)
    if server is None:
        return follow(spec.namespace, spec.name, api, timeout_s, poll_s, sleep)
    from umeflow.pipeline import rollout_server

    batch_api, core_api = server_apis or rollout_server.kube_apis()
    rollout_server.start(server, created, batch_api, core_api)
    try:
        result = follow(spec.namespace, spec.name, api, timeout_s, poll_s, sleep)
    except TrainJobTimeout:
        raise  # still training: the server stays with it
    except TrainJobFailed:
        rollout_server.stop(server, batch_api, core_api)
        raise
    rollout_server.stop(server, batch_api, core_api)
    return result


# ------------------------------------------------------------------------------------ the step on N nodes

def _on_volume(path: str | Path, mount_path: str, what: str) -> None:
    if not Path(path).absolute().is_relative_to(Path(mount_path)):
        raise UserError(f"a TrainJob (multi-node training, GRPO with a rollout server) needs {what} on the shared "
                        f"work volume ({mount_path}); it is at {path}. Use a checkpoint root under the PVC mount, or "
                        f"s3:// (staged on the volume)")


def stage_inputs(data: str, dest: Path) -> str:
    """Copy a step's data folder onto the work volume so every node reads it; an annotate output's media root
    (an absolute path in its manifest) is copied along and the manifest rewritten to the relative copy."""
    src = Path(data)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest / "data")
    manifest = dest / "data" / "manifest.json"
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        media = Path(doc.get("media_root", ""))
        if media.is_absolute() and media.is_dir():
            shutil.copytree(media, dest / "media")
            doc["media_root"] = "../media"
            manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return str(dest / "data")


def step_command(step: str, recipe_file: str, overrides: list[str], model: str, data: str, out: str) -> list[str]:
    """``torchrun -m umeflow.cli <step> …``: torchrun reads nodes, rank and rendezvous from the runtime's PET_* env."""
    sets = [a for o in overrides for a in ("--set", o)]
    return ["torchrun", "-m", "umeflow.cli", step, "--config", recipe_file, *sets, "--model", model,
            "--data", data, "--out", out]


def uses_trainjob(cfg, multinode: dict | None) -> bool:
    """Whether a pipeline's training task runs as a TrainJob: several nodes, or GRPO whose rollout server the
    pipeline must start."""
    from umeflow.pipeline import rollout_server

    return bool(multinode) and (int(multinode.get("num_nodes", 1)) > 1 or rollout_server.needed(cfg))


def run_step(step: str, cfg, recipe_file: str, overrides: list[str], multinode: dict,
             api=None, sleep: Callable[[float], None] = time.sleep, server_apis=None) -> dict:
    """Run ``umeflow <step>`` for ``cfg`` (model/data/out set) on ``multinode['num_nodes']`` nodes and wait.

    ``multinode`` carries the launcher's own pod settings: ``run_id``, ``image``, ``gpus_per_node``,
    ``accelerator_type``, ``work_dir`` (the PVC mount path), ``pvc_name``, ``tolerations``, ``node_selector``,
    ``shm_size``, ``secret_env``, ``env``, ``runtime``, ``namespace`` ('' = the pod's own), ``timeout_s``.
    GRPO in vLLM server mode also gets its rollout server (``server_apis``: see ``launch``)."""
    from umeflow.pipeline import rollout_server

    work = multinode["work_dir"]
    name = job_name(multinode["run_id"], step)
    for what, path in (("the model", cfg.model), ("the output", cfg.out), ("the recipe", recipe_file)):
        _on_volume(path, work, what)
    data = stage_inputs(cfg.data, Path(work) / "trainjobs" / name / "inputs")
    namespace = multinode.get("namespace") or current_namespace()
    num_nodes, gpus = int(multinode["num_nodes"]), int(multinode.get("gpus_per_node", 1))
    accelerator = multinode.get("accelerator_type", "nvidia.com/gpu")
    tolerations, node_selector = list(multinode.get("tolerations") or []), dict(multinode.get("node_selector") or {})
    timeout_s = float(multinode.get("timeout_s") or 48 * 3600)
    labels = {"umeflow.io/step": step, "umeflow.io/run": hashlib.sha256(multinode["run_id"].encode()).hexdigest()[:16]}
    server = None
    if rollout_server.needed(cfg):
        server = rollout_server.RolloutServerSpec(
            name=f"{name}-rollout", namespace=namespace, image=multinode["image"], model=cfg.model,
            gpus=int(cfg.vllm_server_gpus), port=int(cfg.vllm_server_port), dtype="bfloat16" if cfg.bf16 else "auto",
            accelerator_type=accelerator, tolerations=tolerations, node_selector=node_selector,
            pvc_name=multinode.get("pvc_name", ""), mount_path=work, shm_size=multinode.get("shm_size", ""),
            labels=labels, active_deadline_seconds=int(timeout_s))
        gpus = rollout_server.split_gpus(num_nodes, gpus, server.gpus)
        overrides = list(overrides) + rollout_server.trainer_overrides(server)
        log.info("GRPO rollouts from a vLLM server on %d GPU(s) at %s; trainer: %d node(s) × %d GPU(s)",
                 server.gpus, server.base_url, num_nodes, gpus)
    spec = TrainJobSpec(
        name=name, namespace=namespace, image=multinode["image"],
        command=step_command(step, recipe_file, overrides, cfg.model, data, cfg.out),
        num_nodes=num_nodes, gpus_per_node=gpus, accelerator_type=accelerator,
        runtime=multinode.get("runtime") or "torch-distributed", env=dict(multinode.get("env") or {}),
        secret_env=list(multinode.get("secret_env") or []), tolerations=tolerations, node_selector=node_selector,
        pvc_name=multinode.get("pvc_name", ""), mount_path=work, shm_size=multinode.get("shm_size", ""),
        labels=labels,
    )
    return launch(spec, api=api, timeout_s=timeout_s, sleep=sleep, server=server, server_apis=server_apis)
