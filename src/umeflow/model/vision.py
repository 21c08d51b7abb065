"""How pixels reach the model: transparency, image sizing and per-frame video limits (method.md §1.3).

UME-R1 sizes pixels differently per stage, and a checkpoint scores as published only when fed the same pixels:

- evaluation: every image and video frame is first resized as qwen_vl_utils' ``fetch_image`` does (``fit_to_grid``
  with its own 3,136 … 12,845,056-pixel limits, sides rounded to multiples of 28, bicubic), then the image processor
  applies the limits of the eval arguments (784 … 2,359,296), whatever the checkpoint's ``preprocessor_config.json``
  says. A 28×28 image therefore becomes 56×56 (4 tokens), not 28×28 (1 token); frames get no separate cap.
- SFT: the processor's limits 768 … 2,359,296 for images, 3,136 … 25,088 (4·28·28 … 32·28·28) per video frame.

``VisionSizing`` holds those choices (recipe keys of the evaluate / embed / sft steps); 0 means "the checkpoint's own
limit". Transparent images (RGBA, LA, PA, P or L/RGB with a transparency key) are composited onto white, for every
stage and for the data build alike (``to_rgb_on_white``). For RGBA at evaluation that is exactly UME-R1's pixels
(qwen_vl_utils ``to_rgb``). Where UME-R1 differs, umeflow keeps white on purpose (issue #13): qwen_vl_utils converts
LA / P images without compositing (their transparent pixels show the stored colour, usually black), and UME-R1's SFT
converts every image that way (``data_qwen.py``: ``convert("RGB")``), so a transparent stamp trains as black.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from PIL import Image

from umeflow.errors import UserError

# qwen_vl_utils' own limits in fetch_image, in grid cells of the resize factor (4·f², 16384·f²; 3,136 and 12,845,056
# pixels for Qwen2-VL's f = 28): UME-R1's eval messages carry no min_pixels/max_pixels, so these apply before the
# processor's. Newer qwen_vl_utils scale them with the factor (32 for Qwen3-VL), hence cells, not pixels.
FETCH_MIN_CELLS = 4
FETCH_MAX_CELLS = 16384
MAX_ASPECT_RATIO = 200
# UME-R1 SFT data arguments video_min_frame_pixels / video_max_frame_pixels (argument.py defaults).
SFT_VIDEO_MIN_FRAME_PIXELS = 4 * 28 * 28
SFT_VIDEO_MAX_FRAME_PIXELS = 32 * 28 * 28

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class PixelBudgetError(ValueError):
    """An image with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``: refused before its pixels are decoded."""


def pixel_budget() -> int:
    """The most pixels one image may have: PIL's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 unless an application
    changes it; None there means no limit). A few kilobytes of PNG can decode to gigabytes (a decompression bomb),
    and no Qwen-VL stage keeps more than ~12.8 M pixels of an image anyway."""
    return Image.MAX_IMAGE_PIXELS or 0


def _refusal(pixels: int | None, size: tuple[int, int] | None = None) -> PixelBudgetError:
    shape = f" ({size[0]}×{size[1]})" if size else ""
    count = f"{pixels:,} pixels{shape}" if pixels is not None else "more pixels"
    return PixelBudgetError(f"has {count}, over the pixel budget of {pixel_budget():,} (PIL Image.MAX_IMAGE_PIXELS); "
                            "refused as a possible decompression bomb")


def open_bounded(path: str | os.PathLike) -> Image.Image:
    """``Image.open(path)`` that refuses an image over ``pixel_budget()`` by its header, before decoding pixels.

    PIL itself raises ``DecompressionBombError`` only above twice its limit and merely warns between the limit and
    twice it; both become one ``PixelBudgetError`` here, naming the pixel count. The refusal is our own size check;
    PIL's warning is silenced around the open only so that the user sees one message, not a second one (in threads
    ``catch_warnings`` can at worst leave that one warning category silenced, which the check makes redundant).
    Other failures propagate as PIL raises them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:  # above twice PIL's limit PIL refuses before we see the size
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _refusal(int(found[1]) if found else None) from None
    try:
        check_pixels(im)
    except PixelBudgetError:
        im.close()
        raise
    return im


