"""UME-R1 input formatting (method.md §1.3): the exact generation prompt, the chat template and message layout.

A user turn is: media first (images, then a video), then ``text + "\\n<disc_emb>\\n" + GENERATION_PROMPT``. Text-only
inputs get a 28×28 white image so that every sample is multimodal, exactly as UME-R1's evaluation does. UME-R1 writes
the turn differently in its two training stages, and we follow each: GRPO rollouts put a space before the first
newline (``rl_user_text``); SFT records keep their human turn verbatim, media in place (``build_messages_verbatim``).
"""

from __future__ import annotations

import re

from PIL import Image

from umeflow.model.items import Item, strip_placeholders

GEN_EMB = "<gen_emb>"
DISC_EMB = "<disc_emb>"
# Order matters: UME-R1 adds <gen_emb> first, then <disc_emb> (ids 151657, 151658 with the Qwen2-VL tokenizer).
EMBEDDING_TOKENS = (GEN_EMB, DISC_EMB)

GENERATION_PROMPT = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input in a word "
    "or sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2-VL chat format written for umeflow (same rendering as the official Qwen2-VL template: a default system
# turn, <|vision_start|><|image_pad|><|vision_end|> per image, <|video_pad|> per video, ChatML turns).
QWEN2_VL_CHAT_TEMPLATE = (
    # Literal text is emitted through {{ '...' }} expressions so that Jinja's whitespace control ({%- -%}), which
    # keeps the template readable, can never eat the newlines that belong to the ChatML format.
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part -%}"
    "{{ part['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- endif -%}"
)

_BLANK_SIDE = 28


def blank_image() -> Image.Image:
    """The 28×28 white RGB image UME-R1 gives text-only inputs."""
    return Image.new("RGB", (_BLANK_SIDE, _BLANK_SIDE), (255, 255, 255))


def user_text(text: str) -> str:
    """The user-turn text at evaluation: instance text (placeholders removed, stripped) + ``\\n<disc_emb>\\n`` + the
    generation prompt (UME-R1 eval_collator.py)."""
    return strip_placeholders(text) + "\n" + DISC_EMB + "\n" + GENERATION_PROMPT


def rl_user_text(text: str) -> str:
    """The user-turn text of a GRPO rollout: UME-R1's RL question template ``"{Question} \\n<disc_emb>\\n" +`` the
    generation prompt — a space before the first newline, unlike evaluation (qwen_module.py)."""
    return strip_placeholders(text) + " \n" + DISC_EMB + "\n" + GENERATION_PROMPT


def build_messages(item: Item) -> tuple[list[dict], list, list]:
    """Return (messages, images, videos) for one item; media go first in the user turn."""
    images = list(item.images)
    videos = [list(item.video)] if item.video else []
    if not images and not videos:
        images = [blank_image()]
    content = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    content.append({"type": "text", "text": user_text(item.text)})
    return [{"role": "user", "content": content}], images, videos


_MEDIA_PLACEHOLDER = re.compile(r"(<image>|<video>)")


def build_messages_verbatim(turn: str, item: Item) -> tuple[list[dict], list, list]:
    """(messages, images, videos) for a user turn as written in a UME-R1 SFT record: the text exactly as it stands,
    each ``<image>``/``<video>`` replaced by the item's next image / its video, in place (UME-R1 data_qwen.py), so
    ``<image>\\n…`` keeps its newline after the media. A side without media gets the 28×28 white image before the
    turn, as at evaluation (UME-R1's own SFT records name images/blank.jpg for those sides)."""
    parts = [p for p in _MEDIA_PLACEHOLDER.split(turn) if p]
    n_images, n_videos = parts.count("<image>"), parts.count("<video>")
    images = list(item.images)
    videos = [list(item.video)] if item.video else []
    if (n_images, n_videos) != (len(images), len(videos)):
        raise ValueError(f"the user turn has {n_images} <image> and {n_videos} <video> placeholders for "
                         f"{len(images)} images and {len(videos)} videos")
    if not images and not videos:
        images, parts = [blank_image()], ["<image>", *parts]
    content = [{"type": "image"} if p == "<image>" else {"type": "video"} if p == "<video>" else
               {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}], images, videos


def render_prompt(tokenizer_or_processor, messages: list[dict]) -> str:
    """Render the chat with the generation prompt (``<|im_start|>assistant\\n``) appended."""
    return tokenizer_or_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
