"""umeflow's decode loop (issue #15 item 3): finished rows leave the batch, batches are bucketed by prompt length, and
the result equals transformers' ``generate`` + the last-state hook (``Embedder(decode_loop=False)``) token for token.

UME-R1 generates with plain ``model.generate(**inputs, max_new_tokens=...)`` (src/eval/VLM2Vec/eval_twomode.py:122
@08891de) and reads ``hidden_states[j+1][-1]`` (eval_twomode.py:133); umeflow's loop must give the same tokens and
the same states, only without computing rows that already ended.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generation_server import gate, sample_items
from umeflow.errors import UserError
from umeflow.model.decode import length_buckets, prompt_lengths, unsupported_settings
from umeflow.model.embedder import Embedder
from umeflow.model.inputs import build_batch
from umeflow.model.items import Item
from umeflow.model.vision import VisionSizing


def _cos(a, b):
    return (a * b).sum(-1)


def _pair(path, **gate_kw):
    """The same gated checkpoint twice: umeflow's loop and ``generate`` (separate copies, equal weights)."""
    loop, hf = Embedder(path), Embedder(path, decode_loop=False)
    gate(loop.backbone, **gate_kw)
    gate(hf.backbone, **gate_kw)
    return loop, hf


@pytest.fixture(scope="module")
def pair(tiny_model_dir):
    return _pair(tiny_model_dir)


