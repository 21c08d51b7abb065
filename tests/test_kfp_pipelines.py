"""The KFP pipelines: compiled YAML is what is checked in, and says what a cluster needs (GPUs, tolerations,
secrets, caching, pinned images, the work volume, /dev/shm, the evaluation fan-out)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pytest
import yaml

from umeflow.pipeline.images import is_pinned
from umeflow.pipeline.local import import_pipelines
from umeflow.pipeline.tasks import MLFLOW_SECRET_KEYS, S3_SECRET_KEYS

REPO = Path(__file__).resolve().parents[1]
pipelines = import_pipelines(REPO)
TRAINING = {"sft", "grpo"}
GPU_TASKS = {"sft", "grpo", "evaluate-shard"}
NEVER_CACHED = {"prepare-run", "init-model", "sft", "grpo", "plan-eval-shards", "evaluate-shard", "merge-evaluation",
                "register-model", "promote-model"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled")
    paths = pipelines.compile_all(out)
    return {p.stem: list(yaml.safe_load_all(p.read_text())) for p in paths} | {"_dir": out}


def _all_tasks(spec: dict, containers_only: bool = False) -> dict[str, dict]:
    """Every task of the pipeline, sub-pipelines and loop bodies included: name → task spec (``containers_only``:
    only the tasks that run a container, not the sub-pipeline and loop groups)."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    if containers_only:
        tasks = {n: t for n, t in tasks.items() if "executorLabel" in spec["components"][t["componentRef"]["name"]]}
    return tasks


