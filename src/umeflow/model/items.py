"""What the Embedder consumes: an ``Item`` is text and/or images and/or video frames (MMEB style)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

ImageLike = Union[str, Path, Image.Image]

# VLM2Vec / Phi-3-V style placeholders that MMEB files carry inside the text; UME-R1 strips them and passes the
# media as chat content items instead (method.md §1.3, §4.8).
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>|<\|image_pad\|>|<\|video_pad\|>|<image>|<video>")


def strip_placeholders(text: str) -> str:
    return _PLACEHOLDER.sub("", text or "").strip()


@dataclass(frozen=True)
class Item:
    """One query or candidate. ``images`` are paths or PIL images; ``video`` is an ordered list of frames."""

    text: str = ""
    images: tuple[ImageLike, ...] = ()
    video: tuple[ImageLike, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: str | Path | None = None) -> "Item":
        """Parse ``{"text": ..., "image": path | [paths], "video": [frame paths]}`` (paths relative to ``base``)."""

        def resolve(p: Any) -> ImageLike:
            if isinstance(p, Image.Image) or base is None:
                return p
            return Path(base) / p

        images = d.get("images", d.get("image")) or ()
        if isinstance(images, (str, Path)):
            images = (images,)
        video = d.get("video") or None
        return cls(text=d.get("text", "") or "", images=tuple(resolve(p) for p in images if p),
                   video=tuple(resolve(p) for p in video if p) if video else None)



class TextBudget:
    """The most text tokens one input may hold (recipe key ``max_input_tokens`` of embed, evaluate, sft and grpo;
    0 = no limit). An input over it is refused by name, never truncated: a cut query or caption is another input,
    and one 1 MB text would otherwise run a generation for minutes or ask for tens of GB of attention.

    ``tokenizer`` is a tokenizer or a checkpoint path/name (loaded on first need). The check is cheap: a byte-level
    BPE token covers at least one UTF-8 byte, so a text of at most ``max_tokens`` bytes — nearly every text — is
    never tokenized, and a long one is tokenized in a window of ``8 · max_tokens`` characters first, so a 1 MB string
    is refused without tokenizing all of it.
    """

    WINDOW_CHARS_PER_TOKEN = 8

    def __init__(self, max_tokens: int, tokenizer: Any = None):
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            from umeflow.errors import UserError

            raise UserError(f"max_input_tokens={max_tokens!r}: expected a whole number >= 0 (0 = no limit)")
        self.max_tokens, self._tokenizer = max_tokens, tokenizer

    @property
    def tokenizer(self):
        if isinstance(self._tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            from umeflow.errors import UserError

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self._tokenizer))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot load the tokenizer of {self._tokenizer} to check max_input_tokens: "
                                f"{' '.join(str(e).split())}") from None
        return self._tokenizer

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def check(self, text: str) -> str | None:
        """None when ``text`` fits, else why not (its token count against the budget), for a RecordError."""
        limit = self.max_tokens
        if not limit or not text or len(text.encode("utf-8", "surrogatepass")) <= limit:
            return None
        window = limit * self.WINDOW_CHARS_PER_TOKEN
        if len(text) > window:
            # the window's last word may tokenize differently than in the whole text: allow one token of slack
            head = self._count(text[:window]) - 1
            if head > limit:
                return (f"has more than {head:,} tokens (in its first {window:,} of {len(text):,} characters), over "
                        f"max_input_tokens={limit:,}")
        count = self._count(text)
        return f"has {count:,} tokens, over max_input_tokens={limit:,}" if count > limit else None


@dataclass
class Encoded:
    """Result of ``Embedder.encode``.

    embeddings: float32, L2-normalised, shape (N, D), or (N, S, D) when ``num_samples`` S > 1.
    texts:      gen mode only: the generated reasoning per item (list of S strings per item when S > 1).
    fallback:   gen mode only: True where no ``<gen_emb>`` was generated and the spec's fallback state was used.
    generated_ids: gen mode only: the token ids each item generated, through its EOS (inclusive) or to the budget.
    disc_embeddings: gen mode only: the disc embeddings, read from the same prefill at no extra cost.
    traces:     gen mode only: each item's ``model.generation.Trace`` (what the trace cache keeps).
    """

    embeddings: np.ndarray
    texts: list | None = None
    fallback: np.ndarray | None = None
    generated_ids: list | None = None
    disc_embeddings: np.ndarray | None = None
    traces: list | None = None
    stats: dict = field(default_factory=dict)
