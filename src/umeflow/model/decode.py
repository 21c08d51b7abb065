"""umeflow's own decode loop for the in-process (``hf``) generation engine, and prompt lengths for bucketing (issue
#15 item 3: throughput on the CPU).

HF ``generate`` keeps every row of a batch until the longest row ends: a row that emitted EOS is still fed padding
through every layer. ``decode`` runs the same greedy / sampling decode over the KV cache, but a row that emitted EOS
(or reached ``max_new_tokens``) leaves the batch: the cache (``DynamicCache.batch_select_indices``), the attention
mask and the per-row positions are index-selected, so later steps compute only the rows still generating. That
saves per-row work (large batches, long caches, large vocabularies); a small model's CPU step costs nearly the same
for 2 rows as for 16 (per-call overhead, every weight read once), and there batching is what pays.

What it must equal, token for token, is ``generate`` as ``Embedder`` called it (tests/test_decode_loop.py):

- the prefill gets ``generate``'s position ids: Qwen-VL's ``[4, B, L]`` layout, row 0 the text positions (attention
  mask cumsum), rows 1–3 the multimodal RoPE positions from the model's own ``compute_3d_position_ids`` (it also
  returns the per-row ``rope_deltas``). A decoding step feeds text position ``t`` and RoPE position ``t + delta``
  for every axis, which is what ``generate``'s ``last + 1`` update gives, since a prompt ends with text tokens.
  The positions are passed explicitly at every step: the ``rope_deltas`` the model keeps on itself describe the
  batch it was computed for, not the rows that remain;
- the logits are processed as ``generate`` does with ``top_k=None, top_p=None``: the checkpoint's
  ``repetition_penalty`` (over the padded prompt + generated ids, as ``generate`` sees them), then the temperature
  when sampling; greedy is the argmax, sampling one ``torch.multinomial`` draw per step over the rows still
  generating (so, after a row has finished, a seeded run draws other numbers than ``generate`` would: the same
  distribution, not the same samples). A checkpoint whose ``generation_config`` asks for any other logits
  processing (``unsupported_settings``) keeps ``generate``;
- the LM head: a plain ``Linear`` head is applied to the rows still generating; any other module standing in the
  head's place (a test's scripted or biased head written against ``generate``) is called with ``generate``'s batch
  layout (every row in its original place; a finished row holds zeros and its logits are ignored).

Recorded per row: the last-layer state (``last_hidden_state`` of the language model, after its final norm) of each
token the row fed: step 0 = the last prompt token, step k = generated token k−1 — what the forward hook recorded
on the ``generate`` path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from umeflow.errors import UserError
from umeflow.model.backbone import language_model
from umeflow.model.chat import build_messages, render_prompt
from umeflow.model.items import Item
from umeflow.model.vision import FETCH_MAX_CELLS, FETCH_MIN_CELLS, VisionSizing, fit_to_grid

# generation_config fields that would make ``generate`` process the logits in a way ``decode`` does not, with their
# neutral values (None = unset is neutral too). top_k / top_p / temperature are passed explicitly, so the
# checkpoint's values of those never apply.
_NEUTRAL = {"num_beams": 1, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
            "encoder_repetition_penalty": 1.0, "bad_words_ids": None, "min_length": 0, "min_new_tokens": 0,
            "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None,
            "forced_bos_token_id": None, "forced_eos_token_id": None, "exponential_decay_length_penalty": None,
            "renormalize_logits": False, "remove_invalid_values": False, "guidance_scale": 1.0,
            "watermarking_config": None}
_NEUTRAL_SAMPLING = {"typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "top_h": None}


def unsupported_settings(model, do_sample: bool) -> list[str]:
    """The reasons ``decode`` cannot stand in for ``generate`` on this model (empty: it can)."""
    reasons = []
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "compute_3d_position_ids") or not hasattr(model, "lm_head"):
        reasons.append(f"{type(model).__name__} has no Qwen-VL compute_3d_position_ids / lm_head")
    config = model.generation_config
    neutral = {**_NEUTRAL, **(_NEUTRAL_SAMPLING if do_sample else {})}
    for name, value in neutral.items():
        got = getattr(config, name, None)
        if got not in (None, value) and not (value is None and not got):
            reasons.append(f"generation_config.{name}={got!r}")
    return reasons


@dataclass
class Decoded:
    """One batch's generation: per row, the generated ids (through the first EOS, or ``max_new_tokens`` of them) and
    the states of the tokens it fed (``len(ids)`` of them, each ``(D,)``); the prefill's states ``(B, L, D)``."""

    ids: list[list[int]]
    states: list[list[torch.Tensor]]
    prefill: torch.Tensor


