"""One generic runner for every task: embed unique queries/candidates once per mode, rank, score.

Embeddings come from an ``EmbeddingStore`` that keys them by content (text + media bytes) and persists them
(``evaluate.cache``): a candidate shared by many queries or tasks is embedded once per mode and model, and a killed
run resumes where it stopped. In gen mode the disc embedding is read from the same prefill, so ``--mode both`` costs
one generation pass. Gen mode keeps what it generated in a ``TraceCache`` too: an item whose trace is cached (another
read-out, another run, the faithfulness check) costs one teacher-forced prefill, not a generation. With the in-process
``hf`` engine a fresh generation records its states as it goes (no second forward); any other engine (``openai``,
``vllm``) generates and ``Embedder.extract`` reads the embeddings.

Per task the runner scores every query-mode × target-mode pair it has (disc/disc, disc/gen, gen/disc, gen/gen), the
oracle (per query the better of disc/disc and gen/gen — an upper bound, it uses the labels), the label-free selector
(``evaluate.selector``), and pass@k when sampled gen embeddings are requested.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from umeflow.errors import UserError
from umeflow.evaluate import faithfulness as faith
from umeflow.evaluate import selector
from umeflow.evaluate.cache import EmbeddingCache, TraceCache, content_key, setting_name
from umeflow.evaluate.metrics import mean_scores, per_query, query_metric_rows
from umeflow.evaluate.tasks import TaskData, TaskMeta, load_task
from umeflow.model.generation import Sampling
from umeflow.model.items import Encoded, Item, TextBudget

log = logging.getLogger(__name__)

__all__ = ["EmbeddingStore", "evaluate_task", "subsample", "content_key", "pair_name", "fallback_warnings"]


def pair_name(qmode: str, tmode: str) -> str:
    return f"{qmode}_{tmode}"


@dataclass
class EmbeddingStore:
    """Embeddings per setting and content key for one model; ``calls`` counts items actually sent to the model,
    ``generated`` the gen-mode items generated (not found in the trace cache), ``extracted`` those read by a
    teacher-forced prefill from a trace."""

    embedder: object
    cache: EmbeddingCache = field(default_factory=lambda: EmbeddingCache(None, "memory"))
    traces: TraceCache = field(default_factory=lambda: TraceCache(None, "memory"))
    engine: object = None  # a model.generation engine; None = in-process generate with the hook ("hf")
    batch_size: int = 8
    max_new_tokens: int = 64
    chunk_size: int = 64  # items per cache write: a kill loses at most this much work
    temperature: float = 1.0
    progress: bool = True
    calls: int = 0
    requests: int = 0
    generated: int = 0
    extracted: int = 0

    @property
    def engine_name(self) -> str:
        return "hf" if self.engine is None else self.engine.name

    def _gen_setting(self, sample: int | None = None) -> str:
        if sample is None:
            return setting_name("gen", self.max_new_tokens, engine=self.engine_name)
        return setting_name("gen", self.max_new_tokens, True, self.temperature, sample, engine=self.engine_name)

    def _sampling(self, sample: int | None = None) -> Sampling:
        if sample is None:
            return Sampling(self.max_new_tokens)
        return Sampling(self.max_new_tokens, True, self.temperature, seed=sample)

    def trace_setting(self, sample: int | None = None) -> str:
        return f"{self.engine_name}-{self._sampling(sample).tag()}"

    def embed(self, items: list[Item], mode: str, desc: str = "") -> tuple[np.ndarray, list[str]]:
        """(N, D) embeddings of ``items`` in ``mode`` ("disc" or "gen"); computes only what the cache lacks."""
        keys = [content_key(it) for it in items]
        self.requests += len(items)
        setting = "disc" if mode == "disc" else self._gen_setting()
        todo = dict.fromkeys(self.cache.missing(setting, keys))
        if todo:
            by_key = dict(zip(keys, items))
            self._compute([by_key[k] for k in todo], list(todo), mode, desc)
        return np.stack([self.cache.get(setting, k)[0] for k in keys]), keys

    def embed_samples(self, items: list[Item], k: int, desc: str = "") -> np.ndarray:
        """(N, k, D) sampled gen embeddings for pass@k (sample s is generated with seed s)."""
        keys = [content_key(it) for it in items]
        by_key = dict(zip(keys, items))
        for s in range(k):
            todo = list(dict.fromkeys(self.cache.missing(self._gen_setting(s), keys)))
            bar = tqdm(total=len(todo), desc=f"{desc} gen sample {s + 1}/{k}", unit="item",
                       disable=not self.progress or not todo, leave=False)
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start:start + self.chunk_size]
                enc = self._generate_and_extract([by_key[c] for c in chunk], chunk, s)
                self.cache.put(self._gen_setting(s), chunk, enc.embeddings, enc.texts, enc.fallback)
                bar.update(len(chunk))
            bar.close()
        return np.stack([np.stack([self.cache.get(self._gen_setting(s), key)[0] for s in range(k)])
                         for key in keys])

    def _compute(self, items: list[Item], keys: list[str], mode: str, desc: str) -> None:
        bar = tqdm(total=len(items), desc=f"{desc} {mode}".strip(), unit="item", disable=not self.progress,
                   leave=False)
        for start in range(0, len(items), self.chunk_size):
            chunk_items, chunk_keys = items[start:start + self.chunk_size], keys[start:start + self.chunk_size]
            if mode == "gen":
                enc = self._generate_and_extract(chunk_items, chunk_keys)
                self.cache.put(self._gen_setting(), chunk_keys, enc.embeddings, enc.texts, enc.fallback)
                missing_disc = set(self.cache.missing("disc", chunk_keys))
                if missing_disc:  # the disc vectors came with the same prefill: keep them too
                    idx = [i for i, k in enumerate(chunk_keys) if k in missing_disc]
                    self.cache.put("disc", [chunk_keys[i] for i in idx], enc.disc_embeddings[idx])
            else:
                self.calls += len(chunk_items)
                enc = self.embedder.encode(chunk_items, mode="disc", batch_size=self.batch_size, progress=False)
                self.cache.put("disc", chunk_keys, enc.embeddings)
            bar.update(len(chunk_items))
        bar.close()

    def _generate_and_extract(self, items: list[Item], keys: list[str], sample: int | None = None) -> Encoded:
        """Gen embeddings of ``items``: traces from the trace cache where it has them (a prefill each), the rest
        generated and their traces cached — as they arrive, so a failed or killed run keeps what it got."""
        setting, sampling = self.trace_setting(sample), self._sampling(sample)
        cached = {i: t for i, k in enumerate(keys) if (t := self.traces.get(setting, k)) is not None}
        fresh = [i for i in range(len(items)) if i not in cached]
        self.calls += len(items)
        self.generated += len(fresh)
        self.extracted += len(cached) if self.engine is None else len(items)
        parts: dict[int, tuple] = {}  # item index -> (embedding, disc, text, fallback)
        if fresh and self.engine is None:  # in-process: the states come with the generation
            enc = self.embedder.encode([items[i] for i in fresh], mode="gen", batch_size=self.batch_size,
                                       max_new_tokens=sampling.max_new_tokens, do_sample=sampling.do_sample,
                                       temperature=sampling.temperature, seed=sampling.seed, progress=False)
            self.traces.put(setting, {keys[i]: t for i, t in zip(fresh, enc.traces)})
            parts.update({i: _row(enc, j) for j, i in enumerate(fresh)})
        elif fresh:
            got: dict[str, object] = {}
            try:
                traces = self.engine.generate([items[i] for i in fresh], sampling,
                                              on_trace=lambda j, t: got.__setitem__(keys[fresh[j]], t))
            finally:
                self.traces.put(setting, got)
            cached.update(zip(fresh, traces))
        if cached:
            order = sorted(cached)
            enc = self.embedder.extract([items[i] for i in order], [cached[i] for i in order], self.batch_size)
            parts.update({i: _row(enc, j) for j, i in enumerate(order)})
        rows = [parts[i] for i in range(len(items))]
        return Encoded(embeddings=np.stack([r[0] for r in rows]), disc_embeddings=np.stack([r[1] for r in rows]),
                       texts=[r[2] for r in rows], fallback=np.asarray([r[3] for r in rows], dtype=bool))

    def traces_of(self, items: list[Item]) -> list:
        """The greedy trace of each item: from the trace cache, generated (and cached) where it is missing (gen
        vectors that came from an embedding cache older than the trace cache)."""
        keys = [content_key(it) for it in items]
        setting = self.trace_setting()
        missing = list(dict.fromkeys(k for k in keys if self.traces.get(setting, k) is None))
        if missing:
            by_key = dict(zip(keys, items))
            self._generate_and_extract([by_key[k] for k in missing], missing)
        return [self.traces.get(setting, k) for k in keys]

    def extract(self, items: list[Item], traces: list) -> Encoded:
        """Gen embeddings of ``items`` read from the given traces (one prefill each; nothing cached)."""
        self.extracted += len(items)
        return self.embedder.extract(items, traces, self.batch_size)

    def gen_info(self, keys: list[str]) -> tuple[list[str], list[bool]]:
        setting = self._gen_setting()
        entries = [self.cache.get(setting, k) for k in keys]
        return [e[1] or "" for e in entries], [bool(e[2]) for e in entries]


def _row(enc: Encoded, j: int) -> tuple:
    return enc.embeddings[j], enc.disc_embeddings[j], enc.texts[j], bool(enc.fallback[j])


def fallback_warnings(results: dict[str, dict], threshold: float, max_new_tokens: int) -> list[str]:
    """One line per task whose queries or candidates fell back (no usable ``<gen_emb>``) more often than
    ``threshold``: their gen vectors are not what the model means to embed, so the task's gen scores are suspect."""
    lines = []
    for name, r in results.items():
        q, c = r.get("gen_fallback_rate", 0.0), r.get("gen_fallback_rate_candidates", 0.0)
        if max(q, c) > threshold:
            lines.append(f"{name}: {100 * q:.1f}% of queries and {100 * c:.1f}% of candidates generated no usable "
                         f"<gen_emb> (warning threshold {100 * threshold:g}%); their gen embeddings are fallback "
                         f"states. Is max_new_tokens={max_new_tokens} too small for the model's reasoning? "
                         "(UME-R1 evaluates with 8192)")
    return lines


