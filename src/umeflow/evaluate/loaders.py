"""Loaders for MMEB-V2 tasks in the VLM2Vec on-disk layout, and for the offline suite (method.md §3.3, §3.7).

One entry point, ``load_task(meta, data_root)``, dispatches on ``meta.loader`` (VLM2Vec's ``dataset_parser`` names)
and returns a ``TaskData``: query items, ground-truth candidate names, the deduplicated candidate pool, each query's
own candidate list for ``local`` tasks, and graded relevance for visdoc. ``data_root`` is a directory, an ``s3://``
URI or a ``DataRoot``; media come back as local paths (S3 objects are cached on first use).

Every MMEB-V2 task is built as VLM2Vec @6e1e1d4 builds it (``src/data/eval_dataset/*``): the same rows
(``num_sample_per_subset``), candidate names, candidate pool (the full class list of a video classification
dataset), frames (natural order, 8 by linspace, shorter folders unpadded) and texts. Texts are VLM2Vec's strings
as the model is fed them: placeholders removed and the ends trimmed (``strip_placeholders``).

Annotations are HF datasets upstream; here each is a file with the HF rows, ``.jsonl`` (errors name the line) or
``.parquet`` (errors name the 1-based row as "line"). Layout relative to the data root:

image   ``image-tasks/<Task>.jsonl|parquet``, rows of ``ziyjiang/MMEB_Test_Instruct``: ``qry_inst, qry_text,
        qry_img_path, tgt_inst, tgt_text[], tgt_img_path[]``; the first target is the ground truth; image paths are
        relative to ``image-tasks/`` (the ``mmeb_v1.tar.gz`` layout).
video   ``video-tasks/<Task>.jsonl|parquet`` with the raw HF fields named in each loader (``loaders_video``); frames
        pre-extracted to ``<meta.media_root>/<video>/*.jpg`` (``video-tasks/frames/<group>/<Dataset>/``).
visdoc  ``visdoc-tasks/<Task>/{queries,corpus,qrels}.jsonl|parquet`` (BEIR): ``query-id, query``;
        ``corpus-id, image`` (a path relative to ``meta.media_root``, image bytes / an HF image struct in parquet,
        written to a content-addressed cache, or null/absent: the page VLM2Vec caches under its ``image_root``);
        ``query-id, corpus-id, score``.

Candidate names follow VLM2Vec so scores are comparable: classification / QA / i2t candidates are named by their
text, t2i by image path, ``image_i2i_vg`` by ``"{image_path}:{caption without quotes}"``, retrieval videos by video
id, moment clips by their frame folder (root-relative here, so a local and an S3 copy name them alike), visdoc pages
by corpus id. Every bad input raises ``RecordError`` naming file, line and field; a missing annotation file is a
``UserError``. Nothing is skipped: a row whose media is missing is an error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from umeflow.errors import UserError
from umeflow.evaluate.loaders_base import (  # noqa: F401 (Row, find_annotation, iter_rows: re-exported)
    Collector, Row, find_annotation, instructed, iter_rows, media_file, rel_path, task_rows,
)
from umeflow.evaluate.loaders_video import (
    VIDEO_QA, VIDEO_RETRIEVAL, load_moment_task, load_momentseeker_task, load_ssv2_task, load_video_cls_task,
    load_video_qa_task, load_video_retrieval_task,
)
from umeflow.evaluate.tasks import TaskData, TaskMeta, sample_frame_names, sample_frames  # noqa: F401 (re-export)
from umeflow.model.items import Item, strip_placeholders
from umeflow.storage import DataRoot

log = logging.getLogger(__name__)

VISDOC_QUERY = "Find a document image that matches the given query:"
VISDOC_TARGET = "Understand the content of the provided document image."

IMAGE_PLACEHOLDER = "<|image_1|>"  # the Phi-3-V placeholder in MMEB_Test_Instruct instructions
IMAGE_CANDIDATES = ("image_t2i", "image_i2i_vg")  # parsers whose candidates are images (the rest: text only)


# ------------------------------------------------------------------------------------------------ image tasks

def _image_query_text(parser: str, row: Row) -> str:
    """VLM2Vec's query string per parser (before ``strip_placeholders``)."""
    inst, text = row.optional_text("qry_inst"), row.text("qry_text", allow_empty=True)
    if parser == "image_t2i":  # image_t2i_eval.py:18-21: instruction, a space, the text; no " \n" folding
        return inst + " " + text
    inst = inst.replace(IMAGE_PLACEHOLDER, "")
    if parser in ("image_qa", "image_i2i_vg"):  # image_qa_dataset.py:17, image_i2i_vg_dataset.py:17
        inst = "\n" + inst.strip()
    # image_cls_dataset.py:17-20 (and the others): process_input_text, then " \n" folded into "\n"
    return instructed(inst, text).replace(" \n", "\n")


