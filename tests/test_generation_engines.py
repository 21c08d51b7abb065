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


@pytest.fixture(scope="module")  # read-only in every test: loaded once
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


@pytest.fixture(scope="module")
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


class _FakeVLLM:
    """Stands in for the ``vllm`` module (not installable here; mocked): ``LLM.generate`` takes vLLM's prompt dicts
    (the rendered prompt with one ``<|image_pad|>`` per image, the images as multi-modal data, the pixel limits as
    ``mm_processor_kwargs``) and, as vLLM does, expands the placeholders with the checkpoint's processor before
    generating greedily with the served copy of the weights."""

    def __init__(self, backbone):
        self.backbone, self.calls = backbone, []
        fake = self

        class SamplingParams:
            def __init__(self, **kw):
                self.kw = kw

        class LLM:
            def __init__(self, **kw):
                fake.llm_kwargs = kw

            def generate(self, prompts, params, use_tqdm=True):
                fake.calls.append((prompts, params.kw))
                return [fake._one(p, params.kw) for p in prompts]

        self.SamplingParams, self.LLM = SamplingParams, LLM

    def _one(self, prompt, kw):
        from types import SimpleNamespace

        proc = self.backbone.processor
        limits = prompt["mm_processor_kwargs"]
        images = prompt["multi_modal_data"].get("image")
        inputs = proc(text=[prompt["prompt"]], images=images, return_tensors="pt",
                      **({"images_kwargs": {"size": {"shortest_edge": limits["min_pixels"],
                                                     "longest_edge": limits["max_pixels"]}}} if images else {}))
        with torch.no_grad():
            out = self.backbone.model.generate(**inputs, max_new_tokens=kw["max_tokens"], do_sample=False, top_p=None,
                                               top_k=None, temperature=None, eos_token_id=kw["stop_token_ids"],
                                               pad_token_id=proc.tokenizer.pad_token_id)
        ids = out[0, inputs["input_ids"].shape[1]:].tolist()
        finished = bool(ids) and ids[-1] in kw["stop_token_ids"]
        text = proc.tokenizer.decode(ids, skip_special_tokens=True)
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=text,
                                                        finish_reason="stop" if finished else "length")])


def test_vllm_engine_mocked_feeds_our_prompt_and_pixels_and_equals_in_process(gated, server_backbone, tiny_model_dir,
                                                                             monkeypatch):
    import sys

    from umeflow.model.generation import VLLMEngine

    fake = _FakeVLLM(server_backbone)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    engine = VLLMEngine(gated, str(tiny_model_dir), gpu_memory_utilization=0.3)
    assert fake.llm_kwargs["model"] == str(tiny_model_dir) and fake.llm_kwargs["trust_remote_code"] is False
    items = _items()
    remote = gated.encode(items, mode="gen", batch_size=4, max_new_tokens=12, engine=engine)
    local = gated.encode(items, mode="gen", batch_size=4, max_new_tokens=12)
    prompts, params = fake.calls[0]
    assert len(prompts) == len(items) and params["temperature"] == 0.0 and params["max_tokens"] == 12
    assert [t.token_ids for t in remote.traces] == [t.token_ids for t in local.traces]
    np.testing.assert_array_equal(remote.fallback, local.fallback)
    assert _cos(remote.embeddings, local.embeddings).min() >= 0.999


def test_vllm_engine_without_vllm_names_the_image(gated, monkeypatch):
    import sys

    from umeflow.model.generation import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(UserError, match=r"needs vLLM, which is in the GPU image \(images/train.Dockerfile"):
        VLLMEngine(gated, "m")