def subsample(data: TaskData, max_queries: int, seed: int) -> TaskData:
    if not max_queries or len(data.queries) <= max_queries:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(len(data.queries), max_queries, replace=False))
    pick = lambda xs: [xs[i] for i in idx] if xs is not None else None  # noqa: E731
    return TaskData(data.meta, pick(data.queries), pick(data.labels), data.candidates, pick(data.query_candidates),
                    pick(getattr(data, "rel_scores", None)), pick(data.query_origins), data.candidate_origins)


def _scores_and_rankings(data: TaskData, q: np.ndarray, names: list[str], c: np.ndarray):
    """Per query: its candidate names ranked best first, the confidence of that ranking, and the raw scores."""
    index = {n: i for i, n in enumerate(names)}
    rankings, conf, raw = [], [], []
    full = q @ c.T if data.query_candidates is None else None
    for qi in range(len(data.queries)):
        if full is None:
            own = data.query_candidates[qi]
            scores = c[[index[n] for n in own]] @ q[qi]
        else:
            own, scores = names, full[qi]
        # Exact ties are broken *against* list order. MMEB lists put the ground truth first, so an order-keeping
        # sort would hand a collapsed model (all scores equal) a perfect Hit@1; this way it scores nothing.
        top = (len(own) - 1 - np.argsort(-scores[::-1], kind="stable"))[:10]
        rankings.append([own[i] for i in top])
        conf.append(selector.confidence(scores))
        raw.append(scores)
    return rankings, np.asarray(conf), raw