def _image_candidate_text(parser: str, tgt_inst: str, first_caption: str, caption: str) -> str:
    """VLM2Vec's candidate string per parser (before ``strip_placeholders``). cls / qa / i2t: the target text alone
    (image_cls_dataset.py:26; tgt_inst is not read). t2i / i2i_vg: the target instruction, followed by the caption
    only when the row's *first* caption is non-blank (image_t2i_eval.py:26-38, image_i2i_vg_dataset.py:27-39)."""
    if parser not in IMAGE_CANDIDATES:
        return caption
    inst = tgt_inst.replace(IMAGE_PLACEHOLDER, "")
    return (inst + " " + caption if first_caption.strip() else inst).replace(" \n", "\n")


def _image_name(parser: str, caption: str, img: str) -> str:
    if parser == "image_t2i":  # image_t2i_eval.py:44
        return img
    if parser == "image_i2i_vg":  # several objects can share one image (RefCOCO-Matching); image_i2i_vg:45
        return img + ":" + caption.strip('"')
    return caption  # image_cls, image_qa, image_i2t


def _image_targets(row: Row) -> tuple[list[str], list[str]]:
    texts = row.raw("tgt_text")
    if not isinstance(texts, list) or not texts:
        raise row.error("tgt_text", "expected a non-empty list (ground truth first)")
    imgs = row.rec.get("tgt_img_path")
    imgs = [""] * len(texts) if imgs is None else imgs
    if not isinstance(imgs, list) or len(imgs) != len(texts):
        raise row.error("tgt_img_path", f"expected a list of {len(texts)} paths (one per tgt_text)")
    if not all(isinstance(t, str) for t in texts) or not all(isinstance(i or "", str) for i in imgs):
        raise row.error("tgt_text", "candidates must be strings")
    return texts, [i or "" for i in imgs]


def load_image_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """MMEB_Test_Instruct rows. A query's targets are its local candidate list, ground truth first. As VLM2Vec:
    t2i queries are text only, the other parsers' queries need their image; cls / qa / i2t candidates are text only,
    t2i / i2i_vg candidates need their image. Repeated names within one list are ranked once."""
    rel = find_annotation(root, meta.file, meta.name)
    out = Collector(meta, root.display(rel))
    parser = meta.loader
    if parser == "image":
        return _load_offline_image_task(meta, root, rel, out)
    for row in task_rows(meta, root, rel):
        images: tuple[Path, ...] = ()
        if parser != "image_t2i":
            qry_img = row.text("qry_img_path")
            images = (media_file(root, row, "qry_img_path", rel_path(meta.media_root, qry_img)),)
        query = Item(strip_placeholders(_image_query_text(parser, row)), images=images)
        texts, imgs = _image_targets(row)
        tgt_inst = row.optional_text("tgt_inst")
        names = []
        for caption, img in zip(texts, imgs):
            text = strip_placeholders(_image_candidate_text(parser, tgt_inst, texts[0], caption))
            if parser in IMAGE_CANDIDATES:
                if not img:
                    raise row.error("tgt_img_path", f"{parser} candidates need an image path")
                make = lambda img=img, text=text: Item(  # noqa: E731
                    text, images=(media_file(root, row, "tgt_img_path", rel_path(meta.media_root, img)),))
            else:
                make = lambda text=text: Item(text)  # noqa: E731
            names.append(out.candidate(_image_name(parser, caption, img), make))
        out.add(query, [names[0]], names)
    return out.build()


def _load_offline_image_task(meta: TaskMeta, root: DataRoot, rel: str, out: Collector) -> TaskData:
    """The offline suite's ``image`` parser (umeflow's own tasks, not MMEB-V2): instruction and text joined by a
    newline on both sides, images wherever a path is given, candidates named by image path, else by text."""

    def join(*parts: str) -> str:
        return "\n".join(p for p in (strip_placeholders(x) for x in parts) if p)

    for row in task_rows(meta, root, rel):
        qry_img = row.text("qry_img_path", allow_empty=True)
        q_images = (media_file(root, row, "qry_img_path", rel_path(meta.media_root, qry_img)),) if qry_img else ()
        query = Item(join(row.optional_text("qry_inst"), row.text("qry_text", allow_empty=True)), images=q_images)
        texts, imgs = _image_targets(row)
        tgt_inst = row.optional_text("tgt_inst")
        names = []
        for text, img in zip(texts, imgs):
            make = lambda img=img, text=text: Item(  # noqa: E731
                join(tgt_inst, text),
                images=(media_file(root, row, "tgt_img_path", rel_path(meta.media_root, img)),) if img else ())
            names.append(out.candidate(img or text, make))
        out.add(query, [names[0]], names)
    return out.build()


# ----------------------------------------------------------------------------------------------- visdoc tasks

