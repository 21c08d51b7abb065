"""Multi-node training through a Kubeflow Trainer TrainJob: the manifest validated offline against the vendored
schema (from the kubeflow-trainer-api models), and launch/follow against a mocked Kubernetes CustomObjectsApi."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from kubernetes.client.exceptions import ApiException

from umeflow.errors import UserError
from umeflow.pipeline import trainjob
from umeflow.pipeline.trainjob import TrainJobFailed, TrainJobSpec, build_manifest, validate_manifest


def _spec(**kw) -> TrainJobSpec:
    base = dict(name=trainjob.job_name("kfp-run-1", "sft"), namespace="ml", image="ghcr.io/umeflow/umeflow-train:0.1.0",
                command=["torchrun", "-m", "umeflow.cli", "sft"], num_nodes=4, gpus_per_node=8,
                secret_env=[{"secret": "umeflow-s3", "key": "AWS_ACCESS_KEY_ID", "env": "AWS_ACCESS_KEY_ID"}],
                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                node_selector={"nvidia.com/gpu.product": "H100"}, pvc_name="umeflow-work",
                mount_path="/mnt/umeflow", shm_size="64Gi", env={"KFP_RUN_ID": "kfp-run-1"})
    base.update(kw)
    return TrainJobSpec(**base)


def _pod_patch(manifest: dict) -> dict:
    patch = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    return patch["template"]["spec"]["template"]["spec"]


def test_manifest_carries_nodes_gpus_volumes_secrets_and_scheduling():
    m = build_manifest(_spec())
    validate_manifest(m)
    assert (m["apiVersion"], m["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    trainer = m["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8"}
    assert {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {
        "name": "umeflow-s3", "key": "AWS_ACCESS_KEY_ID", "optional": True}}} in trainer["env"]
    assert m["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                       "kind": "ClusterTrainingRuntime"}
    pod = _pod_patch(m)
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "work", "mountPath": "/mnt/umeflow"},
                                                    {"name": "dshm", "mountPath": "/dev/shm"}]


def test_schema_comes_from_the_trainer_api_models_and_rejects_bad_manifests():
    assert "kubeflow-trainer-api==2.3.0" in trainjob.schema()["$comment"]
    good = build_manifest(_spec())
    cases = {
        "typo in a field": lambda m: m["spec"]["trainer"].update(numNode=2),
        "wrong type": lambda m: m["spec"]["trainer"].update(numNodes="4"),
        "missing runtimeRef": lambda m: m["spec"].pop("runtimeRef"),
        "bad toleration field": lambda m: _pod_patch(m)["tolerations"][0].update(tolerationSeconds="soon"),
        "wrong kind": lambda m: m.update(kind="PyTorchJob"),
        "bad name": lambda m: m["metadata"].update(name="Not_A_DNS_Label"),
    }
    for what, mutate in cases.items():
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(UserError, match="invalid TrainJob manifest"):
            validate_manifest(bad)


def test_manifest_also_validates_as_core_objects():
    """The pod-level pieces are core v1 objects: kubernetes-validate (strict) accepts them inside a Pod."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    m = build_manifest(_spec())
    trainer, pod = m["spec"]["trainer"], _pod_patch(m)
    container = {"name": "node", "image": trainer["image"], "command": trainer["command"], "env": trainer["env"],
                 "resources": trainer["resourcesPerNode"], "volumeMounts": pod["containers"][0]["volumeMounts"]}
    core = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
            "spec": {"containers": [container], "volumes": pod["volumes"], "tolerations": pod["tolerations"],
                     "nodeSelector": pod["nodeSelector"]}}
    kubernetes_validate.validate(core, "1.33", strict=True)


