"""Backbone loading, UME-R1 token rules, tokenizer parity and our batch assembly vs the stock processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from umeflow.config import ModelInitConfig
from umeflow.model.backbone import load_backbone
from umeflow.model.chat import DISC_EMB, GEN_EMB, GENERATION_PROMPT, build_messages, render_prompt
from umeflow.model.inputs import build_batch, patchify_frames
from umeflow.model.items import Item
from umeflow.model.tiny import build_qwen_tokenizer, init_tiny


def test_tiny_checkpoint_has_umer1_tokens(tiny_model_dir):
    bb = load_backbone(tiny_model_dir)
    tok = bb.tokenizer
    assert (bb.gen_emb_id, bb.disc_emb_id) == (151657, 151658)  # UME-R1's hard-coded ids with Qwen2-VL's tokenizer
    assert GEN_EMB not in tok.all_special_tokens and DISC_EMB not in tok.all_special_tokens
    # ordinary tokens survive skip_special_tokens decoding (the format reward depends on it)
    ids = tok("<think>a</think><answer>b<gen_emb>", add_special_tokens=False)["input_ids"]
    assert bb.gen_emb_id in ids
    assert tok.decode(ids, skip_special_tokens=True).endswith("<gen_emb>")
    assert tok.padding_side == "left"
    assert list(tiny_model_dir.glob("*.safetensors")) and not list(tiny_model_dir.glob("*.bin"))


def test_new_rows_initialised_from_object_ref_tokens(assets_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    out = init_tiny(ModelInitConfig(out=str(tmp_path / "m"), assets_dir=str(assets_dir), seed=1))
    model = AutoModelForImageTextToText.from_pretrained(out)
    tok = build_qwen_tokenizer(assets_dir)
    emb = model.get_input_embeddings().weight
    for new, src in ((GEN_EMB, "<|object_ref_end|>"), (DISC_EMB, "<|object_ref_start|>")):
        new_id = 151657 if new == GEN_EMB else 151658
        assert torch.equal(emb[new_id], emb[tok.convert_tokens_to_ids(src)])
    assert emb.shape[0] == 151936  # no resize: Qwen2-VL's table has spare rows


def test_tokenizer_matches_qwen2_vl_reference_ids(assets_dir):
    # Expected ids from transformers' Qwen2-VL processor test (system prompt, user turn with two image pads).
    tok = build_qwen_tokenizer(assets_dir)
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|image_pad|><|vision_end|>")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652,
                   151655, 151655, 151653]
    assert len(tok) == 151657


def test_batch_matches_the_stock_processor_for_images(tiny_model_dir):
    bb = load_backbone(tiny_model_dir)
    proc = bb.processor
    items = [Item("hello", images=(Image.new("RGB", (90, 60), (0, 100, 0)),)), Item("text only, longer prompt")]
    ours = build_batch(proc, items)
    texts, images = [], []
    for it in items:
        messages, imgs, _ = build_messages(it)
        texts.append(render_prompt(proc, messages))
        images.extend(imgs)
    ref = proc(text=texts, images=images, return_tensors="pt", padding=True)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(ours[key], ref[key]) if key != "pixel_values" else torch.allclose(ours[key], ref[key])
    assert (ours["attention_mask"][:, 0] == 0).any()  # left padding


def test_video_patches_match_image_processor_on_a_still_clip(tiny_model_dir):
    # A clip of two identical frames is what the image processor builds for one image (temporal patch 2).
    ip = load_backbone(tiny_model_dir).processor.image_processor
    frame = Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    pv, thw = patchify_frames([frame, frame], ip)
    ref = ip(images=[frame], return_tensors="pt")
    assert torch.equal(thw, ref["image_grid_thw"])
    assert torch.allclose(pv, ref["pixel_values"], atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_other_families_load_with_their_init_tokens(assets_dir, tmp_path, family):
    out = init_tiny(ModelInitConfig(out=str(tmp_path / family), assets_dir=str(assets_dir), family=family))
    bb = load_backbone(out)
    assert bb.family.name == family
    expected = {"qwen2_5_vl": (151665, 151666), "qwen3_vl": (151669, 151670)}[family]
    assert (bb.gen_emb_id, bb.disc_emb_id) == expected
    from umeflow.model.embedder import Embedder

    enc = Embedder(bb).encode([Item("x"), Item("y", images=(Image.new("RGB", (64, 64)),))], mode="disc")
    assert enc.embeddings.shape[0] == 2 and np.isfinite(enc.embeddings).all()


def test_chat_template_renders_the_official_qwen2_vl_layout(tiny_model_dir):
    proc = load_backbone(tiny_model_dir).processor
    messages, _, _ = build_messages(Item("hi"))
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|><|image_pad|><|vision_end|>hi\n<disc_emb>\n" + GENERATION_PROMPT +
                "<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(proc, messages) == expected


def test_compact_tokenizer_variant(assets_dir, tmp_path):
    out = init_tiny(ModelInitConfig(out=str(tmp_path / "c"), assets_dir=str(assets_dir), tokenizer="compact"))
    bb = load_backbone(out)
    tok = bb.tokenizer
    assert len(tok) < 5000 and bb.model.get_input_embeddings().weight.shape[0] % 64 == 0
    assert GEN_EMB not in tok.all_special_tokens and tok.padding_side == "left"
    for new, src in ((bb.gen_emb_id, "<|object_ref_end|>"), (bb.disc_emb_id, "<|object_ref_start|>")):
        emb = bb.model.get_input_embeddings().weight
        assert torch.equal(emb[new], emb[tok.convert_tokens_to_ids(src)])
    ids = tok("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a shoe<disc_emb>")["input_ids"]
    assert tok.convert_tokens_to_ids("<|image_pad|>") in ids and bb.disc_emb_id in ids
