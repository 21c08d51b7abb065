"""The offline annotator: reasoning and summary written only from a record's own real metadata.

It is the stand-in for an MLLM annotator when no endpoint is reachable (tests, the CPU demo). It cannot look at
pixels, so every sentence restates a fact the metadata holds (label, caption, category, question and answer,
WordNet gloss) and nothing else. Openers vary deterministically with the seed and the content, so a model does not
learn one fixed string; reasoning is short (``max_words``) because a tiny CPU model has to learn to emit it, and it
is never cut mid-phrase unless even the plainest sentence is too long.
"""

from __future__ import annotations

import hashlib

from umeflow.annotate.sides import QUERY, Side, short_phrase

IMAGE_OPENERS = ("The image shows", "The picture depicts", "I can see", "This picture contains")
TEXT_OPENERS = ("The text describes", "The text names", "The text refers to", "The words mention")
ANSWER_OPENERS = ("The text gives", "The reply states", "The words give")
DIGIT_WORDS = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}


def _inline(phrase: str) -> str:
    """A caption used mid-sentence: a leading article is lower-cased, everything else (names) kept as written."""
    first, _, rest = phrase.partition(" ")
    return f"{first.lower()} {rest}" if rest and first in ("A", "An", "The") else phrase


def _with_article(noun: str) -> str:
    noun = noun.lower()
    if noun in DIGIT_WORDS:
        return f"the digit {noun}"
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


class GroundedAnnotator:
    name = "grounded"

    def __init__(self, seed: int = 0, max_words: int = 16, max_summary_words: int = 12):
        self.seed, self.max_words, self.max_summary_words = seed, max_words, max_summary_words

    def _pick(self, options: tuple[str, ...], side: Side) -> str:
        key = f"{self.seed}|{side.role}|{side.text}|{side.image}|{side.summary}".encode()
        return options[int(hashlib.sha256(key).hexdigest(), 16) % len(options)]

    @staticmethod
    def _subject(side: Side, max_words: int) -> str | None:
        """What this side is about, as a noun phrase from the metadata (or the side's own text)."""
        label, caption = side.meta.get("label"), side.meta.get("caption")
        if side.image is not None:
            if label:
                return _with_article(str(label))
            return _inline(short_phrase(caption, max_words)) if caption else None
        if label:  # a class caption ("a product photo of an ankle boot") is about its label
            return _with_article(str(label))
        if caption and caption in side.text:  # the text carries the caption (possibly after an instruction)
            return _inline(short_phrase(caption, max_words))
        return _inline(short_phrase(side.text, max_words)) if side.text else None

    def candidates(self, side: Side) -> list[str]:
        """Reasoning sentences for ``side``, most informative first; every one states only metadata facts."""
        meta, answer = side.meta, side.summary
        opener = self._pick(IMAGE_OPENERS if side.image is not None else TEXT_OPENERS, side)
        subject = self._subject(side, max(2, self.max_words - len(opener.split())))
        if meta.get("question"):  # yes/no VQA: the query asks, the target is the answer
            if side.role != QUERY:
                return [f"{self._pick(ANSWER_OPENERS, side)} the answer {answer}."]
            found = [f'{opener} {subject}; asked "{meta["question"]}", the answer is {answer}.',
                     f"{opener} {subject}, so the answer is {answer}."] if subject else []
            return found + [f"The answer is {answer}."]
        category = meta.get("category")
        if category and answer == category:  # category VQA
            if side.image is None:
                return [f"{opener} the {category} category."]
            belongs = f"The {'image' if side.role == QUERY else 'picture'} belongs to the {category} category."
            if subject is None:
                return [belongs]
            return [f"{opener} {subject}, which belongs to the {category} category.",
                    f"{opener} {subject}, in the {category} category.", belongs]
        if subject is None:  # an image with no metadata: all we know is what it is paired with
            return [f'The image is paired with "{answer}".']
        found = []
        if meta.get("label") and meta.get("gloss"):
            gloss = meta["gloss"].rstrip(".")
            found.append(f"{opener} {subject}, {gloss}." if side.image is not None else
                         f"{opener} {subject}; {_with_article(str(meta['label']))} is {gloss}.")
        if category:
            found.append(f"{opener} {subject}, in the {category} category.")
        return found + [f"{opener} {subject}."]

    def annotate(self, side: Side) -> str:
        """``<think>REASONING</think><answer>SUMMARY`` (the step appends ``<gen_emb>``)."""
        options = self.candidates(side)
        reasoning = next((c for c in options if len(c.split()) <= self.max_words), None)
        if reasoning is None:
            reasoning = " ".join(options[-1].split()[:self.max_words])
        return f"<think>{reasoning}</think><answer>{side.summary}"
