"""UME-R1's annotation filters: malformed format, repeated n-grams, over-long reasoning (method.md §1.5)."""

from __future__ import annotations

import re
from collections import Counter

# The target format: exactly one reasoning block, then the summary, ending with the embedding token.
RESPONSE_RE = re.compile(r"<think>(?P<think>.+?)</think>\s*<answer>(?P<answer>.+?)<gen_emb>", re.DOTALL)


def check(response: str, ngram: int = 4, max_repeats: int = 3, max_reasoning_words: int = 1024) -> str | None:
    """The reason to drop ``response`` (``malformed``, ``repeated_ngrams``, ``too_long``), or None to keep it."""
    m = RESPONSE_RE.fullmatch(response.strip())
    if (m is None or response.count("<gen_emb>") != 1 or response.count("<think>") != 1
            or not m["answer"].strip() or not m["think"].strip()):
        return "malformed"
    words = m["think"].split()
    if len(words) > max_reasoning_words:
        return "too_long"
    grams = Counter(tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1))
    if grams and max(grams.values()) >= max_repeats:
        return "repeated_ngrams"
    return None