def check_text_budget(data: TaskData, names: list[str], budget: TextBudget) -> None:
    """Refuse the first query or candidate (of those scored) whose text is over ``budget``, naming the row it was
    read from (``file:line``) and the task."""
    q_origins = data.query_origins or [None] * len(data.queries)
    c_origins = data.candidate_origins or {}
    inputs = [("query", q, where) for q, where in zip(data.queries, q_origins)]
    inputs += [(f"candidate {n[:80]!r}", data.candidates[n], c_origins.get(n)) for n in names]
    for what, item, where in inputs:
        if reason := budget.check(item.text):
            raise UserError(f"{where or data.meta.name}: task {data.meta.name}: the {what} text {reason}")


def chance_level(meta: TaskMeta, data: TaskData, names: list[str]) -> float | None:
    """Expected Hit@1 of a random ranking: per query, its positives over its candidates (local: its own list,
    global: the pool), averaged; None for other metrics (a random NDCG depends on the graded relevances)."""
    if meta.metric != "hit@1" or not data.queries:
        return None
    pool = set(names)
    per_query = []
    for qi, positives in enumerate(data.labels):
        cands = set(data.query_candidates[qi]) if data.query_candidates is not None else pool
        per_query.append(min(1.0, len(set(positives) & cands) / len(cands)) if cands else 0.0)
    return float(np.mean(per_query))


def fused(disc: np.ndarray, gen: np.ndarray) -> np.ndarray:
    """``L2(disc + gen)`` per row: a label-free combination of the two embeddings of one input."""
    both = disc + gen
    return both / np.maximum(np.linalg.norm(both, axis=-1, keepdims=True), 1e-12)


def faithfulness_of(data: TaskData, names: list[str], store: EmbeddingStore, q_gen: np.ndarray, c_gen: np.ndarray,
                    metric: str, original: list[float]) -> dict | None:
    """The faithfulness entry of one task (``evaluate.faithfulness``); None when no query trace has reasoning."""
    idx, changed = faith.variants(store.traces_of(data.queries))
    if not idx:
        return None
    rel = getattr(data, "rel_scores", None)
    out = {"queries": len(idx), "metric": metric, "original": float(np.mean(np.asarray(original)[idx]))}
    for variant in faith.VARIANTS:
        vectors = store.extract([data.queries[i] for i in idx], changed[variant]).embeddings
        out[f"cos_{variant}"] = faith.mean_cosine(vectors, q_gen[idx])
        q = q_gen.copy()
        q[idx] = vectors
        rankings, _, _ = _scores_and_rankings(data, q, names, c_gen)
        out[variant] = float(np.mean(np.asarray(per_query(rankings, data.labels, metric, rel))[idx]))
        out[f"delta_{variant}"] = out[variant] - out["original"]
    return out


