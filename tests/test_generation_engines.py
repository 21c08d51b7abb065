"""Generation apart from extraction (issue #15 item 1): the teacher-forced extraction equals the in-generation hook
path, and the ``openai`` engine against an OpenAI-compatible server on 127.0.0.1 serving the tiny model greedily
equals the in-process engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from generation_server import GenerationServer, gate as _gate, sample_items as _items
from umeflow.errors import UserError
from umeflow.model.backbone import load_backbone
from umeflow.model.embedder import Embedder
from umeflow.model.generation import OpenAIEngine, Sampling, Trace
from umeflow.model.items import Item


def _cos(a, b):
    return (a * b).sum(-1)


@pytest.fixture
def gated(tiny_model_dir):
    e = Embedder(tiny_model_dir)
    _gate(e.backbone)
    return e


def test_extraction_equals_the_hook_path_on_every_kind_of_row(gated):
    items = _items()
    hook = gated.encode(items, mode="gen", batch_size=4, max_new_tokens=12)
    kinds = {("fallback" if f else "gen_emb", t.finished) for f, t in zip(hook.fallback, hook.traces)}
    assert {("gen_emb", True), ("fallback", True)} <= kinds and any(not t.finished for t in hook.traces), kinds
    extracted = gated.extract(items, hook.traces, batch_size=3)  # other batches: other padding
    np.testing.assert_array_equal(extracted.fallback, hook.fallback)
    assert _cos(extracted.embeddings, hook.embeddings).min() >= 0.999
    assert _cos(extracted.disc_embeddings, hook.disc_embeddings).min() >= 0.999
    # the same traces as text only (no ids): tokenized again, the same prefill where the text round-trips
    as_text = [Trace(t.text, None, t.finished) for t in hook.traces]
    again = gated.extract(items, as_text, batch_size=4)
    same = [i for i, t in enumerate(hook.traces) if gated.tokenizer(t.text, add_special_tokens=False)["input_ids"]
            == list(t.token_ids)]
    assert same and _cos(again.embeddings[same], hook.embeddings[same]).min() >= 0.999


def test_a_gen_emb_that_was_never_fed_falls_back_like_the_hook_path(gated):
    item = _items()[0]
    gen, other = gated.backbone.gen_emb_id, gated.tokenizer.convert_tokens_to_ids("hello")
    # budget ran out right at <gen_emb>: its state was never computed, so the last fed token is read (flagged)
    cut = gated.extract([item, item], [Trace("", (other, gen, other, gen), finished=False),
                                       Trace("", (other, gen, other), finished=True)])
    assert cut.fallback.tolist() == [True, False]
    assert _cos(cut.embeddings[0], cut.embeddings[1]) < 0.999  # fallback at the 3rd token, not the 2nd <gen_emb>


@pytest.fixture
def server_backbone(tiny_model_dir):
    backbone = load_backbone(tiny_model_dir)  # its own copy of the weights, as a server process has
    _gate(backbone)
    return backbone


def test_openai_engine_equals_the_in_process_engine(gated, server_backbone):
    items = _items()
    server = GenerationServer(server_backbone.model, server_backbone.processor)
    try:
        engine = OpenAIEngine(gated, server.url, "tiny", concurrency=3)
        remote = gated.encode(items, mode="gen", batch_size=4, max_new_tokens=12, engine=engine)
        local = gated.encode(items, mode="gen", batch_size=4, max_new_tokens=12)
        # the server saw our prompt token for token (it rendered the same messages with the checkpoint's template)
        for i, item in enumerate(items):
            ours = gated.batch([item])["input_ids"][0].tolist()
            assert engine.prompt_token_ids[i] == ours, f"item {i}"
        assert len(server.requests) == len(items)
        assert all(r["messages"][0]["content"][0]["type"] == "image_url" for r in server.requests)  # blank image too
    finally:
        server.close()
    assert [t.token_ids for t in remote.traces] == [t.token_ids for t in local.traces]
    np.testing.assert_array_equal(remote.fallback, local.fallback)
    assert remote.fallback.any() and not remote.fallback.all()
    assert _cos(remote.embeddings, local.embeddings).min() >= 0.999


def test_a_server_without_gen_emb_falls_back_and_is_flagged_as_in_process(tiny_model_dir):
    e, server_backbone = Embedder(tiny_model_dir), load_backbone(tiny_model_dir)
    _gate(e.backbone, gen_gate=1e9)  # neither model can emit <gen_emb>
    _gate(server_backbone, gen_gate=1e9)
    items = _items()[:5]
    server = GenerationServer(server_backbone.model, server_backbone.processor, drop_ids=True)  # text only
    try:
        remote = e.encode(items, mode="gen", batch_size=5, max_new_tokens=8,
                          engine=OpenAIEngine(e, server.url, "tiny"))
    finally:
        server.close()
    local = e.encode(items, mode="gen", batch_size=5, max_new_tokens=8)
    assert remote.fallback.all() and local.fallback.all()
    assert all(t.token_ids is None for t in remote.traces)
    same = [i for i, (r, l) in enumerate(zip(remote.traces, local.traces))
            if e.tokenizer(r.text, add_special_tokens=False)["input_ids"] == list(l.token_ids)]
    assert same and _cos(remote.embeddings[same], local.embeddings[same]).min() >= 0.999


def test_a_5xx_storm_fails_with_a_clear_error(gated, server_backbone):
    server = GenerationServer(server_backbone.model, server_backbone.processor, script=[503] * 50)
    try:
        engine = OpenAIEngine(gated, server.url, "tiny", concurrency=2, max_retries=2, backoff_base=0.001)
        got = []
        with pytest.raises(UserError, match=r"gen-mode item \d: .* failed 3 times; last error: HTTP 503"):
            engine.generate(_items()[:4], Sampling(8), on_trace=lambda i, t: got.append(i))
        assert got == []  # nothing was handed over to be cached
        assert len(server.requests) <= 2 * 3 + 2  # the first failure stopped new requests (2 in flight at most)
    finally:
        server.close()


def test_the_openai_engine_refuses_video_items_before_any_request(gated):
    clip = Item("a clip", video=tuple(Image.new("RGB", (56, 56), (i * 30, 0, 0)) for i in range(4)))
    engine = OpenAIEngine(gated, "http://127.0.0.1:9/v1", "tiny")
    with pytest.raises(UserError, match="video items need the hf or vllm generation engine"):
        engine.generate([_items()[0], clip], Sampling(8))
    assert engine.client.stats["calls"] == 0
