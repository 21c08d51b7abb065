"""``umeflow embed``: embed a JSONL of items with a checkpoint → ``.npy`` (+ generated texts in gen mode).

Input lines: ``{"text": "...", "image": "a.png" | "images": [...], "video": ["f0.jpg", ...]}``; media paths are
relative to the input file's folder. Outputs (all written atomically next to ``--out``):
``OUT.npy`` (float32, L2-normalised; (N, S, D) when ``num_samples`` > 1), ``OUT.texts.jsonl`` (gen mode: the
reasoning, fallback flag per item), ``OUT.metrics.json`` and ``OUT.run_info.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from umeflow.config import EmbedConfig
from umeflow.errors import RecordError, UserError
from umeflow.io import atomic_path, iter_jsonl, sha256_file, write_json, write_run_info
from umeflow.model.items import Item

log = logging.getLogger(__name__)


def read_items(path: str | Path) -> list[Item]:
    """Parse and validate an items JSONL; every problem names the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"input file {path} does not exist")
    items = []
    for line, rec in iter_jsonl(path):
        text = rec.get("text", "")
        if not isinstance(text, str):
            raise RecordError(path, line, "text", f"expected a string, got {type(text).__name__}")
        media = {}
        for key in ("image", "images", "video"):
            value = rec.get(key)
            if value is None or value == "" or value == []:
                continue
            paths = [value] if isinstance(value, str) else value
            if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
                raise RecordError(path, line, key, "expected a path or a list of paths")
            for p in paths:
                if not (path.parent / p).is_file():
                    raise RecordError(path, line, key, f"media file {p} does not exist under {path.parent}")
            media[key] = paths
        if not text.strip() and not media:
            raise RecordError(path, line, "text", "item has neither text nor media")
        items.append(Item.from_dict({"text": text, **media}, base=path.parent))
    if not items:
        raise UserError(f"{path} contains no items")
    return items


def run(cfg: EmbedConfig) -> dict:
    from umeflow.model.embedder import Embedder
    from umeflow.model.vision import VisionSizing

    if not cfg.input or not cfg.out:
        raise UserError("embed needs --input ITEMS.jsonl and --out FILE.npy")
    items = read_items(cfg.input)
    out = Path(cfg.out)
    stem = out.with_suffix("") if out.suffix == ".npy" else out
    t0 = time.perf_counter()
    embedder = Embedder(cfg.model, sizing=VisionSizing.from_settings(cfg),  # pixels and disc read-out as `evaluate`
                        disc_readout=cfg.disc_readout)
    enc = embedder.encode(items, mode=cfg.mode, batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                          do_sample=cfg.do_sample, temperature=cfg.temperature, num_samples=cfg.num_samples,
                          seed=cfg.seed)
    seconds = time.perf_counter() - t0
    if enc.fallback is not None and enc.fallback.any():
        # any fallback is worth a warning here: there is no report to carry it
        log.warning("%d of %d items (%.1f%%) generated no usable <gen_emb>; their embedding is the last generated "
                    "state (flagged in %s.texts.jsonl). Is max_new_tokens=%d too small for the model's reasoning? "
                    "(UME-R1 evaluates with 8192)", int(enc.fallback.sum()), enc.fallback.size,
                    100 * float(enc.fallback.mean()), stem.name, cfg.max_new_tokens)
    with atomic_path(stem.parent / (stem.name + ".npy")) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, enc.embeddings)
    if cfg.mode == "gen":
        with atomic_path(stem.parent / (stem.name + ".texts.jsonl")) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                for text, fb in zip(enc.texts, enc.fallback.tolist()):
                    f.write(json.dumps({"text": text, "fallback": fb}, ensure_ascii=False) + "\n")
    metrics = {"num_items": len(items), "embedding_dim": int(enc.embeddings.shape[-1]), "seconds": seconds,
               "items_per_second": len(items) / seconds if seconds else 0.0,
               "fallback_count": int(enc.stats.get("fallback_count", 0))}
    write_json(stem.parent / (stem.name + ".metrics.json"), metrics)
    write_run_info(stem.parent, cfg, inputs={"items": sha256_file(cfg.input)}, name=stem.name + ".run_info.json")
    log.info("embedded %d items (%s) in %.1fs → %s.npy", len(items), cfg.mode, seconds, stem)
    return metrics