class FakeCustomObjects:
    """The two CustomObjectsApi calls the launcher makes; ``states`` is what successive GETs report."""

    def __init__(self, states, exists=False, create_error=None):
        self.states = list(states)
        self.exists = exists
        self.create_error = create_error
        self.created, self.gets = [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        if self.create_error:
            raise self.create_error
        if self.exists:
            raise ApiException(status=409, reason="AlreadyExists")
        self.created.append((namespace, body))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"metadata": {"name": name}, "status": {"conditions": state}}


def _cond(kind, reason="", message=""):
    return {"type": kind, "status": "True", "reason": reason, "message": message}


def test_launch_mocked_follows_to_completion():
    api = FakeCustomObjects([[], [_cond("Created")], [_cond("Created"), _cond("Complete", "JobsCompleted")]])
    sleeps = []
    obj = trainjob.launch(_spec(), api=api, poll_s=5, sleep=sleeps.append)
    assert _cond("Complete", "JobsCompleted") in obj["status"]["conditions"]
    assert len(api.created) == 1 and api.created[0][0] == "ml" and api.gets == 3 and sleeps == [5, 5]


def test_launch_mocked_reports_failure_with_reason():
    api = FakeCustomObjects([[_cond("Created")], [_cond("Failed", "BackoffLimitExceeded", "node-1 OOMKilled")]])
    with pytest.raises(TrainJobFailed, match="BackoffLimitExceeded: node-1 OOMKilled"):
        trainjob.launch(_spec(), api=api, poll_s=0, sleep=lambda s: None)


def test_launch_mocked_times_out_clearly():
    api = FakeCustomObjects([[_cond("Created")]])
    clock = iter(range(0, 10_000, 60))
    with pytest.raises(TrainJobFailed, match="did not finish within 300s"):
        trainjob.follow("ml", "job", api, timeout_s=300, poll_s=60, sleep=lambda s: None, clock=lambda: next(clock))


