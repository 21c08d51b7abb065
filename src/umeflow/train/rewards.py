"""Rewards for the RL stage (method.md §1.6 UME-R1, §2.5 Embed-RL, §4.7, §4.14). Pure functions on tensors/strings.

Layout every function here agrees on: a step's rollouts come as two sets, query-side and target-side, each row tagged
with the index of the pair it belongs to. A query rollout's positives are *all* target-side rollouts of its own pair;
its negatives are every target-side rollout of the other pairs in the step (no mined hard negatives). Target-side
rollouts are scored the same way with the roles swapped.

Ties: "the top-k most similar candidates" is computed with a pessimistic tie-break — among equal similarities,
negatives rank before positives — so a collapsed policy (all embeddings equal) earns no ranking credit. This matches
the evaluation's pessimistic ranking (umeflow.evaluate.metrics) and makes the reward a deterministic function of S.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

# UME-R1's format check (qwen_module.py format_reward_embed), applied to the completion decoded with
# skip_special_tokens=True (<gen_emb> survives: it is an ordinary added token). ``re.search``, as UME-R1 does: the
# pattern may start anywhere, so a preamble before <think> still scores 1.
UME_FORMAT = re.compile(r"<think>.*?</think>.*?\s*<answer>.*?\s*<gen_emb>", re.DOTALL)
# Embed-RL's Traceability-CoT template: <thinking>…</thinking> then <rethink>…</rethink> then <answer>…</answer>.
TCOT_FORMAT = re.compile(r"<thinking>(.*?)</thinking>.*?<rethink>.*?</rethink>.*?<answer>.*?</answer>", re.DOTALL)
# The evidence cue each input kind must carry inside <thinking> (Embed-RL §2.2).
CUE_KEYS = {"text": "text_keywords", "image": "bbox_2d", "video": "key_frames"}


def ume_format_reward(texts: list[str]) -> list[float]:
    """1.0 where the completion matches UME-R1's ``<think>…</think>…<answer>…<gen_emb>`` pattern, else 0.0."""
    return [1.0 if UME_FORMAT.search(t) else 0.0 for t in texts]


def first_json_object(text: str) -> dict | None:
    """The first flat ``{…}`` in ``text`` that parses as a JSON object (Embed-RL's cue parser), else None."""
    for m in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def tcot_format_reward(texts: list[str], kinds: list[str] | None = None, require_cue: bool = True) -> list[float]:
    """1.0 where the completion follows the T-CoT template (and, with ``require_cue``, its <thinking> holds a JSON
    object with the cue for the input kind: ``text_keywords`` / ``bbox_2d`` / ``key_frames``)."""
    out = []
    for i, t in enumerate(texts):
        m = TCOT_FORMAT.search(t)
        ok = m is not None
        if ok and require_cue:
            cue = first_json_object(m.group(1))
            key = CUE_KEYS.get((kinds or ["text"] * len(texts))[i], "text_keywords")
            ok = cue is not None and bool(cue.get(key))
        out.append(1.0 if ok else 0.0)
    return out


@dataclass
class SideScores:
    """Per-rollout parts of an embedding reward, for one side (rows follow the anchors' order)."""

    rank: torch.Tensor  # fraction of the top-k most similar candidates that are positives (k = #positives)
    gap: torch.Tensor  # mean positive similarity − (mean | softmax-weighted) negative similarity
    reward: torch.Tensor


def _check(anchors: torch.Tensor, candidates: torch.Tensor, a_pair: torch.Tensor, c_pair: torch.Tensor) -> None:
    if anchors.ndim != 2 or candidates.ndim != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(f"embeddings must be (n, d) with equal d, got {tuple(anchors.shape)} and "
                         f"{tuple(candidates.shape)}")
    if len(a_pair) != len(anchors) or len(c_pair) != len(candidates):
        raise ValueError("one pair index per embedding row is required")
    if len(torch.unique(c_pair)) < 2:
        raise ValueError("the embedding reward needs rollouts of at least 2 pairs in a step (negatives are the "
                         "other pairs' rollouts); raise the generation batch size")
    missing = sorted(set(a_pair.tolist()) - set(c_pair.tolist()))
    if missing:
        raise ValueError(f"pairs {missing[:5]} have rollouts on one side only; both sides of a pair must be in the "
                         f"same generation batch")


def _positive_masks(a_pair: torch.Tensor, c_pair: torch.Tensor) -> torch.Tensor:
    return a_pair[:, None] == c_pair[None, :]


