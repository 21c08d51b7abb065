"""UME-R1's annotation filters (method.md §1.5): malformed format, repeated n-grams, over-long reasoning.

A kept response has exactly one ``<think>…</think>`` block, then ``<answer>`` and a non-empty summary, and ends with
the single ``<gen_emb>``. That is stricter than the RL format reward (method.md §1.6, ``REWARD_FORMAT_RE``), so every
SFT target also earns the format reward.
"""

from __future__ import annotations

import re
from collections import Counter

from umeflow.model.chat import GEN_EMB

# method.md §1.6: the RL format reward (matched against the whole completion, DOTALL).
REWARD_FORMAT_RE = re.compile(r"<think>.*?</think>.*?\s*<answer>.*?\s*<gen_emb>", re.DOTALL)
SFT_FORMAT_RE = re.compile(r"<think>(?P<think>.+?)</think>\s*<answer>(?P<answer>.+)<gen_emb>", re.DOTALL)

REASONS = ("malformed", "repeated_ngrams", "too_long")


def check(response: str, ngram: int = 4, max_repeats: int = 3, max_reasoning_tokens: int = 1024) -> str | None:
    """Why ``response`` must be dropped (one of ``REASONS``), or None to keep it."""
    m = SFT_FORMAT_RE.fullmatch(response)
    if (m is None or not REWARD_FORMAT_RE.fullmatch(response)
            or any(response.count(tag) != 1 for tag in ("<think>", "</think>", "<answer>", GEN_EMB))
            or not m["think"].strip() or not m["answer"].strip()):
        return "malformed"
    reasoning = m["think"].split()
    if len(reasoning) > max_reasoning_tokens:
        return "too_long"
    words = reasoning + m["answer"].split()
    grams = Counter(tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1))
    if grams and max(grams.values()) >= max_repeats:
        return "repeated_ngrams"
    return None
