"""Parity of the model's inputs with UME-R1's code (issue #13 §3): pixels, transparency, prompts, format reward.

Every case states the reference's behaviour as a fact, with the reference file:line (UME-R1 code = the lume repo at
commit 08891de; "qwen_vl_utils" = the copy UME-R1 vendors at src/eval/VLM2Vec/src/model/vlm_backbone/qwen2_vl/
qwen_vl_utils.py, the same functions as the pip package its eval imports). Expected token counts are worked out by
hand in the comments, not with our code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from umeflow.config import EmbedConfig, EvaluateConfig, GRPOConfig, SFTConfig, load_config
from umeflow.data.sources import fit_on_white
from umeflow.errors import RecordError, UserError
from umeflow.evaluate.cache import EmbeddingCache
from umeflow.model.backbone import load_backbone
from umeflow.model.chat import GENERATION_PROMPT, rl_user_text, user_text
from umeflow.model.inputs import IMAGE_PAD, VIDEO_PAD, build_batch, open_image
from umeflow.model.items import Item
from umeflow.model.vision import VisionSizing, fit_to_grid, to_rgb_on_white
from umeflow.train.grpo_data import RLPair, RLSide, prompt_dataset
from umeflow.train.rewards import ume_format_reward
from umeflow.train.sft_data import SFTCollator, load_sft_pairs

# UME-R1 eval: README.md:530-531 passes --resize_max_pixels 2359296 --resize_min_pixels 784; processor.py:125-134
# builds the Qwen2-VL image processor with size={"shortest_edge": 784, "longest_edge": 2359296}, and the vendored
# image_processing_qwen2_vl.py:150-161 keeps that size over the checkpoint's min_pixels/max_pixels. Before it,
# eval_collator.py:324 runs qwen_vl_utils.process_vision_info, whose fetch_image (qwen_vl_utils:128-138) resizes with
# its own MIN_PIXELS/MAX_PIXELS = 4·28·28 / 16384·28·28 (qwen_vl_utils:26-27): the messages carry no limits.
UME_EVAL = VisionSizing(min_pixels=784, max_pixels=2359296, qwen_vl_utils_resize=True)
# UME-R1 SFT: README.md:369-370 (--max_pixels 2359296 --min_pixels 768), data_qwen.py:196-199 sets them on the image
# processor; frames: argument.py:32-33 (video_max_frame_pixels 32·28·28, video_min_frame_pixels 4·28·28), applied
# per clip in data_qwen.py:255-264.
UME_SFT = VisionSizing(min_pixels=768, max_pixels=2359296, video_min_frame_pixels=4 * 28 * 28,
                       video_max_frame_pixels=32 * 28 * 28)
# Qwen2-VL-2B-Instruct's preprocessor_config.json limits (what umeflow used before: the checkpoint's own).
QWEN2_VL_CHECKPOINT = VisionSizing(min_pixels=3136, max_pixels=12845056)


@pytest.fixture(scope="module")
def backbone(tiny_model_dir):
    return load_backbone(tiny_model_dir)


def _image_tokens(backbone, image, sizing) -> int:
    batch = build_batch(backbone.processor, [Item("x", images=(image,))], sizing=sizing)
    return int((batch["input_ids"] == backbone.tokenizer.convert_tokens_to_ids(IMAGE_PAD)).sum())


def _video_tokens(backbone, frames, sizing) -> int:
    batch = build_batch(backbone.processor, [Item("x", video=tuple(frames))], sizing=sizing)
    return int((batch["input_ids"] == backbone.tokenizer.convert_tokens_to_ids(VIDEO_PAD)).sum())


# ------------------------------------------------------------------------------------------------ image sizing

def test_blank_28px_image_is_4_tokens_at_eval(backbone):
    # eval_collator.py:282-294: a text-only side gets a 28×28 white image. fetch_image (qwen_vl_utils:81-84): 28·28 =
    # 784 < 3,136 → β = √(3136/784) = 2 → 56×56; the processor keeps 56×56 (inside 784 … 2,359,296) →
    # (56/14)² = 16 patches / merge 2² = 4 tokens.
    blank = Image.new("RGB", (28, 28), (255, 255, 255))
    assert _image_tokens(backbone, blank, UME_EVAL) == 4
    # without the fetch_image resize the processor alone keeps 28×28: (28/14)²/4 = 1 token
    assert _image_tokens(backbone, blank, VisionSizing(min_pixels=784, max_pixels=2359296)) == 1


@pytest.mark.parametrize("width, height, ume, processor_only, checkpoint", [
    # A4 at 200 dpi (the page). fetch_image: 2339/28 = 83.54 → 84·28 = 2352, 1654/28 = 59.07 → 59·28 = 1652;
    # 2352·1652 = 3,885,504 ≤ 12,845,056 → 2352×1652. Processor: > 2,359,296 → β = √(3885504/2359296) = 1.28332;
    # 2352/β/28 = 65.45 → 65, 1652/β/28 = 45.97 → 45 → 65·45 = 2,925 tokens.
    # Processor alone on the original: β = √(1654·2339/2359296) = 1.28054; 2339/β/28 = 65.23 → 65,
    # 1654/β/28 = 46.13 → 46 → 2,990. Checkpoint limits (≤ 12,845,056): 84·59 = 4,956.
    (1654, 2339, 2925, 2990, 4956),
    # A4 at 300 dpi. fetch_image: 3508/28 = 125.29 → 3500, 2480/28 = 88.57 → 2492; 8,722,000 ≤ 12,845,056.
    # Processor: β = √(8722000/2359296) = 1.92272; 3500/β/28 = 65.01 → 65, 2492/β/28 = 46.29 → 46 → 2,990.
    # Checkpoint limits: 125·89 = 11,125.
    (2480, 3508, 2990, 2990, 11125),
])
def test_a4_page_tokens_follow_the_two_resizes_in_order(backbone, width, height, ume, processor_only, checkpoint):
    page = Image.new("RGB", (width, height), (250, 250, 250))
    assert _image_tokens(backbone, page, UME_EVAL) == ume
    assert _image_tokens(backbone, page, VisionSizing(min_pixels=784, max_pixels=2359296)) == processor_only
    assert _image_tokens(backbone, page, QWEN2_VL_CHECKPOINT) == checkpoint


def test_fit_to_grid_rounds_like_smart_resize():
    # qwen_vl_utils:75-84: sides rounded with Python's round (ties to even), at least one factor; floor when shrinking,
    # ceil when growing. 70/28 = 2.5 → 2 (ties to even) → 56; 98/28 = 3.5 → 4 → 112.
    assert fit_to_grid(70, 98, 28, 3136, 12845056) == (56, 112)
    assert fit_to_grid(28, 28, 28, 3136, 12845056) == (56, 56)
    assert fit_to_grid(10, 100, 28, 3136, 12845056) == (28, 112)  # max(28, round(10/28)·28) = 28; 28·112 = 3136
    # qwen_vl_utils:71-74: an aspect ratio above 200 is refused
    with pytest.raises(UserError, match="aspect ratio"):
        fit_to_grid(10, 2100, 28, 3136, 12845056)


def test_video_frames_are_sized_like_images_at_eval_and_capped_in_sft(backbone):
    # eval_collator.py:246-253 passes the frame paths as one video item; fetch_video (qwen_vl_utils:318-328) runs
    # fetch_image on every frame; the processor sizes the frames with the same 784 … 2,359,296 (vendored
    # image_processing_qwen2_vl.py:515-530, size=self.size). 640×360: 360/28 = 12.86 → 364, 640/28 = 22.86 → 644 →
    # 26·46 patches / 4 = 299 tokens per 2 frames; 8 frames → 4 · 299 = 1,196.
    frames = [Image.new("RGB", (640, 360), (10 * i, 80, 160)) for i in range(8)]
    assert _video_tokens(backbone, frames, UME_EVAL) == 1196
    # SFT caps each frame at 32·28·28 = 25,088: β = √(640·360/25088) = 3.0305; 360/β/28 = 4.24 → 112,
    # 640/β/28 = 7.54 → 196 → 8·14 patches / 4 = 28 tokens per 2 frames → 4 · 28 = 112.
    assert _video_tokens(backbone, frames, UME_SFT) == 112


def test_sizing_settings_are_checked():
    with pytest.raises(UserError, match="above max_pixels"):
        VisionSizing(min_pixels=5000, max_pixels=4000)
    with pytest.raises(UserError, match="min_pixels=-1"):
        VisionSizing(min_pixels=-1)
    sizing = VisionSizing.from_settings({"min_pixels": 784, "qwen_vl_utils_resize": True})
    assert (sizing.min_pixels, sizing.max_pixels, sizing.qwen_vl_utils_resize) == (784, 0, True)


def test_recipes_carry_ume_r1_pixels_and_sampling():
    for recipe in ("configs/qwen2-vl-2b.yaml", "configs/qwen2-vl-7b.yaml"):
        for cls in (EvaluateConfig, EmbedConfig):
            assert VisionSizing.from_settings(load_config(cls, recipe)) == UME_EVAL, (recipe, cls.__name__)
        assert VisionSizing.from_settings(load_config(SFTConfig, recipe)) == UME_SFT
        # grpo_trainer.py:451-456: GenerationConfig(do_sample=True, temperature=1) leaves top_k at HF's default 50
        for preset in ([], ["configs/presets/1x80gb.yaml"], ["configs/presets/8x80gb.yaml"]):
            assert load_config(GRPOConfig, [recipe, *preset]).top_k == 50
    # the tiny demo keeps its checkpoint's own limits (see configs/tiny.yaml) and SFT's frame caps
    assert VisionSizing.from_settings(load_config(EvaluateConfig, "configs/tiny.yaml")) == VisionSizing()
    tiny_sft = VisionSizing.from_settings(load_config(SFTConfig, "configs/tiny.yaml"))
    assert (tiny_sft.min_pixels, tiny_sft.video_max_frame_pixels) == (0, 32 * 28 * 28)


def test_cached_vectors_are_not_reused_across_pixel_settings(tmp_path):
    first = EmbeddingCache(tmp_path, "model", inputs=UME_EVAL.tag())
    first.put("disc", ["k"], np.ones((1, 4), dtype=np.float32))
    assert EmbeddingCache(tmp_path, "model", inputs=UME_EVAL.tag()).missing("disc", ["k"]) == []
    assert EmbeddingCache(tmp_path, "model", inputs=VisionSizing().tag()).missing("disc", ["k"]) == ["k"]


# ------------------------------------------------------------------------------------------------ transparency

def test_rgba_is_composited_onto_white_exactly_as_qwen_vl_utils():
    # qwen_vl_utils:88-92 (to_rgb): an RGBA image is pasted onto a white RGB canvas with its alpha as the mask.
    values, alphas = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    rgba = np.stack([values, 255 - values, values // 2, alphas], axis=-1)
    im = Image.fromarray(rgba, "RGBA")
    reference = Image.new("RGB", im.size, (255, 255, 255))
    reference.paste(im, mask=im.split()[3])
    assert np.array_equal(np.asarray(to_rgb_on_white(im)), np.asarray(reference))
    # fully transparent pixels are white, not the black that PIL's convert("RGB") leaves
    assert np.asarray(to_rgb_on_white(im))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(im.convert("RGB"))[0, 0].tolist() == [0, 255, 0]


def test_every_transparent_mode_is_white_in_the_embedder_the_data_build_and_rl(tmp_path):
    # umeflow's choice, not a reference fact: qwen_vl_utils' to_rgb composites only RGBA, and UME-R1's SFT
    # (data_qwen.py:241, convert("RGB")) drops alpha everywhere; umeflow puts LA and P on white too (issue #13).
    la = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0  # palette entry 0 (black) is transparent
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    for im in (la, p, rgba):
        for converted in (open_image(im), to_rgb_on_white(im), fit_on_white(im, 112)):
            assert converted.mode == "RGB" and set(converted.getdata()) == {(255, 255, 255)}, im.mode
    path = tmp_path / "stamp.png"
    rgba.save(path)
    assert set(open_image(path).getdata()) == {(255, 255, 255)}
    rl = prompt_dataset([RLPair(RLSide("q", path), RLSide("t", None), "d")])
    assert set(rl[0]["images"][0].getdata()) == {(255, 255, 255)}


def test_transparent_pixels_reach_the_model_as_white(backbone):
    clear = Image.new("RGBA", (56, 56), (0, 0, 0, 0))
    white = Image.new("RGB", (56, 56), (255, 255, 255))
    a = build_batch(backbone.processor, [Item("x", images=(clear,))])["pixel_values"]
    b = build_batch(backbone.processor, [Item("x", images=(white,))])["pixel_values"]
    assert np.array_equal(a.numpy(), b.numpy())


# ------------------------------------------------------------------------------------------------ prompts

def test_grpo_question_template_has_a_space_before_the_newline(backbone):
    # qwen_module.py:75: get_question_template("embed") = "{Question} \n<disc_emb>\n" + the generation prompt;
    # grpo_embed.py:178 formats it with the side's text.
    tok = backbone.tokenizer
    assert rl_user_text("A red square") == "A red square \n<disc_emb>\n" + GENERATION_PROMPT
    ids = tok(rl_user_text("A red square"), add_special_tokens=False)["input_ids"]
    before_disc = ids[ids.index(backbone.disc_emb_id) - 1]
    assert before_disc == 715 and tok.convert_ids_to_tokens(715) == "Ġ\u010a"  # " \n" as one token
    # eval_collator.py:225 (eval) has no space: "\n" is token 198
    eval_ids = tok(user_text("A red square"), add_special_tokens=False)["input_ids"]
    assert eval_ids[eval_ids.index(backbone.disc_emb_id) - 1] == 198
    rows = prompt_dataset([RLPair(RLSide("A red square", None), RLSide("red", None), "d")])
    assert rows[0]["prompt"][0]["content"] == rl_user_text("A red square")


def test_eval_prompt_matches_the_eval_collator():
    # eval_collator.py:225/294: text with the backbone's image/video token removed, stripped, + "\n<disc_emb>\n" +
    # GENERATION_PROMPT (eval_collator.py:21, verbatim).
    assert user_text("<|image_pad|> What is in the image? ") == ("What is in the image?\n<disc_emb>\n"
                                                               + GENERATION_PROMPT)
    assert GENERATION_PROMPT == ("Represent the above input text, images, videos, or any combination of the three as "
                                 "embeddings. First output the thinking process in <think> </think> tags and then "
                                 "summarize the entire input in a word or sentence. Finally, use the <gen_emb> tag "
                                 "to represent the entire input.")


def _sft_record(tmp_path, human_q: str, image: str | None = "sq.png") -> tuple:
    (tmp_path / "sq.png").parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), (200, 30, 30)).save(tmp_path / "sq.png")
    qry = {"conversations": [{"from": "human", "value": human_q},
                             {"from": "gpt", "value": "<think>red</think><answer>red<gen_emb>"}]}
    if image:
        qry["image"] = image
    rec = {"dataset_name": "d", "qry": qry,
           "pos": {"conversations": [{"from": "human", "value": f"red\n<disc_emb>\n{GENERATION_PROMPT}"},
                                     {"from": "gpt", "value": "<think>a word</think><answer>red<gen_emb>"}]}}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    return path, rec


def test_sft_human_turn_keeps_the_newline_after_the_image(backbone, tmp_path):
    human = f"<image>\nRepresent the given image\n<disc_emb>\n{GENERATION_PROMPT}"
    path, rec = _sft_record(tmp_path, human)
    pairs, _ = load_sft_pairs(path, tmp_path)
    batch = SFTCollator(backbone.processor, backbone.family.name, UME_SFT)(pairs)["query"]
    tok = backbone.tokenizer
    ours = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    # data_qwen.py:71-73 + 76-121: ids = system turn + user turn + gpt turn, each through the template
    # "<|im_start|>{role}\n{content}<|im_end|>\n" (data_qwen.py:56), "<image>" replaced in place by
    # <|vision_start|> + n·<|image_pad|> + <|vision_end|> (data_qwen.py:87-99). 56×56 under 768 … 2,359,296 → 4 pads.
    def turn(role, content):
        return tok(f"<|im_start|>{role}\n{content}<|im_end|>\n", add_special_tokens=False)["input_ids"]
    vision = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
    reference = (turn("system", "You are a helpful assistant.") + turn("user", human.replace("<image>", vision))
                 + turn("assistant", rec["qry"]["conversations"][1]["value"]))
    assert ours == reference
    vision_end = tok.convert_tokens_to_ids("<|vision_end|>")
    assert ours[ours.index(vision_end) + 1] == 198  # "\n" right after the image
    # the text-only target side gets the eval's 28×28 white image before its turn (UME-R1's records name
    # images/blank.jpg there)
    target = SFTCollator(backbone.processor, backbone.family.name, UME_SFT)(pairs)["target"]
    assert int((target["input_ids"] == tok.convert_tokens_to_ids(IMAGE_PAD)).sum()) >= 1


def test_sft_placeholders_must_match_the_media(tmp_path):
    path, _ = _sft_record(tmp_path, f"no placeholder\n<disc_emb>\n{GENERATION_PROMPT}")
    with pytest.raises(RecordError, match="1 images"):
        load_sft_pairs(path, tmp_path)


# ------------------------------------------------------------------------------------------------ format reward

def test_format_reward_accepts_a_preamble_like_re_search():
    # qwen_module.py:92-95: re.search(r"<think>.*?</think>.*?\s*<answer>.*?\s*<gen_emb>", content, re.DOTALL)
    texts = ["Sure, here it is. <think>a red square</think><answer>red<gen_emb>",
             "<think>a red square</think><answer>red<gen_emb>",
             "Sure. <think>a red square</think> red<gen_emb>"]  # no <answer>: no match anywhere
    assert ume_format_reward(texts) == [1.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------------------ the steps use it

class _Stop(Exception):
    pass


def test_steps_hand_their_pixel_settings_to_the_model_inputs(tiny_model_dir, tmp_path, monkeypatch):
    import umeflow.model.embedder as embedder_mod
    import umeflow.train.sft as sft_mod
    from umeflow.steps import embed, evaluate, sft

    seen = {}

    def fake_embedder(model, **kw):
        seen["embedder"] = kw.get("sizing")
        raise _Stop

    monkeypatch.setattr(embedder_mod, "Embedder", fake_embedder)
    (tmp_path / "items.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    with pytest.raises(_Stop):
        embed.run(load_config(EmbedConfig, "configs/qwen2-vl-2b.yaml", [f"model={tiny_model_dir}",
                                                                         f"input={tmp_path / 'items.jsonl'}",
                                                                         f"out={tmp_path / 'e.npy'}"]))
    assert seen.pop("embedder") == UME_EVAL
    (tmp_path / "tasks.json").write_text(json.dumps([dict(name="Colors", modality="image", category="I-CLS",
                                                         eval_type="local", file="Colors.jsonl", num_queries=1)]))
    with pytest.raises(_Stop):  # the task file is never read: the Embedder is built first
        evaluate.run(load_config(EvaluateConfig, "configs/qwen2-vl-2b.yaml", [
            f"model={tiny_model_dir}", f"data_root={tmp_path}", "tasks=offline", "cache_dir="]), log_to_mlflow=False)
    assert seen.pop("embedder") == UME_EVAL

    def fake_trainer(*a, data_collator, **kw):
        seen["collator"] = data_collator.sizing
        raise _Stop

    monkeypatch.setattr(sft_mod, "UmeSFTTrainer", fake_trainer)
    path, _ = _sft_record(tmp_path / "sft", f"<image>\nq\n<disc_emb>\n{GENERATION_PROMPT}")
    (path.parent / "manifest.json").write_text(json.dumps({"media_root": str(path.parent)}))
    with pytest.raises(_Stop):
        sft.run(load_config(SFTConfig, "configs/qwen2-vl-2b.yaml", [
            f"model={tiny_model_dir}", f"data={path.parent}", f"out={tmp_path / 'o'}", "per_device_batch_size=1",
            "deepspeed=", "bf16=false", "gradient_checkpointing=false", "dataloader_num_workers=0"]))
    assert seen["collator"] == UME_SFT


def test_served_model_sizes_pixels_with_the_same_keys(tiny_model_dir):
    from umeflow.registry.pyfunc import EmbeddingModel

    served = EmbeddingModel(tiny_model_dir, {"min_pixels": 784, "max_pixels": 2359296, "qwen_vl_utils_resize": True})
    served.load_context(None)
    assert served.embedder.sizing == UME_EVAL
    plain = EmbeddingModel(tiny_model_dir, {})
    plain.load_context(None)
    assert plain.embedder.sizing == VisionSizing()
