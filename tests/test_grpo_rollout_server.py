"""GRPO rollouts from vLLM: the recipe settings (colocate / server mode), what umeflow hands TRL, the rollout server's
command line as TRL itself parses it, and the reward embeddings read by one teacher-forced forward.

Nothing here runs vLLM (it is not installable on the CPU lock) or a GRPO step with ``use_vllm``: the configs, TRL's
``GRPOConfig`` object and TRL's ``trl vllm-serve`` parser are built on CPU. Facts about TRL are from trl 1.16.0:
- trl/trainer/grpo_config.py:587-680: use_vllm, vllm_mode ("colocate"/"server"), vllm_server_base_url (wins over
  host/port), vllm_server_host "0.0.0.0", vllm_server_port 8000, vllm_server_timeout 240 s, vllm_group_port 51216;
  vllm_gpu_memory_utilization and vllm_tensor_parallel_size apply to colocate only.
- trl/generation/vllm_generation.py:295-309: only the main process connects to the server (base URL, else
  http://host:port) and opens the weight-update group; vLLM missing raises ImportError in the trainer, not the config.
- trl/scripts/vllm_serve.py:85-110, 195-293: `trl vllm-serve` takes --model, --tensor_parallel_size,
  --data_parallel_size, --host, --port (defaults 1, 1, 0.0.0.0, 8000) and execs `vllm serve` with the NCCL weight
  transfer engine; trl/cli/commands/vllm_serve.py:34-37 forwards arguments it does not know to `vllm serve`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from umeflow.config import ConfigError, GRPOConfig, load_config
from umeflow.pipeline import rollout_server
from umeflow.steps.grpo import trl_arguments, vllm_arguments

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------ the config

def test_use_vllm_reads_reward_embeddings_from_a_forward_and_says_so(tmp_path, caplog):
    recipe = _recipe(tmp_path, "grpo:\n  use_vllm: true\n  embedding_source: generation\n")
    with caplog.at_level(logging.INFO, logger="umeflow.config"):
        cfg = load_config(GRPOConfig, recipe)
    assert cfg.embedding_source == "forward"
    assert any("teacher-forced forward" in r.getMessage() for r in caplog.records)
    # without vLLM the recipe's choice stands: in-generation capture stays the default
    assert load_config(GRPOConfig, recipe, ["use_vllm=false"]).embedding_source == "generation"
    assert load_config(GRPOConfig, recipe, ["use_vllm=false", "embedding_source=forward"]).embedding_source == \
        "forward"


def test_bad_embedding_source_and_server_settings_are_refused_at_load(tmp_path):
    recipe = _recipe(tmp_path, "grpo:\n  use_vllm: true\n  vllm_mode: server\n")
    with pytest.raises(ConfigError, match="embedding_source='hidden' is not one of generation, forward"):
        load_config(GRPOConfig, recipe, ["embedding_source=hidden"])
    with pytest.raises(ConfigError, match="vllm_server_gpus=0"):
        load_config(GRPOConfig, recipe, ["vllm_server_gpus=0"])
    with pytest.raises(ConfigError, match="vllm_server_port=70000 is not a TCP port"):
        load_config(GRPOConfig, recipe, ["vllm_server_port=70000"])
    with pytest.raises(ConfigError, match="vllm_mode='remote' is not one of colocate, server"):
        load_config(GRPOConfig, recipe, ["vllm_mode=remote"])


@pytest.mark.parametrize("recipe,preset", [("qwen2-vl-2b.yaml", "presets/1x80gb.yaml"),
                                           ("qwen2-vl-7b.yaml", "presets/8x80gb.yaml"),
                                           ("qwen2-vl-2b.yaml", None)])
def test_gpu_recipes_roll_out_with_colocated_vllm_and_a_forward_for_the_reward(recipe, preset):
    paths = [REPO / "configs" / recipe] + ([REPO / "configs" / preset] if preset else [])
    cfg = load_config(GRPOConfig, paths)
    assert (cfg.use_vllm, cfg.vllm_mode, cfg.embedding_source) == (True, "colocate", "forward")
    server = load_config(GRPOConfig, paths, ["vllm_mode=server"])
    assert rollout_server.needed(server) and not server.vllm_server_base_url  # a pipeline run starts the server


# ------------------------------------------------------------------------------------------ what TRL is given

def test_vllm_arguments_per_mode():
    assert vllm_arguments(GRPOConfig()) == {"use_vllm": False}
    assert vllm_arguments(GRPOConfig(use_vllm=True, vllm_gpu_memory_utilization=0.25)) == {
        "use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.25}
    assert vllm_arguments(GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_port=8001)) == {
        "use_vllm": True, "vllm_mode": "server", "vllm_server_timeout": 900.0, "vllm_server_host": "0.0.0.0",
        "vllm_server_port": 8001}
    url = "http://umeflow-grpo-1-rollout.ml.svc:8000"
    assert vllm_arguments(GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url=url)) == {
        "use_vllm": True, "vllm_mode": "server", "vllm_server_timeout": 900.0, "vllm_server_base_url": url}


def test_trl_grpo_config_carries_server_mode(tmp_path):
    """TRL's own GRPOConfig object (it builds without vLLM installed; the trainer is what needs vLLM)."""
    url = "http://umeflow-grpo-1-rollout.ml.svc:8001"
    cfg = GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url=url, vllm_server_timeout=600,
                     pairs_per_step=2, num_generations=2, per_device_batch_size=2)
    args = trl_arguments(cfg, tmp_path, world_size=1, report_to=[])
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_base_url, args.vllm_server_timeout) == (
        True, "server", url, 600.0)
    colocate = trl_arguments(GRPOConfig(use_vllm=True, vllm_gpu_memory_utilization=0.25, pairs_per_step=2,
                                        num_generations=2, per_device_batch_size=2), tmp_path, 1, [])
    assert (colocate.vllm_mode, colocate.vllm_gpu_memory_utilization, colocate.vllm_server_base_url) == (
        "colocate", 0.25, None)


