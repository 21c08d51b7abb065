"""Cold-start SFT end to end on the tiny model: the step, its checkpoint, resume, DeepSpeed ZeRO-2 on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from umeflow.config import ModelInitConfig, SFTConfig
from umeflow.model.chat import GENERATION_PROMPT
from umeflow.model.tiny import init_tiny

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def write_sft_fixture(root: Path, n: int = 24, datasets: tuple[str, ...] = ("Colours",)) -> Path:
    """A small annotate-style output: UME-R1 SFT records over coloured squares and their colour names (record i
    belongs to ``datasets[i % len(datasets)]``)."""
    images = root / "train" / "images" / "Colours"
    images.mkdir(parents=True)
    lines = []
    names = list(COLOURS)
    for i in range(n):
        name = names[i % len(names)]
        rgb = tuple(max(0, c - 4 * i) for c in COLOURS[name])
        Image.new("RGB", (56, 56), rgb).save(images / f"{i}.png")
        human_q = f"<image>\nRepresent the given image for classification\n<disc_emb>\n{GENERATION_PROMPT}"
        human_t = f"{name}\n<disc_emb>\n{GENERATION_PROMPT}"
        lines.append({"dataset_name": datasets[i % len(datasets)],
                      "qry": {"conversations": [{"from": "human", "value": human_q},
                                                {"from": "gpt", "value": f"<think>The square is {name}.</think>"
                                                                         f"<answer>{name}<gen_emb>"}],
                              "image": f"images/Colours/{i}.png"},
                      "pos": {"conversations": [{"from": "human", "value": human_t},
                                                {"from": "gpt", "value": f"<think>The word is {name}.</think>"
                                                                         f"<answer>{name}<gen_emb>"}]}})
    data = root / "annotate"
    data.mkdir()
    (data / "sft.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (data / "manifest.json").write_text(json.dumps({"media_root": str(root / "train")}))
    return data


@pytest.fixture(scope="module")
def compact_model(assets_dir, tmp_path_factory) -> Path:
    return init_tiny(ModelInitConfig(out=str(tmp_path_factory.mktemp("m") / "tiny"), assets_dir=str(assets_dir),
                                     tokenizer="compact"))


def _cfg(model, data, out, **kw) -> SFTConfig:
    base = dict(model=str(model), data=str(data), out=str(out), per_device_batch_size=8, max_steps=6,
                logging_steps=1, save_steps=3, learning_rate=1e-3, seed=0)
    base.update(kw)
    return SFTConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def test_sft_step_trains_and_writes_an_embedder_checkpoint(compact_model, tmp_path):
    from umeflow.model.embedder import Embedder
    from umeflow.steps.sft import run

    data = write_sft_fixture(tmp_path)
    metrics = run(_cfg(compact_model, data, tmp_path / "sft"))
    assert metrics["global_step"] == 6
    for part in ("loss_gen_ctr", "loss_disc_ctr", "loss_ce_q", "loss_ce_t"):
        assert np.isfinite(metrics[part])
    before = load_file(str(compact_model / "model.safetensors"))
    after = _weights(tmp_path / "sft")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    history = json.loads((tmp_path / "sft" / "log_history.json").read_text())
    assert all("samples_per_second" in h and "grad_norm" in h for h in history if "loss" in h)
    emb = Embedder(tmp_path / "sft" / "model")
    from umeflow.model.items import Item

    out = emb.encode([Item("red"), Item("blue")], mode="gen", max_new_tokens=8)
    assert out.embeddings.shape[0] == 2 and np.isfinite(out.embeddings).all()


def test_killed_run_resumes_to_the_same_weights(compact_model, tmp_path):
    from transformers import TrainerCallback

    from umeflow.steps.sft import run

    data = write_sft_fixture(tmp_path)
    run(_cfg(compact_model, data, tmp_path / "straight"))

    class Die(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:  # after checkpoint-3 was written, before the run could finish
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_cfg(compact_model, data, tmp_path / "killed"), callbacks=[Die()])
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-3").is_dir()
    assert not (tmp_path / "killed" / "model").exists()  # nothing that looks finished
    metrics = run(_cfg(compact_model, data, tmp_path / "killed"))
    assert metrics["resumed_from_step"] == 3 and metrics["global_step"] == 6
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_single_dataset_sampler_blocks_are_one_dataset_and_cover_every_pair():
    from umeflow.train.sft_data import SingleDatasetSampler

    names = ["a"] * 10 + ["b"] * 7 + ["c"] * 3
    sampler = SingleDatasetSampler(names, block=4, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(20))  # a permutation: nothing dropped, nothing repeated
    blocks = [order[s:s + 4] for s in range(0, 20, 4)]
    assert all(len({names[i] for i in b}) == 1 for b in blocks[:3])  # 2 full blocks of a, 1 of b
    assert {names[i] for i in order[12:]} == {"a", "b", "c"}  # the remainders, pooled last
    assert list(SingleDatasetSampler(names, block=4, seed=0)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(20))


def test_dataset_repeats_upweight_by_name_and_refuse_unknown_names(tmp_path):
    from umeflow.errors import UserError
    from umeflow.train.sft_data import load_sft_pairs, repeat_datasets

    data = write_sft_fixture(tmp_path, n=6, datasets=("Colours", "Shades"))
    pairs, _ = load_sft_pairs(data / "sft.jsonl", tmp_path / "train")
    out = repeat_datasets(pairs, {"Shades": 3})
    assert [p.dataset for p in out].count("Shades") == 9 and [p.dataset for p in out].count("Colours") == 3
    with pytest.raises(UserError, match=r"\['Tux'\], not in the training data"):
        repeat_datasets(pairs, {"Tux": 2})
    with pytest.raises(UserError, match="dataset_repeats.Shades=0"):
        repeat_datasets(pairs, {"Shades": 0})


def test_single_dataset_batches_reach_the_trainer_and_resume_in_the_same_order(compact_model, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    from umeflow.steps.sft import run
    from umeflow.train import sft_data

    seen: list[set[str]] = []
    collate = sft_data.SFTCollator.__call__
    monkeypatch.setattr(sft_data.SFTCollator, "__call__",
                        lambda self, pairs: seen.append({p.dataset for p in pairs}) or collate(self, pairs))
    data = write_sft_fixture(tmp_path, n=24, datasets=("Colours", "Shades"))  # 12 + 12: 3 blocks of 4 each
    cfg = dict(single_dataset_batches=True, per_device_batch_size=4, max_steps=8)  # 6 steps an epoch: crosses one
    run(_cfg(compact_model, data, tmp_path / "straight", **cfg))
    assert all(len(s) == 1 for s in seen) and set().union(*seen) == {"Colours", "Shades"}

    class Die(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:  # after checkpoint-6 (end of epoch 0), inside epoch 1
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(_cfg(compact_model, data, tmp_path / "killed", **cfg), callbacks=[Die()])
    assert run(_cfg(compact_model, data, tmp_path / "killed", **cfg))["resumed_from_step"] == 6
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_two_steps_under_deepspeed_zero2_on_cpu(compact_model, tmp_path, single_rank_env):
    data = write_sft_fixture(tmp_path)
    repo = Path(__file__).resolve().parents[1]
    env = single_rank_env
    cmd = [sys.executable, "-m", "umeflow.cli", "sft", "--model", str(compact_model), "--data", str(data),
           "--out", str(tmp_path / "ds"), "--max-steps", "2", "--deepspeed", str(repo / "configs/deepspeed/zero2.json"),
           "--set", "per_device_batch_size=8", "--set", "save_steps=100"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ds" / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    from umeflow.train.sft import checkpoint_problem

    assert checkpoint_problem(tmp_path / "ds" / "checkpoints" / "checkpoint-2") is None  # DeepSpeed's layout resumes
    before = load_file(str(compact_model / "model.safetensors"))
    after = _weights(tmp_path / "ds")
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)


def test_sft_logs_loss_parts_to_mlflow(compact_model, tmp_path, monkeypatch):
    import mlflow

    from umeflow.steps.sft import run

    # An earlier step in this process pointed MLflow elsewhere (as the evaluate step or the KFP local runner does);
    # the SFT run must still land in the store the environment names now.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'other.db'}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = write_sft_fixture(tmp_path)
    run(_cfg(compact_model, data, tmp_path / "sft", max_steps=2, save_steps=100))
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    logged = set(runs[0].data.metrics)
    for key in ("loss", "loss_gen_ctr", "loss_disc_ctr", "loss_ce_q", "loss_ce_t", "learning_rate", "grad_norm",
                "samples_per_second"):
        assert key in logged, (key, logged)


def test_lora_with_frozen_vision_merges_into_a_plain_checkpoint(compact_model, tmp_path):
    from umeflow.model.embedder import Embedder
    from umeflow.model.items import Item
    from umeflow.steps.sft import run

    data = write_sft_fixture(tmp_path)
    metrics = run(_cfg(compact_model, data, tmp_path / "lora", max_steps=3, save_steps=100, lora_r=4,
                       freeze_vision=True, learning_rate=1e-2))
    assert metrics["trainable_parameters"] < metrics["total_parameters"] / 2
    before = load_file(str(compact_model / "model.safetensors"))
    after = _weights(tmp_path / "lora")
    assert set(after) == set(before)  # merged: no lora_A/lora_B keys, same layout as the base checkpoint
    vision = [k for k in before if k.startswith("visual.") and ".merger." not in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)  # frozen
    llm = [k for k in before if "self_attn.q_proj.weight" in k]
    assert any(not torch.equal(before[k], after[k]) for k in llm)  # LoRA deltas merged in
    out = Embedder(tmp_path / "lora" / "model").encode([Item("red")], mode="disc")
    assert np.isfinite(out.embeddings).all()


def test_gradcache_step_on_the_vlm_matches_the_plain_step(compact_model, tmp_path):
    """GradCache over image+text pairs split into sub-batches gives the plain full-batch gradients."""
    from umeflow.model.backbone import load_backbone
    from umeflow.train.gradcache import grad_cache_backward
    from umeflow.train.losses import SFTLossWeights, sft_loss
    from umeflow.train.sft import media_root_of, pair_forward, split_pairs
    from umeflow.train.sft_data import SFTCollator, load_sft_pairs

    data = write_sft_fixture(tmp_path, n=7)
    bb = load_backbone(compact_model)
    model = bb.model.train()
    pairs, _ = load_sft_pairs(data / "sft.jsonl", media_root_of(data))
    batch = SFTCollator(bb.processor, bb.family.name)(pairs)
    chunks = split_pairs(batch, 3)
    assert [len(c["target_keys"]) for c in chunks] == [3, 3, 1]
    assert torch.equal(torch.cat([c["query"]["pixel_values"] for c in chunks]), batch["query"]["pixel_values"])

    def model_fn(inputs):
        return pair_forward(model, inputs, bb.gen_emb_id, bb.disc_emb_id)

    def loss_fn(reps, ce):
        return sft_loss(reps, ce, SFTLossWeights(), dedup_keys=batch["target_keys"])

    reps, ce = model_fn(batch)
    plain_loss, _ = loss_fn(reps, ce)
    plain_loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    cached_loss, _ = grad_cache_backward(model_fn, chunks, loss_fn)
    assert float(cached_loss) == pytest.approx(float(plain_loss), rel=1e-5)
    for n, p in model.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- resume: same run, complete checkpoints only (#14)

def test_sft_refuses_to_resume_a_run_of_another_seed_or_model(compact_model, tmp_path, capsys):
    from umeflow.cli import main
    from umeflow.errors import UserError
    from umeflow.steps.sft import run

    data = write_sft_fixture(tmp_path, n=16)
    out = tmp_path / "sft"
    run(_cfg(compact_model, data, out, max_steps=2, save_steps=2))
    first = _weights(out)

    # another seed into the same folder: refused by name, nothing published over the old run
    argv = ["sft", "--model", str(compact_model), "--data", str(data), "--out", str(out), "--max-steps", "2",
            "--seed", "1", "--set", "per_device_batch_size=8", "--set", "save_steps=2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("umeflow sft: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(out) in lines[0] and "seed: 0 there, 1 now" in lines[0] and "--out" in lines[0]
    assert "resume=false" in lines[0]

    # another model (one tensor changed) at another path: refused as a different model
    other = tmp_path / "other-model"
    shutil.copytree(compact_model, other)
    tensors = load_file(str(other / "model.safetensors"))
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name] = tensors[name] + 1
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"model 'model' differs"):
        run(_cfg(other, data, out, max_steps=2, save_steps=2))
    for k, v in first.items():
        assert torch.equal(v, _weights(out)[k])

    # a larger max_steps continues the same run; resume=false starts afresh under the other seed
    assert run(_cfg(compact_model, data, out, max_steps=3, save_steps=2))["resumed_from_step"] == 2
    metrics = run(_cfg(compact_model, data, out, max_steps=2, save_steps=2, seed=1, resume=False))
    assert metrics["resumed_from_step"] == 0 and metrics["global_step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]


@pytest.fixture(scope="module")
def finished_run(compact_model, tmp_path_factory) -> tuple[Path, Path]:
    """(data, out) of a finished 4-step run with checkpoints 2 and 4 (copy it before changing anything)."""
    from umeflow.steps.sft import run

    root = tmp_path_factory.mktemp("finished")
    data = write_sft_fixture(root, n=16)
    run(_cfg(compact_model, data, root / "sft", max_steps=4, save_steps=2))
    return data, root / "sft"


def test_resume_falls_back_past_a_checkpoint_killed_during_save(compact_model, finished_run, tmp_path, monkeypatch):
    from transformers import Trainer

    from umeflow.steps.sft import run

    data, finished = finished_run
    save_rng = Trainer._save_rng_state

    def killed_at_step_4(self, output_dir):  # weights and optimizer of checkpoint-4 written, the rest not
        if self.state.global_step == 4:
            raise KeyboardInterrupt
        return save_rng(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(compact_model, data, tmp_path / "killed", max_steps=4, save_steps=2))
    monkeypatch.undo()
    half = tmp_path / "killed" / "checkpoints" / "checkpoint-4"
    assert (half / "model.safetensors").is_file() and not (half / "trainer_state.json").exists()

    metrics = run(_cfg(compact_model, data, tmp_path / "killed", max_steps=4, save_steps=2))
    assert metrics["resumed_from_step"] == 2 and metrics["global_step"] == 4
    a, b = _weights(finished), _weights(tmp_path / "killed")  # bit-identical to the run never killed
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_finished_run_whose_newest_checkpoint_lost_its_tail_resumes_from_the_previous_one(
        compact_model, finished_run, tmp_path, caplog):
    from umeflow.steps.sft import run

    data, finished = finished_run
    out = tmp_path / "sft"
    shutil.copytree(finished, out)
    _truncate(out / "checkpoints" / "checkpoint-4" / "model.safetensors")
    metrics = run(_cfg(compact_model, data, out, max_steps=4, save_steps=2))
    assert metrics["resumed_from_step"] == 2 and metrics["global_step"] == 4
    assert "skipping incomplete checkpoint" in caplog.text
    assert "model.safetensors is truncated or damaged" in caplog.text
    a, b = _weights(finished), _weights(out)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage", ["no trainer_state", "truncated optimizer", "truncated rng state", "no marker",
                                    "marker not JSON"])
def test_a_damaged_checkpoint_is_skipped_for_the_previous_complete_one(finished_run, tmp_path, damage):
    from umeflow.train.sft import CHECKPOINT_MARKER, resume_checkpoint

    ckpts = tmp_path / "checkpoints"
    shutil.copytree(finished_run[1] / "checkpoints", ckpts)
    newest = ckpts / "checkpoint-4"
    saved = json.loads((newest / CHECKPOINT_MARKER).read_text())
    identity = {k: saved[k] for k in ("models", "data", "config")}
    assert resume_checkpoint(ckpts, identity, "sft") == str(newest)
    {"no trainer_state": lambda: (newest / "trainer_state.json").unlink(),
     "truncated optimizer": lambda: _truncate(newest / "optimizer.pt"),
     "truncated rng state": lambda: _truncate(newest / "rng_state.pth"),
     "no marker": lambda: (newest / CHECKPOINT_MARKER).unlink(),
     "marker not JSON": lambda: _truncate(newest / CHECKPOINT_MARKER)}[damage]()
    assert resume_checkpoint(ckpts, identity, "sft") == str(ckpts / "checkpoint-2")
    _truncate(ckpts / "checkpoint-2" / "model.safetensors")
    assert resume_checkpoint(ckpts, identity, "sft") is None  # nothing complete left: train from step 0


def test_sft_time_cap_fails_the_step_and_a_rerun_resumes(compact_model, tmp_path):
    from umeflow.errors import UserError
    from umeflow.steps.sft import run

    data = write_sft_fixture(tmp_path, n=16)
    out = tmp_path / "sft"
    # a cap no step fits in: training stops after its first step, with a checkpoint, and the step fails
    with pytest.raises(UserError, match=r"sft stopped by its time cap \(sft.max_minutes=1e-09\) at step 1 of 3"):
        run(_cfg(compact_model, data, out, max_steps=3, save_steps=100, max_minutes=1e-9))
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    assert (out / "checkpoints" / "checkpoint-1" / "umeflow_checkpoint.json").is_file()
    metrics = run(_cfg(compact_model, data, out, max_steps=3, save_steps=100))  # the cap is not part of the identity
    assert metrics["resumed_from_step"] == 1 and metrics["global_step"] == 3
