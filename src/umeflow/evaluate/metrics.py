"""Ranking metrics with VLM2Vec's definitions and keys (method.md §3.4): per query, then the mean over queries.

``ranking`` is a list of candidate names ordered best first (the top 10 suffice: every metric stops at k ≤ 10);
``labels`` are the ground-truth names; ``rel_scores`` (optional) are graded relevances aligned with ``labels``.

``score_rankings`` returns exactly the keys VLM2Vec's ``eval.py`` writes to ``{task}_score.json`` (its default metric
list ``hit, ndcg, precision, recall, f1, map, mrr`` at k = 1, 5, 10, then ``num_pred`` and ``num_data``), in its key
order. Definitions follow its ``RankingMetrics``, conventions included: an empty label set has recall 1.0;
``precision@k`` divides by k even when the ranking is shorter; ``map@k`` normalises by ``min(#labels, k)``; a label
counts as relevant for hit/precision/recall/f1/map/mrr whatever its grade (a grade only changes NDCG). One deliberate
difference: VLM2Vec de-duplicates labels with ``set()`` and then zips them with the *original* ``rel_scores``, which
pairs grades with the wrong documents whenever a query has several graded labels; umeflow keeps each label with its
own grade (a duplicated label keeps its highest grade).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

K_VALUES = (1, 5, 10)
# VLM2Vec eval.py's default metric list, in the order its score files list them (ndcg expands to linear, exponential)
METRIC_NAMES = ("hit", "ndcg_linear", "ndcg_exponential", "precision", "recall", "f1", "map", "mrr")
SCORE_KEYS = tuple(f"{m}@{k}" for m in METRIC_NAMES for k in K_VALUES) + ("num_pred", "num_data")


def _relevance(labels: Sequence[str], rel_scores: Sequence[float] | None) -> dict[str, float]:
    """Label name -> grade (1 for binary labels); a label listed twice keeps its highest grade."""
    if rel_scores is None:
        return {name: 1.0 for name in labels}
    if len(rel_scores) != len(labels):
        raise ValueError(f"{len(rel_scores)} relevance scores for {len(labels)} labels")
    rel: dict[str, float] = {}
    for name, grade in zip(labels, rel_scores):
        rel[name] = max(float(grade), rel.get(name, float("-inf")))
    return rel


def _dcg(gains: Sequence[float], form: str) -> float:
    if form == "exponential":
        gains = [2.0 ** g - 1 for g in gains]
    return sum(g / math.log2(r + 2) for r, g in enumerate(gains))


def _ndcg(ranking: Sequence[str], rel: dict[str, float], k: int, form: str) -> float:
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = _dcg(ideal, form) if ideal else 1.0  # no labels: DCG is 0, so the score is 0
    return _dcg([rel.get(name, 0.0) for name in ranking[:k]], form) / idcg if idcg > 0 else 0.0


def query_metrics(ranking: Sequence[str], labels: Sequence[str],
                  rel_scores: Sequence[float] | None = None) -> dict[str, float]:
    """Every VLM2Vec metric at k = 1, 5, 10 for one query."""
    rel = _relevance(labels, rel_scores)
    out: dict[str, float] = {}
    for k in K_VALUES:
        top = ranking[:k]
        hits = len(set(top) & rel.keys())
        precision = hits / k if rel else 0.0
        recall = hits / len(rel) if rel else 1.0  # VLM2Vec: "all 0 relevant items were recalled"
        first = next((r for r, name in enumerate(top) if name in rel), None)
        found, ap = 0, 0.0
        for r, name in enumerate(top):
            if name in rel:
                found += 1
                ap += found / (r + 1)
        out[f"hit@{k}"] = 1.0 if hits else 0.0
        out[f"ndcg_linear@{k}"] = _ndcg(ranking, rel, k, "linear")
        out[f"ndcg_exponential@{k}"] = _ndcg(ranking, rel, k, "exponential")
        out[f"precision@{k}"] = precision
        out[f"recall@{k}"] = recall
        out[f"f1@{k}"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[f"map@{k}"] = ap / min(len(rel), k) if found else 0.0
        out[f"mrr@{k}"] = 1.0 / (first + 1) if first is not None else 0.0
    return out


def hit_at_k(ranking: Sequence[str], labels: Sequence[str], k: int) -> float:
    return 1.0 if set(ranking[:k]) & set(labels) else 0.0


def ndcg_linear_at_k(ranking: Sequence[str], labels: Sequence[str], k: int,
                     rel_scores: Sequence[float] | None = None) -> float:
    return _ndcg(ranking, _relevance(labels, rel_scores), k, "linear")


def query_metric_rows(rankings: Sequence[Sequence[str]], labels: Sequence[Sequence[str]],
                      rel_scores: Sequence[Sequence[float] | None] | None = None) -> list[dict[str, float]]:
    """``query_metrics`` for each query: computed once, then averaged (``mean_scores``) or read per query."""
    n = len(rankings)
    if n != len(labels):
        raise ValueError(f"{n} rankings for {len(labels)} label sets")
    rel_scores = rel_scores or [None] * n
    return [query_metrics(r, lab, s) for r, lab, s in zip(rankings, labels, rel_scores)]


def score_rankings(rankings: Sequence[Sequence[str]], labels: Sequence[Sequence[str]],
                   rel_scores: Sequence[Sequence[float] | None] | None = None) -> dict[str, float]:
    """The mean of every metric over queries, plus ``num_pred``/``num_data``: a VLM2Vec ``{task}_score.json``."""
    return mean_scores(query_metric_rows(rankings, labels, rel_scores))


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of every metric over per-query rows, plus ``num_pred``/``num_data``."""
    if not rows:
        raise ValueError("no rankings to score")
    out: dict[str, float] = {key: float(np.mean([row[key] for row in rows])) for key in SCORE_KEYS[:-2]}
    out["num_pred"] = len(rows)
    out["num_data"] = len(rows)
    return out


def per_query(rankings: Sequence[Sequence[str]], labels: Sequence[Sequence[str]], metric: str,
              rel_scores: Sequence[Sequence[float] | None] | None = None) -> list[float]:
    """One metric (a ``SCORE_KEYS`` name such as ``hit@1``) for each query, for oracle/selector/pass@k."""
    if metric not in SCORE_KEYS[:-2]:
        raise ValueError(f"unknown metric {metric!r}")
    return [row[metric] for row in query_metric_rows(rankings, labels, rel_scores)]