def evaluate_task(meta: TaskMeta, data_root, store: EmbeddingStore, modes: tuple[str, ...],
                  max_queries: int = 0, seed: int = 0, pass_k: int = 0, budget: TextBudget | None = None,
                  faithfulness: bool = False) -> dict:
    full = load_task(meta, data_root)
    data = subsample(full, max_queries, seed)
    rel = getattr(data, "rel_scores", None)
    names = list(data.candidates)
    if data.query_candidates is not None:  # local: embed only the candidates these queries use
        used = {n for lst in data.query_candidates for n in lst}
        names = [n for n in names if n in used]
    cand_items = [data.candidates[n] for n in names]
    if budget is not None:  # before any embedding: one over-long text would run for minutes or exhaust memory
        check_text_budget(data, names, budget)
    q_emb, c_emb, q_keys, c_keys = {}, {}, [], []
    for mode in sorted(modes, key=lambda m: m != "gen"):  # gen first: it brings the disc vectors along
        q_emb[mode], q_keys = store.embed(data.queries, mode, desc=f"{meta.name} queries")
        c_emb[mode], c_keys = store.embed(cand_items, mode, desc=f"{meta.name} candidates")
    result = {"num_queries": len(data.queries), "num_queries_total": len(full.queries),
              "num_candidates": len(names), "chance": chance_level(meta, data, names), "scores": {}, "per_query": {}}
    conf, raw = {}, {}
    for qm in modes:
        for tm in modes:
            rankings, cf, scores = _scores_and_rankings(data, q_emb[qm], names, c_emb[tm])
            pair = pair_name(qm, tm)
            rows = query_metric_rows(rankings, data.labels, rel)  # once: the means and the per-query main metric
            result["scores"][pair] = mean_scores(rows)
            result["per_query"][pair] = [row[meta.metric] for row in rows]
            if qm == tm:
                conf[qm], raw[qm] = cf, scores
    if "disc" in modes and "gen" in modes:
        dd, gg = np.asarray(result["per_query"]["disc_disc"]), np.asarray(result["per_query"]["gen_gen"])
        result["scores"]["oracle"] = {meta.metric: float(np.maximum(dd, gg).mean())}
        pick_gen = selector.choose(conf["disc"], conf["gen"])
        result["scores"]["selector"] = {meta.metric: float(np.where(pick_gen, gg, dd).mean()),
                                        "chose_gen_fraction": float(pick_gen.mean())}
        cross = selector.choose_cross(raw["disc"], raw["gen"])
        result["scores"]["selector_cross"] = {meta.metric: float(np.where(cross, gg, dd).mean()),
                                              "chose_gen_fraction": float(cross.mean())}
        rankings, _, _ = _scores_and_rankings(data, fused(q_emb["disc"], q_emb["gen"]), names,
                                              fused(c_emb["disc"], c_emb["gen"]))
        rows = query_metric_rows(rankings, data.labels, rel)
        result["scores"]["fused"] = mean_scores(rows)
        result["per_query"]["fused"] = [row[meta.metric] for row in rows]
    if pass_k:
        samples = store.embed_samples(data.queries, pass_k, desc=meta.name)
        target_mode = "gen" if "gen" in modes else "disc"
        best = np.zeros(len(data.queries))
        for s in range(pass_k):
            rankings, _, _ = _scores_and_rankings(data, samples[:, s], names, c_emb[target_mode])
            best = np.maximum(best, per_query(rankings, data.labels, meta.metric, rel))
        result["scores"][f"pass@{pass_k}"] = {meta.metric: float(best.mean())}
    if "gen" in modes:
        texts, fallback = store.gen_info(q_keys)
        result["gen_fallback_rate"] = float(np.mean(fallback))
        # candidates are generated for too (gen targets): a budget that cuts their reasoning hurts just as much
        result["gen_fallback_rate_candidates"] = float(np.mean(store.gen_info(c_keys)[1])) if c_keys else 0.0
        result["gen_examples"] = texts[:2]
        if faithfulness:
            entry = faithfulness_of(data, names, store, q_emb["gen"], c_emb["gen"], meta.metric,
                                    result["per_query"]["gen_gen"])
            if entry is not None:
                result["faithfulness"] = entry
    return result
