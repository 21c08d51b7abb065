"""One generic runner for every task: embed unique queries/candidates once per mode, rank, score.

Embeddings are keyed by content (text + media bytes), so a candidate shared by several tasks, or the same label text
used by every query, is embedded once per mode and run. In gen mode the disc embedding comes from the same prefill,
so ``modes=("disc", "gen")`` costs one generation pass.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from umeflow.evaluate.metrics import score_rankings
from umeflow.evaluate.tasks import TaskData, TaskMeta, load_task
from umeflow.model.items import Item

log = logging.getLogger(__name__)


def content_key(item: Item) -> str:
    """Stable key of what the model sees: text plus the bytes of every image/frame (paths may differ)."""
    h = hashlib.sha256(item.text.encode())
    for group, media in (("i", item.images), ("v", item.video or ())):
        for m in media:
            h.update(group.encode())
            if isinstance(m, (str, Path)):
                h.update(hashlib.sha256(Path(m).read_bytes()).digest())
            else:
                h.update(m.tobytes())
    return h.hexdigest()


@dataclass
class EmbeddingStore:
    """Embeddings per mode and content key for one model; ``calls`` counts items actually sent to the model."""

    embedder: object
    batch_size: int = 8
    max_new_tokens: int = 64
    vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: {"disc": {}, "gen": {}})
    fallback: dict[str, bool] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    requests: int = 0

    def embed(self, items: list[Item], modes: tuple[str, ...]) -> dict[str, np.ndarray]:
        keys = [content_key(it) for it in items]
        self.requests += len(items)
        todo: dict[str, Item] = {}
        for k, it in zip(keys, items):
            if any(k not in self.vectors[m] for m in modes):
                todo.setdefault(k, it)
        if todo:
            todo_keys, todo_items = list(todo), list(todo.values())
            self.calls += len(todo_items)
            if "gen" in modes:
                enc = self.embedder.encode(todo_items, mode="gen", batch_size=self.batch_size,
                                           max_new_tokens=self.max_new_tokens)
                for i, k in enumerate(todo_keys):
                    self.vectors["gen"][k] = enc.embeddings[i]
                    self.vectors["disc"][k] = enc.disc_embeddings[i]
                    self.fallback[k] = bool(enc.fallback[i])
                    self.texts[k] = enc.texts[i]
            else:
                enc = self.embedder.encode(todo_items, mode="disc", batch_size=self.batch_size)
                for i, k in enumerate(todo_keys):
                    self.vectors["disc"][k] = enc.embeddings[i]
        return {m: np.stack([self.vectors[m][k] for k in keys]) for m in modes}, keys


def _rank(data: TaskData, q: np.ndarray, names: list[str], c: np.ndarray) -> list[list[str]]:
    index = {n: i for i, n in enumerate(names)}
    rankings = []
    for qi in range(len(data.queries)):
        own = data.query_candidates[qi] if data.query_candidates is not None else names
        rows = c[[index[n] for n in own]]
        scores = rows @ q[qi]
        # stable sort: ties keep list order, as VLM2Vec's argsort over the candidate list does
        order = np.argsort(-scores, kind="stable")
        rankings.append([own[i] for i in order])
    return rankings


def subsample(data: TaskData, max_queries: int, seed: int) -> TaskData:
    if not max_queries or len(data.queries) <= max_queries:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data.queries), max_queries, replace=False))
    qc = [data.query_candidates[i] for i in idx] if data.query_candidates is not None else None
    return TaskData(data.meta, [data.queries[i] for i in idx], [data.labels[i] for i in idx], data.candidates, qc)


def evaluate_task(meta: TaskMeta, data_root: str | Path, store: EmbeddingStore, modes: tuple[str, ...],
                  max_queries: int = 0, seed: int = 0) -> dict:
    full = load_task(meta, data_root)
    data = subsample(full, max_queries, seed)
    names = list(data.candidates)
    if data.query_candidates is not None:  # local: embed only the candidates these queries use
        used = {n for lst in data.query_candidates for n in lst}
        names = [n for n in names if n in used]
    q_emb, q_keys = store.embed(data.queries, modes)
    c_emb, _ = store.embed([data.candidates[n] for n in names], modes)
    result = {"num_queries": len(data.queries), "num_queries_total": len(full.queries),
              "num_candidates": len(names), "scores": {}}
    for mode in modes:
        rankings = _rank(data, q_emb[mode], names, c_emb[mode])
        result["scores"][mode] = score_rankings(rankings, data.labels)
    if "gen" in modes:
        result["gen_fallback_rate"] = float(np.mean([store.fallback.get(k, False) for k in q_keys]))
        result["gen_examples"] = [store.texts.get(k, "") for k in q_keys[:2]]
    return result
