"""The reasoning-trace cache (issue #15 item 2): generated texts keyed by model fingerprint, item content, sampling
settings and engine, shared across runs; a changed extraction costs prefills only; a killed or failed run resumes."""

from __future__ import annotations

import numpy as np
import pytest

from generation_server import GenerationServer, gate, sample_items
from umeflow.errors import UserError
from umeflow.evaluate.cache import EmbeddingCache, TraceCache
from umeflow.evaluate.runner import EmbeddingStore
from umeflow.model.backbone import load_backbone
from umeflow.model.embedder import Embedder
from umeflow.model.generation import OpenAIEngine, Trace


@pytest.fixture(scope="module")  # read-only in every test: loaded once
def gated(tiny_model_dir):
    e = Embedder(tiny_model_dir)
    gate(e.backbone)
    return e


def _store(embedder, root, engine=None, fingerprint="m", **kw):
    return EmbeddingStore(embedder, cache=EmbeddingCache(root / "emb", fingerprint, "px"),
                          traces=TraceCache(root, fingerprint, "px"), engine=engine, max_new_tokens=12,
                          batch_size=4, progress=False, **kw)


def test_a_changed_extraction_reuses_the_traces_and_costs_only_prefills(gated, tmp_path):
    items = sample_items()
    first = _store(gated, tmp_path)
    vectors, _ = first.embed(items, "gen")
    assert (first.generated, first.extracted) == (len(items), 0)  # hf: the states came with the generation
    # a new read-out (another embedding cache, e.g. after a GEN_READOUT_VERSION bump) in a new process
    second = EmbeddingStore(gated, cache=EmbeddingCache(tmp_path / "emb2", "m", "px"),
                            traces=TraceCache(tmp_path, "m", "px"), max_new_tokens=12, batch_size=4, progress=False)
    again, _ = second.embed(items + items[:3], "gen")  # duplicates are one item
    assert (second.generated, second.extracted) == (0, len(items))
    assert second.traces.loaded_from_disk == len(items)
    assert ((again[:len(items)] * vectors).sum(-1) >= 0.999).all()
    # another budget or another model generates afresh (another engine: the openai test below)
    other_budget = EmbeddingStore(gated, cache=EmbeddingCache(tmp_path / "emb3", "m", "px"),
                                  traces=TraceCache(tmp_path, "m", "px"), max_new_tokens=6, batch_size=4,
                                  progress=False)
    other_budget.embed(items[:2], "gen")
    other_model = _store(gated, tmp_path / "x", fingerprint="other")
    other_model.embed(items[:2], "gen")
    assert other_budget.generated == 2 and other_model.generated == 2


def test_a_damaged_trace_part_is_ignored_and_regenerated(gated, tmp_path, caplog):
    items = sample_items()[:3]
    _store(gated, tmp_path, chunk_size=1).embed(items, "gen")  # one part per item
    parts = sorted((tmp_path / "m" / "px" / "traces").rglob("part-*.jsonl"))
    assert len(parts) == 3
    parts[1].write_text('{"key": "abc", "text": 3}\n')
    again = _store(gated, tmp_path, chunk_size=1)
    again.cache = EmbeddingCache(None, "memory")  # the embeddings are gone: only the traces can help
    again.embed(items, "gen")
    assert again.generated == 1 and again.extracted == 2
    assert "ignoring unreadable trace cache part" in caplog.text


def test_openai_engine_traces_survive_a_failed_run_and_nothing_wrong_is_cached(gated, tiny_model_dir, tmp_path):
    items = sample_items()
    served = load_backbone(tiny_model_dir)
    gate(served)
    # 4 answers, then a 5xx storm longer than the retries
    server = GenerationServer(served.model, served.processor, script=[200] * 4 + [503] * 40)
    try:
        engine = OpenAIEngine(gated, server.url, "tiny", concurrency=1, max_retries=1, backoff_base=0.001)
        failing = _store(gated, tmp_path, engine=engine)
        with pytest.raises(UserError, match="failed 2 times; last error: HTTP 503"):
            failing.embed(items, "gen")
        kept = TraceCache(tmp_path, "m", "px")
        cached = {k: kept.get("openai-t12-greedy", k) for k in _keys(items)}
        assert sum(t is not None for t in cached.values()) == 4  # exactly the answered ones
        server.script.clear()
        resumed = _store(gated, tmp_path, engine=engine)
        before = len(server.requests)
        vectors, _ = resumed.embed(items, "gen")
        assert len(server.requests) - before == len(items) - 4 and resumed.generated == len(items) - 4
        # the traces that were cached are the server's answers: equal to a fresh in-process generation
        local = gated.encode(items, mode="gen", batch_size=4, max_new_tokens=12)
        assert ((vectors * local.embeddings).sum(-1) >= 0.999).all()
        assert TraceCache(tmp_path, "m", "px").get("hf-t12-greedy", _keys(items)[0]) is None  # per engine
    finally:
        server.close()


def test_trace_records_round_trip_and_foreign_records_are_refused():
    t = Trace("<think>x</think><gen_emb>", (1, 2, 3), finished=False)
    assert Trace.from_json(t.to_json()) == t
    assert Trace.from_json(Trace("a").to_json()) == Trace("a", None, True)
    for bad in ({"text": 1, "finished": True}, {"text": "a", "finished": "yes"}, {"text": "a", "finished": True,
                                                                                  "ids": ["1"]}):
        with pytest.raises(ValueError):
            Trace.from_json(bad)


def _keys(items):
    from umeflow.evaluate.cache import content_key

    return [content_key(it) for it in items]


def test_sampled_traces_are_cached_per_sample(gated, tmp_path):
    items = sample_items()[:3]
    store = _store(gated, tmp_path, temperature=1.0)
    first = store.embed_samples(items, 2)
    assert store.generated == 6
    again = _store(gated, tmp_path, temperature=1.0)
    again.cache = EmbeddingCache(None, "memory")
    second = again.embed_samples(items, 2)
    assert again.generated == 0 and again.extracted == 6
    assert np.allclose((first * second).sum(-1), 1.0, rtol=1e-3)
