"""Where the disc embedding is read (issue #13 follow-up; method.md §1.4).

Facts (UME-R1 = Kikcer/lume @08891de, the original UME-R1 commits):
- UME-R1's evaluation, disc mode, reads the last-layer state at ``get_embedding_idx(input_ids, <disc_emb>)``
  (src/eval/VLM2Vec/eval_twomode.py:142-146). That function was written for gen mode, where the step tuple is offset
  by one, and returns j+1 for a match at j (eval_twomode.py:39-54). On the prompt ids it therefore points at the
  token **after** ``<disc_emb>`` (the ``\\n`` that follows it), and UME-R1's published disc and oracle numbers are
  read there.
- UME-R1's README disc example (README.md:174-201) and its SFT loss (src/sft-train/qwenvl/train/trainer.py, the
  ``get_embedding_reps`` max index) use the ``<disc_emb>`` position itself.
umeflow reads ``<disc_emb>`` by default (``disc_readout: disc_emb``) and UME-R1's evaluation position with
``disc_readout: next_token`` (set in configs/qwen2-vl-*.yaml).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from umeflow.errors import UserError
from umeflow.model.embedder import Embedder, language_states
from umeflow.model.items import Item

ITEMS = [Item("a red square"), Item("the colour of the sea, in one word")]  # different lengths: left padding


@pytest.fixture(scope="module")
def embedders(tiny_model_dir):
    at_token = Embedder(tiny_model_dir)
    return at_token, Embedder(at_token.backbone, disc_readout="next_token")


def _reference(e: Embedder, offset: int) -> np.ndarray:
    """The state ``offset`` tokens after the last <disc_emb>, found by a plain loop over each row's ids."""
    batch = e.batch(ITEMS)
    with torch.no_grad():
        states = language_states(e.model, batch)
    rows = []
    for b, ids in enumerate(batch["input_ids"].tolist()):
        j = max(i for i, t in enumerate(ids) if t == e.backbone.disc_emb_id)
        rows.append(torch.nn.functional.normalize(states[b, j + offset].float(), dim=-1).numpy())
    return np.stack(rows)


def test_next_token_reads_the_state_after_disc_emb_as_ume_r1_eval_does(embedders):
    at_token, after = embedders
    # eval_twomode.py:142-146 + :39-54: index j+1 of the (left-padded) prompt ids
    np.testing.assert_allclose(after.encode(ITEMS, mode="disc", progress=False).embeddings, _reference(after, 1),
                               rtol=1e-5, atol=1e-6)
    # README.md:174-201 / SFT: the <disc_emb> position itself (umeflow's default)
    np.testing.assert_allclose(at_token.encode(ITEMS, mode="disc", progress=False).embeddings,
                               _reference(at_token, 0), rtol=1e-5, atol=1e-6)
    # the two positions really are different vectors, so the checks above tell them apart
    cos = np.sum(_reference(after, 1) * _reference(after, 0), axis=1)
    assert cos.max() < 0.999


def test_gen_mode_prefill_disc_follows_the_same_readout(embedders):
    _, after = embedders
    enc = after.encode(ITEMS, mode="gen", max_new_tokens=2, progress=False)
    np.testing.assert_allclose(enc.disc_embeddings, _reference(after, 1), rtol=1e-5, atol=1e-6)


def test_unknown_readout_is_refused(embedders):
    with pytest.raises(UserError, match="disc_readout"):
        Embedder(embedders[0].backbone, disc_readout="last")


def test_real_recipes_read_disc_where_ume_r1_evaluates(tmp_path):
    from pathlib import Path

    for name in ("qwen2-vl-2b.yaml", "qwen2-vl-7b.yaml"):
        recipe = yaml.safe_load((Path(__file__).parents[1] / "configs" / name).read_text())
        assert recipe["evaluate"]["disc_readout"] == "next_token"
        assert recipe["embed"]["disc_readout"] == "next_token"  # embed what was evaluated


def test_register_serves_with_the_evaluations_inputs(tmp_path):
    from umeflow.registry.card import EvalOutput
    from umeflow.steps.register import EVAL_INPUT_KEYS, _eval_input_settings

    config = {"model": "m", "tasks": "mmeb-v2", "disc_readout": "next_token", "qwen_vl_utils_resize": True,
              "min_pixels": 784, "max_pixels": 2359296, "video_min_frame_pixels": 0, "video_max_frame_pixels": 0,
              "batch_size": 4}
    ev = EvalOutput(tmp_path, {}, "", {"config": config}, None)
    settings = _eval_input_settings(ev)
    assert settings == {k: config[k] for k in EVAL_INPUT_KEYS}  # pixels and read-out, nothing else
    assert _eval_input_settings(EvalOutput(tmp_path, {}, "", {}, None)) == {}  # an old evaluation: defaults


def test_evaluate_keeps_vectors_of_each_readout_apart(tmp_path, tiny_model_dir):
    """A disc vector read at <disc_emb> must never be served for a run that reads the next token."""
    from umeflow.config import EvaluateConfig
    from umeflow.steps import evaluate

    root = tmp_path / "data"
    (root / "image-tasks").mkdir(parents=True)
    rows = [{"qry_inst": "", "qry_text": t, "qry_img_path": "", "tgt_inst": "", "tgt_text": ["red", "blue"],
             "tgt_img_path": ["", ""]} for t in ("a red thing", "a blue thing")]
    (root / "image-tasks" / "Words.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps([{"name": "Words", "modality": "image", "category": "I-CLS",
                                                  "file": "image-tasks/Words", "media_root": "image-tasks"}]))
    cache = tmp_path / "cache"
    runs = {}
    for readout in ("disc_emb", "next_token", "disc_emb"):
        cfg = EvaluateConfig(model=str(tiny_model_dir), data_root=str(root), tasks="Words", mode="disc",
                             out=str(tmp_path / f"out-{readout}-{len(runs)}"), cache_dir=str(cache),
                             disc_readout=readout)
        runs[(readout, len(runs))] = evaluate.run(cfg, log_to_mlflow=False)
    calls = [s["embedding_calls"] for s in runs.values()]
    assert calls[0] == 4 and calls[1] == 4  # the next-token run embeds everything again
    assert calls[2] == 0  # ... and the first read-out's vectors are still reused
    assert len({p.parent.parent.name for p in cache.glob("*/*/disc/part-*.npz")}) == 2