class _BatchSizes:
    """Rows of every forward call of the language model's input embedding (prefill and each decoding step)."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.handle = model.get_input_embeddings().register_forward_hook(
            lambda m, args, out: self.sizes.append(args[0].shape[0]))


def test_the_loop_equals_generate_on_early_eos_budget_and_media_rows(pair):
    loop, hf = pair
    items = sample_items()  # text-only rows (the blank image), one image, an image without text, two images
    assert unsupported_settings(loop.model, do_sample=False) == []
    counter = _BatchSizes(loop.model)
    try:
        got = loop.encode(items, mode="gen", batch_size=len(items), max_new_tokens=12, progress=False)
    finally:
        counter.handle.remove()
    ref = hf.encode(items, mode="gen", batch_size=len(items), max_new_tokens=12, progress=False)
    lengths = [len(ids) for ids in got.generated_ids]
    # the batch mixes every kind of row: <gen_emb> then EOS, EOS without <gen_emb>, rows cut by the budget
    assert {(bool(f), t.finished) for f, t in zip(got.fallback, got.traces)} >= {(False, True), (True, True)}
    assert any(not t.finished for t in got.traces) and len(set(lengths)) >= 3, lengths
    assert got.generated_ids == ref.generated_ids and got.texts == ref.texts
    np.testing.assert_array_equal(got.fallback, ref.fallback)
    assert _cos(got.embeddings, ref.embeddings).min() >= 0.999
    assert _cos(got.disc_embeddings, ref.disc_embeddings).min() >= 0.999
    # ... and the teacher-forced prefill over prompt + trace reads the same states
    forced = loop.extract(items, got.traces, batch_size=len(items))
    assert _cos(forced.embeddings, got.embeddings).min() >= 0.999
    # a finished row's compute stops: each row is in exactly len(own ids) forward calls (the prefill and one call
    # per fed token), where generate runs every row for as many steps as the longest row
    assert counter.sizes[0] == len(items) and sum(counter.sizes) == sum(lengths)
    assert counter.sizes == sorted(counter.sizes, reverse=True) and counter.sizes[-1] < len(items)
    assert len(counter.sizes) == max(lengths)


def test_buckets_return_results_in_the_items_order(pair):
    loop, _ = pair
    items = sample_items()
    whole = loop.encode(items, mode="gen", batch_size=len(items), max_new_tokens=12, progress=False)
    lengths = prompt_lengths(loop.processor, items, loop.sizing)
    buckets = length_buckets(lengths, 3)
    assert sorted(i for b in buckets for i in b) == list(range(len(items)))
    assert buckets != [list(range(s, min(s + 3, len(items)))) for s in range(0, len(items), 3)]  # reordered
    widths = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in buckets]
    assert max(widths) < max(lengths) - min(lengths)
    small = loop.encode(items, mode="gen", batch_size=3, max_new_tokens=12, progress=False)
    assert small.generated_ids == whole.generated_ids and small.texts == whole.texts
    np.testing.assert_array_equal(small.fallback, whole.fallback)
    assert _cos(small.embeddings, whole.embeddings).min() >= 0.999
    assert _cos(small.disc_embeddings, whole.disc_embeddings).min() >= 0.999


@pytest.mark.parametrize("sizing", [VisionSizing(), VisionSizing(min_pixels=784, max_pixels=20_000,
                                                                   qwen_vl_utils_resize=True)])
def test_prompt_length_is_the_built_row_length(pair, sizing, tmp_path):
    loop, _ = pair
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 90), (1, 2, 3)).save(path)
    clip = tuple(Image.new("RGB", (70, 56), (i * 20, 0, 0)) for i in range(5))  # odd frame count: padded to 6
    items = [*sample_items(), Item("a file", images=(path,)), Item("a clip", video=clip)]
    for item, length in zip(items, prompt_lengths(loop.processor, items, sizing), strict=True):
        built = build_batch(loop.processor, [item], None, loop.backbone.family.name, sizing)
        assert length == int(built["attention_mask"].sum()), item.text


def test_sampling_is_seeded_and_follows_the_temperature(pair):
    loop, _ = pair
    items = sample_items()[:4]
    kw = dict(mode="gen", batch_size=4, max_new_tokens=6, do_sample=True, progress=False)
    a = loop.encode(items, seed=5, temperature=50.0, **kw)
    b = loop.encode(items, seed=5, temperature=50.0, **kw)
    c = loop.encode(items, seed=6, temperature=50.0, **kw)
    assert a.generated_ids == b.generated_ids and _cos(a.embeddings, b.embeddings).min() >= 0.999
    assert a.generated_ids != c.generated_ids  # a hot temperature over the tiny vocabulary: other draws
    greedy = loop.encode(items, mode="gen", batch_size=4, max_new_tokens=6, progress=False)
    cold = loop.encode(items, seed=5, temperature=1e-4, **kw)  # nearly greedy
    assert cold.generated_ids == greedy.generated_ids
    with pytest.raises(UserError, match="temperature > 0"):
        loop.encode(items, seed=5, temperature=0.0, **kw)


def test_repetition_penalty_is_applied_as_generate_does(tiny_model_dir):
    # the checkpoint's generation_config.repetition_penalty applies in generate (umeflow passes only top_k/top_p
    # None and the temperature); the loop applies it over the same padded prompt + generated ids
    loop, hf = _pair(tiny_model_dir, gen_gate=1e9, eos_gate=1e9)  # neither <gen_emb> nor EOS: budget rows
    for e in (loop, hf):
        e.model.generation_config.repetition_penalty = 50.0
    items = sample_items()[:3]
    got = loop.encode(items, mode="gen", batch_size=3, max_new_tokens=8, progress=False)
    ref = hf.encode(items, mode="gen", batch_size=3, max_new_tokens=8, progress=False)
    assert got.generated_ids == ref.generated_ids
    assert all(len(set(ids)) == len(ids) for ids in got.generated_ids)  # a penalty of 50 forbids repeats here
    assert _cos(got.embeddings, ref.embeddings).min() >= 0.999


def test_other_logits_processing_keeps_generate(tiny_model_dir, caplog):
    loop, hf = _pair(tiny_model_dir)
    for e in (loop, hf):
        e.model.generation_config.no_repeat_ngram_size = 2
    assert unsupported_settings(loop.model, do_sample=False) == ["generation_config.no_repeat_ngram_size=2"]
    items = sample_items()[:3]
    counter = _BatchSizes(loop.model)
    try:
        with caplog.at_level("WARNING"):
            got = loop.encode(items, mode="gen", batch_size=3, max_new_tokens=8, progress=False)
    finally:
        counter.handle.remove()
    assert "no_repeat_ngram_size=2" in caplog.text
    assert set(counter.sizes) == {3}  # generate: every row in every step
    ref = hf.encode(items, mode="gen", batch_size=3, max_new_tokens=8, progress=False)
    assert got.generated_ids == ref.generated_ids


# gate thresholds near the 80th–90th percentile of each tiny random model's two gated features, so that rows emit
# <gen_emb> and EOS at different steps
FAMILY_GATES = {"qwen2_5_vl": {"gen_gate": -0.66, "eos_gate": -0.81}, "qwen3_vl": {"gen_gate": -0.06, "eos_gate": -1.19}}


@pytest.fixture(scope="module", params=sorted(FAMILY_GATES))
def family(request, assets_dir, tmp_path_factory) -> tuple[Path, dict]:
    from umeflow.config import ModelInitConfig
    from umeflow.model.tiny import init_tiny

    out = tmp_path_factory.mktemp("decode") / request.param
    path = Path(init_tiny(ModelInitConfig(out=str(out), assets_dir=str(assets_dir), family=request.param)))
    return path, FAMILY_GATES[request.param]


def test_the_loop_equals_generate_for_the_other_families(family):
    # Qwen2.5-VL and Qwen3-VL keep rope_deltas on the model like Qwen2-VL and build the same [4, B, L] positions in
    # generate; the loop passes explicit positions at every step, so the remaining rows keep their own deltas
    path, gates = family
    loop, hf = _pair(path, **gates)
    items = sample_items()
    got = loop.encode(items, mode="gen", batch_size=len(items), max_new_tokens=10, progress=False)
    ref = hf.encode(items, mode="gen", batch_size=len(items), max_new_tokens=10, progress=False)
    assert got.generated_ids == ref.generated_ids
    assert len({len(ids) for ids in got.generated_ids}) >= 2  # rows left the batch at different steps
    np.testing.assert_array_equal(got.fallback, ref.fallback)
    assert _cos(got.embeddings, ref.embeddings).min() >= 0.999
    assert math.isclose(float(_cos(got.disc_embeddings, ref.disc_embeddings).min()), 1.0, rel_tol=1e-3)