def test_launch_mocked_adopts_the_job_of_a_retried_task_and_surfaces_api_errors():
    api = FakeCustomObjects([[_cond("Complete")]], exists=True)
    trainjob.launch(_spec(), api=api, sleep=lambda s: None)
    assert api.created == []  # not created twice
    denied = FakeCustomObjects([[]], create_error=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(TrainJobFailed, match="403 Forbidden"):
        trainjob.launch(_spec(), api=denied, sleep=lambda s: None)


def test_run_step_mocked_stages_inputs_on_the_volume_and_runs_the_cli(tmp_path):
    work = tmp_path / "work"
    media = tmp_path / "artifacts" / "data" / "train"
    media.mkdir(parents=True)
    (media / "a.png").write_bytes(b"png")
    annotated = tmp_path / "artifacts" / "annotated"
    annotated.mkdir()
    (annotated / "sft.jsonl").write_text("{}\n")
    (annotated / "manifest.json").write_text(json.dumps({"media_root": str(media), "records": 1}))
    cfg = SimpleNamespace(model=str(work / "runs/r1/init"), data=str(annotated), out=str(work / "runs/r1/sft"))
    recipe = work / "recipes" / "abc.yaml"
    api = FakeCustomObjects([[_cond("Complete")]])
    options = {"run_id": "kfp-run-1", "num_nodes": 2, "gpus_per_node": 4,
               "image": "ghcr.io/umeflow/umeflow-train:0.1.0",
               "work_dir": str(work), "pvc_name": "umeflow-work", "namespace": "ml", "shm_size": "8Gi",
               "secret_env": [], "tolerations": [], "node_selector": {}}
    trainjob.run_step("sft", cfg, str(recipe), ["max_steps=5"], options, api=api, sleep=lambda s: None)
    (_, body), = api.created
    command = body["spec"]["trainer"]["command"]
    assert command[:5] == ["torchrun", "-m", "umeflow.cli", "sft", "--config"] and "max_steps=5" in command
    staged = command[command.index("--data") + 1]
    assert staged.startswith(str(work)) and (tmp_path / staged / "sft.jsonl").is_file()
    manifest = json.loads((tmp_path / staged / "manifest.json").read_text())
    assert manifest["media_root"] == "../media" and (tmp_path / staged / "../media/a.png").is_file()
    assert body["metadata"]["name"] == trainjob.job_name("kfp-run-1", "sft")
    assert body["spec"]["trainer"]["numNodes"] == 2

    outside = SimpleNamespace(model=str(tmp_path / "elsewhere"), data=str(annotated), out=cfg.out)
    with pytest.raises(UserError, match="shared work volume"):
        trainjob.run_step("sft", outside, str(recipe), [], options, api=api, sleep=lambda s: None)


def test_job_names_are_stable_dns_labels():
    a, b = trainjob.job_name("run-1", "sft"), trainjob.job_name("run-1", "grpo")
    assert a == trainjob.job_name("run-1", "sft") and a != b
    assert all(len(n) <= 40 and trainjob._DNS_LABEL.match(n) for n in (a, b))


def test_sft_task_with_num_nodes_goes_through_a_trainjob_mocked(tmp_path, monkeypatch):
    """``tasks.sft`` with ``num_nodes > 1`` never trains in the launcher pod: it hands the TrainJob the step's CLI
    and reports what the nodes wrote."""
    from umeflow.pipeline import tasks

    work = tmp_path / "work"
    init = work / "runs" / "r1" / "init"
    init.mkdir(parents=True)
    (init / "config.json").write_text("{}")
    annotated = tmp_path / "annotated"
    annotated.mkdir()
    (annotated / "sft.jsonl").write_text("{}\n")
    launched = []

    def fake_launch(spec, api=None, timeout_s=0, poll_s=0, sleep=None, **server):  # what the nodes would do
        launched.append(spec)
        out = spec.command[spec.command.index("--out") + 1]
        (Path(out) / "model").mkdir(parents=True)
        (Path(out) / "model" / "model.safetensors").write_bytes(b"x" * 64)
        (Path(out) / "metrics.json").write_text('{"global_step": 5, "train_loss": 0.5}')
        return {"status": {"conditions": [_cond("Complete")]}}

    monkeypatch.setattr(trainjob, "launch", fake_launch)
    options = tasks.multinode_options("kfp-run-1", 2, 8, "nvidia.com/gpu", "ghcr.io/umeflow/umeflow-train:0.1.0",
                                      str(work), "umeflow-work", [], {}, "16Gi", "umeflow-s3", "umeflow-mlflow",
                                      "torch-distributed")
    recipe = tmp_path / "image" / "configs" / "r.yaml"  # a recipe path in the image, not on the work volume
    recipe.parent.mkdir(parents=True)
    recipe.write_text("sft:\n  max_steps: 3\n")
    result = tasks.sft(str(recipe), ["sft.max_steps=5"], str(work), str(init), str(annotated),
                       str(work / "runs" / "r1" / "sft"), options)
    assert result["global_step"] == 5 and result["model_fingerprint"]
    (spec,) = launched
    assert spec.num_nodes == 2 and spec.gpus_per_node == 8 and spec.namespace
    assert "--set" in spec.command and "max_steps=5" in spec.command
    secrets = {(s["secret"], s["env"]) for s in spec.secret_env}
    assert ("umeflow-s3", "AWS_SECRET_ACCESS_KEY") in secrets and ("umeflow-mlflow", "MLFLOW_TRACKING_URI") in secrets
    on_volume = Path(spec.command[spec.command.index("--config") + 1])
    assert on_volume.parent == work / "recipes" and on_volume.read_text() == recipe.read_text()


# ----------------------------------------------------------------------- GRPO's vLLM server mode (rollout server)

class FakeServerApis:
    """The BatchV1Api/CoreV1Api calls the rollout server makes: created and deleted objects, in order."""

    def __init__(self, create_error=None):
        self.created, self.deleted, self.create_error = [], [], create_error

    def create_namespaced_job(self, namespace, body):
        if self.create_error:
            raise self.create_error
        self.created.append(("Job", namespace, body))

    def create_namespaced_service(self, namespace, body):
        self.created.append(("Service", namespace, body))

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        assert propagation_policy == "Background"  # the server pod goes with its Job
        self.deleted.append(("Job", namespace, name))

    def delete_namespaced_service(self, name, namespace):
        self.deleted.append(("Service", namespace, name))


class FakeCustomObjectsWithUid(FakeCustomObjects):
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        created = super().create_namespaced_custom_object(group, version, namespace, plural, body)
        return {**created, "metadata": {**created["metadata"], "uid": "0c3b-uid"}}


def _grpo_cfg(work: Path, **kw) -> SimpleNamespace:
    data = work.parent / "artifacts" / "train"
    data.mkdir(parents=True, exist_ok=True)
    (data / "pairs.jsonl").write_text("{}\n")
    base = dict(model=str(work / "runs/r1/sft/model"), data=str(data), out=str(work / "runs/r1/grpo"), use_vllm=True,
                vllm_mode="server", vllm_server_base_url="", vllm_server_gpus=2, vllm_server_port=8001, bf16=True)
    return SimpleNamespace(**(base | kw))


def _grpo_options(work: Path, num_nodes: int, gpus_per_node: int) -> dict:
    return {"run_id": "kfp-run-1", "num_nodes": num_nodes, "gpus_per_node": gpus_per_node,
            "image": "ghcr.io/umeflow/umeflow-train:0.1.0", "work_dir": str(work), "pvc_name": "umeflow-work",
            "namespace": "ml", "shm_size": "16Gi", "accelerator_type": "nvidia.com/gpu",
            "secret_env": [{"secret": "umeflow-s3", "key": "AWS_ACCESS_KEY_ID", "env": "AWS_ACCESS_KEY_ID"}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "node_selector": {"pool": "h100"}}


def _server_objects(apis: FakeServerApis) -> tuple[dict, dict]:
    (job_kind, _, job), (svc_kind, _, service) = apis.created
    assert (job_kind, svc_kind) == ("Job", "Service")
    return job, service


def test_grpo_server_mode_mocked_starts_the_rollout_server_beside_a_one_node_trainjob(tmp_path):
    work = tmp_path / "work"
    cfg = _grpo_cfg(work)
    api, apis = FakeCustomObjectsWithUid([[_cond("Complete")]]), FakeServerApis()
    trainjob.run_step("grpo", cfg, str(work / "recipes/r.yaml"), ["max_steps=5"], _grpo_options(work, 1, 8),
                      api=api, sleep=lambda s: None, server_apis=(apis, apis))
    (_, body), = api.created
    trainer = body["spec"]["trainer"]
    # torchrun only: TRL's and accelerate's launchers ignore the Trainer runtime's PET_* variables
    assert trainer["command"][:4] == ["torchrun", "-m", "umeflow.cli", "grpo"]
    assert not {"trl", "accelerate"} & set(trainer["command"])
    # one node of 8 GPUs: 2 for the server, 6 trainer ranks
    assert trainer["numNodes"] == 1 and trainer["numProcPerNode"] == 6
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "6"}
    name = trainjob.job_name("kfp-run-1", "grpo")
    url = f"http://{name}-rollout.ml.svc:8001"
    command = trainer["command"]
    sets = [command[i + 1] for i, a in enumerate(command) if a == "--set"]
    assert sets == ["max_steps=5", f"vllm_server_base_url={url}"]  # the pipeline's URL comes last, so it wins

    job, service = _server_objects(apis)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["trl", "vllm-serve", "--model", cfg.model, "--tensor_parallel_size", "2",
                                    "--host", "0.0.0.0", "--port", "8001", "--dtype", "bfloat16"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert pod["tolerations"] == _grpo_options(work, 1, 8)["tolerations"] and pod["nodeSelector"] == {"pool": "h100"}
    assert {"name": "work", "mountPath": str(work), "readOnly": True} in container["volumeMounts"]
    assert "secretKeyRef" not in json.dumps(job)  # the server only reads the checkpoint: no S3/MLflow credentials
    owner = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": name, "uid": "0c3b-uid"}
    assert job["metadata"]["ownerReferences"] == [owner] == service["metadata"]["ownerReferences"]
    assert service["metadata"]["name"] == job["metadata"]["name"] == f"{name}-rollout"
    assert service["spec"]["ports"][0]["port"] == 8001
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # the TrainJob completed: the server is taken down
    assert apis.deleted == [("Job", "ml", f"{name}-rollout"), ("Service", "ml", f"{name}-rollout")]


def test_rollout_server_manifests_also_validate_as_core_objects(tmp_path):
    """What a cluster's API server would accept: kubernetes-validate (strict) on the Job and the Service."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    work = tmp_path / "work"
    apis = FakeServerApis()
    trainjob.run_step("grpo", _grpo_cfg(work), str(work / "recipes/r.yaml"), [], _grpo_options(work, 1, 4),
                      api=FakeCustomObjectsWithUid([[_cond("Complete")]]), sleep=lambda s: None,
                      server_apis=(apis, apis))
    for obj in _server_objects(apis):
        kubernetes_validate.validate(obj, "1.33", strict=True)


def test_grpo_server_mode_mocked_on_several_nodes_keeps_each_nodes_gpus(tmp_path):
    work = tmp_path / "work"
    api, apis = FakeCustomObjectsWithUid([[_cond("Complete")]]), FakeServerApis()
    trainjob.run_step("grpo", _grpo_cfg(work, vllm_server_gpus=1), str(work / "recipes/r.yaml"), [],
                      _grpo_options(work, 2, 8), api=api, sleep=lambda s: None, server_apis=(apis, apis))
    (_, body), = api.created
    assert body["spec"]["trainer"]["numNodes"] == 2 and body["spec"]["trainer"]["numProcPerNode"] == 8
    job, _ = _server_objects(apis)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}


def test_grpo_colocate_and_external_server_start_no_rollout_server_mocked(tmp_path):
    work = tmp_path / "work"
    colocate = _grpo_cfg(work, vllm_mode="colocate")
    external = _grpo_cfg(work, vllm_server_base_url="http://vllm.shared.svc:8000")
    options = _grpo_options(work, 1, 8)
    # on one node neither needs a TrainJob: the pipeline's pod runs the step itself
    assert not trainjob.uses_trainjob(colocate, options) and not trainjob.uses_trainjob(external, options)
    assert trainjob.uses_trainjob(_grpo_cfg(work), options)
    for cfg in (colocate, external):
        api, apis = FakeCustomObjectsWithUid([[_cond("Complete")]]), FakeServerApis()
        trainjob.run_step("grpo", cfg, str(work / "recipes/r.yaml"), [], _grpo_options(work, 2, 8), api=api,
                          sleep=lambda s: None, server_apis=(apis, apis))
        (_, body), = api.created
        assert apis.created == [] and body["spec"]["trainer"]["numProcPerNode"] == 8
        assert not any("vllm_server_base_url" in a for a in body["spec"]["trainer"]["command"])


def test_rollout_server_mocked_is_removed_on_failure_and_kept_on_timeout(tmp_path):
    work = tmp_path / "work"
    name = f"{trainjob.job_name('kfp-run-1', 'grpo')}-rollout"
    apis = FakeServerApis()
    failed = FakeCustomObjectsWithUid([[_cond("Failed", "BackoffLimitExceeded", "rank 0: vLLM server not up")]])
    with pytest.raises(TrainJobFailed, match="vLLM server not up"):
        trainjob.run_step("grpo", _grpo_cfg(work), str(work / "recipes/r.yaml"), [], _grpo_options(work, 1, 8),
                          api=failed, sleep=lambda s: None, server_apis=(apis, apis))
    assert apis.deleted == [("Job", "ml", name), ("Service", "ml", name)]

    apis = FakeServerApis()
    running = FakeCustomObjectsWithUid([[_cond("Created")]])
    options = _grpo_options(work, 1, 8) | {"timeout_s": 1e-9}
    with pytest.raises(trainjob.TrainJobTimeout, match="did not finish"):
        trainjob.run_step("grpo", _grpo_cfg(work), str(work / "recipes/r.yaml"), [], options, api=running,
                          sleep=lambda s: None, server_apis=(apis, apis))
    assert len(apis.created) == 2 and apis.deleted == []  # the trainer may still need it


def test_rollout_server_mocked_refusals(tmp_path):
    work = tmp_path / "work"
    api = FakeCustomObjectsWithUid([[_cond("Complete")]])
    with pytest.raises(UserError, match="leave none for the trainer"):
        trainjob.run_step("grpo", _grpo_cfg(work, vllm_server_gpus=1), str(work / "recipes/r.yaml"), [],
                          _grpo_options(work, 1, 1), api=api, sleep=lambda s: None,
                          server_apis=(FakeServerApis(), FakeServerApis()))
    assert api.created == []  # refused before anything was created
    denied = FakeServerApis(create_error=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(UserError, match="403 Forbidden.*rbac.trainJobLauncher.rolloutServer"):
        trainjob.run_step("grpo", _grpo_cfg(work), str(work / "recipes/r.yaml"), [], _grpo_options(work, 1, 8),
                          api=FakeCustomObjectsWithUid([[_cond("Complete")]]), sleep=lambda s: None,
                          server_apis=(denied, denied))


def test_grpo_task_in_server_mode_goes_through_a_trainjob_on_one_node_mocked(tmp_path, monkeypatch):
    """``tasks.grpo`` on one node with ``vllm_mode: server``: a TrainJob (torchrun) plus its rollout server, never
    training in the launcher pod. vLLM's importability is faked: the recipe-load refusal is not under test here."""
    from umeflow import vllm_support
    from umeflow.pipeline import tasks

    monkeypatch.setattr(vllm_support, "vllm_importable", lambda: True)
    work = tmp_path / "work"
    sft_model = work / "runs" / "r1" / "sft" / "model"
    sft_model.mkdir(parents=True)
    (sft_model / "config.json").write_text("{}")
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "pairs.jsonl").write_text("{}\n")
    launched = []

    def fake_launch(spec, api=None, timeout_s=0, poll_s=0, sleep=None, server=None, server_apis=None):
        launched.append((spec, server))
        out = Path(spec.command[spec.command.index("--out") + 1])
        (out / "model").mkdir(parents=True)
        (out / "model" / "model.safetensors").write_bytes(b"x" * 64)
        (out / "metrics.json").write_text('{"global_step": 3}')
        return {"status": {"conditions": [_cond("Complete")]}}

    monkeypatch.setattr(trainjob, "launch", fake_launch)
    options = tasks.multinode_options("kfp-run-1", 1, 4, "nvidia.com/gpu", "ghcr.io/umeflow/umeflow-train:0.1.0",
                                      str(work), "umeflow-work", [], {}, "16Gi", "umeflow-s3", "umeflow-mlflow",
                                      "torch-distributed")
    recipe = "grpo:\n  use_vllm: true\n  vllm_mode: server\n  vllm_server_gpus: 1\n  bf16: true\n"
    result = tasks.grpo(recipe, ["grpo.max_steps=3"], str(work), str(sft_model), str(data),
                        str(work / "runs" / "r1" / "grpo"), options)
    assert result["global_step"] == 3
    (spec, server), = launched
    assert spec.command[0] == "torchrun" and spec.num_nodes == 1 and spec.gpus_per_node == 3
    assert server.gpus == 1 and server.model == str(sft_model) and server.dtype == "bfloat16"
    assert f"vllm_server_base_url={server.base_url}" in spec.command
