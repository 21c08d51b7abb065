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

    def fake_launch(spec, api=None, timeout_s=0, poll_s=0, sleep=None):  # what the nodes would do
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
