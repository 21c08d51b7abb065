"""``umeflow embed``: embed a JSONL of items with a checkpoint → ``.npy`` (+ generated texts in gen mode).

Input lines: ``{"text": "...", "image": "a.png" | "images": [...], "video": ["f0.jpg", ...]}``. Media paths are
relative to the media root (``media_root``, default: the input file's folder) and must stay inside it — no absolute
path, no ``..`` out of it, no symlink to a file elsewhere — unless ``allow_any_path`` (``--allow-any-path``) is set,
which accepts any path a user names (absolute, or relative to the media root). ``"video": []`` is refused (a video
without frames is a mistake; leave the key out for an item without video). Each text must fit ``max_input_tokens``.

Outputs, next to ``--out``: ``OUT.npy`` (float32, L2-normalised; (N, S, D) when ``num_samples`` > 1),
``OUT.texts.jsonl`` (gen mode only: the reasoning, fallback flag per item), ``OUT.metrics.json`` and
``OUT.run_info.json``. They are written into a staging folder and published together: the old ``OUT.npy`` is removed
first and the new one moved in last, so a set with an ``OUT.npy`` is always one run's, and a sidecar this run does not
write (``OUT.texts.jsonl`` of an earlier gen run before a disc run) is removed, not left beside the new vectors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from umeflow.config import EmbedConfig
from umeflow.errors import RecordError, UserError
from umeflow.io import iter_jsonl, sha256_file, write_json, write_run_info
from umeflow.model.items import Item, TextBudget

log = logging.getLogger(__name__)

# Every file one run publishes, by suffix after the output stem; the vectors last (see the module docstring).
SIDECARS = (".texts.jsonl", ".metrics.json", ".run_info.json")
VECTORS = ".npy"


def read_items(path: str | Path, media_root: str | Path | None = None, allow_any_path: bool = False,
               budget: TextBudget | None = None) -> list[Item]:
    """Parse and validate an items JSONL; every problem names the file, line and field.

    Media resolve against ``media_root`` (default: the file's folder) and must stay inside it unless
    ``allow_any_path``; every image must decode within the pixel budget; with ``budget`` texts must fit it."""
    from umeflow.data.schemas import image_problem
    from umeflow.storage import OutsideRoot, path_inside

    path = Path(path)
    if not path.is_file():
        raise UserError(f"input file {path} does not exist")
    root = Path(media_root) if media_root else path.parent
    items = []
    for line, rec in iter_jsonl(path):
        text = rec.get("text", "")
        if not isinstance(text, str):
            raise RecordError(path, line, "text", f"expected a string, got {type(text).__name__}")
        if budget is not None and (reason := budget.check(text)):
            raise RecordError(path, line, "text", f"text {reason}")
        media = {}
        for key in ("image", "images", "video"):
            value = rec.get(key)
            if key == "video" and value == []:
                raise RecordError(path, line, key, "is an empty frame list; leave the key out for an item "
                                                   "without video")
            if value is None or value == "" or value == []:
                continue
            paths = [value] if isinstance(value, str) else value
            if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
                raise RecordError(path, line, key, "expected a path or a list of paths")
            for p in paths:
                if allow_any_path:
                    target = root / p  # an absolute p stays itself
                else:
                    try:
                        target = path_inside(root, p)
                    except OutsideRoot as e:
                        raise RecordError(path, line, key, f"{e}; pass --allow-any-path (embed.allow_any_path) "
                                                           "to embed files outside it") from None
                if not target.is_file():
                    raise RecordError(path, line, key, f"media file {p} does not exist under {root}")
                if reason := image_problem(target):
                    raise RecordError(path, line, key, f"media file {p} {reason}")
            media[key] = paths
        if not text.strip() and not media:
            raise RecordError(path, line, "text", "item has neither text nor media")
        items.append(Item.from_dict({"text": text, **media}, base=root))
    if not items:
        raise UserError(f"{path} contains no items")
    return items


def _publish(staging: Path, stem: Path) -> None:
    """Move one run's files from ``staging`` next to ``stem``: old vectors out first, stale sidecars removed, the
    new sidecars in, the new vectors last. A run killed in between leaves no ``.npy`` beside mismatched files."""
    final = lambda suffix: stem.parent / (stem.name + suffix)  # noqa: E731
    final(VECTORS).unlink(missing_ok=True)
    for suffix in SIDECARS:
        if (staging / (stem.name + suffix)).exists():
            os.replace(staging / (stem.name + suffix), final(suffix))
        else:
            final(suffix).unlink(missing_ok=True)
    os.replace(staging / (stem.name + VECTORS), final(VECTORS))


def run(cfg: EmbedConfig) -> dict:
    from umeflow.model.embedder import Embedder
    from umeflow.model.vision import VisionSizing

    if not cfg.input or not cfg.out:
        raise UserError("embed needs --input ITEMS.jsonl and --out FILE.npy")
    from umeflow.io import ensure_writable_dir

    ensure_writable_dir(Path(cfg.out).parent)  # fail before embedding, not when the .npy is written
    # the checkpoint's tokenizer is loaded only if a text is long enough to need counting
    items = read_items(cfg.input, cfg.media_root or None, cfg.allow_any_path, TextBudget(cfg.max_input_tokens,
                                                                                          cfg.model))
    out = Path(cfg.out)
    stem = out.with_suffix("") if out.suffix == VECTORS else out
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
    metrics = {"num_items": len(items), "embedding_dim": int(enc.embeddings.shape[-1]), "seconds": seconds,
               "items_per_second": len(items) / seconds if seconds else 0.0,
               "fallback_count": int(enc.stats.get("fallback_count", 0))}
    stem.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{stem.name}.", dir=stem.parent))
    try:
        with open(staging / (stem.name + VECTORS), "wb") as f:
            np.save(f, enc.embeddings)
        if cfg.mode == "gen":
            with open(staging / (stem.name + ".texts.jsonl"), "w", encoding="utf-8") as f:
                for text, fb in zip(enc.texts, enc.fallback.tolist()):
                    f.write(json.dumps({"text": text, "fallback": fb}, ensure_ascii=False) + "\n")
        write_json(staging / (stem.name + ".metrics.json"), metrics)
        write_run_info(staging, cfg, inputs={"items": sha256_file(cfg.input)}, name=stem.name + ".run_info.json")
        _publish(staging, stem)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("embedded %d items (%s) in %.1fs → %s.npy", len(items), cfg.mode, seconds, stem)
    return metrics
