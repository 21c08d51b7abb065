"""Embedder correctness against reference computations (issue #2 tests a, b, c) on the real-tokenizer tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from umeflow.model.chat import GENERATION_PROMPT
from umeflow.model.embedder import Embedder, gather_last, language_states
from umeflow.model.items import Item


def _items():
    red = Image.new("RGB", (84, 56), (200, 30, 30))
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 98, 3), dtype=np.uint8))
    return [
        Item("a shoe"),
        Item("What is shown here? A long question with many more words than the others so lengths differ a lot.",
             images=(red,)),
        Item("", images=(noise,)),
        Item("two images", images=(red, noise)),
        Item("a clip", video=tuple(Image.new("RGB", (56, 56), (i * 30, 0, 0)) for i in range(8))),
    ]


class _BiasedHead(torch.nn.Module):
    """Adds ``biases[token]`` to vocabulary logits, so a random model emits those tokens at varied steps when
    sampling."""

    def __init__(self, head, biases: dict[int, float]):
        super().__init__()
        self.head, self.biases = head, biases

    def forward(self, x):
        out = self.head(x)
        for token_id, bias in self.biases.items():
            out[..., token_id] += bias
        return out


@pytest.fixture
def embedder(tiny_model_dir):
    return Embedder(tiny_model_dir)


def _bias(e: Embedder, biases: dict[int, float]):
    e.model.lm_head = _BiasedHead(e.model.lm_head, biases)


def _bias_gen_emb(e: Embedder, bias: float):
    _bias(e, {e.backbone.gen_emb_id: bias})


def _reference_state(e: Embedder, item: Item, completion_ids: list[int], position_from_end: int) -> np.ndarray:
    """Teacher-forced forward over prompt + completion (one sequence, no padding): last-layer state at an index."""
    batch = e.batch([item])
    ids = torch.cat([batch["input_ids"], torch.tensor([completion_ids])], dim=1)
    batch["input_ids"] = ids
    batch["attention_mask"] = torch.ones_like(ids)
    batch["mm_token_type_ids"] = torch.cat(
        [batch["mm_token_type_ids"], torch.zeros(1, len(completion_ids), dtype=torch.long)], dim=1)
    with torch.no_grad():
        hs = e.model(**batch, output_hidden_states=True).hidden_states[-1]
    v = hs[0, ids.shape[1] - position_from_end]
    return torch.nn.functional.normalize(v, dim=-1).numpy()


def test_disc_equals_plain_forward_state_at_disc_token(embedder):
    items = _items()
    enc = embedder.encode(items, mode="disc", batch_size=4)  # batches of mixed lengths and media
    assert enc.embeddings.shape == (len(items), embedder.model.config.text_config.hidden_size)
    assert enc.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(enc.embeddings, axis=1), 1.0, atol=1e-5)
    for i, item in enumerate(items):
        batch = embedder.batch([item])
        with torch.no_grad():
            hs = embedder.model(**batch, output_hidden_states=True).hidden_states[-1]
        ids = batch["input_ids"][0].tolist()
        pos = len(ids) - 1 - ids[::-1].index(embedder.backbone.disc_emb_id)
        ref = torch.nn.functional.normalize(hs[0, pos], dim=-1).numpy()
        assert float(ref @ enc.embeddings[i]) >= 0.999, f"item {i}"


def test_gen_equals_teacher_forced_state_at_last_gen_emb(embedder):
    # <gen_emb> about 1 in 7 per step and <|im_end|> about 1 in 9: rows emit zero, one or several <gen_emb> and stop
    # at their own EOS at different lengths (or run to the budget), so a batch mixes every case
    im_end = embedder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    _bias(embedder, {embedder.backbone.gen_emb_id: math.log(152_000 / 6), im_end: math.log(152_000 / 8)})
    items = _items() * 2
    enc = embedder.encode(items, mode="gen", batch_size=5, max_new_tokens=24, do_sample=True, seed=3)
    gen_id = embedder.backbone.gen_emb_id
    ok = [i for i in range(len(items)) if not enc.fallback[i]]
    lengths = {len(enc.generated_ids[i]) for i in range(len(items))}
    ended_by_eos = [i for i in range(len(items)) if enc.generated_ids[i][-1] == im_end]
    assert len(ok) >= 4 and len(lengths) >= 3 and ended_by_eos, (enc.fallback, lengths)  # the test needs the mix
    assert any(enc.generated_ids[i].count(gen_id) >= 2 for i in ok)  # ... including a row with two <gen_emb>
    for i in range(len(items)):
        ids = enc.generated_ids[i]
        assert im_end not in ids[:-1]  # the row's own span: through its first EOS, no padding after it
        assert enc.texts[i] == embedder.tokenizer.decode([t for t in ids if t != im_end], skip_special_tokens=True)
    for i in ok:
        ids = enc.generated_ids[i]
        j = len(ids) - 1 - ids[::-1].index(gen_id)  # the last <gen_emb>
        assert j < len(ids) - 1  # it was fed (the row generated at least one more token)
        ref = _reference_state(embedder, items[i], ids[:j + 1], position_from_end=1)
        assert float(ref @ enc.embeddings[i]) >= 0.999, f"item {i}"
    for i in np.flatnonzero(enc.fallback):  # fallback = last fed token: the one before the final generated token
        ids = enc.generated_ids[i]
        assert gen_id not in ids[:-1]
        ref = _reference_state(embedder, items[i], ids, position_from_end=2)
        assert float(ref @ enc.embeddings[i]) >= 0.999, f"fallback item {i}"


def test_prompt_gen_emb_is_never_taken(embedder):
    assert "<gen_emb>" in GENERATION_PROMPT
    _bias_gen_emb(embedder, -1e4)  # the model can never emit <gen_emb>
    items = _items()[:3]
    enc = embedder.encode(items, mode="gen", batch_size=3, max_new_tokens=6)
    assert enc.fallback.all() and enc.stats["fallback_count"] == 3
    for i, item in enumerate(items):
        batch = embedder.batch([item])
        with torch.no_grad():
            hs = language_states(embedder.model, batch)
        at_prompt = torch.nn.functional.normalize(
            gather_last(hs, batch["input_ids"], embedder.backbone.gen_emb_id)[0], dim=-1).numpy()
        assert float(at_prompt @ enc.embeddings[i]) < 0.99
        assert all(t != embedder.backbone.gen_emb_id for t in enc.generated_ids[i])


def test_gen_also_returns_the_disc_embedding_and_samples(embedder):
    items = _items()[:3]
    disc = embedder.encode(items, mode="disc")
    enc = embedder.encode(items, mode="gen", max_new_tokens=4, do_sample=True, num_samples=2, seed=0)
    np.testing.assert_allclose(enc.disc_embeddings, disc.embeddings, atol=1e-5)
    assert enc.embeddings.shape == (3, 2, disc.embeddings.shape[1])
    assert len(enc.texts) == 3 and all(len(t) == 2 for t in enc.texts)


def test_bad_arguments_and_missing_media_are_clear(embedder, tmp_path):
    from umeflow.errors import UserError

    with pytest.raises(UserError, match="mode"):
        embedder.encode([Item("x")], mode="both")
    with pytest.raises(UserError, match="do_sample"):
        embedder.encode([Item("x")], mode="gen", num_samples=2)
    with pytest.raises(UserError, match="missing.png"):
        embedder.encode([Item("x", images=(tmp_path / "missing.png",))])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="bad.png"):
        embedder.encode([Item("x", images=(tmp_path / "bad.png",))])


def test_the_image_processor_is_the_pil_one_even_where_autoprocessor_picks_torchvision(tiny_model_dir, monkeypatch):
    # In the GPU image torchvision is installed and AutoProcessor returns transformers' torchvision image processor;
    # umeflow feeds the PIL one everywhere (same pixels on CPU and GPU), built from the checkpoint's own config.
    import copy

    from transformers import AutoProcessor, Qwen2VLImageProcessorPil

    from umeflow.model.backbone import FAMILIES, load_processor

    here = load_processor(tiny_model_dir, FAMILIES["qwen2_vl"])  # no torchvision here: the no-video fallback
    assert type(here.image_processor) is Qwen2VLImageProcessorPil

    class TorchvisionImageProcessor:  # stands in for the torchvision backend (not installable here)
        pass

    gpu_like = copy.deepcopy(here)
    gpu_like.image_processor = TorchvisionImageProcessor()
    monkeypatch.setattr(AutoProcessor, "from_pretrained", classmethod(lambda cls, *a, **k: gpu_like))
    proc = load_processor(tiny_model_dir, FAMILIES["qwen2_vl"])
    assert proc is gpu_like and type(proc.image_processor) is Qwen2VLImageProcessorPil
    ip = proc.image_processor
    # the checkpoint's config, not the class defaults (the tiny checkpoint caps images at 12,544 pixels)
    assert (ip.size["shortest_edge"], ip.size["longest_edge"], ip.patch_size, ip.merge_size) == (3136, 12544, 14, 2)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 130, 3), dtype=np.uint8))
    ours, ref = ip(images=[image], return_tensors="pt"), here.image_processor(images=[image], return_tensors="pt")
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])
    assert ours["image_grid_thw"].tolist() == ref["image_grid_thw"].tolist()
