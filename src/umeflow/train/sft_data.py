"""UME-R1 SFT records → (query item + response, target item + response) pairs, and their collated batches.

A record (method.md §1.5) holds ``qry`` and ``pos``, each with a human turn (``<image>`` placeholder, instance text,
``\\n<disc_emb>\\n`` and the generation prompt) and a gpt turn (``<think>…</think><answer>…<gen_emb>``). The human
turn is rendered as written, each ``<image>``/``<video>`` replaced by its media in place, as UME-R1's SFT does
(``<image>\\n…`` keeps the newline after the image, which evaluation's layout does not have); the parsed ``Item``
(instance text and media) identifies the side. Pixels are sized with the SFT limits (``VisionSizing``: UME-R1 768 …
2,359,296 per image, 3,136 … 25,088 per video frame). The response is supervised with ``<|im_end|>\\n`` appended, as
UME-R1's label mask does (method.md §4.6).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from umeflow.data.schemas import load_records
from umeflow.errors import RecordError, UserError
from umeflow.model.chat import DISC_EMB, GENERATION_PROMPT
from umeflow.model.inputs import build_batch
from umeflow.model.items import Item, TextBudget, strip_placeholders
from umeflow.model.vision import SFT_VIDEO_MAX_FRAME_PIXELS, SFT_VIDEO_MIN_FRAME_PIXELS, VisionSizing

END_OF_TURN = "<|im_end|>\n"


@dataclass(frozen=True)
class SFTPair:
    query: Item
    query_response: str
    target: Item
    target_response: str
    dataset: str
    target_key: str  # content key of the target side: equal keys are duplicates (false negatives in a batch)
    query_turn: str  # the human turns as written in the record (<image>/<video> where the media go)
    target_turn: str


def _instance_text(human: str) -> str:
    """The instance text of a human turn: placeholders, the ``<disc_emb>`` line and the generation prompt removed."""
    text = human.replace("<image>", "").replace("<video>", "")
    if GENERATION_PROMPT in text:
        text = text[: text.rindex(GENERATION_PROMPT)]
    text = text.rstrip()
    if text.endswith(DISC_EMB):
        text = text[: -len(DISC_EMB)]
    return strip_placeholders(text)


def _side(rec: dict, key: str, media_root: Path, path: Path) -> tuple[Item, str, str]:
    """(item, human turn as written, supervised response) of one side."""
    side = rec[key]
    conv = side["conversations"]
    human = next(t["value"] for t in conv if t["from"] == "human")
    gpt = next((t["value"] for t in conv if t["from"] == "gpt"), None)
    if not gpt:
        raise RecordError(path, rec.get("_line"), f"{key}.conversations", "has no gpt response to learn from")
    images = side.get("image") or []
    images = [images] if isinstance(images, str) else images
    video = side.get("video") or None
    placeholders = (human.count("<image>"), human.count("<video>"))
    if placeholders != (len(images), 1 if video else 0):
        raise RecordError(path, rec.get("_line"), f"{key}.conversations",
                          f"the human turn has {placeholders[0]} <image> and {placeholders[1]} <video> placeholders "
                          f"but the side lists {len(images)} images and {1 if video else 0} videos")
    item = Item(_instance_text(human), images=tuple(media_root / p for p in images),
                video=tuple(media_root / p for p in video) if video else None)
    return item, human, gpt.strip() + END_OF_TURN


def load_sft_pairs(path: str | Path, media_root: str | Path, on_bad_record: str = "error",
                   budget: TextBudget | None = None):
    """Validated SFT pairs from ``path``; media paths resolve against ``media_root`` and must stay inside it;
    with ``budget`` each side's turns must fit its token budget. Returns (pairs, counter); a file without a usable
    pair is a UserError that says so (before any model is trained)."""
    path, media_root = Path(path), Path(media_root)
    records, counter = load_records(path, "ume_sft", media_root=media_root, on_bad_record=on_bad_record,
                                    budget=budget)
    pairs = []
    for rec in records:
        try:
            q, q_turn, qr = _side(rec, "qry", media_root, path)
            t, t_turn, tr = _side(rec, "pos", media_root, path)
        except RecordError as e:
            counter.handle(e)
            continue
        key = hashlib.sha256(repr((t.text, [str(p) for p in t.images], tr)).encode()).hexdigest()[:16]
        pairs.append(SFTPair(q, qr, t, tr, rec.get("dataset_name", ""), key, query_turn=q_turn, target_turn=t_turn))
    if not pairs:
        raise UserError(f"{path} holds no records" if not counter.count else
                        f"{path} holds no usable record ({counter.count} bad records skipped; first: "
                        f"{counter.skipped[0]})")
    return pairs, counter


class SFTDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list[SFTPair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> SFTPair:
        return self.pairs[i]


def repeat_datasets(pairs: list[SFTPair], repeats: dict[str, int]) -> list[SFTPair]:
    """Each pair of dataset ``name`` ``repeats[name]`` times (others once): a small dataset gets more steps without
    rebuilding the data. Unknown names and non-positive counts are errors, not silent no-ops."""
    present = sorted({p.dataset for p in pairs})
    unknown = sorted(set(repeats) - set(present))
    if unknown:
        raise UserError(f"dataset_repeats names {unknown}, not in the training data (datasets: {present})")
    for name, k in repeats.items():
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f"dataset_repeats.{name}={k!r}: must be a whole number >= 1")
    return [p for p in pairs for _ in range(repeats.get(p.dataset, 1))]


class SingleDatasetSampler(torch.utils.data.Sampler[int]):
    """An epoch's index order in which every run of ``block`` consecutive indices comes from one dataset.

    With ``block`` = per-device batch × processes, each optimisation micro-step (gathered across processes) sees
    in-batch negatives from the same dataset, as VLM2Vec-V2's sub-batching and Embed-RL's grouped sampler do: in a
    mixed batch most negatives differ in modality and instruction and teach nothing about, say, which caption fits
    which TuxPaint stamp. Each epoch is a permutation of all indices — nothing is dropped: the remainders that cannot
    fill a block of their own are pooled into mixed blocks at the end of the shuffle. The order depends only on
    ``seed`` and the epoch (``set_epoch``, called by accelerate), so a resumed run skips into the same order.
    """

    def __init__(self, datasets: list[str], block: int, seed: int):
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.block, self.seed, self.epoch, self.size = block, seed, 0, len(datasets)
        self.groups: dict[str, list[int]] = {}  # dataset → its indices, in name order (fixed; shuffled per epoch)
        for i, name in enumerate(datasets):
            self.groups.setdefault(name, []).append(i)
        self.groups = dict(sorted(self.groups.items()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def blocks(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        full, leftover = [], []
        for indices in self.groups.values():
            idx = list(indices)
            rng.shuffle(idx)
            cut = len(idx) - len(idx) % self.block
            full += [idx[s:s + self.block] for s in range(0, cut, self.block)]
            leftover += idx[cut:]
        rng.shuffle(full)
        rng.shuffle(leftover)
        return full + [leftover[s:s + self.block] for s in range(0, len(leftover), self.block)]

    def __iter__(self):
        for b in self.blocks():
            yield from b


class SFTCollator:
    """Collates pairs into ``{"query": batch, "target": batch, "target_keys": [...]}``; each side is a left-padded
    model batch with a ``completion_mask`` marking the supervised response tokens."""

    def __init__(self, processor, family_name: str = "qwen2_vl", sizing: VisionSizing | None = None):
        self.processor, self.family_name = processor, family_name
        # default: the checkpoint's image limits, UME-R1's SFT per-frame limits (what SFTConfig defaults to)
        self.sizing = sizing or VisionSizing(video_min_frame_pixels=SFT_VIDEO_MIN_FRAME_PIXELS,
                                             video_max_frame_pixels=SFT_VIDEO_MAX_FRAME_PIXELS)

    def __call__(self, pairs: list[SFTPair]) -> dict:
        query = build_batch(self.processor, [p.query for p in pairs], [p.query_response for p in pairs],
                            self.family_name, self.sizing, [p.query_turn for p in pairs])
        target = build_batch(self.processor, [p.target for p in pairs], [p.target_response for p in pairs],
                             self.family_name, self.sizing, [p.target_turn for p in pairs])
        return {"query": query, "target": target, "target_keys": [p.target_key for p in pairs]}
