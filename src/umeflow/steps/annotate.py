"""``umeflow annotate``: MMEB-train pairs → UME-R1 SFT records with a reasoning + summary on each side.

Reads ``<data>/train/pairs.jsonl`` (validated, media checked), annotates the query and the target of every pair
separately (``grounded`` offline backend or an ``openai``-compatible MLLM endpoint), appends ``<gen_emb>``, applies
UME-R1's filters, and publishes ``<out>/`` atomically:

- ``sft.jsonl``     UME-R1 SFT records (method.md §1.5); media paths relative to ``manifest.json``'s ``media_root``
- ``manifest.json`` media root, record count, backend, sha256 of sft.jsonl
- ``metrics.json``  pairs in/kept, pairs dropped per filter, sides rejected per filter, bad records, calls, cache hits
- ``run_info.json`` git sha, resolved config + hash, input hash

Nothing is dropped silently: every filtered pair and every skipped bad record is counted.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from umeflow.annotate.filters import REASONS, check
from umeflow.annotate.grounded import GroundedAnnotator
from umeflow.annotate.openai_compat import OpenAIAnnotator
from umeflow.annotate.sides import Side, sides_of
from umeflow.config import AnnotateConfig
from umeflow.data.schemas import load_records
from umeflow.errors import UserError
from umeflow.io import atomic_path, sha256_file, write_json, write_run_info
from umeflow.model.chat import GEN_EMB, user_text

log = logging.getLogger(__name__)


def sft_side(side: Side, response: str) -> dict:
    """One side of a UME-R1 SFT record: ``<image>`` placeholder (if any), the UME-R1 user text, the response."""
    human = ("<image>\n" if side.image else "") + user_text(side.text)
    out = {"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": response}]}
    if side.image:
        out["image"] = side.image
    return out


def annotate_sides(cfg: AnnotateConfig, sides: list[Side]) -> tuple[list[str], dict]:
    """One response (without ``<gen_emb>``) per side, and the backend's counters."""
    if cfg.backend == "grounded":
        annotator = GroundedAnnotator(cfg.seed, cfg.max_reasoning_words, cfg.max_summary_words)
        responses = [annotator.annotate(s) for s in tqdm(sides, desc="annotate (grounded)", unit="side")]
        return responses, {"calls": 0, "retries": 0, "requests": 0, "cache_hits": 0}
    if cfg.backend == "openai":
        annotator = OpenAIAnnotator(cfg.base_url, cfg.model, cfg.cache_dir, cfg.api_key_env, cfg.prompt,
                                    cfg.concurrency, cfg.max_retries, cfg.backoff_base, cfg.max_backoff, cfg.timeout,
                                    cfg.max_tokens, cfg.temperature)
        with tqdm(desc=f"annotate ({cfg.model})", unit="side") as bar:
            responses = annotator.annotate_all(sides, bar)
        return responses, {**annotator.stats, "cache_torn_lines": annotator.cache.torn_lines}
    raise UserError(f"annotate.backend must be 'grounded' or 'openai', got {cfg.backend!r}")


def run(cfg: AnnotateConfig) -> dict:
    from umeflow.io import ensure_writable_dir

    ensure_writable_dir(cfg.out)  # fail before any work, not at publish
    root = Path(cfg.data) / "train"
    pairs_file = root / "pairs.jsonl"
    if not pairs_file.is_file():
        raise UserError(f"{pairs_file} does not exist; run `umeflow data build` first or point --data at its output")
    records, bad = load_records(pairs_file, "mmeb_train", media_root=root, on_bad_record=cfg.on_bad_record)
    if cfg.limit:
        records = records[:cfg.limit]
    if not records:
        raise UserError(f"{pairs_file} holds no usable pair ({bad.count} bad records skipped)")
    pairs = [sides_of(r, f"{pairs_file.name}:{r['_line']}", root, cfg.max_summary_words) for r in records]
    responses, backend_stats = annotate_sides(cfg, [s for pair in pairs for s in pair])

    dropped, rejected_sides = Counter(), Counter()
    kept_by_dataset = Counter()
    lines = []
    for i, (query, target) in enumerate(pairs):
        q, t = responses[2 * i] + GEN_EMB, responses[2 * i + 1] + GEN_EMB
        reasons = [check(r, cfg.filter_ngram, cfg.filter_max_repeats, cfg.max_reasoning_tokens) for r in (q, t)]
        rejected_sides.update(r for r in reasons if r)
        if any(reasons):
            dropped[next(r for r in reasons if r)] += 1
            continue
        kept_by_dataset[query.dataset] += 1
        lines.append(json.dumps({"dataset_name": query.dataset, "qry": sft_side(query, q), "pos": sft_side(target, t)},
                                ensure_ascii=False))
    if not lines:
        raise UserError(f"every pair was filtered out (dropped: {dict(dropped)}); check the annotator's output "
                        f"format against <think>…</think><answer>…")

    metrics = {"backend": cfg.backend, "pairs_in": len(records), "pairs_kept": len(lines),
               "pairs_dropped": len(records) - len(lines), "bad_records_skipped": bad.count,
               **{f"dropped_{r}": dropped[r] for r in REASONS},
               **{f"rejected_sides_{r}": rejected_sides[r] for r in REASONS},
               **{f"kept.{name}": n for name, n in sorted(kept_by_dataset.items())},
               **backend_stats}
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "sft.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        write_json(tmp / "manifest.json", {"format": "ume_sft", "media_root": str(root.resolve()),
                                           "records": len(lines), "backend": cfg.backend,
                                           "sft_sha256": sha256_file(tmp / "sft.jsonl")})
        write_json(tmp / "metrics.json", metrics)
        write_run_info(tmp, cfg, inputs={"train/pairs.jsonl": sha256_file(pairs_file)})
    log.info("annotate (%s): %d pairs in, %d kept, dropped %s, %d bad records skipped", cfg.backend, len(records),
             len(lines), dict(dropped) or "none", bad.count)
    return metrics
