"""Ranking metrics as VLM2Vec computes them (method.md §3.4): per query, then mean over queries.

``ranking`` is a list of candidate names ordered best first; ``labels`` are the ground-truth names (deduplicated);
``rel_scores`` (optional) are graded relevances aligned with ``labels``. NDCG uses *linear* gain (the visdoc metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def hit_at_k(ranking: Sequence[str], labels: Sequence[str], k: int) -> float:
    wanted = set(labels)
    return 1.0 if any(name in wanted for name in ranking[:k]) else 0.0


def ndcg_linear_at_k(ranking: Sequence[str], labels: Sequence[str], k: int,
                     rel_scores: Sequence[float] | None = None) -> float:
    rel = dict(zip(labels, rel_scores)) if rel_scores is not None else {name: 1.0 for name in labels}
    dcg = sum(rel.get(name, 0.0) / math.log2(r + 2) for r, name in enumerate(ranking[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def score_rankings(rankings: Sequence[Sequence[str]], labels: Sequence[Sequence[str]],
                   rel_scores: Sequence[Sequence[float] | None] | None = None) -> dict[str, float]:
    """Mean hit@{1,5,10} and ndcg_linear@{5,10} over queries, plus ``num_pred``/``num_data``."""
    n = len(rankings)
    if n == 0 or n != len(labels):
        raise ValueError(f"{n} rankings for {len(labels)} label sets")
    rel_scores = rel_scores or [None] * n
    out = {"num_pred": n, "num_data": n}
    for k in (1, 5, 10):
        out[f"hit@{k}"] = sum(hit_at_k(r, l, k) for r, l in zip(rankings, labels)) / n
    for k in (5, 10):
        out[f"ndcg_linear@{k}"] = sum(ndcg_linear_at_k(r, l, k, s)
                                      for r, l, s in zip(rankings, labels, rel_scores)) / n
    return out


def per_query(rankings: Sequence[Sequence[str]], labels: Sequence[Sequence[str]], metric: str,
              rel_scores: Sequence[Sequence[float] | None] | None = None) -> list[float]:
    """The task's main metric (``hit@k`` or ``ndcg_linear@k``) for each query, for oracle/selector/pass@k."""
    name, _, k = metric.partition("@")
    k = int(k)
    rel_scores = rel_scores or [None] * len(rankings)
    if name == "hit":
        return [hit_at_k(r, l, k) for r, l in zip(rankings, labels)]
    if name == "ndcg_linear":
        return [ndcg_linear_at_k(r, l, k, s) for r, l, s in zip(rankings, labels, rel_scores)]
    raise ValueError(f"unknown metric {metric!r}")
