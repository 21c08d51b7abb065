"""Training pairs → GRPO prompt rows (method.md §1.6, §2.5).

Each pair becomes two rows, its query side then its target side, with the pair's index and the side. Rows stay in
that interleaved order and the trainer's sampler does not shuffle (UME-R1's RepeatSampler walks the file in order),
so a generation batch of 2·N prompts always holds both sides of N whole pairs — the reward needs both. Pairs are
shuffled once, at the pair level, with the recipe seed.

Inputs accepted: ``pairs.jsonl`` from ``umeflow data build`` (MMEB-train layout) or a UME-R1 RL file (``ume_rl``).
Every side carries exactly one image — its own, or UME-R1's 28×28 white image for text-only sides — so each batch
is uniformly multimodal for the processor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from umeflow.data.schemas import load_records
from umeflow.errors import UserError
from umeflow.model.chat import blank_image, rl_user_text
from umeflow.model.items import TextBudget, strip_placeholders
from umeflow.model.vision import open_bounded, to_rgb_on_white


@dataclass(frozen=True)
class RLSide:
    text: str  # instance text, placeholders stripped
    image: Path | None  # None: text-only side


@dataclass(frozen=True)
class RLPair:
    query: RLSide
    target: RLSide
    dataset: str


def _mmeb(rec: dict, root: Path) -> RLPair:
    q_img, t_img = rec.get("qry_image_path") or "", rec.get("pos_image_path") or ""
    return RLPair(RLSide(strip_placeholders(rec["qry"]), root / q_img if q_img else None),
                  RLSide(strip_placeholders(rec["pos_text"]), root / t_img if t_img else None),
                  rec.get("dataset_name") or "pairs")


def _ume_rl(rec: dict, root: Path, path: Path) -> RLPair:
    for side in ("qry", "pos"):
        if any(v for v in rec.get(f"{side}_video") or []):
            raise UserError(f"{path}:{rec['_line']}: field {side}_video: video sides are not supported by umeflow "
                            f"grpo yet (TRL's GRPO rollouts take images only); drop video pairs from the RL set")
    q_img, t_img = rec.get("qry_image") or "", rec.get("pos_image") or ""
    return RLPair(RLSide(strip_placeholders(rec["qry_text"]), root / q_img if q_img else None),
                  RLSide(strip_placeholders(rec["pos_text"]), root / t_img if t_img else None),
                  rec.get("dataset_name") or rec.get("dataset") or "rl")


def load_rl_pairs(data: str | Path, on_bad_record: str = "error",
                  budget: TextBudget | None = None) -> tuple[list[RLPair], dict]:
    """Pairs from a data-build train dir (``pairs.jsonl``), an RL dir (``rl.jsonl``) or one of those files. Media
    must stay inside the file's folder; with ``budget`` each side's text must fit its token budget."""
    path = Path(data)
    if path.is_dir():
        for name, kind in (("rl.jsonl", "ume_rl"), ("pairs.jsonl", "mmeb_train")):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"{data} holds neither rl.jsonl (UME-R1 RL records) nor pairs.jsonl (umeflow data build "
                            f"train pairs); point grpo.data at one of them")
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `umeflow data build` or point grpo.data at RL records")
    kind = "ume_rl" if path.name.startswith("rl") else "mmeb_train"
    records, counter = load_records(path, kind, media_root=path.parent, on_bad_record=on_bad_record, budget=budget)
    if not records:
        raise UserError(f"{path} holds no records" if not counter.count else
                        f"{path} holds no usable record ({counter.count} bad records skipped)")
    pairs = [_ume_rl(r, path.parent, path) if kind == "ume_rl" else _mmeb(r, path.parent) for r in records]
    return pairs, {"records": len(records), "bad_records_skipped": counter.count, "source": str(path)}


def select_pairs(pairs: list[RLPair], n: int, seed: int, datasets: list[str] | None = None) -> list[RLPair]:
    """A seeded shuffle at the pair level (optionally only some datasets), cut to ``n`` pairs (0 = all)."""
    chosen = [p for p in pairs if not datasets or p.dataset in datasets]
    if not chosen:
        raise UserError(f"no RL pairs left after the dataset filter {datasets}")
    random.Random(seed).shuffle(chosen)
    return chosen[:n] if n else chosen


def single_dataset_blocks(pairs: list[RLPair], block: int, seed: int) -> list[RLPair]:
    """Reorder ``pairs`` into consecutive blocks of ``block`` pairs, each from one dataset with distinct targets.

    One block is one generation batch, so a rollout's negatives are other pairs of the *same* dataset — Embed-RL's
    grouped sampler ("restricted each step to samples from the same dataset"): with mixed datasets most negatives
    are trivially easy and the reward barely depends on what the policy writes. Distinct target texts/images within
    a block keep a class's second example from being scored as a negative of the first. Pairs that cannot fill a
    block are dropped (counted by the caller); block order is shuffled with ``seed``.
    """
    rng = random.Random(seed)
    by_dataset: dict[str, list[RLPair]] = {}
    for p in pairs:
        by_dataset.setdefault(p.dataset, []).append(p)
    blocks: list[list[RLPair]] = []
    for name in sorted(by_dataset):
        pending = list(by_dataset[name])
        rng.shuffle(pending)
        open_blocks: list[list[RLPair]] = []
        for p in pending:
            key = (p.target.text, str(p.target.image))
            home = next((b for b in open_blocks if all((q.target.text, str(q.target.image)) != key for q in b)), None)
            if home is None:
                home = []
                open_blocks.append(home)
            home.append(p)
            if len(home) == block:
                blocks.append(home)
                open_blocks.remove(home)
    rng.shuffle(blocks)
    return [p for b in blocks for p in b]


def _open(side: RLSide) -> Image.Image:
    if side.image is None:
        return blank_image()
    with open_bounded(side.image) as im:  # validated when loaded; the pixel budget still holds if it changed since
        return to_rgb_on_white(im)


def prompt_dataset(pairs: list[RLPair], prompt_text=None):
    """Interleaved (query, target) prompt rows as a ``datasets.Dataset`` for TRL's GRPOTrainer.

    ``prompt_text(side, is_query, pair)`` gives the user text (UME-R1: its RL question template, instance text +
    `` \\n<disc_emb>\\n`` + generation prompt; Embed-RL: the T-CoT instruction). Images are opened lazily, on access,
    by a dataset transform, transparent pixels on white.
    """
    from datasets import Dataset

    prompt_text = prompt_text or (lambda side, is_query, pair: rl_user_text(side.text))
    rows = []
    for n, pair in enumerate(pairs):
        for is_query, side in ((True, pair.query), (False, pair.target)):
            rows.append({"prompt": [{"role": "user", "content": prompt_text(side, is_query, pair)}],
                         "pair_index": n, "side": "query" if is_query else "target", "side_text": side.text,
                         "side_image": str(side.image) if side.image else "", "dataset_name": pair.dataset})
    ds = Dataset.from_list(rows)
    ds.set_transform(_with_images, output_all_columns=True)
    return ds


def _with_images(batch: dict) -> dict:
    batch["images"] = [[_open(RLSide("", Path(p) if p else None))] for p in batch["side_image"]]
    return batch