def check_pixels(im: Image.Image) -> None:
    """Refuse (``PixelBudgetError``) an opened, not yet decoded image over ``pixel_budget()``."""
    budget = pixel_budget()
    if budget and im.width * im.height > budget:
        raise _refusal(im.width * im.height, im.size)


def to_rgb_on_white(im: Image.Image) -> Image.Image:
    """An RGB copy of ``im`` with transparent pixels composited onto white (not PIL's alpha drop, which shows the
    colour stored under the transparent pixels — usually black)."""
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")


def fit_to_grid(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` with the pixel count inside [min_pixels, max_pixels],
    keeping the aspect ratio — the rule of qwen_vl_utils' and the Qwen2-VL processors' ``smart_resize``: round each
    side (Python's round, ties to even), at least one ``factor``; over the cap, shrink by √(area/max) and floor;
    under the floor, grow by √(min/area) and ceil."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise UserError(f"an image of {width}×{height} pixels has an aspect ratio above {MAX_ASPECT_RATIO}, which "
                        "Qwen-VL's resizing refuses")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def fetch_resize(im: Image.Image, factor: int = 28) -> Image.Image:
    """qwen_vl_utils ``fetch_image``'s resize: to the ``fit_to_grid`` size under its 4·f² … 16384·f² limits
    (3,136 … 12,845,056 pixels at f = 28), bicubic (PIL's default filter for RGB)."""
    cell = factor * factor
    h, w = fit_to_grid(im.height, im.width, factor, FETCH_MIN_CELLS * cell, FETCH_MAX_CELLS * cell)
    return im if (w, h) == im.size else im.resize((w, h), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class VisionSizing:
    """Pixel limits for one stage; 0 = the checkpoint's own limit (``preprocessor_config.json``)."""

    min_pixels: int = 0  # the image processor's floor (UME-R1 eval 784, SFT 768)
    max_pixels: int = 0  # the image processor's cap (UME-R1 eval and SFT 2,359,296)
    qwen_vl_utils_resize: bool = False  # resize as qwen_vl_utils.fetch_image does before the processor (UME-R1 eval)
    video_min_frame_pixels: int = 0  # per-frame floor; 0 = frames sized like images (UME-R1 eval)
    video_max_frame_pixels: int = 0  # per-frame cap; 0 = frames sized like images (UME-R1 SFT: 32·28·28)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in (int, "int") and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise UserError(f"{f.name}={value!r}: expected a whole number of pixels >= 0 (0 = the checkpoint's)")
        for low, high in (("min_pixels", "max_pixels"), ("video_min_frame_pixels", "video_max_frame_pixels")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo and hi and lo > hi:
                raise UserError(f"{low}={lo} is above {high}={hi}")

    @classmethod
    def from_settings(cls, settings: Any) -> "VisionSizing":
        """The sizing keys of a step config (or of a mapping, e.g. the served pyfunc's settings); absent keys keep
        their defaults."""
        get = settings.get if isinstance(settings, Mapping) else (lambda k, d: getattr(settings, k, d))
        return cls(**{f.name: get(f.name, f.default) for f in fields(cls)})

    def image_limits(self, image_processor) -> tuple[int, int]:
        own_min, own_max = processor_limits(image_processor)
        return self.min_pixels or own_min, self.max_pixels or own_max

    def frame_limits(self, image_processor) -> tuple[int, int]:
        img_min, img_max = self.image_limits(image_processor)
        return self.video_min_frame_pixels or img_min, self.video_max_frame_pixels or img_max

    def tag(self) -> str:
        """A short name of these settings, e.g. for cache folders (embeddings differ when the pixels differ)."""
        fetch = "-qvu" if self.qwen_vl_utils_resize else ""
        return (f"px{self.min_pixels}-{self.max_pixels}{fetch}"
                f"-frame{self.video_min_frame_pixels}-{self.video_max_frame_pixels}")


def processor_limits(image_processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL-style image processor (its ``size`` shortest/longest edge)."""
    size = image_processor.size
    get = size.get if isinstance(size, dict) else (lambda k, d=None: getattr(size, k, d))
    return int(get("shortest_edge") or 56 * 56), int(get("longest_edge") or 28 * 28 * 1280)