def vlm2vec_page_file(parser: str, corpus_id: str) -> str:
    """The file name VLM2Vec caches a corpus page under in its ``image_root``: ``<corpus-id>.png`` for ViDoRe
    (vidore_dataset.py:60), the first 50 characters of the id's stem + ``_`` + 8 hex of its MD5 + its extension for
    VisRAG, whose ids are long file names (visrag_dataset.py:65-67)."""
    if parser != "visrag":
        return f"{corpus_id}.png"
    stem, ext = os.path.splitext(corpus_id)
    return f"{stem[:50]}_{hashlib.md5(corpus_id.encode('utf-8')).hexdigest()[:8]}{ext}"


def _corpus_image(root: DataRoot, meta: TaskMeta, row: Row, corpus_id: str) -> Path:
    """A corpus page: a path relative to ``meta.media_root``, raw bytes, an HF image struct ``{bytes, path}``, or
    (field null or absent) the page file VLM2Vec cached under ``meta.media_root``."""
    value = row.rec.get("image")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        return media_file(root, row, "image", rel_path(meta.media_root, vlm2vec_page_file(meta.loader, corpus_id)))
    if isinstance(value, str) and value:
        return media_file(root, row, "image", rel_path(meta.media_root, value))
    if isinstance(value, (bytes, bytearray)) and value:
        try:
            fmt = Image.open(io.BytesIO(value)).format or "PNG"
        except Exception:
            raise row.error("image", "bytes are not a readable image") from None
        return root.blob_path(bytes(value), "." + fmt.lower().replace("jpeg", "jpg"))
    raise row.error("image", "expected a relative image path, image bytes, {bytes, path}, or null")


def load_visdoc_task(meta: TaskMeta, root: DataRoot) -> TaskData:
    """ViDoRe / VisRAG / ViDoSeek / MMLongBench (BEIR). Every corpus page is a candidate (global ranking); a query's
    labels are its qrels entries with score > 0 (score 0 means judged irrelevant), ``rel_scores`` their scores; a
    pair listed twice keeps its highest score (VLM2Vec ``load_qrels_mapping``, src/utils/dataset_utils.py:36-41)."""
    files = {part: find_annotation(root, rel_path(meta.file, part), meta.name)
             for part in ("queries", "corpus", "qrels")}
    out = Collector(meta, root.display(files["queries"]))
    queries: dict[str, tuple[str, Row]] = {}
    for row in task_rows(meta, root, files["queries"]):  # VLM2Vec subsamples the queries only
        qid = row.ident("query-id")
        if qid in queries:
            raise row.error("query-id", f"duplicate query id {qid!r}")
        queries[qid] = (row.text("query"), row)
    for row in iter_rows(root, files["corpus"]):
        cid = row.ident("corpus-id")
        out.candidate(cid, lambda row=row, cid=cid: Item(VISDOC_TARGET, images=(_corpus_image(root, meta, row, cid),)))
    qrels: dict[str, dict[str, float]] = {}
    for row in iter_rows(root, files["qrels"]):
        qid, cid, score = row.ident("query-id"), row.ident("corpus-id"), row.raw("score")
        if cid not in out.pool:
            raise row.error("corpus-id", f"unknown corpus id {cid!r} (not in {root.display(files['corpus'])})")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise row.error("score", "expected a number")
        if qid not in queries:
            if meta.num_sample_per_subset is None:  # a judgement of a query that was subsampled away is expected
                raise row.error("query-id", f"unknown query id {qid!r} (not in {root.display(files['queries'])})")
            continue
        if score > 0:
            judged = qrels.setdefault(qid, {})
            judged[cid] = max(judged.get(cid, 0.0), float(score))
    for qid, (text, row) in queries.items():
        judged = qrels.get(qid)
        if not judged:
            raise row.error("query-id", f"query {qid!r} has no relevant document in {root.display(files['qrels'])}")
        out.add(Item(strip_placeholders(instructed(VISDOC_QUERY, text))), list(judged), rel=list(judged.values()),
                row=row)
    return out.build()


LOADERS: dict[str, Callable[[TaskMeta, DataRoot], TaskData]] = {
    "image": load_image_task, "video_cls": load_video_cls_task,  # offline suite
    **{p: load_image_task for p in ("image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg")},
    "video_classification": load_video_cls_task, "ssv2": load_ssv2_task,
    **{p: load_video_retrieval_task for p in VIDEO_RETRIEVAL},
    **{p: load_video_qa_task for p in VIDEO_QA},
    "moment_retrieval": load_moment_task, "momentseeker": load_momentseeker_task,
    "vidore": load_visdoc_task, "visrag": load_visdoc_task,
}


def load_task(meta: TaskMeta, data_root: str | os.PathLike | DataRoot) -> TaskData:
    loader = LOADERS.get(meta.loader)
    if loader is None:
        raise UserError(f"task {meta.name}: no loader for '{meta.loader}' (known: {sorted(LOADERS)})")
    data = loader(meta, DataRoot.of(data_root))
    if meta.num_queries and len(data.queries) != meta.num_queries:  # not an error: subsets and smoke trees differ
        log.warning("task %s: %d queries loaded, the published scores have %d (num_data); another dataset "
                    "revision or a partial download scores differently", meta.name, len(data.queries), meta.num_queries)
    return data