def top_k_positive_fraction(sims: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per row: |top-k(sims) ∩ positives| / k with k = #positives of the row; ties rank negatives first."""
    k = positive.sum(dim=1)
    # Sort by similarity descending; stable sort after putting negatives first within equal values.
    order_neg_first = torch.argsort(positive.float(), dim=1, stable=True)  # negatives (0) before positives (1)
    s = torch.gather(sims, 1, order_neg_first)
    p = torch.gather(positive, 1, order_neg_first)
    by_sim = torch.argsort(-s, dim=1, stable=True)
    p_sorted = torch.gather(p, 1, by_sim).float()
    ranks = torch.arange(sims.shape[1], device=sims.device)[None, :]
    in_top = (ranks < k[:, None]).float()
    return (p_sorted * in_top).sum(dim=1) / k.clamp(min=1).float()


def rank_gap_scores(anchors: torch.Tensor, candidates: torch.Tensor, a_pair: torch.Tensor,
                    c_pair: torch.Tensor) -> SideScores:
    """UME-R1's embedding reward for each anchor rollout: rank × (mean positive sim − mean negative sim)."""
    _check(anchors, candidates, a_pair, c_pair)
    sims = anchors.float() @ candidates.float().T
    pos = _positive_masks(a_pair, c_pair)
    neg = ~pos
    rank = top_k_positive_fraction(sims, pos)
    gap = (sims * pos).sum(1) / pos.sum(1) - (sims * neg).sum(1) / neg.sum(1)
    return SideScores(rank=rank, gap=gap, reward=rank * gap)


def ume_embedding_reward(q: torch.Tensor, t: torch.Tensor, q_pair: torch.Tensor,
                         t_pair: torch.Tensor) -> tuple[SideScores, SideScores]:
    """Both sides: query rollouts against target rollouts (S) and target rollouts against query rollouts (Sᵀ)."""
    return rank_gap_scores(q, t, q_pair, t_pair), rank_gap_scores(t, q, t_pair, q_pair)


def embed_rl_outcome_scores(anchors: torch.Tensor, candidates: torch.Tensor, a_pair: torch.Tensor,
                            c_pair: torch.Tensor, tau: float = 0.5, acc_mode: str = "all",
                            weighted_negatives: bool = True) -> SideScores:
    """Embed-RL's outcome reward per anchor rollout: Acc × (mean positive sim − E_τ[negative sim]).

    ``E_τ`` is the softmax(sim/τ)-weighted mean of the negatives (``weighted_negatives=False``: the plain mean, the
    paper's "w/o weighted negative" ablation). ``acc_mode="all"`` (paper): 1 when every positive is in the top-k,
    else 0; ``"fraction"`` (released code): the fraction of the top-k that are positives, as in UME-R1.
    """
    if acc_mode not in ("all", "fraction"):
        raise ValueError(f"acc_mode must be 'all' or 'fraction', got {acc_mode!r}")
    _check(anchors, candidates, a_pair, c_pair)
    sims = anchors.float() @ candidates.float().T
    pos = _positive_masks(a_pair, c_pair)
    frac = top_k_positive_fraction(sims, pos)
    acc = (frac >= 1.0 - 1e-6).float() if acc_mode == "all" else frac
    neg_sims = sims.masked_fill(pos, float("-inf"))
    if weighted_negatives:
        w = torch.softmax(neg_sims / tau, dim=1)
    else:
        w = (~pos).float() / (~pos).sum(1, keepdim=True)
    neg_term = (w * sims.masked_fill(pos, 0.0)).sum(1)
    margin = (sims * pos).sum(1) / pos.sum(1) - neg_term
    return SideScores(rank=acc, gap=margin, reward=acc * margin)


# ------------------------------------------------------------------------------------------- Embed-RL process judge

JUDGE_INSTRUCTION = ("Given a query reasoning and multiple candidate reasonings, select the most relevant candidate.")


def judge_prompt(anchor_text: str, anchor_cot: str, candidate_cots: list[str], anchor_is_query: bool) -> str:
    """Embed-RL's text-only judge prompt (§2.5): anchor reasoning, numbered candidates, answer with a number."""
    head = "Instruction" if anchor_is_query else "Text"
    lines = [JUDGE_INSTRUCTION, "", f"Query reasoning:\n{head}: {anchor_text}\n\nReasoning: {anchor_cot}", "",
             "Candidates:"]
    lines += [f"{i}. {c}" for i, c in enumerate(candidate_cots, 1)]
    lines += ["", f"Output ONLY the number (1-{len(candidate_cots)}) of the most relevant candidate."]
    return "\n".join(lines)


def parse_judge_choice(reply: str, n_candidates: int) -> int | None:
    """0-based index of the first integer in ``reply`` if it is in 1…n, else None (invalid ⇒ no reward)."""
    m = re.search(r"\d+", reply or "")
    if not m:
        return None
    k = int(m.group(0))
    return k - 1 if 1 <= k <= n_candidates else None


def judge_candidates(sims_row: torch.Tensor, a_pair: int, c_pair: torch.Tensor, n_other: int = 4,
                     generator: torch.Generator | None = None) -> tuple[list[int], set[int]]:
    """Candidate rows for one anchor: all its positives + the best-scoring rollout of each of the ``n_other`` most
    similar other pairs, shuffled (the paper shuffles; the released code does not — shuffling removes the position
    cue). Returns (candidate row indices in presentation order, the set of positive rows)."""
    positives = [int(j) for j in (c_pair == a_pair).nonzero().flatten()]
    best: dict[int, tuple[float, int]] = {}
    for j in range(len(c_pair)):
        p = int(c_pair[j])
        if p == a_pair:
            continue
        s = float(sims_row[j])
        if p not in best or s > best[p][0]:
            best[p] = (s, j)
    others = [j for _, j in sorted(best.values(), key=lambda x: -x[0])[:n_other]]
    cands = positives + others
    order = torch.randperm(len(cands), generator=generator).tolist()
    return [cands[i] for i in order], set(positives)


__all__ = ["UME_FORMAT", "TCOT_FORMAT", "CUE_KEYS", "ume_format_reward", "tcot_format_reward", "first_json_object",
           "SideScores", "top_k_positive_fraction", "rank_gap_scores", "ume_embedding_reward",
           "embed_rl_outcome_scores", "judge_prompt", "parse_judge_choice", "judge_candidates"]