def test_trainer_never_captures_states_inside_vllm():
    """vLLM returns no hidden states of generated tokens (vLLM issues #4435, #6165): with use_vllm the trainer reads
    <gen_emb> from one teacher-forced forward whatever embedding_source says."""
    from umeflow.train.grpo import UmeGRPOTrainer

    capture = UmeGRPOTrainer._capture_in_generation
    assert capture(SimpleNamespace(embedding_source="generation", use_vllm=False))
    assert not capture(SimpleNamespace(embedding_source="generation", use_vllm=True))
    assert not capture(SimpleNamespace(embedding_source="forward", use_vllm=False))


# -------------------------------------------------------------------------------------------- the server command

def test_server_command_is_what_trl_vllm_serve_parses():
    """Parsed with TRL's own `trl vllm-serve` parser: every argument known (nothing forwarded unread to `vllm
    serve`), and the `vllm serve` line TRL execs carries the tensor-parallel size and the weight-transfer engine."""
    from trl.scripts.vllm_serve import build_command, make_parser

    command = rollout_server.server_command("/mnt/umeflow/runs/r1/sft/model", 2, 8001, "bfloat16")
    assert command[:2] == ["trl", "vllm-serve"]
    args, unknown = make_parser(prog="trl vllm-serve").parse_args_and_config(args=command[2:],
                                                                             return_remaining_strings=True)
    assert unknown == []
    assert (args.model, args.tensor_parallel_size, args.data_parallel_size, args.host, args.port, args.dtype) == (
        "/mnt/umeflow/runs/r1/sft/model", 2, 1, "0.0.0.0", 8001, "bfloat16")
    serve = build_command(args)
    serve = serve[serve.index("serve"):]
    assert serve[:2] == ["serve", "/mnt/umeflow/runs/r1/sft/model"]
    assert serve[serve.index("--tensor-parallel-size") + 1] == "2" and serve[serve.index("--port") + 1] == "8001"
    assert "--weight-transfer-config" in serve  # what VLLMClient.init_communicator needs


def test_server_spec_url_and_trainer_overrides():
    spec = rollout_server.RolloutServerSpec(name="umeflow-grpo-abc-rollout", namespace="ml", image="img",
                                            model="/m", gpus=1, port=8000)
    assert spec.base_url == "http://umeflow-grpo-abc-rollout.ml.svc:8000"
    assert rollout_server.trainer_overrides(spec) == [f"vllm_server_base_url={spec.base_url}"]
    # what the TrainJob's nodes resolve from those --set values: the URL intact, and no second server to start
    on_nodes = load_config(GRPOConfig, None, ["use_vllm=true", "vllm_mode=server",
                                              *rollout_server.trainer_overrides(spec)])
    assert on_nodes.vllm_server_base_url == spec.base_url and not rollout_server.needed(on_nodes)
    assert rollout_server.split_gpus(1, 8, 1) == 7 and rollout_server.split_gpus(4, 8, 2) == 8
    # a server somebody else runs is used as it is
    assert not rollout_server.needed(GRPOConfig(use_vllm=True, vllm_mode="server",
                                                vllm_server_base_url="http://vllm:8000"))
    assert not rollout_server.needed(GRPOConfig(use_vllm=True))


# -------------------------------------------------------------------------------------------------- the chart

def test_chart_grants_the_rollout_server_objects_only_when_asked(tmp_path):
    """Rendered by Helm's own install action against the in-memory API server (tests/helm_harness.py): with
    rbac.trainJobLauncher.rolloutServer the launcher's Role adds create/delete on batch Jobs and Services (what
    umeflow.pipeline.rollout_server calls), and nothing else; without it the Role is unchanged."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("helm_sdkpy", reason="helm-sdkpy is not installed (see tests/test_deploy_assets.py)")
    cases = {"off": {}, "on": {"rbac": {"trainJobLauncher": {"rolloutServer": True}}}}
    request = {"namespace": "ml", "installs": [{"release": f"ume-{k}", "chart": str(REPO / "charts" / "umeflow"),
                                                "values": v} for k, v in cases.items()]}
    (tmp_path / "request.json").write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_", "KUBE"))}
    env.update(HELM_DRIVER="memory", HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("helm_harness.py")),
                           str(tmp_path / "request.json"), str(tmp_path / "result.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rules = {}
    for case, install in zip(cases, json.loads((tmp_path / "result.json").read_text())["installs"]):
        assert install["error"] is None, install["error"]
        (role,) = [o for o in install["objects"] if o["kind"] == "Role"
                   and o["metadata"]["labels"].get("app.kubernetes.io/component") == "trainjob-launcher"]
        rules[case] = [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"]]
    trainjobs = (("trainer.kubeflow.org",), ("trainjobs",), ("create", "get"))
    assert rules["off"] == [trainjobs]
    assert rules["on"] == [trainjobs, (("batch",), ("jobs",), ("create", "delete")),
                           (("",), ("services",), ("create", "delete"))]
