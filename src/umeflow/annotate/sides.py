"""One MMEB-train pair → two ``Side``s (query, target): what an annotator sees for each, and the pair's summary.

UME-R1 annotates the query and the target of a pair separately (method.md §1.5). A ``Side`` holds the instance text
(VLM2Vec placeholders stripped), the image if any, and the pair's real metadata from ``umeflow data build``
(label, caption, category, question, WordNet gloss). Records without ``meta`` (a real MMEB-train file) still work:
the summary then comes from the target text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from umeflow.model.items import strip_placeholders

QUERY, TARGET = "query", "target"


@dataclass(frozen=True)
class Side:
    where: str  # "pairs.jsonl:17 qry": named in every error about this side
    role: str  # QUERY | TARGET
    text: str  # instance text, placeholders removed
    image: str | None  # path relative to the media root, exactly as in the input record
    media_root: Path
    dataset: str = ""
    summary: str = ""  # the pair's answer from metadata (label, VQA answer, category, short caption)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def image_path(self) -> Path | None:
        return self.media_root / self.image if self.image else None


_CLAUSE_END = re.compile(r"\s*(?:—|–|, |; |: |\()")
_PHRASE_END = re.compile(r"\s(?=(?:in|on|at|with|from|for|to|of|called|that|which|and)\s)")


def short_phrase(text: str, max_words: int) -> str:
    """The first sentence of ``text`` without final punctuation. If longer than ``max_words``: its first clause (cut
    at a dash, comma, semicolon, colon or parenthesis) when that fits, else the longest prefix that ends before a
    preposition or conjunction, and only as a last resort the first ``max_words`` words."""
    sentence = re.split(r"(?<=[.!?])\s+", text.strip(), maxsplit=1)[0].rstrip(" .!?")
    if len(sentence.split()) <= max_words:
        return sentence
    sentence = _CLAUSE_END.split(sentence, maxsplit=1)[0].strip() or sentence
    if len(sentence.split()) <= max_words:
        return sentence
    prefixes = [sentence[:m.start()] for m in _PHRASE_END.finditer(sentence)]
    fitting = [p for p in prefixes if 2 <= len(p.split()) <= max_words]
    return fitting[-1] if fitting else " ".join(sentence.split()[:max_words])


def pair_summary(rec: dict, max_words: int = 12) -> str:
    """The pair's answer, from real metadata only: the VQA answer, the class label, the category, the caption."""
    meta = rec.get("meta") or {}
    target = strip_placeholders(rec.get("pos_text", ""))
    if meta.get("question") and target:  # yes/no VQA: the target text is the answer
        return target
    if meta.get("label"):
        return str(meta["label"]).lower()
    if meta.get("category") and target == meta["category"]:  # category VQA
        return target
    for text in (meta.get("caption"), target, strip_placeholders(rec.get("qry", ""))):
        if text:
            return short_phrase(text, max_words)
    return ""


def sides_of(rec: dict, where: str, media_root: Path, max_summary_words: int = 12) -> tuple[Side, Side]:
    """The query side and the target side of one MMEB-train record (``where`` names the record, e.g. file:line)."""
    common = dict(media_root=media_root, dataset=rec.get("dataset_name", ""),
                  summary=pair_summary(rec, max_summary_words), meta=rec.get("meta") or {})
    query = Side(f"{where} qry", QUERY, strip_placeholders(rec.get("qry", "")), rec.get("qry_image_path") or None,
                 **common)
    target = Side(f"{where} pos", TARGET, strip_placeholders(rec.get("pos_text", "")),
                  rec.get("pos_image_path") or None, **common)
    return query, target
