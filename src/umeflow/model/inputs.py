"""Turn ``Item``s into model inputs: chat rendering, image/video patches, placeholder expansion, left padding.

We assemble the batch ourselves instead of calling ``processor(text, images, videos)`` because transformers' video
processors need torchvision (never installed here). Images still go through the checkpoint's own image processor; a
video is a list of frames that we resize and patchify exactly as the Qwen2-VL video processor lays them out
(``patchify_frames``; a test checks it against the image processor on a still clip). Placeholders are expanded to
``grid_t·grid_h·grid_w / merge²`` tokens, and ``mm_token_type_ids`` (0 text, 1 image, 2 video) are computed from the
ids, as ``ProcessorMixin`` does; a test checks image-only batches against the processor's own output. Pixels are sized
per stage by a ``VisionSizing`` (model/vision.py): UME-R1's eval resizes twice (qwen_vl_utils, then the processor at
784 … 2,359,296), its SFT once at 768 … 2,359,296 with smaller per-frame caps for video.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from umeflow.errors import UserError
from umeflow.model.chat import build_messages, build_messages_verbatim, render_prompt
from umeflow.model.items import ImageLike, Item
from umeflow.model.vision import (PixelBudgetError, VisionSizing, check_pixels, fetch_resize, open_bounded,
                                  processor_limits, to_rgb_on_white)

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


def open_image(img: ImageLike) -> Image.Image:
    """An RGB image, transparent pixels composited onto white (method.md §1.3)."""
    if isinstance(img, Image.Image):
        try:
            check_pixels(img)  # PIL decodes lazily: an opened bomb is still refused before its pixels load
        except PixelBudgetError as e:
            raise UserError(f"an image {e}") from None
        return to_rgb_on_white(img)
    path = Path(img)
    try:
        with open_bounded(path) as im:
            return to_rgb_on_white(im)
    except FileNotFoundError:
        raise UserError(f"image file {path} does not exist") from None
    except PixelBudgetError as e:
        raise UserError(f"image file {path} {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"image file {path} cannot be decoded: {e}") from None


def prepare_image(img: ImageLike, sizing: VisionSizing, factor: int) -> Image.Image:
    """An image or frame as the image processor receives it: RGB on white, resized as qwen_vl_utils would where the
    sizing says so (the processor then applies its own pixel limits)."""
    im = open_image(img)
    if not sizing.qwen_vl_utils_resize:
        return im
    try:
        return fetch_resize(im, factor)
    except UserError as e:
        raise UserError(f"image {img if not isinstance(img, Image.Image) else '(in memory)'}: {e}") from None


def patchify_frames(frames: Sequence[Image.Image], image_processor, min_pixels: int = 0,
                    max_pixels: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames → (pixel_values_videos, video_grid_thw) in the Qwen2-VL patch order.

    All frames are resized (bicubic) to the first frame's ``smart_resize`` size within [min_pixels, max_pixels]
    (0 = the processor's own limit), rescaled, normalised; the clip is padded to a multiple of the temporal patch by
    repeating the last frame.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ps, ms, tps = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    own_min, own_max = processor_limits(image_processor)
    w0, h0 = frames[0].size
    h, w = smart_resize(h0, w0, factor=ps * ms, min_pixels=min_pixels or own_min, max_pixels=max_pixels or own_max)
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(image_processor.image_std, dtype=np.float32)[:, None, None]
    arr = np.stack([np.asarray(f.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
                    .transpose(2, 0, 1) * image_processor.rescale_factor for f in frames])
    arr = (arr - mean) / std
    if arr.shape[0] % tps:
        arr = np.concatenate([arr, np.repeat(arr[-1:], tps - arr.shape[0] % tps, axis=0)])
    t, c = arr.shape[0] // tps, arr.shape[1]
    gh, gw = h // ps, w // ps
    patches = arr.reshape(t, tps, c, gh // ms, ms, ps, gw // ms, ms, ps).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(t * gh * gw, c * tps * ps * ps)
    return torch.from_numpy(np.ascontiguousarray(flat)), torch.tensor([[t, gh, gw]])


def _expand(text: str, placeholder: str, counts: list[int]) -> str:
    parts = text.split(placeholder)
    if len(parts) - 1 != len(counts):
        raise AssertionError(f"{len(parts) - 1} {placeholder} in the prompt but {len(counts)} media")
    out = parts[0]
    for n, rest in zip(counts, parts[1:]):
        out += placeholder * n + rest
    return out


def _completion_mask(tok, prompts: list[str], ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """True on the completion's tokens (everything after ``<|im_start|>assistant\\n``), per left-padded row.

    The prompt is tokenized on its own and must be an exact prefix of the full row; the chat format ends it with a
    newline, which the Qwen pre-tokenizer never merges with what follows, so this holds — and is checked.
    """
    mask = torch.zeros_like(ids, dtype=torch.bool)
    length = ids.shape[1]
    for i, prompt_ids in enumerate(tok(prompts, add_special_tokens=False)["input_ids"]):
        start = length - int(attention[i].sum())
        end = start + len(prompt_ids)
        if ids[i, start:end].tolist() != prompt_ids:
            raise AssertionError(f"row {i}: the prompt's tokens are not a prefix of prompt + completion")
        mask[i, end:] = True
    return mask


def build_batch(processor, items: Sequence[Item], completions: Sequence[str] | None = None,
                family_name: str = "qwen2_vl", sizing: VisionSizing | None = None,
                user_turns: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Left-padded model inputs for ``items``; ``completions`` (teacher forcing) are appended after the prompt.

    ``sizing``: pixel limits (default: the checkpoint's, frames like images). ``user_turns``: each item's user turn
    as a UME-R1 SFT record writes it (``<image>``/``<video>`` where its media go); default: UME-R1's eval layout,
    media first (``chat.build_messages``).
    """
    sizing = sizing or VisionSizing()
    tok = processor.tokenizer
    ip = processor.image_processor
    merge = ip.merge_size ** 2
    factor = ip.patch_size * ip.merge_size
    image_min, image_max = sizing.image_limits(ip)
    frame_min, frame_max = sizing.frame_limits(ip)
    texts, prompts, images_pv, images_thw, videos_pv, videos_thw = [], [], [], [], [], []
    for i, item in enumerate(items):
        if user_turns is None:
            messages, imgs, vids = build_messages(item)
        else:
            messages, imgs, vids = build_messages_verbatim(user_turns[i], item)
        if vids and family_name == "qwen3_vl":
            raise UserError("video inputs for Qwen3-VL need its video processor (torchvision); not supported here")
        text = render_prompt(processor, messages)
        img_counts = []
        if imgs:
            out = ip(images=[prepare_image(im, sizing, factor) for im in imgs],
                     size={"shortest_edge": image_min, "longest_edge": image_max}, return_tensors="pt")
            images_pv.append(out["pixel_values"])
            images_thw.append(out["image_grid_thw"])
            img_counts = [int(g.prod()) // merge for g in out["image_grid_thw"]]
        vid_counts = []
        for frames in vids:
            pv, thw = patchify_frames([prepare_image(f, sizing, factor) for f in frames], ip, frame_min, frame_max)
            videos_pv.append(pv)
            videos_thw.append(thw)
            vid_counts.append(int(thw.prod()) // merge)
        text = _expand(_expand(text, IMAGE_PAD, img_counts), VIDEO_PAD, vid_counts)
        prompts.append(text)
        texts.append(text + completions[i] if completions is not None else text)
    enc = tok(texts, padding=True, return_tensors="pt", padding_side="left")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    ids = batch["input_ids"]
    if completions is not None:
        batch["completion_mask"] = _completion_mask(tok, prompts, ids, enc["attention_mask"])
    mm = torch.zeros_like(ids)
    mm[ids == tok.convert_tokens_to_ids(IMAGE_PAD)] = 1
    mm[ids == tok.convert_tokens_to_ids(VIDEO_PAD)] = 2
    batch["mm_token_type_ids"] = mm
    if images_pv:
        batch["pixel_values"], batch["image_grid_thw"] = torch.cat(images_pv), torch.cat(images_thw)
    if videos_pv:
        batch["pixel_values_videos"] = torch.cat(videos_pv)
        batch["video_grid_thw"] = torch.cat(videos_thw)
    return batch