def prompt_positions(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[4, B, L]`` position ids of the prompt as ``generate`` builds them, ``(B,)`` RoPE deltas)."""
    mask = batch["attention_mask"]
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    if batch.get("image_grid_thw") is None and batch.get("video_grid_thw") is None:
        return torch.cat([text[None], text[None].expand(3, -1, -1)]), torch.zeros_like(text[:, 0])
    inner = model.model
    inner.rope_deltas = None  # computed afresh for this batch (the model keeps the last batch's on itself)
    kwargs = {"input_ids": batch["input_ids"], "inputs_embeds": None, "image_grid_thw": batch.get("image_grid_thw"),
              "video_grid_thw": batch.get("video_grid_thw"), "attention_mask": mask, "past_key_values": None,
              "mm_token_type_ids": batch["mm_token_type_ids"]}
    if batch.get("second_per_grid_ts") is not None:  # Qwen2.5-VL video timing
        kwargs["second_per_grid_ts"] = batch["second_per_grid_ts"]
    rope = inner.compute_3d_position_ids(**kwargs)
    return torch.cat([text[None], rope.to(text.dtype)]), inner.rope_deltas.reshape(-1).to(text.dtype)


def _logits(head, states: torch.Tensor, rows: list[int], batch_size: int) -> torch.Tensor:
    """``(len(rows), V)`` float32 logits of the rows still generating (module docstring, "the LM head")."""
    if isinstance(head, torch.nn.Linear) or len(rows) == batch_size:
        return head(states[:, None]).float()[:, -1]
    full = states.new_zeros(batch_size, 1, states.shape[-1])
    full[rows] = states[:, None]
    return head(full).float()[rows, -1]


def decode(model, batch: dict[str, torch.Tensor], max_new_tokens: int, eos_ids: set[int], do_sample: bool = False,
           temperature: float = 1.0) -> Decoded:
    """Greedy or sampled generation of a left-padded prompt batch; finished rows leave the batch (module docstring).
    The caller holds ``torch.no_grad()`` and seeds the global RNG when it wants repeatable samples."""
    from transformers import RepetitionPenaltyLogitsProcessor

    if do_sample and not temperature > 0:
        raise UserError(f"sampling needs a temperature > 0, got {temperature!r}")
    inner, head = model.model, model.lm_head
    # decoding steps carry no media, so they go straight to the language model (the multimodal wrapper's per-call
    # work is about a fifth of a tiny model's step); its ``last_hidden_state`` is the wrapper's
    text_model, embed = language_model(model), model.get_input_embeddings()
    size = batch["input_ids"].shape[0]
    positions, deltas = prompt_positions(model, batch)
    out = inner(**batch, position_ids=positions, use_cache=True)
    prefill = out.last_hidden_state
    cache, last = out.past_key_values, prefill[:, -1]
    mask = batch["attention_mask"]
    text_pos = positions[0, :, -1] + 1  # the text position the next fed token gets
    rows = list(range(size))  # the original row of each row still generating
    penalty = getattr(model.generation_config, "repetition_penalty", None)
    penalise = RepetitionPenaltyLogitsProcessor(penalty) if penalty not in (None, 1.0) else None
    seen = batch["input_ids"]  # padded prompt + generated ids of the rows still generating (the penalty's input)
    ids = [[] for _ in range(size)]
    states = [[] for _ in range(size)]
    for step in range(max_new_tokens):
        for i, r in enumerate(rows):
            states[r].append(last[i])
        scores = _logits(head, last, rows, size)
        if penalise is not None:
            scores = penalise(seen, scores)
        if do_sample:
            token = torch.multinomial(torch.softmax(scores / temperature, dim=-1), num_samples=1).squeeze(1)
        else:
            token = scores.argmax(dim=-1)
        chosen = token.tolist()  # the step's one device→host copy
        for r, t in zip(rows, chosen):
            ids[r].append(t)
        if step == max_new_tokens - 1:
            break  # the budget's last token is never fed (as in generate)
        keep = [i for i, t in enumerate(chosen) if t not in eos_ids]
        if not keep:
            break
        if len(keep) < len(rows):  # finished rows leave the batch
            index = torch.tensor(keep, device=token.device)
            cache.batch_select_indices(index)
            rows = [rows[i] for i in keep]
            token, mask, text_pos, deltas, seen = (t[index] for t in (token, mask, text_pos, deltas, seen))
        if penalise is not None:
            seen = torch.cat([seen, token[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        rope = text_pos + deltas
        step_positions = torch.stack([text_pos, rope, rope, rope])[:, :, None]
        out = text_model(inputs_embeds=embed(token[:, None]), attention_mask=mask, position_ids=step_positions,
                         past_key_values=cache, use_cache=True)
        cache, last = out.past_key_values, out.last_hidden_state[:, -1]
        text_pos = text_pos + 1
    return Decoded(ids, states, prefill)


# ---------------------------------------------------------------------------------------------- bucketing

def _image_size(image) -> tuple[int, int] | None:
    """(height, width) from the header only; None when it cannot be read (building the batch then says why)."""
    from umeflow.model.vision import open_bounded

    try:
        if hasattr(image, "size") and hasattr(image, "mode"):
            return image.height, image.width
        with open_bounded(image) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - any unreadable image is reported by build_batch, with its own message
        return None


def _media_tokens(size: tuple[int, int] | None, frames: int, image_processor, limits: tuple[int, int],
                  sizing: VisionSizing) -> int:
    """Placeholder tokens of one image (frames = 1) or clip, as ``build_batch`` lays them out."""
    if size is None:
        return 0
    ps, ms = image_processor.patch_size, image_processor.merge_size
    factor = ps * ms
    h, w = size
    try:
        if sizing.qwen_vl_utils_resize:
            h, w = fit_to_grid(h, w, factor, FETCH_MIN_CELLS * factor * factor, FETCH_MAX_CELLS * factor * factor)
        h, w = fit_to_grid(h, w, factor, *limits)
    except Exception:  # noqa: BLE001 - e.g. an aspect ratio Qwen-VL refuses: build_batch reports it
        return 0
    temporal = 1 if frames == 1 else -(-frames // image_processor.temporal_patch_size)
    return temporal * (h // ps) * (w // ps) // (ms * ms)


def prompt_lengths(processor, items: Sequence[Item], sizing: VisionSizing) -> list[int]:
    """Tokens of each item's rendered prompt with its media placeholders expanded — the row length ``build_batch``
    gives it — computed from the image headers and the chat text, without processing any pixels."""
    ip = processor.image_processor
    texts, media = [], []
    for item in items:
        messages, images, videos = build_messages(item)
        texts.append(render_prompt(processor, messages))
        n = -len(images) - len(videos)  # each placeholder token is replaced by the media's tokens
        n += sum(_media_tokens(_image_size(im), 1, ip, sizing.image_limits(ip), sizing) for im in images)
        n += sum(_media_tokens(_image_size(frames[0]), len(frames), ip, sizing.frame_limits(ip), sizing)
                 for frames in videos)
        media.append(n)
    ids = processor.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [len(i) + n for i, n in zip(ids, media)]


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so a batch that does not fit in memory fails
    at once); within a batch the original order is kept."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [sorted(order[s:s + batch_size]) for s in range(0, len(order), batch_size)]
