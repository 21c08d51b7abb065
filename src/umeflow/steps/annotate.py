"""``umeflow annotate``: MMEB-train pairs → UME-R1 SFT records with a reasoning + summary on each side.

Reads ``<data>/train/pairs.jsonl`` (validated, media checked), annotates the query and the target of every pair
separately, filters with UME-R1's rules, and writes ``<out>/sft.jsonl`` (UME-R1 SFT layout), ``manifest.json``
(media root, counts, backend), ``metrics.json`` (kept, dropped per reason, cache hits, calls) and ``run_info.json``.
Everything is published atomically; nothing is dropped without being counted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm.auto import tqdm

from umeflow.annotate.backends import DEFAULT_PROMPT, GroundedAnnotator, OpenAIAnnotator, Side
from umeflow.annotate.filters import check
from umeflow.config import AnnotateConfig
from umeflow.data.schemas import load_records
from umeflow.errors import UserError
from umeflow.io import atomic_path, sha256_file, write_json, write_run_info
from umeflow.model.chat import GEN_EMB, user_text
from umeflow.model.items import strip_placeholders

log = logging.getLogger(__name__)


def summary_hint(rec: dict) -> str:
    """The pair's shared answer, from real metadata: the class label, the VQA answer, the category, the caption."""
    meta = rec.get("meta") or {}
    target = strip_placeholders(rec.get("pos_text", ""))
    if meta.get("label") and not meta.get("question"):
        return str(meta["label"]).lower()
    if meta.get("question") or (meta.get("category") and target == meta["category"]):
        return target
    caption = (meta.get("caption") or target).split(". ")[0]  # the first sentence, at most 8 words
    return " ".join(caption.rstrip(".").split()[:8])


def sides_of(rec: dict, line: int, root: Path, file: str) -> tuple[Side, Side]:
    hint = summary_hint(rec)
    meta = rec.get("meta") or {}

    def side(role, text_key, image_key):
        text = strip_placeholders(rec.get(text_key, ""))
        image = rec.get(image_key) or None
        return Side(f"{file}:{line} {'qry' if role == 'query' else 'pos'}", role, text,
                    root / image if image else None, meta, hint)

    return side("query", "qry", "qry_image_path"), side("target", "pos_text", "pos_image_path")


def _sft_side(side: Side, response: str, root: Path) -> dict:
    human = ("<image>\n" if side.image is not None else "") + user_text(side.text)
    out = {"conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": response}]}
    if side.image is not None:
        out["image"] = str(Path(side.image).relative_to(root))
    return out


def run(cfg: AnnotateConfig) -> dict:
    data = Path(cfg.data)
    root = data / "train"
    pairs_file = root / "pairs.jsonl"
    if not pairs_file.is_file():
        raise UserError(f"{pairs_file} does not exist; run `umeflow data build` first or point --data at its output")
    records, counter = load_records(pairs_file, "mmeb_train", media_root=root, on_bad_record=cfg.on_bad_record)
    if cfg.limit:
        records = records[:cfg.limit]
    pairs = [sides_of(r, r["_line"], root, pairs_file.name) for r in records]
    sides = [s for pair in pairs for s in pair]

    if cfg.backend == "grounded":
        annotator = GroundedAnnotator(cfg.seed, cfg.max_reasoning_words)
        responses = {s: annotator.annotate(s) for s in tqdm(sides, desc="annotate (grounded)", unit="side")}
        stats = {"calls": 0, "cache_hits": 0}
    elif cfg.backend == "openai":
        annotator = OpenAIAnnotator(cfg.base_url, cfg.model, cfg.cache_dir, cfg.api_key_env,
                                    cfg.prompt or DEFAULT_PROMPT, cfg.concurrency, cfg.max_retries, cfg.backoff_base,
                                    cfg.timeout)
        with tqdm(total=len(sides), desc=f"annotate ({cfg.model})", unit="side") as bar:
            responses = annotator.annotate_all(sides, bar)
        stats = {"calls": annotator.calls, "cache_hits": annotator.cache_hits}
    else:
        raise UserError(f"annotate.backend must be 'grounded' or 'openai', got {cfg.backend!r}")

    dropped = {"malformed": 0, "repeated_ngrams": 0, "too_long": 0}
    out_lines = []
    for rec, (q, t) in zip(records, pairs):
        rq, rt = responses[q] + GEN_EMB, responses[t] + GEN_EMB
        reason = (check(rq, cfg.filter_ngram, cfg.filter_max_repeats, cfg.filter_max_reasoning_words)
                  or check(rt, cfg.filter_ngram, cfg.filter_max_repeats, cfg.filter_max_reasoning_words))
        if reason:
            dropped[reason] += 1
            continue
        out_lines.append({"dataset_name": rec.get("dataset_name", ""), "qry": _sft_side(q, rq, root),
                          "pos": _sft_side(t, rt, root)})
    if not out_lines:
        raise UserError(f"every pair was filtered out ({dropped}); check the annotator's output format")

    metrics = {"pairs_in": len(records), "pairs_kept": len(out_lines), "backend": cfg.backend,
               **{f"dropped_{k}": v for k, v in dropped.items()}, **stats, **counter.summary()}
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, list)}
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        with open(tmp / "sft.jsonl", "w", encoding="utf-8") as f:
            for line in out_lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        write_json(tmp / "manifest.json", {"media_root": str(root.resolve()), "pairs": len(out_lines),
                                           "backend": cfg.backend, "sft_sha256": sha256_file(tmp / "sft.jsonl")})
        write_json(tmp / "metrics.json", metrics)
        write_run_info(tmp, cfg, inputs={"pairs.jsonl": sha256_file(pairs_file)})
    log.info("annotated %d pairs (%s); kept %d, dropped %s", len(records), cfg.backend, len(out_lines), dropped)
    return metrics
