"""GRPO on TRL with the tiny model: in-generation embedding capture, short runs, ZeRO-2, the zero-variance guard."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from umeflow.config import GRPOConfig, ModelInitConfig
from umeflow.errors import UserError
from umeflow.model.tiny import init_tiny

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40),
           "black": (10, 10, 10), "white": (245, 245, 245)}


def write_pairs(root: Path, n: int = 12) -> Path:
    """MMEB-train style pairs (``umeflow data build`` layout): a coloured square → its colour name."""
    images = root / "train" / "images"
    images.mkdir(parents=True)
    lines = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        Image.new("RGB", (56, 56), COLOURS[name]).save(images / f"{i}.png")
        lines.append({"dataset_name": "Colours", "qry": "<|image_1|>\nRepresent the given image for classification",
                      "qry_image_path": f"images/{i}.png", "pos_text": name, "pos_image_path": ""})
    (root / "train" / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root / "train"


@pytest.fixture(scope="module")
def compact_model(assets_dir, tmp_path_factory) -> Path:
    return init_tiny(ModelInitConfig(out=str(tmp_path_factory.mktemp("m") / "tiny"), assets_dir=str(assets_dir),
                                     tokenizer="compact"))


def _cfg(model, data, out, **kw) -> GRPOConfig:
    base = dict(model=str(model), data=str(data), out=str(out), num_generations=2, pairs_per_step=2,
                per_device_batch_size=4, max_completion_length=12, learning_rate=1e-3, max_steps=2, save_steps=100,
                logging_steps=1, seed=0, zero_std_patience=0)
    base.update(kw)
    return GRPOConfig(**base)


def _bias_towards_gen_emb(trainer) -> None:
    """A random model almost never writes <gen_emb>; bias sampling towards it so rollouts contain some."""
    trainer.generation_config.sequence_bias = {(trainer.gen_emb_id,): 4.0}


def test_in_generation_states_equal_teacher_forced_states(compact_model, tmp_path, monkeypatch):
    import umeflow.train.grpo as grpo_mod
    from umeflow.steps.grpo import run

    seen = []

    class Checking(grpo_mod.UmeGRPOTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            _bias_towards_gen_emb(self)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, images, multimodal_fields,
                                                                     num_generations, has_tool_images)
            module = self.accelerator.unwrap_model(self.model)
            ref, ref_fb = grpo_mod.teacher_forced_states(module, prompt_ids, completion_ids, multimodal_fields,
                                                         self.gen_emb_id, self._tokenizer.pad_token_id,
                                                         self._image_pad_token_id)
            seen.append((self.rollouts.source, self.rollouts.states.clone(), self.rollouts.fallback.clone(),
                         torch.nn.functional.normalize(ref.float(), dim=-1), ref_fb, completion_ids, self.gen_emb_id))
            return completion_ids, logprobs

    monkeypatch.setattr(grpo_mod, "UmeGRPOTrainer", Checking)
    data = write_pairs(tmp_path)
    # top-k 50 (UME-R1's sampling): the biased tiny model ends some rollouts on <gen_emb> exactly at the budget, a
    # token generation never feeds; those rows are read teacher-forced, as UME-R1 reads every row
    run(_cfg(compact_model, data, tmp_path / "g", max_steps=1, max_completion_length=16))
    source, captured, fallback, forward, forward_fb, completions, gen_id = seen[0]
    unfed = grpo_mod.unfed_gen_emb_rows(max(map(len, completions)), completions, gen_id)
    assert unfed and len(unfed) < len(completions), "want rollouts ending on <gen_emb> at the budget, and others"
    assert source == "generation+forward"
    assert torch.equal(fallback, forward_fb)
    # (rollouts without <gen_emb>: test_rewards.py checks their read-out in states_from_steps)
    cos = (captured * forward).sum(-1)
    assert cos.min().item() > 0.9999, cos


def test_two_grpo_steps_change_parameters_and_log_rewards(compact_model, tmp_path):
    from umeflow.model.embedder import Embedder
    from umeflow.steps.grpo import run

    data = write_pairs(tmp_path)
    metrics = run(_cfg(compact_model, data, tmp_path / "g"))
    assert metrics["global_step"] == 2
    history = json.loads((tmp_path / "g" / "log_history.json").read_text())
    logged = set().union(*[h.keys() for h in history])
    for key in ("rewards/format/mean", "rewards/embedding/mean", "embedding/rank_mean", "embedding/gap_mean",
                "embedding/fallback_rate", "frac_reward_zero_std", "kl", "loss"):
        assert key in logged, key
    before = load_file(str(compact_model / "model.safetensors"))
    after = load_file(str(tmp_path / "g" / "model" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))]
    assert changed, "GRPO did not update any parameter"
    emb = Embedder(tmp_path / "g" / "model").encode([{"text": "red"}], mode="disc", progress=False)
    assert emb.embeddings.shape[0] == 1


def test_zero_variance_groups_stop_the_run_with_a_clear_message(compact_model, tmp_path):
    from umeflow.steps.grpo import run

    data = write_pairs(tmp_path)
    # an untrained model never matches the format, and the embedding reward is switched off: every reward is 0
    with pytest.raises(UserError, match="identical rewards"):
        run(_cfg(compact_model, data, tmp_path / "g", weight_embedding=0.0, zero_std_patience=1, max_steps=3))
    assert not (tmp_path / "g" / "model").exists()


def test_bad_batch_geometry_is_refused(compact_model, tmp_path):
    from umeflow.steps.grpo import run

    data = write_pairs(tmp_path)
    with pytest.raises(UserError, match="multiple of"):
        run(_cfg(compact_model, data, tmp_path / "g", per_device_batch_size=3))
    with pytest.raises(UserError, match="pairs_per_step must be"):
        run(_cfg(compact_model, data, tmp_path / "g", pairs_per_step=1))


def test_embed_rl_recipe_runs_with_a_frozen_embedder(compact_model, tmp_path):
    from umeflow.steps.grpo import run

    data = write_pairs(tmp_path)
    metrics = run(_cfg(compact_model, data, tmp_path / "g", recipe="embed_rl", embedder=str(compact_model),
                       max_steps=1, max_completion_length=16))
    assert metrics["global_step"] == 1
    history = json.loads((tmp_path / "g" / "log_history.json").read_text())
    logged = set().union(*[h.keys() for h in history])
    assert {"rewards/tcot_format/mean", "rewards/outcome/mean", "outcome/rank_mean"} <= logged


# slow (25–50 s on the 2-core machine): make test stays under 10 minutes; test_sft.py's ZeRO-2 test keeps DeepSpeed
# on CPU in the default run, and make test-all runs this one
@pytest.mark.slow
def test_two_grpo_steps_under_deepspeed_zero2_on_cpu(compact_model, tmp_path, single_rank_env):
    data = write_pairs(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    env = single_rank_env
    sets = ["num_generations=2", "pairs_per_step=2", "per_device_batch_size=4", "max_completion_length=12",
            "learning_rate=1e-3", "save_steps=100", "zero_std_patience=0"]
    cmd = [sys.executable, "-m", "umeflow.cli", "grpo", "--model", str(compact_model), "--data", str(data),
           "--out", str(tmp_path / "ds"), "--max-steps", "2", "--deepspeed", str(repo / "configs/deepspeed/zero2.json")]
    cmd += [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ds" / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    before = load_file(str(compact_model / "model.safetensors"))
    after = load_file(str(tmp_path / "ds" / "model" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)


def test_steps_hold_one_dataset_with_distinct_targets():
    from umeflow.train.grpo_data import RLPair, RLSide, single_dataset_blocks

    pairs = [RLPair(RLSide(f"q{i}", None), RLSide(f"class {i % 3}", None), "A") for i in range(12)]
    pairs += [RLPair(RLSide(f"q{i}", None), RLSide(f"caption {i}", None), "B") for i in range(7)]
    ordered = single_dataset_blocks(pairs, 3, seed=0)
    blocks = [ordered[i:i + 3] for i in range(0, len(ordered), 3)]
    assert len(ordered) == 18  # A: 4 blocks of the 3 classes; B: 2 blocks, one caption left over
    for b in blocks:
        assert len({p.dataset for p in b}) == 1
        assert len({p.target.text for p in b}) == 3
    assert ordered == single_dataset_blocks(pairs, 3, seed=0)


def test_grpo_logs_reward_parts_to_mlflow(compact_model, tmp_path, monkeypatch):
    import mlflow

    from umeflow.steps.grpo import run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run(_cfg(compact_model, write_pairs(tmp_path), tmp_path / "g", max_steps=1))
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`umeflow.step` = 'grpo'")
    assert len(runs) == 1
    logged = set(runs[0].data.metrics)
    for key in ("rewards/format/mean", "rewards/embedding/mean", "embedding/rank_mean", "frac_reward_zero_std"):
        assert key in logged, (key, logged)


# ------------------------------------------------------------------------------- safety nets and resume (#14)

def test_grpo_stops_when_the_policy_never_writes_gen_emb(compact_model, tmp_path):
    from umeflow.steps.grpo import run

    data = write_pairs(tmp_path, n=4)
    # the untrained model never writes <answer>…<gen_emb>: format 0, (nearly) every rollout a fallback
    with pytest.raises(UserError, match=r"stopped at step 2: over the last 2 steps mean rewards/format/mean 0.000 < "
                                        r"grpo.min_format_rate 0.05"):
        run(_cfg(compact_model, data, tmp_path / "g", max_steps=4, format_check_steps=2))
    assert not (tmp_path / "g" / "model").exists()
    history = json.loads((tmp_path / "g" / "log_history.json").read_text())
    assert max(h.get("step", 0) for h in history) == 2  # stopped at the check, not at max_steps
    assert min(h["embedding/fallback_rate"] for h in history if "embedding/fallback_rate" in h) > 0.9


def test_grpo_time_cap_fails_the_step(compact_model, tmp_path):
    from umeflow.steps.grpo import run

    data = write_pairs(tmp_path, n=4)
    with pytest.raises(UserError, match=r"grpo stopped by its time cap .* at step 1 of 2"):
        run(_cfg(compact_model, data, tmp_path / "g", max_steps=2, max_minutes=1e-9))
    assert not (tmp_path / "g" / "model").exists()
    # the checkpoint the cap saved belongs to the same run: a rerun without the cap resumes it
    assert run(_cfg(compact_model, data, tmp_path / "g", max_steps=2))["resumed_from_step"] == 1


def test_grpo_refuses_to_resume_a_run_of_another_seed(compact_model, tmp_path):
    from umeflow.steps.grpo import run

    data = write_pairs(tmp_path, n=4)
    out = tmp_path / "g"
    run(_cfg(compact_model, data, out, max_steps=1, save_steps=1))
    assert (out / "checkpoints" / "checkpoint-1" / "umeflow_checkpoint.json").is_file()
    with pytest.raises(UserError, match=r"another grpo run .*seed: 0 there, 1 now"):
        run(_cfg(compact_model, data, out, max_steps=1, save_steps=1, seed=1))