def _executor(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_checked_in_yaml_matches_a_fresh_compile(compiled):
    for name in ("train_and_promote", "evaluate_only"):
        fresh = (compiled["_dir"] / f"{name}.yaml").read_text()
        checked_in = (pipelines.COMPILED_DIR / f"{name}.yaml").read_text()
        assert fresh == checked_in, f"pipelines/compiled/{name}.yaml is stale: run `umeflow compile`"


def test_compiling_is_deterministic(tmp_path):
    a = pipelines.compile_all(tmp_path / "a")
    b = pipelines.compile_all(tmp_path / "b")
    assert [p.read_text() for p in a] == [p.read_text() for p in b]


def test_train_and_promote_graph(compiled):
    spec = compiled["train_and_promote"][0]
    tasks = _all_tasks(spec)
    assert {"prepare-run", "prepare-data", "init-model", "annotate", "sft", "grpo", "plan-eval-shards",
            "evaluate-shard", "merge-evaluation", "register-model", "promote-model"} <= set(tasks)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert {"annotate", "init-model", "prepare-run"} <= deps["sft"]
    assert "sft" in deps["grpo"]
    assert {"grpo", "sharded-evaluation"} <= deps["register-model"]
    assert "register-model" in deps["promote-model"]
    # the evaluation sub-pipeline fans out over the planned shards and is collected by one merge task
    evaluation = spec["components"]["comp-sharded-evaluation"]["dag"]
    loop = next(t for t in evaluation["tasks"].values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--plan-eval-shards-Output"
    merge_inputs = tasks["merge-evaluation"]["inputs"]["artifacts"]["shards"]
    assert merge_inputs["taskOutputArtifact"]["producerTask"] == "for-loop-1"
    assert evaluation["outputs"]["artifacts"]["Output"]["artifactSelectors"][0]["producerSubtask"] == \
        "merge-evaluation"
    assert tasks["register-model"]["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]["producerTask"] == \
        "sharded-evaluation"


@pytest.mark.parametrize("name", ["train_and_promote", "evaluate_only"])
def test_accelerators_are_pipeline_parameters_on_gpu_tasks_only(compiled, name):
    spec = compiled[name][0]
    executors = spec["deploymentSpec"]["executors"]
    tasks = _all_tasks(spec, containers_only=True)
    gpu_tasks = GPU_TASKS & set(tasks)
    for task_name, task in tasks.items():
        resources = executors[_executor(spec, task)]["container"].get("resources", {})
        if task_name in gpu_tasks:
            # sft/grpo read the pipeline's parameters; shards read the evaluation sub-pipeline's own inputs
            prefix = "" if task_name == "evaluate-shard" else f"{task_name}_"
            assert resources["accelerator"] == {
                "resourceCount": f"{{{{$.inputs.parameters['pipelinechannel--{prefix}accelerator_count']}}}}",
                "resourceType": f"{{{{$.inputs.parameters['pipelinechannel--{prefix}accelerator_type']}}}}"}
            # the placeholders must resolve: the (loop) body receives the parameters it references
            assert f"pipelinechannel--{prefix}accelerator_type" in task["inputs"]["parameters"]
        else:
            assert "accelerator" not in resources, task_name
    evaluation = spec["root"]["dag"]["tasks"]["sharded-evaluation"]["inputs"]["parameters"]
    for key in ("accelerator_type", "accelerator_count", "tolerations", "node_selector"):
        assert evaluation[key]["componentInputParameter"] == ("eval_" if "accel" in key else "") + key
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["eval_accelerator_type"]["defaultValue"] == "nvidia.com/gpu"
    assert params["eval_accelerator_count"]["parameterType"] == "NUMBER_INTEGER"


@pytest.mark.parametrize("name", ["train_and_promote", "evaluate_only"])
def test_platform_settings(compiled, name):
    spec, platform = compiled[name][0], compiled[name][1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = _all_tasks(spec, containers_only=True)
    for task_name, task in tasks.items():
        k8s = platform[_executor(spec, task)]
        # every task: the work PVC (name is a parameter) and both secrets (names are parameters, optional)
        assert k8s["pvcMount"][0]["mountPath"] == "/mnt/umeflow"
        assert k8s["pvcMount"][0]["pvcNameParameter"]["componentInputParameter"].endswith("pvc_name")
        secrets = {s["secretNameParameter"]["componentInputParameter"].split("--")[-1]:
                   ({e["envVar"] for e in s["keyToEnv"]}, s["optional"]) for s in k8s["secretAsEnv"]}
        assert secrets == {"s3_secret": (set(S3_SECRET_KEYS), True),
                           "mlflow_secret": (set(MLFLOW_SECRET_KEYS), True)}
        if task_name in GPU_TASKS:
            assert k8s["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("tolerations")
            assert k8s["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("node_selector")
            assert k8s["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi",
                                              "volumeName": "dshm"}]
        else:
            assert "tolerations" not in k8s and "emptyDirMounts" not in k8s, task_name
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["tolerations"]["defaultValue"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                        "effect": "NoSchedule"}]


@pytest.mark.parametrize("name", ["train_and_promote", "evaluate_only"])
def test_caching_off_for_training_and_evaluation(compiled, name):
    spec = compiled[name][0]
    for task_name, task in _all_tasks(spec, containers_only=True).items():
        enabled = task.get("cachingOptions", {}).get("enableCache", False)
        if task_name in NEVER_CACHED:
            assert not enabled, task_name
        else:
            assert task_name in {"prepare-data", "annotate"} and enabled, task_name


@pytest.mark.parametrize("name", ["train_and_promote", "evaluate_only"])
def test_images_are_pinned_and_kfp_is_not_pip_installed(compiled, name):
    executors = compiled[name][0]["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert images <= {"ghcr.io/umeflow/umeflow-train:0.1.0", "ghcr.io/umeflow/umeflow-light:0.1.0"}
    assert all(is_pinned(i) for i in images)
    for e in executors.values():
        assert "pip install" not in " ".join(e["container"]["command"])  # the image already holds kfp + umeflow


def test_image_pinning_rules(monkeypatch):
    from umeflow.errors import UserError
    from umeflow.pipeline import images

    assert is_pinned("ghcr.io/umeflow/umeflow-train:0.1.0")
    assert is_pinned("registry.local:5000/umeflow@sha256:" + "a" * 64)
    for floating in ("ghcr.io/umeflow/umeflow-train", "ghcr.io/umeflow/umeflow-train:latest",
                     "registry.local:5000/umeflow", "umeflow@sha256:abc"):
        assert not is_pinned(floating), floating
    monkeypatch.setenv("UMEFLOW_TRAIN_IMAGE", "registry.local:5000/umeflow-train@sha256:" + "b" * 64)
    assert images.train_image().endswith("b" * 64)
    monkeypatch.setenv("UMEFLOW_LIGHT_IMAGE", "ghcr.io/umeflow/umeflow-light:latest")
    with pytest.raises(UserError, match="not pinned"):
        images.light_image()


# --------------------------------------------------------------------------- components as Python functions

def test_prepare_run_component_checks_recipe_and_overrides(tmp_path, monkeypatch):
    from components.run import prepare_run
    from umeflow.config import ConfigError

    monkeypatch.setenv("KFP_RUN_ID", "")  # the component sets it for lineage; undone after the test

    recipe = (REPO / "configs" / "tiny.yaml").read_text()
    out = prepare_run.python_func(recipe=recipe, overrides=["sft.max_steps=3"], checkpoint_root=str(tmp_path / "ck"),
                                  work_dir=str(tmp_path / "work"), run_id="run-7")
    assert out.run_root == str(tmp_path / "ck" / "run-7") and Path(out.run_root).is_dir()
    assert len(out.recipe_sha256) == 64 and out.run_id == "run-7"
    assert os.environ["KFP_RUN_ID"] == "run-7"
    with pytest.raises(ConfigError, match="max_stepz"):
        prepare_run.python_func(recipe=recipe, overrides=["sft.max_stepz=3"], checkpoint_root=str(tmp_path),
                                work_dir=str(tmp_path), run_id="r")
    with pytest.raises(ConfigError, match="unknown section 'sfx'"):
        prepare_run.python_func(recipe=recipe, overrides=["sfx.max_steps=3"], checkpoint_root=str(tmp_path),
                                work_dir=str(tmp_path), run_id="r")


def test_plan_eval_shards_component_balances_tasks(tmp_path):
    from components.evaluate import plan_eval_shards
    from test_evaluate import _write_fixture

    data = tmp_path / "data"
    _write_fixture(data / "eval")
    recipe = "evaluate:\n  tasks: offline\n"
    shards = plan_eval_shards.python_func(recipe=recipe, overrides=[], work_dir=str(tmp_path),
                                          data=mock.Mock(path=str(data)), num_shards=4)
    assert sorted(shards) == ["Clips", "Colors"]  # never more shards than tasks, never an empty one
    one = plan_eval_shards.python_func(recipe=recipe, overrides=[], work_dir=str(tmp_path),
                                       data=mock.Mock(path=str(data)), num_shards=1)
    assert one == ["Colors,Clips"]


def test_checkpoint_pointer_round_trips_through_model_artifact(tmp_path):
    from umeflow.pipeline.tasks import checkpoint_uri, describe_checkpoint

    artifact = mock.Mock(path=str(tmp_path / "model"), metadata={}, uri="local://model")
    describe_checkpoint(artifact, "s3://bucket/runs/1/sft/model", model_fingerprint="abc")
    assert checkpoint_uri(artifact) == "s3://bucket/runs/1/sft/model"
    assert json.loads(Path(artifact.path).read_text())["model_fingerprint"] == "abc"


def test_section_overrides_and_inline_recipes(tmp_path):
    from umeflow.config import ConfigError, SFTConfig
    from umeflow.pipeline.tasks import recipe_path, section_overrides, step_config

    assert section_overrides(["sft.max_steps=3", "grpo.beta=0.1", "sft.lr_scheduler=linear"], "sft") == [
        "max_steps=3", "lr_scheduler=linear"]
    with pytest.raises(ConfigError, match="section.key=value"):
        section_overrides(["max_steps=3"], "sft")
    text = "sft:\n  max_steps: 7\n  learning_rate: 0.5\n"
    path = recipe_path(text, tmp_path)
    assert Path(path).read_text() == text and recipe_path(text, tmp_path) == path  # content-addressed
    cfg = step_config(SFTConfig, text, ["sft.max_steps=9"], str(tmp_path), out="/x")
    assert (cfg.max_steps, cfg.learning_rate, cfg.out) == (9, 0.5, "/x")
    assert recipe_path("configs/tiny.yaml", tmp_path) == "configs/tiny.yaml"
