"""Issue #15 item 4: a recipe or preset that asks for vLLM rollouts (``grpo.use_vllm: true``) where vLLM is not
installed is refused before any step runs, naming the setting and the GPU image, instead of failing when GRPO starts
after SFT has spent its GPUs. The CPU lock has no vLLM (it cannot: vLLM needs torchvision), so on this machine the GPU
presets are refused; loading them as plain configs (a pure parse) still works."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from umeflow import cli, vllm_support
from umeflow.config import GRPOConfig, load_config
from umeflow.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PRESET = "configs/presets/1x80gb.yaml"
IMAGE_WORDS = ("images/train.Dockerfile", "ghcr.io/umeflow/umeflow-train:0.1.0", "--set grpo.use_vllm=false")


@pytest.fixture
def no_vllm(monkeypatch):
    """This machine's situation, made explicit so the tests mean the same on a machine that has vLLM."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(vllm_support, "vllm_importable", lambda: False)


def _step_argv(step: str, tmp_path: Path, *extra: str) -> list[str]:
    return [step, "--config", "configs/tiny.yaml", "--preset", PRESET, "--model", str(tmp_path / "model"),
            "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *extra]


@pytest.mark.parametrize("step", ["sft", "grpo"])
def test_a_gpu_preset_is_refused_by_sft_and_grpo_before_any_output(no_vllm, tmp_path, capsys, step):
    assert cli.main(_step_argv(step, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"umeflow {step}: error: recipe {PRESET}: grpo.use_vllm=True asks for vLLM rollouts"), err
    assert all(word in err for word in IMAGE_WORDS), err
    assert not (tmp_path / "out").exists()


def test_run_local_refuses_the_gpu_recipe_before_the_pipeline_starts(no_vllm, tmp_path, capsys):
    state = tmp_path / "state"
    assert cli.main(["run-local", "--config", "configs/qwen2-vl-2b.yaml", "--state", str(state)]) == 2
    err = capsys.readouterr().err
    assert "recipe configs/qwen2-vl-2b.yaml: grpo.use_vllm=True asks for vLLM" in err
    assert all(word in err for word in IMAGE_WORDS), err
    assert not state.exists()  # run_local creates the state folder first thing: it never started


def test_the_pipeline_sft_task_refuses_before_copying_the_model(no_vllm, tmp_path):
    """The SFT task runs in the train image; one built without vLLM stops there, not at GRPO."""
    from umeflow.pipeline import tasks

    with pytest.raises(UserError, match=r"^--set grpo.use_vllm=true asks for vLLM rollouts.*images/train.Dockerfile"):
        tasks.sft("configs/tiny.yaml", ["grpo.use_vllm=true"], str(tmp_path), str(tmp_path / "no-model"),
                  str(tmp_path / "annotate"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_the_winning_setting_is_named(no_vllm):
    # the later file wins key by key (load_config), so the preset is named, not the recipe that also sets it
    with pytest.raises(UserError, match=rf"^recipe {PRESET}: grpo.use_vllm=True"):
        vllm_support.refuse_missing_vllm(["configs/qwen2-vl-2b.yaml", PRESET])
    with pytest.raises(UserError, match=r"^--set grpo.use_vllm=1 asks"):
        vllm_support.refuse_missing_vllm("configs/tiny.yaml", ["sft.max_steps=2", "grpo.use_vllm=1"])
    # a bare key belongs to the step that was run: grpo's for `umeflow grpo`, SFT's for `umeflow sft`
    with pytest.raises(UserError, match=r"^--set use_vllm=true asks"):
        vllm_support.refuse_missing_vllm("configs/tiny.yaml", ["use_vllm=true"], bare_keys_are_grpo=True)
    vllm_support.refuse_missing_vllm("configs/tiny.yaml", ["use_vllm=true"])


def test_no_vllm_requested_or_vllm_present_is_not_refused(no_vllm, monkeypatch):
    vllm_support.refuse_missing_vllm("configs/tiny.yaml")  # use_vllm defaults to false
    vllm_support.refuse_missing_vllm(["configs/qwen2-vl-2b.yaml", PRESET], ["grpo.use_vllm=false"])
    monkeypatch.setattr(vllm_support, "vllm_importable", lambda: True)
    vllm_support.refuse_missing_vllm(["configs/qwen2-vl-2b.yaml", PRESET])


def test_cli_passes_a_recipe_without_vllm_on_to_the_step(no_vllm, tmp_path, monkeypatch):
    from umeflow.steps import sft as sft_step

    seen = []
    monkeypatch.setattr(sft_step, "run", seen.append)
    assert cli.main(_step_argv("sft", tmp_path, "--set", "grpo.use_vllm=false")) == 0
    assert [cfg.out for cfg in seen] == [str(tmp_path / "out")]


def test_loading_the_gpu_recipes_stays_a_pure_parse(no_vllm):
    """Compile-only and config tests load the GPU recipes on CPU machines; only the step entry points check."""
    assert load_config(GRPOConfig, ["configs/qwen2-vl-2b.yaml", PRESET]).use_vllm is True


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_the_real_cli_process_exits_2_without_vllm(tmp_path):
    """No monkeypatching: the CPU environment's own find_spec, the installed entry point's exit status."""
    proc = subprocess.run([sys.executable, "-m", "umeflow.cli", *_step_argv("grpo", tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"recipe {PRESET}: grpo.use_vllm=True asks for vLLM rollouts" in proc.stderr
    assert not (tmp_path / "out").exists()
