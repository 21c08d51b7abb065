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


@dataclass
class Encoded:
    """Result of ``Embedder.encode``.

    embeddings: float32, L2-normalised, shape (N, D), or (N, S, D) when ``num_samples`` S > 1.
    texts:      gen mode only: the generated reasoning per item (list of S strings per item when S > 1).
    fallback:   gen mode only: True where no ``<gen_emb>`` was generated and the spec's fallback state was used.
    generated_ids: gen mode only: the token ids each item generated, through its EOS (inclusive) or to the budget.
    disc_embeddings: gen mode only: the disc embeddings, read from the same prefill at no extra cost.
    """

    embeddings: np.ndarray
    texts: list | None = None
    fallback: np.ndarray | None = None
    generated_ids: list | None = None
    disc_embeddings: np.ndarray | None = None
    stats: dict = field(default_factory=dict)
